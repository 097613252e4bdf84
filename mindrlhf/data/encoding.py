"""Records -> token ids through the chat template (or as plain continuation), with the length check.

A sequence longer than the configured maximum is never truncated silently: it is a :class:`DataError`
naming file:line, or, with ``skip_invalid=True``, skipped and counted on the returned :class:`Records`.

``chat_template=False`` is plain continuation, for base models never taught a template (Ziegler et al.'s
setting): a prompt is ``[<bos>] + encode(prompt)`` (``<bos>`` when the tokenizer has one) and a training
sequence ``[<bos>] + encode(prompt) + encode(response) + [<eos>]``, the loss on the response and the EOS.
The two texts are encoded apart and nothing is put between them: a space or newline the answer should
start with belongs to the data (``"Review:"`` + ``" Great kettle."``). The model learns to end with the
tokenizer's EOS and generation stops at it, as with the template.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

from mindrlhf.data.formats import DataError, Demonstration, PromptRecord, Ranking, Records


@dataclass(frozen=True)
class EncodedSequence:
    """One prompt+response: ``input_ids`` and the token-aligned ``loss_mask`` (1 on response tokens + eos)."""

    input_ids: List[int]
    loss_mask: List[int]
    where: str = ""


@dataclass(frozen=True)
class EncodedRanking:
    """K encoded responses to one prompt, best first."""

    sequences: Tuple[EncodedSequence, ...]
    where: str = ""


@dataclass(frozen=True)
class EncodedPrompt:
    """Prompt ids as generation is fed them (context + assistant marker); ``meta`` as in the prompt file."""

    input_ids: List[int]
    text: str
    meta: dict
    where: str = ""


def _too_long(where: str, what: str, n: int, limit: int, limit_name: str) -> DataError:
    return DataError(f"{where}: {what} is {n} tokens, longer than data.{limit_name}={limit}; shorten it, raise "
                     f"data.{limit_name}, or set data.skip_invalid=true to skip such lines (they are never truncated)")


def encode_pair(tokenizer, prompt, response: str, chat_template: bool = True, where: str = ""):
    """``(ids, loss_mask)`` of a prompt and its response: ``tokenizer.encode_prompt_response`` through the
    chat template, or plain continuation (module docstring) with ``chat_template=False``."""
    if chat_template:
        return tokenizer.encode_prompt_response(prompt, response)
    if not isinstance(prompt, str):
        raise DataError(f"{where}: a 'messages' prompt needs the chat template; with data.chat_template=false "
                        "give a plain 'prompt' string")
    prompt_ids, response_ids = _plain_prompt(tokenizer, prompt), tokenizer.encode(response) + [tokenizer.eos_id]
    return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)


def encode_demonstrations(records: Sequence[Demonstration], tokenizer, max_length: int,
                          skip_invalid: bool = False, chat_template: bool = True) -> Records:
    """Records of :class:`EncodedSequence` via :func:`encode_pair`; each must fit max_length."""
    out = Records(skipped=getattr(records, "skipped", 0), skip_reasons=getattr(records, "skip_reasons", []))
    for r in records:
        ids, mask = encode_pair(tokenizer, r.prompt, r.response, chat_template, r.where)
        if len(ids) > max_length:
            error = _too_long(r.where, "prompt+response", len(ids), max_length, "max_length")
            if not skip_invalid:
                raise error
            out.note_skip(str(error))
            continue
        out.append(EncodedSequence(ids, mask, r.where))
    _check_not_empty(out, "demonstrations")
    return out


def encode_rankings(records: Sequence[Ranking], tokenizer, max_length: int, skip_invalid: bool = False,
                    chat_template: bool = True) -> Records:
    """Records of :class:`EncodedRanking`; a ranking any of whose K sequences is too long is an error
    (or skipped whole: dropping one response would change what the ranking says)."""
    out = Records(skipped=getattr(records, "skipped", 0), skip_reasons=getattr(records, "skip_reasons", []))
    for r in records:
        sequences = []
        for k, response in enumerate(r.responses):
            ids, mask = encode_pair(tokenizer, r.prompt, response, chat_template, r.where)
            if len(ids) > max_length:
                error = _too_long(r.where, f"prompt+response (ranked {k + 1} of {len(r.responses)})",
                                  len(ids), max_length, "max_length")
                if not skip_invalid:
                    raise error
                out.note_skip(str(error))
                break
            sequences.append(EncodedSequence(ids, mask, r.where))
        else:
            out.append(EncodedRanking(tuple(sequences), r.where))
    _check_not_empty(out, "rankings")
    return out


def encode_prompts(records: Sequence[PromptRecord], tokenizer, max_prompt_length: int,
                   skip_invalid: bool = False, chat_template: bool = True) -> Records:
    """Records of :class:`EncodedPrompt` via ``tokenizer.encode_prompt``; each must fit max_prompt_length.

    ``chat_template=False`` feeds the text as it is (after ``<bos>`` when the tokenizer has one), for base
    models that were never taught a template and should just continue the text (module docstring)."""
    out = Records(skipped=getattr(records, "skipped", 0), skip_reasons=getattr(records, "skip_reasons", []))
    for r in records:
        ids = tokenizer.encode_prompt(r.prompt) if chat_template else _plain_prompt(tokenizer, r.prompt)
        if len(ids) > max_prompt_length:
            error = _too_long(r.where, "prompt", len(ids), max_prompt_length, "max_prompt_length")
            if not skip_invalid:
                raise error
            out.note_skip(str(error))
            continue
        out.append(EncodedPrompt(ids, r.prompt, dict(r.meta), r.where))
    _check_not_empty(out, "prompts")
    return out


def _plain_prompt(tokenizer, text: str) -> List[int]:
    return ([] if tokenizer.bos_id is None else [tokenizer.bos_id]) + tokenizer.encode(text)


def _check_not_empty(out: Records, kind: str) -> None:
    if not out:
        first = f"; first: {out.skip_reasons[0]}" if out.skip_reasons else ""
        raise DataError(f"no {kind} left after the length check ({out.skipped} skipped{first})")
