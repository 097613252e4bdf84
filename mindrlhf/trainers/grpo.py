"""Stage: GRPO and its family (Dr. GRPO, RLOO, REINFORCE++, DAPO, GSPO): critic-free RL on rewards computed
by code (``reward.functions``) and, optionally, a reward model (``reward.model``).

One iteration (Shao et al. 2024; Yu et al. 2025):

    1. rollout     each of B prompts is repeated G times inside one batch, so one call of the compiled
                   generator draws a group of G answers per prompt; log π_old is the sampler's (T = 1)
    2. score       one compiled pass for what the config needs: log π_ref, the reward model's score, log π_old
                   at T ≠ 1; the reward functions on the decoded text; score = Σ_k w_k·f_k (+ w·RM) (+ the
                   over-long penalty). DAPO's dynamic sampling drops groups whose scores are all equal and
                   draws more prompts until B groups carry a signal (at most ``max_extra_draws`` more draws)
    3. advantages  the group estimator (``algo.adv_estimator``); with the KL in the reward,
                   score − β·Σ_t KL_t first
    4. update      E epochs of shuffled mini-batches of answers: the policy loss (``algo.policy_loss``),
                   + β·KL(π ‖ π_ref) (k3) when the KL is in the loss, − the entropy bonus

No critic. The reference is a frozen copy of the policy, or with LoRA the actor's own base (adapters off),
or absent when ``algo.kl_coef`` is 0. Metrics follow TRL's names: reward, reward_std, rewards/NAME,
frac_reward_zero_std, completion_length, clipped_ratio, kl (per token), clip_ratio, entropy; and, as PPO
logs them, response_kl (the mean over answers of Σ_t KL_t; 0 without a reference), rm_score (the reward
model's raw score) and judge_score (the ``judge``'s, for the log only), which the report draws against
√KL (Gao et al. 2023).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn

from .. import runtime
from ..algos import agg_loss, get_policy_loss, kl_loss
from ..data.batching import bucket_length
from ..data.encoding import encode_prompts
from ..data.formats import load_prompts
from ..generation import generate_batches, generation_config, response_texts
from ..nn.generate import Generator
from ..nn.lora import TrainableParams
from ..plugins import call_scores, function_name, load_scorer
from ..roles import Policy, adapted_copy, frozen, load_lm
from .artifacts import export_model, load_reward_model, read_stats, resolve_tokenizer
from .experience import assemble, gather_experience
from .grpo_config import GRPOAlgoConfig, GRPOConfig
from .grpo_experience import GroupAdvantagePass, GroupBatch, GroupScoringPass, concat_groups
from .grpo_experience import overlong_penalty
from .loop import CadenceConfig, Stage, prepare_run_dir, run_loop
from .step import Updater
from .supervised import DataOrder


class GRPOActorLoss(nn.Cell):
    """(ids, mask, old_logprobs, ref_logprobs, advantages, response_mask, normalizer) →
    (loss, (pg_loss, kl_loss, entropy, clipfrac, approx_kl))."""

    def __init__(self, actor: Policy, algo: GRPOAlgoConfig):
        super().__init__(auto_prefix=False)
        self.actor, self.policy_loss = actor, get_policy_loss(algo.policy_loss)
        self.clip_low, self.clip_high, self.clip_c = algo.clip_range, algo.clip_range_high, algo.clip_c
        self.agg, self.entropy_coef, self.kl_estimator = algo.loss_agg_mode, algo.entropy_coef, algo.kl()
        self.kl_in_loss, self.kl_coef = algo.kl_in == "loss" and algo.kl_coef > 0, algo.kl_coef

    def construct(self, input_ids, attention_mask, old_logprobs, ref_logprobs, advantages, response_mask, normalizer):
        logprobs, entropy = self.actor.response_logprobs(input_ids, attention_mask, old_logprobs.shape[1])
        pg_loss, clipfrac, approx_kl = self.policy_loss(logprobs, old_logprobs, advantages, response_mask,
                                                        self.clip_low, 0.0, self.agg, normalizer, self.clip_high,
                                                        self.clip_c)
        entropy = agg_loss(entropy, response_mask, self.agg, normalizer)
        loss = pg_loss - self.entropy_coef * entropy
        kl = pg_loss * 0.0
        if self.kl_in_loss:
            kl = kl_loss(logprobs, ref_logprobs, response_mask, self.kl_estimator, self.agg, normalizer)
            loss = loss + self.kl_coef * kl
        return loss, (pg_loss, kl, entropy, clipfrac, approx_kl)


def group_roles(cfg: GRPOConfig, vocab: int) -> tuple[Policy, Optional[Policy]]:
    """(actor, reference or None). A LoRA actor adapts the reference's own weights when the reference is the
    policy; without a KL term (kl_coef = 0) no reference is loaded."""
    separate = bool(cfg.reference) and os.path.abspath(cfg.reference) != os.path.abspath(cfg.policy)
    if cfg.algo.kl_coef == 0:
        return Policy(load_lm(cfg.policy, vocab, lora=cfg.lora)), None
    reference_lm = load_lm(cfg.reference if separate else cfg.policy, vocab)
    if cfg.lora.enabled and not separate:
        actor_lm = adapted_copy(reference_lm, cfg.lora)
    else:
        actor_lm = load_lm(cfg.policy, vocab, lora=cfg.lora)
    return Policy(actor_lm), frozen(Policy(reference_lm))


def _columns(prompts, repeat: int) -> dict:
    """The prompts' other fields as columns, each prompt's values ``repeat`` times in a row."""
    return {k: [p.meta.get(k) for p in prompts for _ in range(repeat)]
            for k in sorted({k for p in prompts for k in p.meta})}


class GRPOTrainer(Stage):
    """The policy, its reference and reward terms, the compiled passes and the optimizer; a step is one iteration."""

    name, guarded = "grpo", ("loss", "kl")

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        self.rt = runtime.setup(cfg.runtime)
        self.tokenizer = resolve_tokenizer(cfg.tokenizer, cfg.policy)
        rw = cfg.reward  # every reward function is imported before a model is loaded: a typo fails at once
        self.functions = rw.load("reward")
        self.judge = load_scorer(cfg.judge, "judge", cfg.judge_kwargs) if cfg.judge else None
        records = load_prompts(cfg.data.prompts, cfg.data.skip_invalid)
        self.prompts = encode_prompts(records, self.tokenizer, cfg.data.max_prompt_length, cfg.data.skip_invalid,
                                      cfg.data.chat_template)
        self.heldout = []
        if cfg.data.heldout:
            held = load_prompts(cfg.data.heldout, cfg.data.skip_invalid)
            self.heldout = encode_prompts(held, self.tokenizer, cfg.data.max_prompt_length,
                                          cfg.data.skip_invalid, cfg.data.chat_template)[: cfg.data.eval_prompts]
        self.order = DataOrder(len(self.prompts), cfg.rollout.batch_size, cfg.runtime.seed)

        self.actor, self.reference = group_roles(cfg, self.tokenizer.vocab_size)
        self.reward_model, self.rm_stats = None, {}
        if rw.model:
            self.reward_model = frozen(load_reward_model(rw.model))
            self.rm_stats = read_stats(rw.model) if rw.normalize_model else {}
        self._name_parameters()
        ro, n = cfg.rollout, cfg.rollout.max_new_tokens
        self.generator = Generator(self.actor.lm, prompt_bucket=ro.prompt_bucket)
        self.gen_cfg = generation_config(self.tokenizer, n, do_sample=True, temperature=ro.temperature,
                                         top_k=ro.top_k, top_p=ro.top_p)
        self.eval_cfg = generation_config(self.tokenizer, n)  # greedy
        self.reuse_logprobs = ro.temperature == 1.0  # the sampler's log softmax(logits / T) is log π_old at T = 1
        parts = (None if self.reuse_logprobs else self.actor, self.reference, self.reward_model)
        self.scoring = GroupScoringPass(*parts, n) if any(p is not None for p in parts) else None
        self.advantage = GroupAdvantagePass(cfg.algo, ro.group_size)
        rows = ro.batch_size * ro.group_size
        _, _, n_micro = cfg.layout(self.rt.world_size)
        steps = cfg.algo.iterations * cfg.algo.epochs * (rows // cfg.algo.mini_batch_size)
        self.updater = Updater(GRPOActorLoss(self.actor, cfg.algo), self.actor.trainable_params(), cfg.optim, steps,
                               accum_steps=n_micro)
        self.total_steps = cfg.algo.iterations

    def _name_parameters(self):
        """Unique, stable parameter names across the roles (see PPOTrainer._name_parameters); a Parameter shared
        by two roles (a LoRA actor's base) keeps the first role's name."""
        named = set()
        for prefix, cell in (("actor", self.actor), ("reference", self.reference), ("reward", self.reward_model)):
            for name, p in (cell.parameters_and_names() if cell is not None else ()):
                if id(p) not in named:
                    p.name = f"{prefix}.{name}"
                    named.add(id(p))

    # ------------------------------------------------------------------ 1–2: rollout and rewards
    def rollout(self, prompts, seed: int, prompt_len: int = 0) -> tuple[GroupBatch, dict, dict]:
        """G answers to each of ``prompts``, scored; returns the batch, the scores to log per answer (each reward
        term's, ``rewards/NAME``; the reward model's raw ``rm_score``; the judge's ``judge_score``) and timings."""
        g, n = self.cfg.rollout.group_size, self.cfg.rollout.max_new_tokens
        t0 = time.perf_counter()
        gen = self.generator.generate([p.input_ids for p in prompts for _ in range(g)],
                                      dataclasses.replace(self.gen_cfg, seed=seed))
        t1 = time.perf_counter()
        ids, mask, response_mask, last_index = assemble(gen)
        pad = max(0, prompt_len - gen.prompt_ids.shape[1])
        if pad:
            ids = np.pad(ids, ((0, 0), (pad, 0)), constant_values=self.tokenizer.pad_id)
            mask, last_index = np.pad(mask, ((0, 0), (pad, 0))), last_index + pad
        scored = list(self._score(ids, mask, last_index)) if self.scoring is not None else []
        old = gen.logprobs if self.reuse_logprobs else scored.pop(0)
        ref = scored.pop(0) if self.reference is not None else old
        rm = scored.pop(0) if self.reward_model is not None else None
        texts = [self.tokenizer.decode(r[m > 0]) for r, m in zip(gen.response_ids, response_mask)]
        scores, terms = self.reward(prompts, g, texts, rm)
        if rm is not None:
            terms["rm_score"] = rm.astype(np.float64)
        if self.judge is not None:
            prompt_texts = [p.text for p in prompts for _ in range(g)]
            terms["judge_score"] = self.judge(prompt_texts, texts, _columns(prompts, g))
        a = self.cfg.algo
        scores = scores + overlong_penalty(response_mask.sum(1), n, a.overlong_buffer, a.overlong_penalty)
        batch = GroupBatch(ids, mask, response_mask, old.astype(np.float32), ref.astype(np.float32),
                           scores.astype(np.float32), np.zeros_like(response_mask))
        return batch, terms, {"time_generate": t1 - t0, "time_score": time.perf_counter() - t1}

    def _score(self, ids, mask, last_index) -> list:
        step = self.cfg.rollout.score_batch_size or len(ids)
        chunks = [[x.asnumpy() for x in self.scoring(ms.Tensor(ids[i:i + step]), ms.Tensor(mask[i:i + step]),
                                                     ms.Tensor(last_index[i:i + step]))]
                  for i in range(0, len(ids), step)]
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def reward(self, prompts, repeat: int, texts, rm_scores=None) -> tuple[np.ndarray, dict]:
        """Σ_k w_k·f_k(prompts, texts, **columns) (+ w·the normalised reward-model score) for texts answering each
        of ``prompts`` ``repeat`` times in a row; also each term's scores as ``{"rewards/NAME": [R]}``."""
        prompt_texts, columns = [p.text for p in prompts for _ in range(repeat)], _columns(prompts, repeat)
        total, terms = np.zeros(len(texts), np.float32), {}
        for spec, fn, weight in self.functions:
            terms[f"rewards/{function_name(spec)}"] = s = call_scores(fn, spec, prompt_texts, texts, columns)
            total += weight * s
        if rm_scores is not None:
            s = rm_scores.astype(np.float32)
            if self.rm_stats:
                s = (s - self.rm_stats["reward_mean"]) / max(self.rm_stats["reward_std"], 1e-6)
            terms["rewards/model"] = s
            total += self.cfg.reward.model_weight * s
        return total, terms

    def collect(self, it: int) -> tuple[GroupBatch, dict]:
        """The iteration's batch of B groups (dynamic sampling: groups with unequal scores first) and the
        rollout metrics of its first draw (an unbiased sample of the policy's answers)."""
        cfg, rt, g = self.cfg, self.rt, self.cfg.rollout.group_size
        per_rank, _, _ = cfg.layout(rt.world_size)
        dynamic, kept, flat, stats, draw = cfg.algo.dynamic_sampling, [], [], {}, 0
        while True:
            prompts = [self.prompts[i] for i in self.order.next_batch()]  # global; this rank rolls out its share
            seed = cfg.runtime.seed * 100_003 + it * 1_009 + draw * 7_919
            width = bucket_length(max(len(p.input_ids) for p in prompts), self.generator.prompt_bucket)
            part, terms, times = self.rollout(prompts[rt.rank * per_rank:(rt.rank + 1) * per_rank], seed + rt.rank,
                                              width)
            if rt.distributed:  # every rank holds the whole batch, as one process would
                part = gather_experience(part)
            if draw == 0:
                stats = self.rollout_stats(part, terms, times)
            grouped = part.scores.reshape(-1, g)
            equal = grouped.max(1) == grouped.min(1)
            for k in range(len(grouped)):
                (flat if dynamic and equal[k] else kept).append(part.rows(slice(k * g, (k + 1) * g)))
            draw += 1
            if not dynamic or len(kept) >= cfg.rollout.batch_size or draw > cfg.algo.max_extra_draws:
                break
        if not dynamic:
            return part, stats
        b = cfg.rollout.batch_size
        groups = kept[:b] + flat[: b - len(kept[:b])]
        stats.update(dynamic_draws=draw - 1, filled_groups=b - len(kept[:b]))
        return concat_groups(groups, self.tokenizer.pad_id), stats

    def rollout_stats(self, batch: GroupBatch, terms: dict, times: dict) -> dict:
        g, lengths = self.cfg.rollout.group_size, batch.response_mask.sum(1)
        grouped = batch.scores.reshape(-1, g)
        ended = (batch.input_ids[:, -batch.response_mask.shape[1]:] == self.tokenizer.eos_id).any(1)
        local = {k: float(np.mean(v)) for k, v in terms.items()}
        if self.rt.distributed:  # the terms are this rank's rows; the batch is already global
            local = dict(zip(local, (float(v) for v in runtime.mean_over_ranks(list(local.values())))))
        return {"reward": float(batch.scores.mean()), "reward_std": float(grouped.std(1, ddof=1).mean()), **local,
                "frac_reward_zero_std": float(np.mean(grouped.max(1) == grouped.min(1))),
                "completion_length": float(lengths.mean()), "clipped_ratio": float(np.mean(~ended)), **times,
                "gen_tok_per_s": float(lengths.sum() / max(times["time_generate"], 1e-9))}

    # ------------------------------------------------------------------ 3–4: advantages and update
    def update(self, batch: GroupBatch, seed: int) -> dict:
        """E epochs of shuffled mini-batches over ``batch`` (every rank holds all of it, takes its rows)."""
        algo, rt = self.cfg.algo, self.rt
        _, rows, n_micro = self.cfg.layout(rt.world_size)
        rng, sums, count = np.random.default_rng(seed), {}, 0
        for _ in range(algo.epochs):
            for idx in np.split(rng.permutation(len(batch)), len(batch) // algo.mini_batch_size):
                mb = batch.rows(np.sort(idx))
                m = mb.response_mask
                total = m.sum() if algo.loss_agg_mode == "token-mean" else (m.sum(1) > 0).sum()
                norm = ms.Tensor(float(total) / rt.world_size, ms.float32)
                mine = mb.rows(slice(rt.rank * rows, (rt.rank + 1) * rows))
                micro = rows // n_micro
                batches = [tuple(ms.Tensor(x) for x in (c.input_ids, c.attention_mask, c.old_logprobs,
                                                         c.ref_logprobs, c.advantages, c.response_mask)) + (norm,)
                           for c in (mine.rows(slice(j * micro, (j + 1) * micro)) for j in range(n_micro))]
                loss, auxes, grad_norm = self.updater.step(batches)
                parts = np.asarray([[float(v) for v in aux] for aux in auxes])  # [micro, 5]
                values = {"loss": loss, "grad_norm": grad_norm, "pg_loss": parts[:, 0].sum(),
                          "kl_loss": parts[:, 1].sum(), "entropy": parts[:, 2].sum(),
                          "clip_ratio": parts[:, 3].mean(), "approx_kl": parts[:, 4].mean()}
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                count += 1
        out = {k: v / count for k, v in sums.items()}
        if rt.distributed:  # losses are each rank's share Σ_rank / (N / W): their mean is the global value
            out = dict(zip(out, (float(v) for v in runtime.mean_over_ranks(list(out.values())))))
        out["lr"] = float(self.updater.optimizer.lr.asnumpy())
        return out

    # ------------------------------------------------------------------ the loop's Stage
    def step(self, it: int) -> tuple[dict, int]:
        """One iteration: rollout (with dynamic sampling) → rewards → advantages → update."""
        batch, metrics = self.collect(it)
        kl, advantages = (x.asnumpy() for x in self.advantage(
            ms.Tensor(batch.scores), ms.Tensor(batch.old_logprobs), ms.Tensor(batch.ref_logprobs),
            ms.Tensor(batch.response_mask)))
        batch.advantages = advantages
        metrics["kl"] = float((kl * batch.response_mask).sum() / max(batch.response_mask.sum(), 1.0))
        metrics["response_kl"] = float((kl * batch.response_mask).sum(1).mean())
        t0 = time.perf_counter()
        metrics.update(self.update(batch, self.cfg.runtime.seed * 100_003 + it * 1_009))
        metrics["time_train"] = time.perf_counter() - t0
        return metrics, 0

    def evaluate(self) -> dict:
        """The held-out prompts answered greedily and scored with the reward functions (not the reward model)."""
        if not self.heldout:
            return {}
        rows = self.cfg.rollout.batch_size * self.cfg.rollout.group_size
        texts, lengths = [], []
        for gen in generate_batches(self.generator, [p.input_ids for p in self.heldout], self.eval_cfg, rows,
                                    fill_last=True):
            texts += response_texts(self.tokenizer, gen)
            lengths += gen.response_mask.sum(axis=1).tolist()
        total, terms = self.reward(self.heldout, 1, texts)
        return {"eval_reward": float(total.mean()), **{f"eval_{k}": float(v.mean()) for k, v in terms.items()},
                "eval_completion_length": float(np.mean(lengths))}

    def cells(self) -> dict:
        return {"actor": TrainableParams(self.actor)}

    def updaters(self) -> dict:
        return {"actor": self.updater}

    def state(self) -> dict:
        return {"data_order": self.order.state(), "optimizer_steps": self.updater.step_count}

    def restore(self, state: dict) -> None:
        self.order.restore(state["data_order"])

    def before_save(self) -> None:
        self._name_parameters()

    def postfix(self, metrics: dict) -> dict:
        return {"reward": f"{metrics['reward']:.3f}", "kl": f"{metrics['kl']:.3f}"}

    def finish(self, run_dir: str) -> None:
        export_model(self.actor.lm, self.tokenizer, self.cfg, os.path.join(run_dir, "model"), base=self.cfg.policy)

    def train(self, resume: Optional[str] = None) -> dict:
        """Run the iterations on the one loop (from ``resume``'s newest checkpoint when given)."""
        cfg = self.cfg
        cadence = CadenceConfig(log_every=cfg.log_every, eval_every=cfg.eval_every, save_every=cfg.save_every,
                                keep_checkpoints=cfg.keep_checkpoints, progress=cfg.progress)
        return run_loop(self, cadence, cfg.out_dir, resume, config=cfg)


def train_grpo(cfg: GRPOConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Run GRPO; write ``out_dir/model`` (the policy as a HuggingFace folder + tokenizer)."""
    trainer = GRPOTrainer(cfg)  # sets the runtime up; writes nothing
    prepare_run_dir(cfg.out_dir, resume, overwrite)
    return trainer.train(resume)
