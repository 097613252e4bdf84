"""The three JSONL formats of RLHF data, their validation, and typed records.

One JSON object per line; blank lines are ignored.

Demonstrations (SFT targets; only the final assistant turn is learned)::

    {"prompt": "Any good comedies?", "response": "Try ..."}
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   # last turn: assistant

Rankings (reward model, DPO): K >= 2 responses to one prompt and their order, best first::

    {"prompt": "...", "responses": ["r0", "r1", "r2"], "ranking": [2, 0, 1]}   # r2 best, r1 worst
    {"prompt": "...", "chosen": "...", "rejected": "..."}                       # the K=2 shorthand

A ranking line may also carry ``"true_scores"``, one number per response in the order of ``responses`` (or
``[chosen, rejected]``): the labeler's scores without its noise, written by ``mindrlhf data rankings
--scorer`` and read by ``mindrlhf eval rm --against-labeler``; training ignores them.

Prompts (PPO/GRPO rollouts, evaluation); extra keys are kept as ``meta``::

    {"prompt": "...", "genre": "comedy"}

A loader validates every line and raises :class:`DataError` naming ``file:line``, the field and what would
be right. With ``skip_invalid=True`` it skips such lines instead and reports them on the returned
:class:`Records` (``skipped`` and the first few ``skip_reasons``) so the trainer can log them.
Paths ending in ``.mindrecord`` are read through :mod:`mindrlhf.data.mindrecord`, and
:func:`export_mindrecord` writes such a file from JSONL.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

from mindrlhf.data.mindrecord import iter_mindrecord, write_mindrecord
from mindrlhf.io import iter_jsonl

ROLES = ("system", "user", "assistant")
MAX_REASONS = 5  # how many skip reasons a Records keeps: enough to see the pattern, short enough to log

Message = dict  # {"role": one of ROLES, "content": str}
Prompt = Union[str, List[Message]]  # a plain user prompt, or the turns before the target assistant turn


class DataError(ValueError):
    """A data file is malformed; the message says where (file:line), which field, and what would be right."""


class Records(list):
    """A list of records that also says how many input lines were skipped as invalid, and why.

    ``skipped``: number of lines dropped under ``skip_invalid=True``;
    ``skip_reasons``: the first :data:`MAX_REASONS` error messages, each naming file:line and field.
    """

    def __init__(self, items: Iterable = (), skipped: int = 0, skip_reasons: List[str] | None = None):
        super().__init__(items)
        self.skipped = skipped
        self.skip_reasons = list(skip_reasons or [])

    def note_skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.skip_reasons) < MAX_REASONS:
            self.skip_reasons.append(reason)


@dataclass(frozen=True)
class Demonstration:
    """A supervised target. ``prompt`` is a string (single turn) or the messages before the target turn."""

    prompt: Prompt
    response: str
    where: str = field(default="", compare=False)  # "file:line", for error messages downstream


@dataclass(frozen=True)
class Ranking:
    """K >= 2 responses to one prompt, ordered best first (``responses[0]`` is preferred to all others);
    ``true_scores``, when the line has them, in the same order."""

    prompt: str
    responses: Tuple[str, ...]
    where: str = field(default="", compare=False)
    true_scores: Optional[Tuple[float, ...]] = None

    @property
    def chosen(self) -> str:
        return self.responses[0]

    @property
    def rejected(self) -> str:
        return self.responses[-1]


@dataclass(frozen=True)
class PromptRecord:
    """A prompt for rollouts; ``meta`` keeps the line's other keys (e.g. labels used only for evaluation)."""

    prompt: str
    meta: dict = field(default_factory=dict, compare=True)
    where: str = field(default="", compare=False)


# ---------------------------------------------------------------- field checks (each raises a bare message)

def _text(obj: dict, key: str, name: str = "") -> str:
    name = name or key
    if key not in obj:
        raise _Bad(f"field '{name}' is missing; expected a non-empty string")
    value = obj[key]
    if not isinstance(value, str):
        raise _Bad(f"field '{name}': expected a string, got {type(value).__name__} {_short(value)}")
    if not value.strip():
        raise _Bad(f"field '{name}' is empty; expected a non-empty string")
    return value


