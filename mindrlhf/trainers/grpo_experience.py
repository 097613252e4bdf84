"""The GRPO rollout batch and the compiled passes over it: ``GroupBatch`` holds B groups of G answers (a group's
answers in consecutive rows; the row layout of :mod:`mindrlhf.trainers.experience`: P left-padded prompt columns,
then N answer columns); ``GroupScoringPass`` computes in one graph what the config needs (log π_old unless the
sampler's log-probs are it, log π_ref, the reward model's score); ``GroupAdvantagePass`` turns scores into
advantages in one graph (the KL, optionally into the reward, then the group estimator). DAPO's over-long penalty
shapes the scores. The stage (:mod:`mindrlhf.trainers.grpo`) draws the answers and calls these.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..algos import get_adv_estimator, kl_penalty
from ..nn.graph import GraphCell
from .grpo_config import GRPOAlgoConfig


def overlong_penalty(lengths: np.ndarray, max_len: int, buffer: int, penalty: float = 1.0) -> np.ndarray:
    """DAPO's soft over-long punishment (Yu et al. 2025, eq. 13), per answer of ``lengths`` tokens:

    0                                      |y| ≤ L_max − L_buf
    penalty · ((L_max − L_buf) − |y|) / L_buf    L_max − L_buf < |y| ≤ L_max        (−penalty at L_max)
    """
    if buffer <= 0:
        return np.zeros(len(lengths), np.float32)
    over = np.maximum(np.asarray(lengths, np.float64) - (max_len - buffer), 0.0)
    return (-penalty * np.minimum(over, buffer) / buffer).astype(np.float32)


@dataclasses.dataclass
class GroupBatch:
    """A rollout batch of B groups × G answers = R rows (a group's answers consecutive), numpy on the host."""

    input_ids: np.ndarray  # [R, P+N] int32: left-padded prompt, then answer (pad after EOS)
    attention_mask: np.ndarray  # [R, P+N] int32
    response_mask: np.ndarray  # [R, N] float32: 1 on answer tokens up to and including EOS
    old_logprobs: np.ndarray  # [R, N] log π_old(y_t)
    ref_logprobs: np.ndarray  # [R, N] log π_ref(y_t); = old_logprobs without a reference (KL 0)
    scores: np.ndarray  # [R] the reward: Σ_k w_k·f_k (+ reward model) (+ over-long penalty)
    advantages: np.ndarray  # [R, N] from the group estimator (0 until computed)

    def __len__(self) -> int:
        return len(self.input_ids)

    def rows(self, idx) -> "GroupBatch":
        return GroupBatch(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def concat_groups(parts: list, pad_id: int) -> GroupBatch:
    """Row batches stacked; prompt columns left-padded to the widest (positions come from the mask)."""
    width = max(p.input_ids.shape[1] for p in parts)
    out = {f.name: [] for f in dataclasses.fields(GroupBatch)}
    for p in parts:
        pad = ((0, 0), (width - p.input_ids.shape[1], 0))
        for name in out:
            value = getattr(p, name)
            if name in ("input_ids", "attention_mask"):
                value = np.pad(value, pad, constant_values=pad_id if name == "input_ids" else 0)
            out[name].append(value)
    return GroupBatch(**{k: np.concatenate(v) for k, v in out.items()})


class GroupScoringPass(GraphCell):
    """construct(ids, mask, last_index) → the tuple of what it was built with, in order: log π_old [R, N] (actor),
    log π_ref [R, N] (reference), the reward model's score [R]."""

    def __init__(self, actor, reference, reward_model, response_len: int):
        super().__init__(auto_prefix=False)
        self.with_actor, self.with_reference = actor is not None, reference is not None
        self.with_reward_model, self.n = reward_model is not None, response_len
        for name, role in (("actor", actor), ("reference", reference), ("reward_model", reward_model)):
            if role is not None:
                setattr(self, name, role)

    def construct(self, input_ids, attention_mask, last_index):
        out = ()
        if self.with_actor:
            out = out + (self.actor.response_logprobs(input_ids, attention_mask, self.n)[0],)
        if self.with_reference:
            out = out + (self.reference.response_logprobs(input_ids, attention_mask, self.n)[0],)
        if self.with_reward_model:
            out = out + (self.reward_model(input_ids, attention_mask, last_index),)
        return out


class GroupAdvantagePass(GraphCell):
    """construct(scores, old_logprobs, ref_logprobs, response_mask) → (kl [R, N], advantages [R, N])."""

    def __init__(self, algo: GRPOAlgoConfig, group_size: int):
        super().__init__(auto_prefix=False)
        self.estimator, self.kl_estimator = get_adv_estimator(algo.adv_estimator), algo.kl()
        self.group_size, self.eps, self.norm_by_std = group_size, algo.adv_eps, algo.norm_by_std
        self.kl_in_reward, self.kl_coef = algo.kl_in == "reward" and algo.kl_coef > 0, algo.kl_coef

    def construct(self, scores, old_logprobs, ref_logprobs, response_mask):
        kl = kl_penalty(old_logprobs, ref_logprobs, self.kl_estimator) * response_mask
        if self.kl_in_reward:
            scores = scores - self.kl_coef * kl.sum(-1)
        advantages, _ = self.estimator(scores, response_mask, self.group_size, self.eps, self.norm_by_std)
        return kl, advantages
