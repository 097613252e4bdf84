"""Batches as numpy arrays: padding to bucketed lengths, SFT and ranking batches. Pure numpy; arrays are int32.

Bucketing: a compiled graph is built per distinct shape, so a batch is padded to
``T = min(ceil(longest / multiple) * multiple, max_length)`` (``multiple = max_length`` gives one shape).

Next-token alignment: masks here are *token-aligned* (``loss_mask[b, t] = 1`` when token ``t`` is a
response token). The shift happens in the loss: logits at position ``t`` predict ``input_ids[:, t + 1]``,
weighted by ``loss_mask[:, t + 1]``, i.e. ``logits[:, :-1]`` against ``input_ids[:, 1:]`` and
``loss_mask[:, 1:]``. Position 0 is ``<bos>`` (or a prompt token), never a target, so nothing is lost.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np


def bucket_length(longest: int, multiple: int = 8, max_length: Optional[int] = None) -> int:
    """``ceil(longest / multiple) * multiple``, capped at ``max_length``; a sequence over max_length is an error."""
    if multiple < 1:
        raise ValueError(f"bucket multiple must be >= 1, got {multiple}")
    if max_length is not None and longest > max_length:
        raise ValueError(f"a sequence of {longest} tokens does not fit max_length={max_length}; "
                         "check lengths first (encode_* in mindrlhf.data.encoding) rather than truncating")
    length = -(-max(longest, 1) // multiple) * multiple
    return length if max_length is None else min(length, max_length)


def _pad(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int, max_length: Optional[int],
         left: bool) -> Tuple[np.ndarray, np.ndarray]:
    if len(seqs) == 0:
        raise ValueError("cannot pad an empty batch")
    length = bucket_length(max(len(s) for s in seqs), multiple, max_length)
    ids = np.full((len(seqs), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), length), dtype=np.int32)
    for b, s in enumerate(seqs):
        n = len(s)
        cols = slice(length - n, length) if left else slice(0, n)
        ids[b, cols] = s
        mask[b, cols] = 1
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int = 8,
              max_length: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(ids [B, T], mask [B, T])``, sequences flush left, pad on the right (training layout)."""
    return _pad(seqs, pad_id, multiple, max_length, left=False)


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, multiple: int = 8,
             max_length: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(ids [B, T], mask [B, T])``, sequences flush right, pad on the left (generation layout: every
    prompt ends at column T-1, so the first generated token of every row lands at column T)."""
    return _pad(seqs, pad_id, multiple, max_length, left=True)


def sft_batch(sequences: Sequence, pad_id: int, multiple: int = 8,
              max_length: Optional[int] = None) -> Dict[str, np.ndarray]:
    """SFT batch from :class:`EncodedSequence` items (or ``(ids, loss_mask)`` pairs), right-padded.

    Returns ``input_ids``, ``attention_mask``, ``loss_mask``, all ``[B, T]``, token-aligned (see module doc).
    """
    pairs = [(s.input_ids, s.loss_mask) if hasattr(s, "input_ids") else s for s in sequences]
    ids, attention_mask = pad_right([p[0] for p in pairs], pad_id, multiple, max_length)
    loss_mask, _ = pad_right([p[1] for p in pairs], 0, multiple, max_length)
    return {"input_ids": ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


def ranking_batch(rankings: Sequence, pad_id: int, k: Optional[int] = None, multiple: int = 8,
                  max_length: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Reward-model batch from :class:`EncodedRanking` items (or lists of ``(ids, loss_mask)``, best first).

    Row ``p * K + j`` holds prompt ``p``'s j-th best response; ``K = k`` or the largest K in the batch.
    A prompt with fewer than K responses gets copies of its first sequence in the missing rows (real
    tokens, so no all-masked row can produce NaNs) and ``k_mask[p, j] = 0`` there.

    Returns ``input_ids``, ``attention_mask``, ``loss_mask`` (``[P*K, T]``), ``k_mask`` (``[P, K]``) and
    ``last_index`` (``[P*K]``, the column of each row's last real token, where a reward head reads).
    """
    groups = [[(s.input_ids, s.loss_mask) for s in r.sequences] if hasattr(r, "sequences") else list(r)
              for r in rankings]
    most = max(len(g) for g in groups)
    k = most if k is None else k
    if most > k:
        raise ValueError(f"ranking_batch: a prompt has {most} responses but k={k}; raise k or split the ranking")
    k_mask = np.zeros((len(groups), k), dtype=np.int32)
    rows = []
    for p, g in enumerate(groups):
        k_mask[p, : len(g)] = 1
        rows += g + [g[0]] * (k - len(g))
    batch = sft_batch(rows, pad_id, multiple, max_length)
    batch["k_mask"] = k_mask
    batch["last_index"] = (batch["attention_mask"].sum(axis=1) - 1).astype(np.int32)
    return batch
