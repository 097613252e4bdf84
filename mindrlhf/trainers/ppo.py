"""Stage 3, PPO: the actor learns to raise the reward model's score while staying near the reference.

One iteration (Ouyang et al. 2022; Ziegler et al. 2019; Schulman et al. 2017):

    1. rollout     sample responses to B prompts from the actor (compiled KV-cache decode loop)
    2. score       one compiled pass: log π_ref, V(s_t), reward-model score r(x, y), and log π_old unless
                   the sampler's log-probs are it (``rollout.logprobs_from_generation``, temperature 1)
    3. advantages  r_t = −β·KL_t (+ score on the last token); GAE(γ, λ); whitened advantages
    4. update      E epochs of shuffled mini-batches: the policy loss (``clip`` = PPO2's clipped ratio,
                   or ``kl_penalty`` = PPO's adaptive KL penalty) and the clipped value loss, both in one
                   compiled step (one backward; each role's own clipping, AdamW and learning rate)
    5. controllers β of the reward adapts toward a target KL; β_ppo of the ``kl_penalty`` loss adapts
                   after each epoch

With LoRA (``actor_lora`` / ``critic_lora``) a trainable role is adapters on a frozen base that is loaded
once and shared: the reference IS the LoRA actor's base (its adapters off, no second copy), and a LoRA
critic adapts the frozen reward model's (or the reference's) trunk. The roles scored together stay in one graph.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import nn

from .. import runtime
from ..algos import AdaptiveKLController, FixedKLController, adapt_kl_penalty, agg_loss
from ..algos import get_policy_loss, value_loss
from ..config import require
from ..data.encoding import encode_prompts
from ..data.formats import load_prompts
from ..data.tokenizer import Tokenizer
from ..data.batching import bucket_length
from ..generation import generation_config
from ..nn.generate import Generator
from ..nn.lora import TrainableParams
from ..plugins import call_scores, load_function, prompt_columns
from ..roles import Critic, Policy, frozen, ppo_roles
from .artifacts import export_model, load_reward_model, read_stats
from .experience import AdvantagePass, Experience, ScoringPass, assemble, explained_variance, gather_experience
from .experience import response_slice
from .loop import Stage, prepare_run_dir, run_loop
from .ppo_config import PPOAlgoConfig, PPOConfig
from .step import JointUpdater
from .supervised import DataOrder


class ActorLoss(nn.Cell):
    """(ids, mask, old_logprobs, advantages, response_mask, normalizer, kl_penalty_coef) → (loss, (pg_loss, clipfrac,
    approx_kl, entropy)); ``kl_penalty_coef`` is β of the kl_penalty loss (unused by clip)."""

    def __init__(self, actor: Policy, cfg: PPOAlgoConfig):
        super().__init__(auto_prefix=False)
        self.actor = actor
        self.policy_loss = get_policy_loss(cfg.policy_loss)
        self.clip_range, self.entropy_coef, self.agg = cfg.clip_range, cfg.entropy_coef, cfg.loss_agg_mode

    def construct(self, input_ids, attention_mask, old_logprobs, advantages, response_mask, normalizer,
                  kl_penalty_coef):
        logprobs, entropy = self.actor.response_logprobs(input_ids, attention_mask, old_logprobs.shape[1])
        pg_loss, clipfrac, approx_kl = self.policy_loss(logprobs, old_logprobs, advantages, response_mask,
                                                        self.clip_range, kl_penalty_coef, self.agg, normalizer)
        entropy = agg_loss(entropy, response_mask, self.agg, normalizer)
        return pg_loss - self.entropy_coef * entropy, (pg_loss, clipfrac, approx_kl, entropy)


class CriticLoss(nn.Cell):
    """(ids, mask, old_values, returns, response_mask, normalizer) → (loss, clipfrac)."""

    def __init__(self, critic: Critic, cfg: PPOAlgoConfig):
        super().__init__(auto_prefix=False)
        self.critic, self.clip_range_value, self.agg = critic, cfg.clip_range_value, cfg.loss_agg_mode

    def construct(self, input_ids, attention_mask, old_values, returns, response_mask, normalizer):
        values = response_slice(self.critic(input_ids, attention_mask), old_values.shape[1], input_ids.shape[1])
        return value_loss(values, old_values, returns, response_mask, self.clip_range_value, self.agg, normalizer)


class PPOTrainer(Stage):
    """Holds the four roles, their compiled passes and optimizers; one loop step is one iteration."""

    name, guarded = "ppo", ("pg_loss", "vf_loss", "kl")

    def __init__(self, cfg: PPOConfig, reward_model: Optional[nn.Cell] = None,
                 reward_fn: Optional[Callable[[Sequence[str], Sequence[str]], Sequence[float]]] = None):
        """``reward_model``: a Cell called like :class:`~mindrlhf.roles.RewardModel` (ids [B, T], mask [B, T],
        last_index [B]) → scores [B], used instead of the ``cfg.reward_model`` folder (tests score with a
        known function of the tokens). It has no rm_stats.json to normalise with, nor a trunk for the critic.

        ``reward_fn(prompt texts, response texts) → scores``: a score computed from the text, replacing the
        reward model's (which still gives the critic its start); not normalised with rm_stats.json. The
        config's ``reward.functions`` build one from named functions (which also get the prompts' columns)."""
        self.cfg = cfg
        self.rt = runtime.setup(cfg.runtime)
        self.tokenizer = Tokenizer.load(cfg.tokenizer or cfg.policy)
        self._build_roles(cfg, self.tokenizer.vocab_size, reward_model)
        self._name_parameters()

        n = cfg.rollout.max_new_tokens
        self.generator = Generator(self.actor_lm, prompt_bucket=cfg.rollout.prompt_bucket)
        self.gen_cfg = generation_config(self.tokenizer, n, do_sample=True, temperature=cfg.rollout.temperature,
                                         top_k=cfg.rollout.top_k, top_p=cfg.rollout.top_p)
        self.reuse_logprobs = cfg.rollout.reuses_generation_logprobs()
        if cfg.rollout.logprobs_from_generation and not self.reuse_logprobs and self.rt.is_main:
            print(f"[ppo] rollout.temperature={cfg.rollout.temperature}: the sampler's log-probs are the tempered "
                  "policy's, so the scoring pass recomputes log π_old with an actor forward")
        self.scoring = ScoringPass(None if self.reuse_logprobs else self.actor, self.reference, self.critic,
                                   self.reward_model, n)
        self.advantage = AdvantagePass(cfg.algo.kl_estimator, cfg.algo.gamma, cfg.algo.lam, cfg.algo.whiten_advantages)
        steps = cfg.algo.iterations * cfg.algo.epochs * (cfg.rollout.batch_size // cfg.algo.mini_batch_size)
        self.updater = JointUpdater({  # disjoint parameters: a LoRA role's shared base is frozen
            "actor": (ActorLoss(self.actor, cfg.algo), self.actor.trainable_params(), cfg.actor_optim),
            "critic": (CriticLoss(self.critic, cfg.algo), self.critic.trainable_params(), cfg.critic_optim)}, steps)
        p = cfg.algo
        self.kl_ctl = (AdaptiveKLController(p.kl_coef, p.kl_target, p.kl_horizon) if p.adaptive_kl
                       else FixedKLController(p.kl_coef))
        self.kl_penalty_coef = p.kl_penalty_coef
        self.total_steps = p.iterations

        prompts = load_prompts(cfg.data.prompts, cfg.data.skip_invalid)
        self.prompts = encode_prompts(prompts, self.tokenizer, cfg.data.max_prompt_length, cfg.data.skip_invalid,
                                      cfg.data.chat_template)
        self.order = DataOrder(len(self.prompts), cfg.rollout.batch_size, cfg.runtime.seed)
        self.judge = load_function(cfg.judge, "judge", cfg.judge_kwargs) if cfg.judge else None
        if reward_fn is not None:
            self.text_reward = lambda prompts, texts, columns: reward_fn(prompts, texts)  # noqa: E731
        else:
            self.text_reward = cfg.reward.scorer("reward")

    def _build_roles(self, cfg: PPOConfig, vocab: int, reward_model: Optional[nn.Cell]) -> None:
        if reward_model is None:
            self.reward_model = frozen(load_reward_model(cfg.reward_model))
            self.rm_stats = read_stats(cfg.reward_model) if cfg.algo.normalize_reward else {}
        else:
            require(cfg.critic_init == "policy", "critic_init",
                    "a reward model given as a Cell has no folder to start the critic from; set critic_init=policy")
            self.reward_model, self.rm_stats = frozen(reward_model), {}
        critic_from = cfg.reward_model if cfg.critic_init == "reward_model" else ""
        self.actor, self.reference, self.critic = ppo_roles(cfg.policy, vocab, self.reward_model, critic_from,
                                                            cfg.actor_lora, cfg.critic_lora, cfg.reference)
        self.actor_lm = self.actor.lm

    def _name_parameters(self):
        """Parameter names must be unique across the Cells one graph, optimizer or checkpoint sees, and equal in
        the run that saves a checkpoint and the one that loads it. A decode Cell built on first use re-prefixes
        the actor LM's names (MindSpore's auto_prefix), so they are set again before every save. A Parameter
        shared by two roles (a LoRA role's frozen base) keeps the name of the first role listed here."""
        named = set()
        for prefix, cell in (("actor", self.actor), ("reference", self.reference), ("critic", self.critic),
                             ("reward", self.reward_model)):
            for name, p in cell.parameters_and_names():
                if id(p) not in named:
                    p.name = f"{prefix}.{name}"
                    named.add(id(p))

    # ------------------------------------------------------------------ 1–3: experience
    def make_experience(self, prompts, seed: int) -> tuple[Experience, dict]:
        exp, times = self.rollout(prompts, seed)
        return exp, self.experience_stats(exp, prompts, times)

    def rollout(self, prompts, seed: int, prompt_len: int = 0) -> tuple[Experience, dict]:
        """Generate, score and turn scores into advantages for ``prompts``; returns the batch and its timings.

        ``prompt_len``: left-pad the prompt columns to this width (positions come from the mask, so padding
        changes nothing), so that every rank's batch has the columns a single process would give the
        global batch and the ranks' batches can be gathered."""
        t0 = time.perf_counter()
        gen = self.generator.generate([p.input_ids for p in prompts], dataclasses.replace(self.gen_cfg, seed=seed))
        t1 = time.perf_counter()
        ids, mask, response_mask, last_index = assemble(gen)
        pad = max(0, prompt_len - gen.prompt_ids.shape[1])
        if pad:
            ids = np.pad(ids, ((0, 0), (pad, 0)), constant_values=self.tokenizer.pad_id)
            mask, last_index = np.pad(mask, ((0, 0), (pad, 0))), last_index + pad
        *old_lp, ref_lp, values, raw = self._score(ids, mask, last_index)
        rm_scores = raw
        if self.text_reward is not None:
            texts = self._texts(gen.response_ids, response_mask)
            scores = self.text_reward([p.text for p in prompts], texts, prompt_columns([p.meta for p in prompts]))
            raw = np.asarray(scores, np.float32).reshape(raw.shape)
        old_lp = gen.logprobs if self.reuse_logprobs else old_lp[0]
        scores = self._shape_scores(raw, gen.response_ids)
        kl, rewards, adv, ret = (x.asnumpy() for x in self.advantage(
            ms.Tensor(old_lp), ms.Tensor(ref_lp), ms.Tensor(values), ms.Tensor(scores), ms.Tensor(response_mask),
            ms.Tensor(self.kl_ctl.kl_coef, ms.float32)))
        t2 = time.perf_counter()
        exp = Experience(ids, mask, response_mask, old_lp, ref_lp, values, scores, raw, kl, rewards, adv, ret,
                         rm_scores)
        return exp, {"time_generate": t1 - t0, "time_score": t2 - t1}

    def _score(self, ids, mask, last_index) -> list:
        """The scoring graph over chunks of ``rollout.score_batch_size`` rows (one compiled shape), concatenated."""
        step = self.cfg.rollout.score_batch_size or len(ids)
        chunks = [[x.asnumpy() for x in self.scoring(ms.Tensor(ids[i:i + step]), ms.Tensor(mask[i:i + step]),
                                                     ms.Tensor(last_index[i:i + step]))]
                  for i in range(0, len(ids), step)]
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def experience_stats(self, exp: Experience, prompts, times: dict) -> dict:
        """Rollout metrics of ``exp`` (the prompts' batch); ``times`` as :meth:`rollout` returns them.

        ``score`` is what PPO optimised (the reward model's, or the reward functions'), ``rm_score`` the
        reward model's in either case, ``kl`` (also as ``response_kl``, the name GRPO logs it by) the mean
        over rollouts of Σ_t KL_t, and ``judge_score`` the judge's: with them the report draws the judge's
        and the reward model's scores against √KL (Gao et al. 2023)."""
        lengths = exp.response_mask.sum(1)
        response_ids = exp.input_ids[:, -exp.response_mask.shape[1]:]
        kl = float(exp.kl.sum(1).mean())
        stats = {"score": float(exp.raw_scores.mean()), "rm_score": float(exp.rm_scores.mean()),
                 "reward": float(exp.rewards.sum(1).mean()), "kl": kl, "response_kl": kl,
                 "kl_coef": self.kl_ctl.kl_coef,
                 "response_len": float(lengths.mean()), "eos_rate": float(self._has_eos(response_ids).mean()),
                 "explained_var": explained_variance(exp.values, exp.returns, exp.response_mask),
                 **times, "gen_tok_per_s": float(lengths.sum() / max(times["time_generate"], 1e-9))}
        if self.judge is not None:
            texts = self._texts(response_ids, exp.response_mask)
            stats["judge_score"] = float(np.mean(call_scores(
                self.judge, self.cfg.judge, [p.text for p in prompts], texts, prompt_columns([p.meta for p in prompts]),
                what="judge", dtype=np.float64)))
        return stats

    def _texts(self, response_ids, response_mask) -> list:
        return [self.tokenizer.decode(r[m > 0]) for r, m in zip(response_ids, response_mask)]

    def _has_eos(self, response_ids) -> np.ndarray:
        return (response_ids == self.tokenizer.eos_id).any(axis=1)

    def _shape_scores(self, raw: np.ndarray, response_ids) -> np.ndarray:
        p, scores = self.cfg.algo, raw.astype(np.float32)
        if p.normalize_reward and self.rm_stats and self.text_reward is None:
            scores = (scores - self.rm_stats["reward_mean"]) / max(self.rm_stats["reward_std"], 1e-6)
        if p.score_clip > 0:
            scores = np.clip(scores, -p.score_clip, p.score_clip)
        return (scores + p.missing_eos_penalty * ~self._has_eos(response_ids)).astype(np.float32)

    # ------------------------------------------------------------------ 4: update
    def update(self, exp: Experience, seed: int) -> dict:
        """E epochs over ``exp``, the global rollout batch (every rank holds all of it): the same shuffled
        mini-batches on every rank (``seed`` must not depend on the rank), each rank taking its rows."""
        cfg, rt = self.cfg.algo, self.rt
        rng = np.random.default_rng(seed)
        _, per_rank = self.cfg.layout(rt.world_size)
        sums: dict = {}
        count = 0
        for _ in range(cfg.epochs):
            epoch_kl = []
            for batch in np.split(rng.permutation(len(exp)), len(exp) // cfg.mini_batch_size):
                mb = exp.rows(np.sort(batch))
                normalizer = float(mb.response_mask.sum()) / rt.world_size
                mine = mb.rows(slice(rt.rank * per_rank, (rt.rank + 1) * per_rank))
                t = lambda x, dt=ms.float32: ms.Tensor(x, dt)  # noqa: E731
                ids, mask, response_mask, norm = (ms.Tensor(mine.input_ids), ms.Tensor(mine.attention_mask),
                                                  t(mine.response_mask), t(normalizer))
                out = self.updater.step({
                    "actor": (ids, mask, t(mine.old_logprobs), t(mine.advantages), response_mask, norm,
                              t(self.kl_penalty_coef)),
                    "critic": (ids, mask, t(mine.values), t(mine.returns), response_mask, norm)})
                (_, aux, _), (vf_loss, vf_clipfrac, _) = out["actor"], out["critic"]
                pg_loss, clipfrac, approx_kl, entropy = (float(a) for a in aux)
                vf_clipfrac = float(vf_clipfrac)
                for key, val in (("pg_loss", pg_loss), ("clipfrac", clipfrac), ("approx_kl", approx_kl),
                                 ("entropy", entropy), ("vf_loss", vf_loss), ("vf_clipfrac", vf_clipfrac)):
                    sums[key] = sums.get(key, 0.0) + val
                count += 1
                epoch_kl.append(approx_kl)
            if cfg.policy_loss == "kl_penalty":
                kl = np.mean(epoch_kl)
                if rt.distributed:  # approx_kl is a token mean over this rank's rows: average the ranks'
                    kl = runtime.mean_over_ranks([kl])[0]
                self.kl_penalty_coef = adapt_kl_penalty(self.kl_penalty_coef, float(kl), cfg.kl_penalty_target)
        out = {k: v / count for k, v in sums.items()}
        if rt.distributed:  # each rank's losses are its share Σ_rank / (N / W): their mean is the global loss
            out = dict(zip(out, (float(v) for v in runtime.mean_over_ranks(list(out.values())))))
        if cfg.policy_loss == "kl_penalty":
            out["kl_penalty_coef"] = self.kl_penalty_coef
        return out

    # ------------------------------------------------------------------ the loop's Stage
    def cells(self) -> dict:
        return {"actor": TrainableParams(self.actor), "critic": TrainableParams(self.critic)}

    def updaters(self) -> dict:
        return self.updater.optimizers

    def step(self, it: int) -> tuple[dict, int]:
        """One iteration: rollout → score → advantages → update, on this rank's share of the global batch."""
        cfg, rt = self.cfg, self.rt
        per_rank, _ = cfg.layout(rt.world_size)
        prompts = [self.prompts[i] for i in self.order.next_batch()]  # global; this rank rolls out its share
        seed = cfg.runtime.seed * 100_003 + it * 1_009
        width = bucket_length(max(len(p.input_ids) for p in prompts), self.generator.prompt_bucket)  # as one process
        exp, times = self.rollout(prompts[rt.rank * per_rank : (rt.rank + 1) * per_rank], seed + rt.rank, width)
        if rt.distributed:  # every rank updates on the whole batch, as one process would
            exp = gather_experience(exp)
            times = {k: float(v) for k, v in zip(times, runtime.mean_over_ranks(list(times.values())))}
        metrics = self.experience_stats(exp, prompts, times)
        t0 = time.perf_counter()
        metrics.update(self.update(exp, seed))
        metrics["time_train"] = time.perf_counter() - t0
        self.kl_ctl.update(metrics["kl"], cfg.rollout.batch_size)
        return metrics, 0

    def state(self) -> dict:
        return {"kl_penalty_coef": self.kl_penalty_coef, "kl_coef": self.kl_ctl.kl_coef,
                "data_order": self.order.state(), "optimizer_steps": self.updater.optimizers["actor"].step_count}

    def restore(self, state: dict) -> None:
        self.kl_penalty_coef, self.kl_ctl.kl_coef = state["kl_penalty_coef"], state["kl_coef"]
        self.order.restore(state["data_order"])

    def before_save(self) -> None:
        self._name_parameters()

    def postfix(self, metrics: dict) -> dict:
        return {"score": f"{metrics['score']:.3f}", "kl": f"{metrics['kl']:.3f}"}

    def finish(self, run_dir: str) -> None:
        export_model(self.actor_lm, self.tokenizer, self.cfg, os.path.join(run_dir, "model"), base=self.cfg.policy)

    def train(self, resume: Optional[str] = None) -> dict:
        """Run the iterations on the one loop (from ``resume``'s newest checkpoint when given)."""
        return run_loop(self, self.cfg.cadence(), self.cfg.out_dir, resume, config=self.cfg)


def train_ppo(cfg: PPOConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Run PPO; write ``out_dir/model`` (the policy as a HuggingFace folder + tokenizer)."""
    trainer = PPOTrainer(cfg)  # sets the runtime up; writes nothing
    prepare_run_dir(cfg.out_dir, resume, overwrite)
    return trainer.train(resume)
