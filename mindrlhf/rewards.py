"""Built-in reward functions, named in a config as ``mindrlhf.rewards:NAME``.

Each follows the convention of :mod:`mindrlhf.plugins`, ``fn(prompts, responses, **columns) -> list[float]``,
one score per response; the columns are the prompts file's other fields, and a function's fixed parameters
come from the config's ``reward.kwargs``, keyed by the function's spec::

    reward:
      functions: [mindrlhf.rewards:exact_match, mindrlhf.rewards:format_regex]
      weights: [1.0, 0.2]
      kwargs:
        mindrlhf.rewards:format_regex: {pattern: "answer is -?[0-9]+"}

- ``exact_match``: 1 when the response's final answer equals the ``answer`` column, else 0;
- ``format_regex``: 1 when the response matches ``pattern``, else 0;
- ``length_penalty``: −``per_char`` for every character beyond ``limit``;
- ``movie_labeler``: the built-in movie task's hidden labeler, reading the task's ``world`` file.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Optional, Sequence

from mindrlhf.data.builtin.labeler import Labeler
from mindrlhf.data.builtin.world import load_world

# A number: optional sign, digits with optional thousands commas, optional decimals ("-1,234.5").
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str) -> Optional[float]:
    """``text`` as a number when all of it (stripped, commas dropped) is one, else None: "1,234" → 1234.0."""
    text = str(text).strip()
    if not NUMBER.fullmatch(text):
        return None
    return float(text.replace(",", ""))


def last_number(text: str) -> Optional[float]:
    """The last number written in ``text`` (digits, as :data:`NUMBER`; trailing commas ignored), or None."""
    found = NUMBER.findall(text)
    return float(found[-1].rstrip(",").replace(",", "")) if found else None


def answer_matches(response: str, answer) -> bool:
    """The extraction rule of :func:`exact_match`.

    - ``answer`` is a number (or a string that is one, e.g. "42", "-3.5", "1,000"): the LAST number in the
      response is taken as its final answer and compared numerically (|a − b| ≤ 1e-9·max(1, |b|)); a
      response without a number does not match. "So 6 + 7 = 13." → 13.
    - otherwise: the response and the answer, stripped of surrounding whitespace, compared case-insensitively.
    """
    gold = answer if isinstance(answer, (int, float)) and not isinstance(answer, bool) else parse_number(answer)
    if gold is None:
        return str(response).strip().lower() == str(answer).strip().lower()
    got = last_number(response)
    return got is not None and abs(got - float(gold)) <= 1e-9 * max(1.0, abs(float(gold)))


def exact_match(prompts: Sequence[str], responses: Sequence[str], answer: Sequence = None, **columns) -> list:
    """1.0 where the response's final answer equals the ``answer`` column (rule: :func:`answer_matches`), else 0.0."""
    if answer is None:
        raise ValueError("needs an 'answer' field in every line of the prompts file "
                         "(e.g. {\"prompt\": \"What is 6 + 7?\", \"answer\": \"13\"})")
    return [float(answer_matches(r, a)) for r, a in zip(responses, answer)]


@functools.lru_cache(maxsize=32)
def _compiled(pattern: str, flags: int) -> re.Pattern:
    return re.compile(pattern, flags)


def format_regex(prompts: Sequence[str], responses: Sequence[str], *, pattern: str, ignore_case: bool = False,
                 **columns) -> list:
    """1.0 where ``re.search(pattern, response)`` finds a match (anchor with ^ and $ to match it whole; ``.``
    matches newlines too), else 0.0. ``pattern`` (and ``ignore_case``) come from ``reward.kwargs``."""
    regex = _compiled(pattern, re.DOTALL | (re.IGNORECASE if ignore_case else 0))
    return [1.0 if regex.search(r) else 0.0 for r in responses]


def length_penalty(prompts: Sequence[str], responses: Sequence[str], *, limit: int = 0, per_char: float = 0.01,
                   **columns) -> list:
    """−per_char · max(0, len(response) − limit), counting characters of the stripped response (the same for
    any tokenizer). ``limit`` and ``per_char`` come from ``reward.kwargs``."""
    return [-per_char * max(0, len(r.strip()) - limit) for r in responses]


@functools.lru_cache(maxsize=4)
def _labeler(world: str) -> Labeler:
    return Labeler(load_world(world))


def movie_labeler(prompts: Sequence[str], responses: Sequence[str], *, world: str, **columns) -> list:
    """The built-in movie task's hidden labeler (:class:`~mindrlhf.data.builtin.labeler.Labeler`): its score of
    each response to its prompt. ``world`` is the task's ``world.json`` (``mindrlhf data builtin`` writes it
    beside the prompts), given in ``reward.kwargs``."""
    labeler = _labeler(os.path.abspath(world))
    return [labeler.score(p, r) for p, r in zip(prompts, responses)]
