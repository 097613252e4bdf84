"""Iterated (online) DPO: the rounds after the first train on the policy's own answers, ranked.

Round 1 trains on ``data.train``. Each round r >= 2 then, as in iterative DPO (Xiong et al. 2024) and the
iterated online data collection of Bai et al. (2022):

    1. takes ``iterate.prompts_per_round`` prompts of ``iterate.prompts`` (slice r − 2 of a seeded order
       of the file, wrapping around, so each round sees new prompts while there are any);
    2. samples ``k`` answers to each from the current policy (the compiled generator; call b of the round
       draws with seed ``runtime.seed + 10000·r + b``);
    3. ranks them with the labeler (``module:function`` or ``file.py:function``, the contract of
       :mod:`mindrlhf.tasks`; its rng seeded with ``[runtime.seed, 1, r]``) or by a reward model's score,
       and writes ``out_dir/round{r}_rankings.jsonl`` (atomically);
    4. expands the rankings to pairs (``data.pairs``) whose reference log-probs the stage computes once,
       against the same reference as round 1, and trains on them from the current policy.

A resumed run reads a round's rankings file back instead of drawing again, so it trains on exactly what
the killed run drew. :class:`RoundPlan` says which optimizer steps belong to which round.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Callable, ClassVar, List, Optional, Tuple

import mindspore as ms
import numpy as np

from .. import runtime
from ..config import ConfigError, field, require
from ..data.batching import sft_batch
from ..data.encoding import encode_pair, encode_prompts, encode_rankings
from ..data.formats import Records, load_prompts, load_rankings, parse_ranking
from ..data.pairs import pair_indices, rankings_to_pairs
from ..generation import generation_config
from ..io import write_jsonl
from ..nn.generate import Generator
from ..plugins import load_function
from ..roles import frozen
from ..tasks import make_rankings
from .artifacts import load_reward_model
from .rankings import sample_responses

RANKINGS_FILE = "round{r}_rankings.jsonl"


@dataclasses.dataclass
class IterateConfig:
    # What the rankings files of a run were drawn with: a resumed run reads them back.
    fixed_on_resume: ClassVar[tuple] = ("prompts", "prompts_per_round", "k", "labeler", "labeler_kwargs", "noise",
                                        "reward_model", "temperature", "top_p", "max_new_tokens")

    rounds: int = field(1, "DPO rounds; 1 = offline DPO on data.train. Each later round samples k answers per prompt "
                           "from the current policy, ranks them and trains on their pairs")
    prompts: str = field("", "prompts JSONL the later rounds sample; a line's other fields reach the labeler as "
                             "columns")
    prompts_per_round: int = field(0, "prompts a later round samples (a new slice of a seeded order of the file each "
                                      "round, wrapping around); 0 = all")
    k: int = field(4, "answers sampled per prompt and ranked")
    steps: int = field(0, "optimizer steps of each later round; 0 = one pass over the pairs a round can give "
                          "(prompts_per_round × pairs per ranking / train.batch_size)")
    labeler: str = field("", "module:function (or file.py:function) ranking the k answers: labeler(prompts, "
                             "responses_per_prompt, *, rng, noise, **columns) -> index lists, best first")
    labeler_kwargs: dict = field({}, "fixed keyword arguments of the labeler, e.g. {rubric: data/rubric.json}")
    noise: float = field(0.5, "handed to the labeler (the built-in one adds Gaussian noise of this std to each score)")
    reward_model: str = field("", "reward-model folder (`mindrlhf rm`) ranking the k answers by its score, in place "
                                  "of a labeler")
    temperature: float = field(1.0, "sampling temperature of the k answers")
    top_p: float = field(1.0, "nucleus mass of the sampling; 1 = off")
    max_new_tokens: int = field(48, "answer length limit")
    batch_prompts: int = field(16, "prompts per generation call (each brings k rows)")
    prompt_bucket: int = field(16, "prompts are left-padded to a multiple of this; each width compiles its own graph")

    def validate(self):
        require(self.rounds >= 1, "rounds", f"must be >= 1 (1 = offline DPO), got {self.rounds}")
        require(self.prompts_per_round >= 0, "prompts_per_round",
                f"must be >= 0 (0 = all), got {self.prompts_per_round}")
        require(self.k >= 2, "k", f"must be >= 2 (a ranking compares answers), got {self.k}")
        require(self.steps >= 0, "steps", f"must be >= 0 (0 = one pass over a round's pairs), got {self.steps}")
        require(self.noise >= 0, "noise", f"must be >= 0 (a standard deviation), got {self.noise}")
        require(self.temperature > 0, "temperature", f"must be > 0 (the answers are sampled), got {self.temperature}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.batch_prompts >= 1, "batch_prompts", f"must be >= 1, got {self.batch_prompts}")
        require(self.prompt_bucket >= 1, "prompt_bucket", f"must be >= 1, got {self.prompt_bucket}")
        require(not self.labeler_kwargs or bool(self.labeler), "labeler_kwargs", "given without a labeler")
        require(not (self.labeler and self.reward_model), "reward_model",
                f"{self.reward_model!r} and labeler {self.labeler!r}: the answers are ranked by one of them; set "
                "either")
        if self.rounds > 1:
            require(bool(self.prompts), "prompts", f"{self.rounds} rounds: the rounds after the first sample "
                                                   "answers to these prompts, e.g. iterate.prompts=prompts.jsonl")
            require(bool(self.labeler or self.reward_model), "labeler",
                    f"{self.rounds} rounds: the rounds after the first rank the policy's answers; set a labeler "
                    "(module:function or file.py:function) or iterate.reward_model (a reward-model folder)")


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    """The optimizer steps of each round, in order; step i of the run (0-based) is in round :meth:`round_of`."""

    steps: Tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.steps)

    @property
    def ends(self) -> Tuple[int, ...]:
        """The step count at the end of each round (the loop's ``done`` after its last step)."""
        return tuple(int(x) for x in np.cumsum(self.steps))

    def round_of(self, step: int) -> int:
        """The round (1-based) that 0-based step ``step`` belongs to."""
        return next((r for r, end in enumerate(self.ends, 1) if step < end), len(self.steps))


def plan_rounds(cfg: IterateConfig, first_steps: int, n_prompts: int, pairs_mode: str, batch_size: int) -> RoundPlan:
    """Round 1's ``first_steps``, then ``cfg.steps`` per later round, or one pass over the most pairs a round
    can give (prompts × pairs per ranking; fewer after dropped prompts and equal answers, cycled)."""
    per_round = cfg.prompts_per_round or n_prompts
    later = cfg.steps or max(1, per_round * len(pair_indices(cfg.k, pairs_mode)) // batch_size)
    return RoundPlan((first_steps,) + (later,) * (cfg.rounds - 1))


def round_prompts(n: int, per_round: int, r: int, seed: int) -> np.ndarray:
    """Indices of the ``per_round`` prompts (of ``n``) that round ``r`` >= 2 samples: slice r − 2 of a seeded
    permutation, wrapping around."""
    order = np.random.default_rng([seed, 2]).permutation(n)
    return order[(np.arange(per_round) + (r - 2) * per_round) % n]


def round_generation(cfg: IterateConfig, tokenizer, r: int, seed: int):
    """The GenerationConfig round ``r`` samples with (call b of the round draws with its seed + b)."""
    return generation_config(tokenizer, cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                             top_p=cfg.top_p, seed=seed + 10000 * r)


def remove_round_files(run_dir: str) -> None:
    """Remove the rankings and reference files of an earlier run's rounds (a fresh run draws its own)."""
    for path in glob.glob(os.path.join(run_dir, "round*_rankings.jsonl")) + \
            glob.glob(os.path.join(run_dir, "round*_reference_logps.npz")):
        os.remove(path)


def reward_model_ranker(reward_model, tokenizer, chat_template: bool, rows: int, pad_multiple: int) -> Callable:
    """A labeler (the contract of :mod:`mindrlhf.tasks`) that orders each prompt's answers by the reward
    model's score r(x, y), highest first (ties keep the sampling order); ``rng`` and ``noise`` go unused.
    Sequences are scored ``rows`` at a time (the last call filled with copies)."""
    frozen(reward_model).set_train(False)

    def rank(prompts, responses_per_prompt, *, rng, noise, **columns):
        sequences = [encode_pair(tokenizer, p, r, chat_template) for p, answers in zip(prompts, responses_per_prompt)
                     for r in answers]
        scores = np.zeros(len(sequences), np.float32)
        for start in range(0, len(sequences), rows):
            chunk = sequences[start : start + rows]
            real = len(chunk)
            b = sft_batch(chunk + [chunk[0]] * (rows - real), tokenizer.pad_id, pad_multiple)
            last = (b["attention_mask"].sum(axis=1) - 1).astype(np.int32)
            out = reward_model(ms.Tensor(b["input_ids"]), ms.Tensor(b["attention_mask"]), ms.Tensor(last))
            scores[start : start + real] = out.asnumpy()[:real]
        bounds = np.cumsum([0] + [len(answers) for answers in responses_per_prompt])
        return [[int(i) for i in np.argsort(-scores[a:b], kind="stable")] for a, b in zip(bounds[:-1], bounds[1:])]

    return rank


class RoundSampler:
    """The pairs of rounds >= 2: answers sampled from ``model`` (the policy in training) and ranked, the
    rankings written to ``run_dir`` (or read back there on resume), expanded to pairs."""

    def __init__(self, cfg: IterateConfig, model, tokenizer, data, run_dir: str, seed: int, resume: bool):
        """``data``: the stage's data section (max_length, pad_multiple, chat_template, pairs, skip_invalid)."""
        self.cfg, self.model, self.tokenizer, self.data = cfg, model, tokenizer, data
        self.run_dir, self.seed, self.resume = run_dir, seed, resume
        if cfg.labeler:
            self.spec, self.rank = cfg.labeler, load_function(cfg.labeler, "iterate.labeler", cfg.labeler_kwargs)
        else:
            if not os.path.isdir(cfg.reward_model):
                raise ConfigError(f"iterate.reward_model: {cfg.reward_model!r} is not a folder; give the model folder "
                                  "`mindrlhf rm` wrote (out_dir/model)")
            self.spec, self.rank = f"reward model {cfg.reward_model}", None  # loaded at the first draw
        room = min(data.max_length, model.config.max_position_embeddings) - cfg.max_new_tokens
        self.prompts = encode_prompts(load_prompts(cfg.prompts), tokenizer, room, skip_invalid=True,
                                      chat_template=data.chat_template)
        if self.prompts.skipped and runtime.current().is_main:
            print(f"[dpo] iterate.prompts: skipped {self.prompts.skipped} prompts longer than the {room} tokens "
                  f"data.max_length leaves after iterate.max_new_tokens={cfg.max_new_tokens}")
        self.per_round = cfg.prompts_per_round or len(self.prompts)
        if self.per_round > len(self.prompts):
            raise ConfigError(f"iterate.prompts_per_round: {self.per_round} is more than the {len(self.prompts)} "
                              f"prompts of {cfg.prompts}")
        self.generator: Optional[Generator] = None

    def path(self, r: int) -> str:
        return os.path.join(self.run_dir, RANKINGS_FILE.format(r=r))

    def pairs(self, r: int, resumed: bool, first_id: int, reference: Callable[[int, list], np.ndarray],
              min_pairs: int = 1):
        """(pairs, their sequences' reference log-probs) of round ``r``; pair ids start at ``first_id``.
        ``reference(r, sequences)`` gives the log-probs; ``resumed``: the run resumes inside round ``r``, so
        its rankings must be on disk (drawing them now would sample from a policy already trained on them).
        Fewer than ``min_pairs`` pairs (one batch) is an error."""
        records = self.rankings(r, resumed)
        encoded = encode_rankings(records, self.tokenizer, self.data.max_length, skip_invalid=True,
                                  chat_template=self.data.chat_template)
        sequences, pairs, same = rankings_to_pairs(encoded, self.data.pairs, first_id=first_id)
        if runtime.current().is_main:
            print(f"[dpo] round {r}: {len(encoded)} rankings → {len(pairs)} pairs"
                  + (f" ({encoded.skipped} rankings too long, {same} pairs of equal answers left out)"
                     if encoded.skipped or same else ""), flush=True)
        if len(pairs) < min_pairs:
            raise ValueError(f"round {r}: {len(pairs)} pairs, fewer than one batch of {min_pairs}; raise "
                             "iterate.prompts_per_round or iterate.k")
        return pairs, reference(r, sequences)

    def rankings(self, r: int, resumed: bool) -> Records:
        path = self.path(r)
        if self.resume and os.path.isfile(path):
            if runtime.current().is_main:
                print(f"[dpo] round {r}: reading the rankings drawn before the run was resumed, {path}", flush=True)
            return load_rankings(path)
        if resumed:
            raise FileNotFoundError(f"{path}: not found, but the checkpoint resumed from is in round {r}, whose "
                                    "answers were drawn from the policy at the round's start; resume from a "
                                    "checkpoint before the round, or start the run again")
        rankings = self.draw(r)
        if runtime.current().is_main:
            write_jsonl(path, rankings)
        return Records(parse_ranking(obj, f"{path}:{line}") for line, obj in enumerate(rankings, 1))

    def draw(self, r: int) -> List[dict]:
        """Round ``r``'s ranking records: k answers per prompt from the policy, ranked."""
        cfg = self.cfg
        prompts = [self.prompts[i] for i in round_prompts(len(self.prompts), self.per_round, r, self.seed)]
        if runtime.current().is_main:
            print(f"[dpo] round {r}: sampling {cfg.k} answers to each of {len(prompts)} prompts, ranked by "
                  f"{self.spec}", flush=True)
        if self.generator is None:
            self.generator = Generator(self.model, prompt_bucket=cfg.prompt_bucket)
        training = self.model.training
        self.model.set_train(False)  # LoRA dropout off while sampling
        try:
            responses = sample_responses(self.generator, self.tokenizer, prompts,
                                         round_generation(cfg, self.tokenizer, r, self.seed), cfg.batch_prompts, cfg.k)
        finally:
            self.model.set_train(training)
        if self.rank is None:
            self.rank = reward_model_ranker(load_reward_model(cfg.reward_model), self.tokenizer,
                                            self.data.chat_template, cfg.batch_prompts * cfg.k, self.data.pad_multiple)
        rankings = make_rankings([p.text for p in prompts], responses, self.rank, self.spec,
                                 np.random.default_rng([self.seed, 1, r]), cfg.noise, [p.meta for p in prompts])
        if not rankings:
            raise ValueError(f"round {r}: no prompt got two different non-empty answers of {cfg.k}; the policy's "
                             "samples carry no preference (raise iterate.temperature or iterate.k)")
        return rankings