def _messages(obj: dict) -> List[Message]:
    turns = obj["messages"]
    if not isinstance(turns, list) or not turns:
        raise _Bad(f"field 'messages': expected a non-empty list of {{'role', 'content'}} objects, got {_short(turns)}")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise _Bad(f"field 'messages[{i}]': expected an object {{'role', 'content'}}, got {_short(turn)}")
        if turn.get("role") not in ROLES:
            raise _Bad(f"field 'messages[{i}].role': {_short(turn.get('role'))} is not one of {list(ROLES)}")
        out.append({"role": turn["role"], "content": _text(turn, "content", f"messages[{i}].content")})
    if out[-1]["role"] != "assistant":
        raise _Bad(f"field 'messages': the last turn is '{out[-1]['role']}', but it must be 'assistant' "
                   "(the last turn is the training target)")
    if not any(t["role"] == "user" for t in out[:-1]):
        raise _Bad("field 'messages': no 'user' turn before the final assistant turn")
    return out


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Bad(Exception):
    """Raised by the field checks; the line reader adds file:line and turns it into a DataError."""


# ---------------------------------------------------------------- per-kind parsers: dict -> record

def parse_demonstration(obj: dict, where: str = "") -> Demonstration:
    if "messages" in obj:
        turns = _messages(obj)
        return Demonstration(prompt=turns[:-1], response=turns[-1]["content"], where=where)
    if "prompt" not in obj and "response" not in obj:
        raise _Bad("expected either 'prompt' and 'response' strings or a 'messages' list; "
                   f"found keys {sorted(obj)}")
    return Demonstration(prompt=_text(obj, "prompt"), response=_text(obj, "response"), where=where)


def parse_ranking(obj: dict, where: str = "") -> Ranking:
    prompt = _text(obj, "prompt")
    if "chosen" in obj or "rejected" in obj:
        pair = (_text(obj, "chosen"), _text(obj, "rejected"))
        if pair[0] == pair[1]:
            raise _Bad("'chosen' and 'rejected' are the same text; a preference needs two different answers")
        return Ranking(prompt, pair, where, _true_scores(obj, 2))
    if "responses" not in obj:
        raise _Bad("expected 'responses' and 'ranking', or the pairwise 'chosen' and 'rejected'; "
                   f"found keys {sorted(obj)}")
    responses = obj["responses"]
    if not isinstance(responses, list):
        raise _Bad(f"field 'responses': expected a list of strings, got {_short(responses)}")
    if len(responses) < 2:
        raise _Bad(f"field 'responses': has {len(responses)} response(s); a ranking needs K >= 2")
    for i, r in enumerate(responses):
        if not isinstance(r, str) or not r.strip():
            raise _Bad(f"field 'responses[{i}]': expected a non-empty string, got {_short(r)}")
    if len(set(responses)) < 2:
        raise _Bad(f"field 'responses': all {len(responses)} responses are the same text; a ranking needs at "
                   "least two different answers")
    if "ranking" not in obj:
        raise _Bad(f"field 'ranking' is missing; expected a permutation of 0..{len(responses) - 1}, best first")
    ranking = obj["ranking"]
    k = len(responses)
    if (not isinstance(ranking, list) or any(type(i) is not int for i in ranking)
            or sorted(ranking) != list(range(k))):
        raise _Bad(f"field 'ranking': {_short(ranking)} is not a permutation of 0..{k - 1} "
                   f"(indices into the {k} responses, best first)")
    scores = _true_scores(obj, k)
    return Ranking(prompt, tuple(responses[i] for i in ranking), where,
                   None if scores is None else tuple(scores[i] for i in ranking))


def _true_scores(obj: dict, k: int) -> Optional[Tuple[float, ...]]:
    """The line's optional ``true_scores``: one finite number per response, in the line's order."""
    if "true_scores" not in obj:
        return None
    scores = obj["true_scores"]
    if (not isinstance(scores, list) or len(scores) != k
            or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) for s in scores)):
        raise _Bad(f"field 'true_scores': {_short(scores)} is not a list of {k} finite numbers (one per response)")
    return tuple(float(s) for s in scores)


