"""Held-out evaluation of policies: responses, reward-model score, KL to the reference, labeler score, win rate.

Every policy answers the same held-out prompts with the same decoding. For each answer we record

- the reward model's score r(x, y) (what PPO optimised),
- KL to the reference, Σ_t log π(y_t) − log π_ref(y_t) over the answer (how far the policy moved),
- for the built-in task, the hidden labeler's score (never seen by training: the honest judge),

and a policy's win rate against a baseline is the fraction of prompts where its labeler score is
higher, ties counting one half, reported with a bootstrap interval over the prompts (a few dozen
held-out prompts leave a win rate uncertain by about ±0.1). With the labeler at hand the reward model itself is judged too
(:func:`reward_model_agreement`): on the evaluated answers, how often it orders two answers to the same
prompt as the noise-free labeler does. The trainer's held-out accuracy is on noisy rankings of the
policies that made its training data; this is on the answers of the policies being compared.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn

from .config import field, require
from .data.tokenizer import Tokenizer
from .generation import generate_batches, generation_config, response_texts
from .nn import CausalLM
from .nn.generate import Generator
from .nn.hf import load_hf_folder
from .roles import Policy
from .trainers.experience import assemble


PROMPT_BUCKET_HELP = ("prompts are left-padded to a multiple of this; each width compiles its own generation graph, "
                      "which keeps its memory")


@dataclasses.dataclass
class EvalConfig:
    max_prompts: int = field(200, "held-out prompts evaluated (0 = all)")
    max_new_tokens: int = field(48, "answer length limit")
    decodings: List[str] = field(["greedy", "sample"], "greedy and/or sample (temperature sampling, as in rollouts)")
    temperature: float = field(1.0, "sampling temperature of the 'sample' decoding")
    batch_size: int = field(40, "prompts per generation batch")
    prompt_bucket: int = field(16, PROMPT_BUCKET_HELP)
    samples_in_report: int = field(8, "answers shown side by side in the report")

    def validate(self):
        require(set(self.decodings) <= {"greedy", "sample"} and self.decodings, "decodings",
                "expected a non-empty list of greedy and/or sample")
        require(self.max_prompts >= 0, "max_prompts", f"must be >= 0 (0 = all), got {self.max_prompts}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.prompt_bucket >= 1, "prompt_bucket", f"must be >= 1, got {self.prompt_bucket}")
        require(self.samples_in_report >= 0, "samples_in_report", f"must be >= 0, got {self.samples_in_report}")


class _SequenceLogprob(nn.Cell):
    """Σ_t log π(y_t) over the response of each row: construct(ids, mask, response_mask) → [B]."""

    def __init__(self, policy: Policy, response_len: int):
        super().__init__(auto_prefix=False)
        self.policy, self.n = policy, response_len

    def construct(self, input_ids, attention_mask, response_mask):
        logprobs, _ = self.policy.response_logprobs_entropy(input_ids, attention_mask, self.n)
        return (logprobs * response_mask).sum(-1)


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


class Evaluator:
    """Compiled generation and scoring passes built once; each policy's weights are loaded into the same Cells."""

    def __init__(self, reference_dir: str, reward_model, cfg: EvalConfig, labeler=None):
        self.cfg, self.reward_model, self.labeler = cfg, reward_model, labeler
        self.tokenizer = Tokenizer.load(reference_dir)
        self.lm = CausalLM.from_pretrained(reference_dir)
        self.generator = Generator(self.lm, prompt_bucket=cfg.prompt_bucket)
        self.own = _SequenceLogprob(Policy(self.lm), cfg.max_new_tokens)
        self.ref = _SequenceLogprob(Policy(CausalLM.from_pretrained(reference_dir)), cfg.max_new_tokens)

    def answer(self, policy_dir: str, prompts: Sequence, decoding: str, name: str = "", seed: int = 0) -> PolicyAnswers:
        """Answers of the policy in ``policy_dir``, scored by the reward model, the reference and the labeler.
        The batch of prompts ``i ..`` samples with seed ``seed + i``."""
        _, tensors = load_hf_folder(policy_dir)
        self.lm.assign_weights(tensors, source=policy_dir)
        cfg, tok = self.cfg, self.tokenizer
        config = generation_config(tok, cfg.max_new_tokens, do_sample=decoding == "sample",
                                   temperature=cfg.temperature, seed=seed)
        texts, rm, kl = [], [], []
        for gen in generate_batches(self.generator, [p.input_ids for p in prompts], config, cfg.batch_size,
                                    seed_stride=cfg.batch_size):
            ids, mask, response_mask, last = assemble(gen)
            args = (ms.Tensor(ids), ms.Tensor(mask))
            rm.append(self.reward_model(*args, ms.Tensor(last)).asnumpy())
            own, ref = self.own(*args, ms.Tensor(response_mask)), self.ref(*args, ms.Tensor(response_mask))
            kl.append(own.asnumpy() - ref.asnumpy())
            texts += [t.strip() for t in response_texts(tok, gen)]
        labels = None
        if self.labeler is not None:
            labels = np.array([self.labeler.score(p.text, t) for p, t in zip(prompts, texts)], np.float64)
        return PolicyAnswers(name or policy_dir, [p.text for p in prompts], texts, np.concatenate(rm),
                             np.concatenate(kl), labels)


