"""Held-out evaluation of policies: responses, reward-model score, KL to the reference, labeler score, win rate.

Every policy answers the same held-out prompts with the same decoding. For each answer we record

- the reward model's score r(x, y) (what PPO optimised),
- KL to the reference, Σ_t log π(y_t) − log π_ref(y_t) over the answer (how far the policy moved),
- for the built-in task, the hidden labeler's score (never seen by training: the honest judge),

and a policy's win rate against a baseline is the fraction of prompts where its labeler score is
higher, ties counting one half.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn

from .config import field
from .data.tokenizer import Tokenizer
from .nn import CausalLM
from .nn.generate import GenerationConfig, Generator
from .roles import Policy
from .trainers.experience import assemble, response_slice


@dataclasses.dataclass
class EvalConfig:
    max_prompts: int = field(200, "held-out prompts evaluated (0 = all)")
    max_new_tokens: int = field(48, "answer length limit")
    do_sample: bool = field(False, "sample (with temperature) instead of greedy decoding")
    temperature: float = field(1.0, "sampling temperature when do_sample")
    batch_size: int = field(32, "prompts per generation batch")
    samples_in_report: int = field(8, "answers shown side by side in the report")


class _SequenceLogprob(nn.Cell):
    """Σ_t log π(y_t) over the response of each row: construct(ids, mask, response_mask) → [B]."""

    def __init__(self, policy: Policy, response_len: int):
        super().__init__(auto_prefix=False)
        self.policy, self.n = policy, response_len

    def construct(self, input_ids, attention_mask, response_mask):
        logprobs, _ = self.policy(input_ids, attention_mask)
        return (response_slice(logprobs, self.n, input_ids.shape[1]) * response_mask).sum(-1)


@dataclasses.dataclass
class PolicyAnswers:
    name: str
    prompts: list  # prompt texts
    texts: list  # one answer per prompt
    rm_scores: np.ndarray  # [n_prompts]
    kl_to_ref: np.ndarray  # [n_prompts]
    labeler_scores: Optional[np.ndarray] = None  # [n_prompts] (built-in task only)

    def summary(self) -> dict:
        out = {"rm_score": float(self.rm_scores.mean()), "kl_to_ref": float(self.kl_to_ref.mean()),
               "answer_words": float(np.mean([len(t.split()) for t in self.texts]))}
        if self.labeler_scores is not None:
            out["labeler_score"] = float(self.labeler_scores.mean())
        return out


def answer(policy_dir: str, reference: Policy, reward_model, tokenizer: Tokenizer, prompts: Sequence,
           cfg: EvalConfig, labeler=None, name: str = "", seed: int = 0) -> PolicyAnswers:
    """Generate answers with the policy in ``policy_dir``; score them with the reward model, the reference and the labeler."""
    lm = CausalLM.from_pretrained(policy_dir)
    generator, n = Generator(lm), cfg.max_new_tokens
    own, ref = _SequenceLogprob(Policy(lm), n), _SequenceLogprob(reference, n)
    texts, rm, kl = [], [], []
    for start in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[start : start + cfg.batch_size]
        gen = generator.generate([p.input_ids for p in chunk], GenerationConfig(
            max_new_tokens=n, do_sample=cfg.do_sample, temperature=cfg.temperature,
            eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, seed=seed + start))
        ids, mask, response_mask, last = assemble(gen)
        args = (ms.Tensor(ids), ms.Tensor(mask))
        rm.append(reward_model(*args, ms.Tensor(last)).asnumpy())
        kl.append(own(*args, ms.Tensor(response_mask)).asnumpy() - ref(*args, ms.Tensor(response_mask)).asnumpy())
        texts += [tokenizer.decode(r[m > 0]).strip() for r, m in zip(gen.response_ids, gen.response_mask)]
    labels = None
    if labeler is not None:
        labels = np.array([labeler.score(p.text, t) for p, t in zip(prompts, texts)], np.float64)
    return PolicyAnswers(name or policy_dir, [p.text for p in prompts], texts, np.concatenate(rm), np.concatenate(kl), labels)


def win_rate(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """P(candidate beats baseline) per prompt, ties counting ½."""
    return float(np.mean((candidate > baseline) + 0.5 * (candidate == baseline)))


def compare(policies: dict, reference_dir: str, reward_model, prompts: Sequence, cfg: EvalConfig,
            labeler=None, baseline: str = "") -> tuple[dict, list]:
    """Answer ``prompts`` with each policy (name → folder); return (summary per policy, answers per policy)."""
    tokenizer = Tokenizer.load(reference_dir)
    reference = Policy(CausalLM.from_pretrained(reference_dir))
    prompts = list(prompts)[: cfg.max_prompts or None]
    answers = [answer(d, reference, reward_model, tokenizer, prompts, cfg, labeler, name)
               for name, d in policies.items()]
    summary = {a.name: a.summary() for a in answers}
    base = next((a for a in answers if a.name == baseline), None)
    if base is not None and labeler is not None:
        for a in answers:
            if a is not base:
                summary[a.name][f"win_rate_vs_{base.name}"] = win_rate(a.labeler_scores, base.labeler_scores)
    return summary, answers