def parse_prompt(obj: dict, where: str = "") -> PromptRecord:
    prompt = _text(obj, "prompt")
    return PromptRecord(prompt, {k: v for k, v in obj.items() if k != "prompt"}, where)


# ---------------------------------------------------------------- reading files

def _rows(path: str) -> Iterator[Tuple[str, object]]:
    if str(path).endswith(".mindrecord"):
        return iter_mindrecord(path)
    return iter_jsonl(path)


def load_records(path: str, parse: Callable[[dict, str], object], kind: str, skip_invalid: bool = False) -> Records:
    """Parse every row of ``path`` with ``parse``; raise DataError, or skip and count with ``skip_invalid``."""
    path = str(path)
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder; expected a {kind} JSONL file")
    out = Records()
    for where, obj in _rows(path):
        try:
            if isinstance(obj, ValueError):  # a row the file reader could not parse
                raise DataError(str(obj))
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__} {_short(obj)}")
            try:
                out.append(parse(obj, where))
            except (_Bad, KeyError) as e:
                raise DataError(f"{where}: {e}") from None
        except DataError as e:
            if not skip_invalid:
                raise
            out.note_skip(str(e))
    if not out:
        detail = f" ({out.skipped} invalid lines skipped; first: {out.skip_reasons[0]})" if out.skipped else ""
        raise DataError(f"{path}: no valid {kind} records{detail}")
    return out


def load_demonstrations(path: str, skip_invalid: bool = False) -> Records:
    """Records of :class:`Demonstration` from a JSONL or .mindrecord file."""
    return load_records(path, parse_demonstration, "demonstration", skip_invalid)


def load_rankings(path: str, skip_invalid: bool = False) -> Records:
    """Records of :class:`Ranking` (responses ordered best first) from a JSONL or .mindrecord file."""
    return load_records(path, parse_ranking, "ranking", skip_invalid)


def load_prompts(path: str, skip_invalid: bool = False) -> Records:
    """Records of :class:`PromptRecord` from a JSONL or .mindrecord file."""
    return load_records(path, parse_prompt, "prompt", skip_invalid)


LOADERS = {"demonstrations": load_demonstrations, "rankings": load_rankings, "prompts": load_prompts}


# ---------------------------------------------------------------- writing

def to_json(record) -> dict:
    """The canonical JSON object of a record (rankings as responses best-first with the identity ranking)."""
    if isinstance(record, Demonstration):
        if isinstance(record.prompt, str):
            return {"prompt": record.prompt, "response": record.response}
        return {"messages": list(record.prompt) + [{"role": "assistant", "content": record.response}]}
    if isinstance(record, Ranking):
        out = {"prompt": record.prompt, "responses": list(record.responses),
               "ranking": list(range(len(record.responses)))}
        if record.true_scores is not None:
            out["true_scores"] = list(record.true_scores)
        return out
    if isinstance(record, PromptRecord):
        return {"prompt": record.prompt, **record.meta}
    if isinstance(record, dict):
        return record
    raise TypeError(f"to_json: cannot serialise {type(record).__name__}; expected a record or a dict")


def export_mindrecord(jsonl_path: str, out_path: str, kind: str, skip_invalid: bool = False) -> int:
    """Validate ``jsonl_path`` as ``kind`` (demonstrations | rankings | prompts) and write each record's
    canonical JSON to ``out_path`` (plus MindSpore's ``out_path.db`` index). Returns the number of
    records written; overwrites."""
    if kind not in LOADERS:
        raise ValueError(f"export_mindrecord: kind {kind!r} is not one of {sorted(LOADERS)}")
    if not str(out_path).endswith(".mindrecord"):
        raise ValueError(f"export_mindrecord: out_path {out_path!r} should end in .mindrecord, which is how the "
                         "loaders recognise the format")
    records = LOADERS[kind](jsonl_path, skip_invalid=skip_invalid)
    return write_mindrecord(out_path, [(r.where, to_json(r)) for r in records], f"mindrlhf {kind}")