def _prompt_wins(candidate: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per prompt: 1 where the candidate scores higher, ½ on a tie, 0 where it scores lower."""
    return (candidate > baseline) + 0.5 * (candidate == baseline)


def win_rate(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """P(candidate beats baseline) per prompt, ties counting ½."""
    return float(np.mean(_prompt_wins(candidate, baseline)))


def decisive_win_rate(candidate: np.ndarray, baseline: np.ndarray) -> float:
    """wins / (wins + losses): the win rate among prompts where the two answers score differently
    (NaN when every prompt is a tie). Reported beside :func:`win_rate` because on a task where both
    policies often reach the best score, ties pull the ½-counted rate toward 0.5."""
    wins, losses = int(np.sum(candidate > baseline)), int(np.sum(candidate < baseline))
    return wins / (wins + losses) if wins + losses else float("nan")


def bootstrap_interval(values: np.ndarray, level: float = 0.95, resamples: int = 4000, seed: int = 0) -> tuple:
    """Percentile bootstrap interval of the mean of per-prompt ``values``: the prompts are resampled with
    replacement ``resamples`` times (a fixed seed, so a report is reproducible). With paired values (one
    per prompt, e.g. candidate minus baseline) it says how far the held-out figure could move on another
    draw of prompts of the same size."""
    values = np.asarray(values, np.float64)
    rng = np.random.Generator(np.random.PCG64(seed))
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1.0 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def head_to_head(candidate: np.ndarray, baseline: np.ndarray) -> dict:
    """Per-prompt comparison of two policies' labeler scores: win rates (:func:`win_rate`,
    :func:`decisive_win_rate`), ties, the wins/losses/ties counts, the mean score gain, and bootstrap
    intervals (:func:`bootstrap_interval`) of the win rate and of the gain."""
    x, y = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    wins, losses = int(np.sum(x > y)), int(np.sum(x < y))
    return {"win_rate": win_rate(x, y), "decisive_win_rate": decisive_win_rate(x, y), "ties": float(np.mean(x == y)),
            "wins_losses_ties": [wins, losses, len(x) - wins - losses],
            "win_rate_interval": list(bootstrap_interval(_prompt_wins(x, y))),
            "labeler_gain": float(np.mean(x - y)), "labeler_gain_interval": list(bootstrap_interval(x - y))}


def reward_model_agreement(group: Sequence[PolicyAnswers]) -> dict:
    """How well the reward model agrees with the labeler on the answers of ``group`` (same prompts).

    ``pair_accuracy``: over every prompt and every two policies whose answers the labeler scores
    differently, the fraction the reward model orders the same way (a reward-model tie counts ½);
    ``pairs``: how many such pairs; ``correlation``: Pearson's r between the two scores over all answers.
    """
    rm = np.stack([a.rm_scores for a in group])  # [policies, prompts]
    lab = np.stack([a.labeler_scores for a in group])
    hits, pairs = 0.0, 0
    for i in range(len(group)):
        for j in range(i + 1, len(group)):
            differ = lab[i] != lab[j]
            agree = np.sign(rm[i] - rm[j]) * np.sign(lab[i] - lab[j])
            hits += float(np.sum(((agree > 0) + 0.5 * (agree == 0))[differ]))
            pairs += int(differ.sum())
    flat_rm, flat_lab = rm.ravel(), lab.ravel()
    spread = flat_rm.std() > 0 and flat_lab.std() > 0
    return {"pair_accuracy": hits / pairs if pairs else float("nan"), "pairs": pairs,
            "correlation": float(np.corrcoef(flat_rm, flat_lab)[0, 1]) if spread else float("nan")}


def compare(policies: dict, reference_dir: str, reward_model, prompts: Sequence, cfg: EvalConfig,
            labeler=None, baseline: str = "") -> tuple[dict, dict]:
    """Answer ``prompts`` with each policy (name → folder) under each decoding.

    Returns (summary[decoding][policy] → metrics, answers[decoding] → list of PolicyAnswers); with a
    labeler, ``summary["reward_model_vs_labeler"][decoding]`` holds :func:`reward_model_agreement`.
    """
    evaluator = Evaluator(reference_dir, reward_model, cfg, labeler)
    prompts = list(prompts)[: cfg.max_prompts or None]
    summary, answers = {}, {}
    for decoding in cfg.decodings:
        answers[decoding] = [evaluator.answer(d, prompts, decoding, name) for name, d in policies.items()]
        summary[decoding] = {a.name: a.summary() for a in answers[decoding]}
        base = next((a for a in answers[decoding] if a.name == baseline), None)
        if base is not None and labeler is not None:
            for a in answers[decoding]:
                if a is not base:
                    for key, value in head_to_head(a.labeler_scores, base.labeler_scores).items():
                        summary[decoding][a.name][f"{key}_vs_{base.name}"] = value
        if labeler is not None:
            summary.setdefault("reward_model_vs_labeler", {})[decoding] = reward_model_agreement(answers[decoding])
    return summary, answers
