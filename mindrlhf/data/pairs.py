"""Preference pairs from rankings, and their batches: what DPO and its family train on.

A ranking of K responses (best first) gives C(K, 2) pairs (``all``: every i < j) or K − 1 (``best``: the
best against each other response); a chosen/rejected line is the K = 2 case. Each pair keeps the indices
of its two sequences in the table of all the rankings' sequences, so a per-sequence quantity (the
reference's log-probs) is computed once per sequence however many pairs share it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mindrlhf.data.batching import sft_batch
from mindrlhf.data.encoding import EncodedSequence

PAIR_MODES = ("all", "best")


def pair_indices(k: int, mode: str) -> List[Tuple[int, int]]:
    """(better, worse) slots of a ranking of ``k`` responses, best first: all i < j, or (0, j) for j >= 1."""
    if mode == "all":
        return [(i, j) for i in range(k) for j in range(i + 1, k)]
    if mode == "best":
        return [(0, j) for j in range(1, k)]
    raise ValueError(f"unknown pair mode {mode!r}; expected one of {', '.join(PAIR_MODES)}")


@dataclass(frozen=True)
class EncodedPair:
    """A preferred and a dispreferred answer to one prompt, and their rows in the sequence table."""

    chosen: EncodedSequence
    rejected: EncodedSequence
    chosen_id: int
    rejected_id: int
    where: str = ""


def rankings_to_pairs(rankings: Sequence, mode: str, first_id: int = 0
                      ) -> Tuple[List[EncodedSequence], List[EncodedPair], int]:
    """(sequences, pairs, identical) from :class:`EncodedRanking` records.

    ``sequences`` lists every ranking's responses in order; a pair's ids index it, offset by ``first_id``
    (to append this table to another). Pairs whose two answers have the same tokens say nothing about a
    preference (their h is 0 whatever the policy): they are left out and counted in ``identical``.
    """
    sequences: List[EncodedSequence] = []
    pairs: List[EncodedPair] = []
    identical = 0
    for ranking in rankings:
        base = first_id + len(sequences)
        sequences.extend(ranking.sequences)
        for i, j in pair_indices(len(ranking.sequences), mode):
            chosen, rejected = ranking.sequences[i], ranking.sequences[j]
            if chosen.input_ids == rejected.input_ids:
                identical += 1
                continue
            pairs.append(EncodedPair(chosen, rejected, base + i, base + j, ranking.where))
    return sequences, pairs, identical


def pair_batch(pairs: Sequence[EncodedPair], pad_id: int, multiple: int = 8,
               max_length: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Both answers of every pair in one right-padded batch: row 2p is pair p's chosen, row 2p + 1 its
    rejected. Returns ``input_ids``, ``attention_mask``, ``loss_mask`` (``[2P, T]``, token-aligned as in
    :func:`~mindrlhf.data.batching.sft_batch`)."""
    return sft_batch([s for p in pairs for s in (p.chosen, p.rejected)], pad_id, multiple, max_length)
