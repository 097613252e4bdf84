"""Held-out evaluation of policies: responses, reward-model score, KL to the reference, judge score, win rate.

Every policy answers the same held-out prompts with the same decoding. For each answer we record

- the reward model's score r(x, y) (what PPO optimised),
- KL to the reference, Σ_t log π(y_t) − log π_ref(y_t) over the answer (how far the policy moved),
- when the task has a judge (:mod:`mindrlhf.tasks`), its score (never seen by training: the honest
  verdict; the built-in task's judge is its hidden labeler without noise),

and a policy's win rate against a baseline is the fraction of prompts where its judge score is
higher, ties counting one half, reported with a bootstrap interval over the prompts (a few dozen
held-out prompts leave a win rate uncertain by about ±0.1). With a judge at hand the reward model itself is
judged too (:func:`reward_model_agreement`): on the evaluated answers, how often it orders two answers to the
same prompt as the judge does. The trainer's held-out accuracy is on noisy rankings of the policies that
made its training data; this is on the answers of the policies being compared.

Besides trained policies, :func:`compare` takes :class:`BestOfN` specs: best-of-n sampling from a policy
with the reward model as the selector, the baseline every RLHF comparison needs (Stiennon et al. 2020).
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence, Union

import mindspore as ms
import numpy as np

from .config import field, require
from .data.tokenizer import Tokenizer
from .generation import generate_batches, generation_config, response_texts
from .nn import CausalLM
from .nn.generate import Generator
from .nn.graph import GraphCell
from .nn.hf import load_hf_folder
from .plugins import prompt_columns
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


class _SequenceLogprob(GraphCell):
    """Σ_t log π(y_t) over the response of each row: construct(ids, mask, response_mask) → [B]."""

    def __init__(self, policy: Policy, response_len: int):
        super().__init__(auto_prefix=False)
        self.policy, self.n = policy, response_len

    def construct(self, input_ids, attention_mask, response_mask):
        logprobs, _ = self.policy.response_logprobs(input_ids, attention_mask, self.n)
        return (logprobs * response_mask).sum(-1)


@dataclasses.dataclass(frozen=True)
class BestOfN:
    """A policy for :func:`compare`: ``n`` answers per prompt sampled from the policy folder ``policy`` at the
    evaluation's temperature, and the one the reward model scores highest kept. It samples under every
    decoding: its answers are drawn once and stand in each decoding's table. Its KL to the reference is
    the analytic log n − (n−1)/n of best-of-n from the reference (Stiennon et al. 2020; an upper bound,
    Beirami et al. 2024), exact only when ``policy`` is the reference."""

    policy: str
    n: int

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"BestOfN: n={self.n}; expected >= 1 answers per prompt")

    def kl_to_ref(self) -> float:
        return math.log(self.n) - (self.n - 1) / self.n


@dataclasses.dataclass
class PolicyAnswers:
    name: str
    prompts: list  # prompt texts
    texts: list  # one answer per prompt
    rm_scores: np.ndarray  # [n_prompts]
    kl_to_ref: np.ndarray  # [n_prompts]
    judge_scores: Optional[np.ndarray] = None  # [n_prompts], float64 (tasks with a judge)
    chosen_by_rm: bool = False  # the reward model picked these answers (best-of-n)

    def summary(self) -> dict:
        out = {"rm_score": float(self.rm_scores.mean()), "kl_to_ref": float(self.kl_to_ref.mean()),
               "answer_words": float(np.mean([len(t.split()) for t in self.texts]))}
        if self.judge_scores is not None:
            out["judge_score"] = float(self.judge_scores.mean())
        return out


class Evaluator:
    """Compiled generation and scoring passes built once; each policy's weights are loaded into the same Cells.
    ``judge(prompts, responses, columns) -> float64 [n]`` (:func:`mindrlhf.tasks.load_judge`) or None."""

    def __init__(self, reference_dir: str, reward_model, cfg: EvalConfig, judge=None):
        self.cfg, self.reward_model, self.judge = cfg, reward_model, judge
        self.tokenizer = Tokenizer.load(reference_dir)
        self.lm = CausalLM.from_pretrained(reference_dir)
        self.generator = Generator(self.lm, prompt_bucket=cfg.prompt_bucket)
        self.own = _SequenceLogprob(Policy(self.lm), cfg.max_new_tokens)
        self.ref = _SequenceLogprob(Policy(CausalLM.from_pretrained(reference_dir)), cfg.max_new_tokens)

    def answer(self, policy_dir: str, prompts: Sequence, decoding: str, name: str = "", seed: int = 0) -> PolicyAnswers:
        """Answers of the policy in ``policy_dir``, scored by the reward model, the reference and the judge.
        The batch of prompts ``i ..`` samples with seed ``seed + i``."""
        self._load(policy_dir)
        config = generation_config(self.tokenizer, self.cfg.max_new_tokens, do_sample=decoding == "sample",
                                   temperature=self.cfg.temperature, seed=seed)
        texts, rm, kl = self._generate(prompts, config, self.cfg.batch_size)
        return PolicyAnswers(name or policy_dir, [p.text for p in prompts], texts, rm, kl,
                             self._verdicts(prompts, texts))

    def best_of_n(self, spec: BestOfN, prompts: Sequence, name: str = "", seed: int = 0) -> PolicyAnswers:
        """:class:`BestOfN`'s answers: ``spec.n`` samples per prompt (calls of ``batch_size // n`` prompts, call
        ``i`` seeded ``seed + i · prompts per call``), the reward model's favourite kept (the first on a tie)."""
        self._load(spec.policy)
        config = generation_config(self.tokenizer, self.cfg.max_new_tokens, do_sample=True,
                                   temperature=self.cfg.temperature, seed=seed)
        texts, rm, _ = self._generate(prompts, config, max(1, self.cfg.batch_size // spec.n), spec.n)
        best = np.argmax(rm.reshape(len(prompts), spec.n), axis=1) + spec.n * np.arange(len(prompts))
        texts = [texts[i] for i in best]
        return PolicyAnswers(name or f"best_of_{spec.n}", [p.text for p in prompts], texts, rm[best],
                             np.full(len(prompts), spec.kl_to_ref()), self._verdicts(prompts, texts), chosen_by_rm=True)

    def _load(self, policy_dir: str) -> None:
        _, tensors = load_hf_folder(policy_dir)
        self.lm.assign_weights(tensors, source=policy_dir)

    def _generate(self, prompts: Sequence, config, batch_prompts: int, samples: int = 1) -> tuple:
        """(texts, reward-model scores, KL to the reference) per answer; prompt p's ``samples`` answers are rows
        p·samples .. p·samples + samples − 1. The KL pass runs only for one answer per prompt (else None)."""
        texts, rm, kl = [], [], []
        for gen in generate_batches(self.generator, [p.input_ids for p in prompts], config, batch_prompts,
                                    samples_per_prompt=samples, seed_stride=batch_prompts):
            ids, mask, response_mask, last = assemble(gen)
            args = (ms.Tensor(ids), ms.Tensor(mask))
            rm.append(self.reward_model(*args, ms.Tensor(last)).asnumpy())
            if samples == 1:
                own, ref = self.own(*args, ms.Tensor(response_mask)), self.ref(*args, ms.Tensor(response_mask))
                kl.append(own.asnumpy() - ref.asnumpy())
            texts += [t.strip() for t in response_texts(self.tokenizer, gen)]
        return texts, np.concatenate(rm), np.concatenate(kl) if kl else None

    def _verdicts(self, prompts: Sequence, texts: list) -> Optional[np.ndarray]:
        if self.judge is None:
            return None
        return self.judge([p.text for p in prompts], texts, prompt_columns([p.meta for p in prompts]))


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


def bootstrap_interval(values: np.ndarray, level: float = 0.95, resamples: int = 4000, seed: int = 0,
                       groups: Optional[Sequence] = None) -> tuple:
    """Percentile bootstrap interval of the mean of per-prompt ``values``: the prompts are resampled with
    replacement ``resamples`` times (a fixed seed, so a report is reproducible). With paired values (one
    per prompt, e.g. candidate minus baseline) it says how far the held-out figure could move on another
    draw of prompts of the same size.

    ``groups`` (one label per value, e.g. the prompt text) resamples the distinct labels with all their
    rows instead (a cluster bootstrap): rows that repeat one prompt are not independent draws (greedy
    answers to one text are identical), and resampling them one by one would make the interval too narrow.
    With every label distinct it is the row bootstrap, draw for draw."""
    values = np.asarray(values, np.float64)
    labels = range(len(values)) if groups is None else groups
    index: dict = {}
    cluster = np.array([index.setdefault(g, len(index)) for g in labels], np.int64)
    sums = np.bincount(cluster, weights=values, minlength=len(index))
    counts = np.bincount(cluster, minlength=len(index)).astype(np.float64)
    rng = np.random.Generator(np.random.PCG64(seed))
    picks = rng.integers(0, len(index), size=(resamples, len(index)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1.0 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def head_to_head(candidate: np.ndarray, baseline: np.ndarray, groups: Optional[Sequence] = None) -> dict:
    """Per-prompt comparison of two policies' judge scores: win rates (:func:`win_rate`,
    :func:`decisive_win_rate`), ties, the wins/losses/ties counts, the mean score gain, and bootstrap
    intervals (:func:`bootstrap_interval`, over the distinct ``groups`` when given) of the win rate and of
    the gain; ``prompts`` counts the distinct prompts the intervals resample."""
    x, y = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
    wins, losses = int(np.sum(x > y)), int(np.sum(x < y))
    return {"win_rate": win_rate(x, y), "decisive_win_rate": decisive_win_rate(x, y), "ties": float(np.mean(x == y)),
            "wins_losses_ties": [wins, losses, len(x) - wins - losses],
            "prompts": len(x) if groups is None else len(set(groups)),
            "win_rate_interval": list(bootstrap_interval(_prompt_wins(x, y), groups=groups)),
            "judge_gain": float(np.mean(x - y)), "judge_gain_interval": list(bootstrap_interval(x - y, groups=groups))}


def reward_model_agreement(group: Sequence[PolicyAnswers]) -> dict:
    """How well the reward model agrees with the judge on the answers of ``group`` (same prompts).

    ``pair_accuracy``: over every prompt and every two policies whose answers the judge scores
    differently, the fraction the reward model orders the same way (a reward-model tie counts ½);
    ``pairs``: how many such pairs; ``correlation``: Pearson's r between the two scores over all answers.
    """
    rm = np.stack([a.rm_scores for a in group])  # [policies, prompts]
    judged = np.stack([a.judge_scores for a in group])
    hits, pairs = 0.0, 0
    for i in range(len(group)):
        for j in range(i + 1, len(group)):
            differ = judged[i] != judged[j]
            agree = np.sign(rm[i] - rm[j]) * np.sign(judged[i] - judged[j])
            hits += float(np.sum(((agree > 0) + 0.5 * (agree == 0))[differ]))
            pairs += int(differ.sum())
    flat_rm, flat_judged = rm.ravel(), judged.ravel()
    spread = flat_rm.std() > 0 and flat_judged.std() > 0
    return {"pair_accuracy": hits / pairs if pairs else float("nan"), "pairs": pairs,
            "correlation": float(np.corrcoef(flat_rm, flat_judged)[0, 1]) if spread else float("nan")}


def compare(policies: dict, reference_dir: str, reward_model, prompts: Sequence, cfg: EvalConfig,
            judge=None, baseline: str = "") -> tuple[dict, dict]:
    """Answer ``prompts`` with each policy (name → folder, or a :class:`BestOfN` spec) under each decoding.

    Returns (summary[decoding][policy] → metrics, answers[decoding] → list of PolicyAnswers); with a
    judge, the :func:`head_to_head` figures against ``baseline`` and
    ``summary["reward_model_vs_judge"][decoding]`` (:func:`reward_model_agreement`, on the answers of the
    policies the reward model did not pick: its own picks would flatter it).
    """
    evaluator = Evaluator(reference_dir, reward_model, cfg, judge)
    prompts = list(prompts)[: cfg.max_prompts or None]
    summary, answers, picked = {}, {}, {}

    def answer(name: str, policy: Union[str, BestOfN], decoding: str) -> PolicyAnswers:
        if not isinstance(policy, BestOfN):
            return evaluator.answer(policy, prompts, decoding, name)
        if name not in picked:  # sampled whatever the decoding: drawn once
            picked[name] = evaluator.best_of_n(policy, prompts, name)
        return picked[name]

    texts = [p.text for p in prompts]  # intervals resample distinct prompts
    for decoding in cfg.decodings:
        answers[decoding] = [answer(name, policy, decoding) for name, policy in policies.items()]
        summary[decoding] = {a.name: a.summary() for a in answers[decoding]}
        base = next((a for a in answers[decoding] if a.name == baseline), None)
        if base is not None and judge is not None:
            for a in answers[decoding]:
                if a is not base:
                    for key, value in head_to_head(a.judge_scores, base.judge_scores, texts).items():
                        summary[decoding][a.name][f"{key}_vs_{base.name}"] = value
        if judge is not None:
            summary.setdefault("reward_model_vs_judge", {})[decoding] = reward_model_agreement(
                [a for a in answers[decoding] if not a.chosen_by_rm])
    return summary, answers
