"""A PPO rollout batch: generate, score once, turn scores into advantages.

    prompts ─► actor.generate ─► [prompt | response] ─► ScoringPass (one graph: reference, critic,
    reward model, and the actor unless the sampler's log-probs are log π_old) ─► AdvantagePass
    (one graph: KL, per-token rewards, GAE, whitening)

Positions: a row is ``P`` prompt columns (left-padded) then ``N`` response columns. The log-prob of
response token ``t`` comes from the logits at column ``P − 1 + t``, and so does the value of the state
that emits it; :func:`response_slice` picks those ``N`` columns out of a ``[B, P + N − 1]`` tensor.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from mindspore import ops

from .. import runtime
from ..algos import compute_gae, kl_penalty, masked_moments, token_level_rewards, whiten_from_moments
from ..nn.graph import GraphCell


@dataclasses.dataclass
class Experience:
    """One rollout batch, numpy on the host between compiled passes. B rows, P prompt + N response columns."""

    input_ids: np.ndarray  # [B, P+N] int32: left-padded prompt, then response (pad after EOS)
    attention_mask: np.ndarray  # [B, P+N] int32
    response_mask: np.ndarray  # [B, N] float32: 1 on response tokens up to and including EOS
    old_logprobs: np.ndarray  # [B, N] log π_old(y_t): the sampler's, or the scoring pass's actor forward
    ref_logprobs: np.ndarray  # [B, N] log π_ref(y_t)
    values: np.ndarray  # [B, N] V(s_t) from the critic at rollout time
    scores: np.ndarray  # [B] reward-model score after normalisation, clipping and the EOS penalty
    raw_scores: np.ndarray  # [B] reward-model score as it came out of the model
    kl: np.ndarray  # [B, N] per-token KL estimate against the reference
    rewards: np.ndarray  # [B, N] −β·kl_t, plus the score on the last token
    advantages: np.ndarray  # [B, N] GAE advantages (whitened if configured)
    returns: np.ndarray  # [B, N] advantages + values (before whitening): the critic's targets
    rm_scores: np.ndarray  # [B] the reward model's score (= raw_scores unless reward functions replace it)

    def __len__(self) -> int:
        return len(self.input_ids)

    def rows(self, idx) -> "Experience":
        return Experience(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def response_slice(per_position, n: int, total_len: int):
    """Columns P−1 … P+N−2 of a ``[B, P+N−1]`` (or longer) tensor: the ones that predict/score response tokens."""
    start = total_len - 1 - n
    return per_position[:, start : start + n]


class ScoringPass(GraphCell):
    """construct(input_ids, attention_mask, last_index) →
    (old_logprobs [B,N], ref_logprobs [B,N], values [B,N], raw_scores [B]).

    Built with ``actor=None`` it skips the actor's forward and returns (ref_logprobs, values, raw_scores): the
    sampler's own log-probs are then log π_old (see ``RolloutConfig.reuses_generation_logprobs``). The policies
    put their LM head on the N response positions only (:meth:`~mindrlhf.roles.Policy.response_logprobs`).
    """

    def __init__(self, actor, reference, critic, reward_model, response_len: int):
        super().__init__(auto_prefix=False)
        self.with_actor = actor is not None
        if self.with_actor:
            self.actor = actor
        self.reference, self.critic, self.reward_model = reference, critic, reward_model
        self.n = response_len

    def construct(self, input_ids, attention_mask, last_index):
        ref_logprobs, _ = self.reference.response_logprobs(input_ids, attention_mask, self.n)
        values = response_slice(self.critic(input_ids, attention_mask), self.n, input_ids.shape[1])
        scores = self.reward_model(input_ids, attention_mask, last_index)
        if not self.with_actor:
            return ref_logprobs, values, scores
        old_logprobs, _ = self.actor.response_logprobs(input_ids, attention_mask, self.n)
        return old_logprobs, ref_logprobs, values, scores


class AdvantagePass(GraphCell):
    """construct(old_logprobs, ref_logprobs, values, scores, response_mask, kl_coef) → (kl, rewards, advantages, returns).

    Whitening uses moments summed over ranks, so every rank whitens with the global mean and variance.
    """

    def __init__(self, kl_estimator: str, gamma: float, lam: float, whiten: bool):
        super().__init__(auto_prefix=False)
        self.kl_estimator, self.gamma, self.lam, self.whiten = kl_estimator, gamma, lam, whiten
        self.all_reduce = ops.AllReduce() if runtime.current().distributed else None

    def construct(self, old_logprobs, ref_logprobs, values, scores, response_mask, kl_coef):
        kl = kl_penalty(old_logprobs, ref_logprobs, self.kl_estimator) * response_mask
        rewards = token_level_rewards(scores, kl, response_mask, kl_coef)
        advantages, returns = compute_gae(rewards, values, response_mask, self.gamma, self.lam)
        if self.whiten:
            total, total_sq, count = masked_moments(advantages, response_mask)
            if self.all_reduce is not None:
                total, total_sq, count = self.all_reduce(total), self.all_reduce(total_sq), self.all_reduce(count)
            advantages = whiten_from_moments(advantages, response_mask, total, total_sq, count)
        return kl, rewards, advantages, returns


def assemble(generation, response_mask_dtype=np.float32):
    """[prompt | response] ids and masks from a GenerationOutput; also each row's last real column."""
    ids = np.concatenate([generation.prompt_ids, generation.response_ids], axis=1).astype(np.int32)
    mask = np.concatenate([generation.prompt_mask, generation.response_mask], axis=1).astype(np.int32)
    p = generation.prompt_ids.shape[1]
    last_index = (p + generation.response_mask.sum(axis=1) - 1).astype(np.int32)
    return ids, mask, generation.response_mask.astype(response_mask_dtype), last_index


def explained_variance(values: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> float:
    """1 − Var(returns − values) / Var(returns) over valid tokens: 1 = a perfect critic, ≤ 0 = no better than a constant."""
    m = mask.astype(bool)
    var = np.var(returns[m])
    return float(1.0 - np.var(returns[m] - values[m]) / var) if var > 0 else float("nan")


def gather_experience(exp):
    """Every rank's rows of a rollout batch (an :class:`Experience`, or any dataclass of arrays with one row per
    sample, such as GRPO's), concatenated in rank order (the global batch), on every rank.

    The arrays travel in one all-gather per dtype (rows flattened side by side), not one per field.
    """
    fields = [f.name for f in dataclasses.fields(exp)]
    arrays = {name: getattr(exp, name) for name in fields}
    gathered = {}
    for dtype in sorted({a.dtype.str for a in arrays.values()}):
        names = [n for n in fields if arrays[n].dtype.str == dtype]
        flat = [arrays[n].reshape(len(exp), -1) for n in names]
        rows = runtime.all_gather(np.concatenate(flat, axis=1))
        offsets = np.cumsum([0] + [f.shape[1] for f in flat])
        for n, lo, hi in zip(names, offsets[:-1], offsets[1:]):
            gathered[n] = rows[:, lo:hi].reshape((len(rows),) + arrays[n].shape[1:])
    return type(exp)(**gathered)
