"""The PPO stage's configuration: prompts, rollout sampling, the algorithm's knobs, and the roles' models.

Kept apart from :mod:`mindrlhf.trainers.ppo` (the trainer) so the pipeline and the CLI can read and
validate a PPO config without the trainer's machinery; ``trainers.ppo`` re-exports every class here.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

from ..algos import KL_ESTIMATORS, LOSS_AGG_MODES
from ..config import field, require
from ..nn.lora import LoRAConfig
from ..plugins import RewardFunctionsConfig
from ..runtime import RuntimeConfig
from .loop import CadenceConfig
from .step import OptimConfig


@dataclasses.dataclass
class PPODataConfig:
    prompts: str = field("", "prompts JSONL for rollouts")
    max_prompt_length: int = field(48, "longest prompt in tokens; longer prompts are errors (or skipped)")
    skip_invalid: bool = field(False, "skip malformed or too-long prompts (counted) instead of stopping")
    chat_template: bool = field(True, "prompts through the tokenizer's chat template; false = plain continuation "
                                      "(as the policy and reward model were trained)")

    def validate(self):
        require(bool(self.prompts), "prompts", "set the prompts file, e.g. data.prompts=prompts.jsonl")
        require(self.max_prompt_length >= 1, "max_prompt_length", f"must be >= 1, got {self.max_prompt_length}")


@dataclasses.dataclass
class RolloutConfig:
    batch_size: int = field(32, "prompts per iteration (global, over all ranks)")
    max_new_tokens: int = field(48, "response length limit")
    temperature: float = field(1.0, "sampling temperature of rollouts")
    top_k: int = field(0, "top-k filter of rollouts; 0 = off")
    top_p: float = field(1.0, "nucleus filter of rollouts; 1 = off")
    prompt_bucket: int = field(16, "prompts are left-padded to a multiple of this; each width compiles its own "
                                   "graphs, so data.max_prompt_length here gives one shape")
    score_batch_size: int = field(0, "rows per call of the scoring graph (0 = a rank's whole batch); a compiled "
                                     "graph's memory grows with its rows (SmolLM2-135M: ~1.1 GB per 96-token row)")
    logprobs_from_generation: bool = field(True, "take log π_old from the sampler (as TRL does) instead of an actor "
                                                 "forward in the scoring pass; used only at temperature 1, see "
                                                 "reuses_generation_logprobs")

    def reuses_generation_logprobs(self) -> bool:
        """Whether the sampler's log-probs serve as log π_old, sparing the scoring pass the actor's forward.

        The generator records log softmax(logits / T) at each sampled token, before any top-k/top-p filter.
        At T = 1 that is log π(y_t | x, y_<t) of the unfiltered policy: the number the actor forward would
        recompute (in fp32 they agree to ~1e-6; they differ by the rounding of the cached decode versus the
        full forward, larger with a 16-bit compute_dtype). At T ≠ 1 it is the tempered distribution's, so
        the scoring pass computes log π_old as before. (Greedy decoding would record log softmax(logits),
        T ignored; PPO's rollouts always sample.)
        """
        return self.logprobs_from_generation and self.temperature == 1.0

    def validate(self):
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature > 0, "temperature", f"must be > 0 (rollouts sample), got {self.temperature}")
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.prompt_bucket >= 1, "prompt_bucket", f"must be >= 1, got {self.prompt_bucket}")
        require(self.score_batch_size >= 0, "score_batch_size",
                f"must be >= 0 (0 = a rank's whole batch), got {self.score_batch_size}")


@dataclasses.dataclass
class PPOAlgoConfig:
    iterations: int = field(40, "rollout → update iterations")
    epochs: int = field(4, "passes over each rollout batch (Schulman et al. 2017 use 3–10)")
    mini_batch_size: int = field(8, "sequences per optimizer step (global)")
    policy_loss: str = field("clip", "clip (PPO2's clipped ratio) or kl_penalty (PPO's adaptive KL penalty)")
    clip_range: float = field(0.2, "ε of the clipped ratio")
    clip_range_value: float = field(0.2, "ε_v of the clipped value loss")
    kl_penalty_coef: float = field(0.1, "initial β_ppo of the kl_penalty loss")
    kl_penalty_target: float = field(0.01, "target KL(π_old‖π) per token for adapting β_ppo")
    entropy_coef: float = field(0.0, "entropy bonus weight")
    loss_agg_mode: str = field("token-mean", "token-mean, seq-mean-token-sum or seq-mean-token-mean")
    gamma: float = field(1.0, "discount γ of GAE")
    lam: float = field(0.95, "λ of GAE")
    whiten_advantages: bool = field(True, "whiten advantages over valid tokens (all ranks)")
    kl_estimator: str = field("k1", "per-token KL of the reward: k1, k2, k3 or abs")
    kl_coef: float = field(0.05, "β of the reward's KL penalty (initial value when adaptive)")
    adaptive_kl: bool = field(False, "adapt β toward kl_target (Ziegler et al. 2019)")
    kl_target: float = field(3.0, "target KL(π‖π_ref) per sequence for the adaptive β")
    kl_horizon: int = field(10000, "horizon of the adaptive β controller, in samples")
    normalize_reward: bool = field(True, "normalise scores with the reward model's rm_stats.json mean and std")
    score_clip: float = field(5.0, "clip normalised scores to ±this; 0 = off")
    missing_eos_penalty: float = field(-1.0, "added to the score of a response that hits max_new_tokens without EOS")

    def validate(self):
        require(self.iterations >= 1, "iterations", f"must be >= 1, got {self.iterations}")
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.mini_batch_size >= 1, "mini_batch_size", f"must be >= 1, got {self.mini_batch_size}")
        require(self.policy_loss in ("clip", "kl_penalty"), "policy_loss", "expected clip or kl_penalty")
        require(self.clip_range > 0, "clip_range", f"must be > 0, got {self.clip_range}")
        require(self.clip_range_value > 0, "clip_range_value", f"must be > 0, got {self.clip_range_value}")
        require(self.kl_penalty_coef >= 0, "kl_penalty_coef", f"must be >= 0, got {self.kl_penalty_coef}")
        require(self.kl_penalty_target > 0, "kl_penalty_target", f"must be > 0, got {self.kl_penalty_target}")
        require(self.entropy_coef >= 0, "entropy_coef", f"must be >= 0, got {self.entropy_coef}")
        require(self.loss_agg_mode in LOSS_AGG_MODES, "loss_agg_mode", f"expected one of {', '.join(LOSS_AGG_MODES)}")
        require(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")
        require(0 < self.lam <= 1, "lam", f"must be in (0, 1], got {self.lam}")
        require(self.kl_estimator in KL_ESTIMATORS.names(), "kl_estimator",
                f"expected one of {', '.join(KL_ESTIMATORS.names())}")
        require(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        require(self.kl_target > 0, "kl_target", f"must be > 0, got {self.kl_target}")
        require(self.kl_horizon >= 1, "kl_horizon", f"must be >= 1, got {self.kl_horizon}")
        require(self.score_clip >= 0, "score_clip", f"must be >= 0 (0 = off), got {self.score_clip}")


@dataclasses.dataclass
class PPOConfig:
    # The section a user reaches for by the stage's name; the error names the right one.
    redirects: ClassVar[dict] = {"ppo": ("algo", "the PPO algorithm section")}
    # What the checkpoints' shapes and the data order were made with; a resumed run may not change them.
    fixed_on_resume: ClassVar[tuple] = (
        "critic_init", "actor_lora.enabled", "actor_lora.rank", "actor_lora.targets", "critic_lora.enabled",
        "critic_lora.rank", "critic_lora.targets", "data.max_prompt_length", "data.chat_template",
        "rollout.batch_size", "rollout.max_new_tokens", "algo.mini_batch_size")

    policy: str = field("", "SFT output folder: the actor starts here; the reference is a frozen copy of it")
    reference: str = field("", "reference model folder; empty = the policy. Set it when the actor continues from "
                               "an earlier PPO policy, so the KL penalty still ties it to SFT")
    reward_model: str = field("", "reward-model folder (a `mindrlhf rm` run's model/)")
    critic_init: str = field("reward_model", "critic trunk and head from reward_model, or trunk from policy with a zero head")
    tokenizer: str = field("", "tokenizer folder; empty = the policy folder's")
    out_dir: str = field("runs/ppo", "run folder: checkpoints, metrics, plots and the final model/")
    data: PPODataConfig = field(PPODataConfig(), "prompts")
    rollout: RolloutConfig = field(RolloutConfig(), "sampling")
    algo: PPOAlgoConfig = field(PPOAlgoConfig(), "the algorithm")
    reward: RewardFunctionsConfig = field(
        RewardFunctionsConfig(), "scoring functions of the response text whose weighted sum replaces the reward "
                                 "model's score (not normalised with rm_stats.json); e.g. a task's judge as a perfect "
                                 "reward model, what PPO makes of the true reward (Gao et al. 2023). Empty = the "
                                 "reward model")
    judge: str = field("", "module:function (or file.py:function) scoring rollouts for the log only (metric "
                           "judge_score), never trained on: judge(prompts, responses, **columns) -> list of floats")
    judge_kwargs: dict = field({}, "fixed keyword arguments of the judge")
    actor_optim: OptimConfig = field(OptimConfig(lr=2e-4, warmup_steps=5, schedule="constant"), "actor AdamW")
    critic_optim: OptimConfig = field(OptimConfig(lr=5e-4, warmup_steps=5, schedule="constant"), "critic AdamW")
    actor_lora: LoRAConfig = field(LoRAConfig(enabled=False),
                                   "LoRA actor (off unless actor_lora.enabled=true): the reference is then its base")
    critic_lora: LoRAConfig = field(LoRAConfig(enabled=False),
                                    "LoRA critic trunk (off unless enabled=true) on the frozen trunk it starts from")
    log_every: int = field(1, "iterations between metric lines")
    save_every: int = field(10, "iterations between checkpoints; 0 = only at the end")
    keep_checkpoints: int = field(2, "newest checkpoints kept")
    progress: bool = field(True, "show a progress bar")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, mode, seed")

    def validate(self):
        require(bool(self.policy), "policy", "set the SFT model folder, e.g. policy=runs/sft/model")
        require(bool(self.reward_model), "reward_model", "set the reward model folder, e.g. reward_model=runs/rm/model")
        require(self.critic_init in ("reward_model", "policy"), "critic_init", "expected reward_model or policy")
        self.cadence().validate()
        require(self.rollout.batch_size % self.algo.mini_batch_size == 0, "algo.mini_batch_size",
                f"{self.algo.mini_batch_size} must divide rollout.batch_size={self.rollout.batch_size}")
        require(not self.judge_kwargs or bool(self.judge), "judge_kwargs", "given without a judge")
        for key, lora in (("actor_lora", self.actor_lora), ("critic_lora", self.critic_lora)):
            # Dropout would make the update's log π differ from the scoring pass's log π_old at ratio 1.
            require(not lora.enabled or lora.dropout == 0, f"{key}.dropout", "must be 0 in PPO")

    def cadence(self) -> CadenceConfig:
        """The loop's cadence: PPO keeps its keys at the top level, counted in iterations."""
        return CadenceConfig(log_every=self.log_every, eval_every=0, save_every=self.save_every,
                             keep_checkpoints=self.keep_checkpoints, progress=self.progress)

    def layout(self, world_size: int) -> tuple[int, int]:
        """(prompts rolled out per rank, mini-batch rows per rank), or a clear error when they do not divide."""
        for key, size in (("rollout.batch_size", self.rollout.batch_size),
                          ("algo.mini_batch_size", self.algo.mini_batch_size)):
            require(size % world_size == 0, key, f"{size} does not divide over {world_size} ranks")
        per_rank, chunk = self.rollout.batch_size // world_size, self.rollout.score_batch_size
        require(chunk >= 0 and (chunk == 0 or per_rank % chunk == 0), "rollout.score_batch_size",
                f"{chunk} must divide the {per_rank} rows each rank rolls out")
        return self.rollout.batch_size // world_size, self.algo.mini_batch_size // world_size
