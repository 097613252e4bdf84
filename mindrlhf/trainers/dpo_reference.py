"""DPO's reference log-probabilities: log π_ref of every sequence, in one compiled pass, kept with the run.

The reference's log-prob of a response (summed over its tokens) is needed once per sequence however many
pairs share it; :func:`reference_pass` computes it for a whole table of sequences before training and
:func:`stored_reference` keeps the table in the run folder (``reference_logps.npz``, and
``round{r}_reference_logps.npz`` for a later round of iterated DPO), so a resumed run reads it back.
"""
from __future__ import annotations

import hashlib
import os

import mindspore as ms
import numpy as np
from mindspore import ops

from .. import runtime
from ..algos import masked_sum
from ..data.batching import sft_batch
from ..io import atomic_write
from ..nn.graph import GraphCell

REFERENCE_FILE = "reference_logps.npz"


def sequence_logps(lm, input_ids, attention_mask, loss_mask):
    """(Σ_t m_t · log π(y_t | y_<t), Σ_t m_t) per row, [B] each: log-probs summed over the response tokens.

    m = loss_mask[:, 1:] (token-aligned: 1 on response tokens and EOS), so prompt and padding count 0."""
    logprobs, _ = lm.next_token_logprobs(input_ids, attention_mask)  # [B, T-1]: token t+1 given ≤ t
    mask = loss_mask[:, 1:].astype(ms.float32)
    return masked_sum(logprobs, mask, 1), ops.reduce_sum(mask, 1)


class SequenceLogps(GraphCell):
    """(input_ids, attention_mask, loss_mask [B, T]) → log π(response) [B]: the reference pass."""

    def __init__(self, lm):
        super().__init__(auto_prefix=False)
        self.lm = lm

    def construct(self, input_ids, attention_mask, loss_mask):
        return sequence_logps(self.lm, input_ids, attention_mask, loss_mask)[0]


def reference_pass(lm, sequences, pad_id: int, rows: int, pad_multiple: int, max_length: int) -> np.ndarray:
    """log π_lm(response) of every sequence, float32 [N], by one compiled Cell over fixed-size batches.

    Sequences are batched in length order (less padding, few length buckets); the last batch is filled
    with copies, so only the bucketed length can trigger a compile."""
    cell = SequenceLogps(lm)
    order = np.argsort([len(s.input_ids) for s in sequences], kind="stable")
    out = np.zeros(len(sequences), np.float32)
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        chunk = [sequences[i] for i in idx] + [sequences[idx[0]]] * (rows - len(idx))
        b = sft_batch(chunk, pad_id, pad_multiple, max_length)
        logps = cell(ms.Tensor(b["input_ids"], ms.int32), ms.Tensor(b["attention_mask"], ms.int32),
                     ms.Tensor(b["loss_mask"], ms.float32))
        out[idx] = logps.asnumpy()[: len(idx)]
    return out


def fingerprint(sequences) -> str:
    """A hash of every sequence's tokens and loss mask, in order: which data a stored reference belongs to."""
    digest = hashlib.sha256()
    for s in sequences:
        digest.update(np.asarray(s.input_ids, np.int32).tobytes() + b"|")
        digest.update(np.asarray(s.loss_mask, np.int8).tobytes() + b";")
    return digest.hexdigest()


def stored_reference(path: str, sequences, compute, resume: bool) -> np.ndarray:
    """The reference log-probs of ``sequences``: read from the .npz file ``path`` on resume, else
    ``compute()``-d and written there (atomically, rank 0). A stored file made from other data is an error."""
    key = fingerprint(sequences)
    if resume and os.path.isfile(path):
        with np.load(path) as stored:
            logps, stored_key = stored["logps"], str(stored["fingerprint"])
        if len(logps) != len(sequences) or stored_key != key:
            raise ValueError(f"{path}: holds the reference log-probs of {len(logps)} sequences of other data, but "
                             f"the data now gives {len(sequences)} sequences (or other tokens); resume with the "
                             "data the run started with, or start a fresh run (--overwrite)")
        return logps
    logps = compute()
    if runtime.current().is_main:
        def write(tmp):
            with open(tmp, "wb") as fh:
                np.savez(fh, logps=logps, fingerprint=np.asarray(key))
        atomic_write(path, write)
    return logps
