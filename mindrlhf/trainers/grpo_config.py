"""The GRPO stage's configuration: prompts, group sampling, the reward terms, and the algorithm's knobs.

Kept apart from :mod:`mindrlhf.trainers.grpo` (the stage) so the CLI and the pipeline can read and validate a
GRPO config without building anything. Defaults follow the GRPO paper (Shao et al. 2024) where it gives one,
DAPO (Yu et al. 2025) for its additions.
"""
from __future__ import annotations

import dataclasses

from ..algos import ADV_ESTIMATORS, KL_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES
from ..config import field, require
from ..nn.lora import LoRAConfig
from ..plugins import RewardFunctionsConfig
from ..runtime import RuntimeConfig
from .step import OptimConfig

# Policy losses GRPO can use: every registered one but PPO's adaptive kl_penalty, whose β the PPO stage adapts.
GROUP_POLICY_LOSSES = tuple(n for n in POLICY_LOSSES.names() if n != "kl_penalty")
GROUP_ADV_ESTIMATORS = tuple(n for n in ADV_ESTIMATORS.names() if n != "gae")  # gae needs a critic


@dataclasses.dataclass
class GRPODataConfig:
    prompts: str = field("", "prompts JSONL for rollouts; a line's other fields (e.g. \"answer\") reach the reward "
                             "functions as columns")
    heldout: str = field("", "held-out prompts JSONL: answered greedily at each evaluation and scored with the "
                             "reward functions (eval_reward, eval_rewards/NAME); empty = no evaluation")
    eval_prompts: int = field(64, "held-out prompts used per evaluation (the first N)")
    max_prompt_length: int = field(48, "longest prompt in tokens; longer prompts are errors (or skipped)")
    skip_invalid: bool = field(False, "skip malformed or too-long prompts (counted) instead of stopping")
    chat_template: bool = field(True, "prompts through the tokenizer's chat template; false = plain continuation")

    def validate(self):
        require(bool(self.prompts), "prompts", "set the prompts file, e.g. data.prompts=prompts.jsonl")
        require(self.eval_prompts >= 1, "eval_prompts", "must be >= 1")


@dataclasses.dataclass
class GroupRolloutConfig:
    batch_size: int = field(16, "prompts per iteration (global, over all ranks); each brings group_size answers")
    group_size: int = field(8, "answers sampled per prompt, in the same generation call (TRL's num_generations; "
                               "the GRPO paper uses 64, small CPU runs 4-8)")
    max_new_tokens: int = field(48, "answer length limit (also Dr. GRPO's constant length normaliser)")
    temperature: float = field(1.0, "sampling temperature; at 1 the sampler's log-probs are log π_old")
    top_k: int = field(0, "top-k filter of rollouts; 0 = off")
    top_p: float = field(1.0, "nucleus filter of rollouts; 1 = off")
    prompt_bucket: int = field(16, "prompts are left-padded to a multiple of this; each width compiles its own "
                                   "graphs, so data.max_prompt_length here gives one shape")
    score_batch_size: int = field(0, "rows per call of the scoring graph (0 = a rank's whole batch)")

    def validate(self):
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.group_size >= 2, "group_size", f"must be >= 2 (a group of {self.group_size} answer "
                                                           "has nothing to compare with: its advantage is 0)")
        require(self.temperature > 0, "temperature", "must be > 0: GRPO compares sampled answers")
        require(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")


@dataclasses.dataclass
class RewardConfig(RewardFunctionsConfig):
    """The reward functions (built-in: mindrlhf.rewards:exact_match, format_regex, length_penalty,
    movie_labeler), optionally plus a reward model's score."""

    model: str = field("", "a reward-model folder (a `mindrlhf rm` run's model/) as one more term; empty = none")
    model_weight: float = field(1.0, "weight of the reward model's score")
    normalize_model: bool = field(True, "normalise the reward model's score with its rm_stats.json mean and std")

    def validate(self):
        super().validate()
        require(bool(self.functions) or bool(self.model), "functions",
                "set at least one reward function (e.g. [mindrlhf.rewards:exact_match]) or reward.model")


@dataclasses.dataclass
class GRPOAlgoConfig:
    iterations: int = field(40, "rollout → update iterations")
    epochs: int = field(1, "passes over each rollout batch (μ of the GRPO paper; 1 = on-policy)")
    mini_batch_size: int = field(16, "answers per optimizer step (global); must divide batch_size × group_size")
    micro_batch_size: int = field(0, "answers per forward/backward on one rank; 0 = the rank's whole mini-batch")
    adv_estimator: str = field("grpo", "grpo (group mean/std), dr_grpo (no std), rloo (leave-one-out) or "
                                       "reinforce_pp (group mean, then whitened over the batch)")
    adv_eps: float = field(1e-6, "ε added to the group std (grpo)")
    norm_by_std: bool = field(True, "grpo: divide by the group std (false = Dr. GRPO's advantages)")
    policy_loss: str = field("clip", "clip (PPO's), clip_higher (DAPO: ε_low/ε_high), dual_clip (bound c·|A| for "
                                     "A < 0) or gspo (one clipped ratio per sequence)")
    clip_range: float = field(0.2, "ε_low of the clipped ratio (ε of clip); GSPO's paper: 3e-4")
    clip_range_high: float = field(0.28, "ε_high of clip_higher, dual_clip and gspo (DAPO: 0.28; GSPO's paper: 4e-4)")
    clip_c: float = field(3.0, "c of dual_clip (> 1)")
    loss_agg_mode: str = field("token-mean", "token-mean (DAPO), seq-mean-token-mean (the GRPO paper; GSPO), "
                                             "seq-mean-token-sum, seq-mean-token-sum-norm (Dr. GRPO)")
    kl_coef: float = field(0.04, "β of the KL to the reference (GRPO paper: 0.04); 0 = no KL and no reference model")
    kl_in: str = field("loss", "loss (β·KL added to the loss, as the GRPO paper) or reward (score − β·Σ_t KL_t)")
    kl_estimator: str = field("", "k1, k2, k3 or abs; empty = k3 in the loss, k1 in the reward")
    entropy_coef: float = field(0.0, "entropy bonus weight")
    dynamic_sampling: bool = field(False, "DAPO: drop groups whose rewards are all equal (no signal) and draw more "
                                          "prompts until the batch is full")
    max_extra_draws: int = field(4, "dynamic sampling: most extra prompt batches drawn per iteration; past it the "
                                    "batch is filled with equal-reward groups (counted as filled_groups)")
    overlong_buffer: int = field(0, "DAPO's soft over-long penalty: answers longer than max_new_tokens − this lose "
                                    "up to overlong_penalty, linearly; 0 = off")
    overlong_penalty: float = field(1.0, "penalty at max_new_tokens")

    def validate(self):
        require(self.iterations >= 1, "iterations", "must be >= 1")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.mini_batch_size >= 1, "mini_batch_size", "must be >= 1")
        require(self.micro_batch_size >= 0, "micro_batch_size", "must be >= 0")
        require(self.adv_estimator in GROUP_ADV_ESTIMATORS, "adv_estimator",
                f"expected one of {', '.join(GROUP_ADV_ESTIMATORS)}")
        require(self.policy_loss in GROUP_POLICY_LOSSES, "policy_loss",
                f"expected one of {', '.join(GROUP_POLICY_LOSSES)}")
        require(0 < self.clip_range < 1, "clip_range", f"must be in (0, 1), got {self.clip_range}")
        require(self.clip_range_high > 0, "clip_range_high", f"must be > 0, got {self.clip_range_high}")
        require(self.clip_c > 1, "clip_c", f"must be > 1, got {self.clip_c}")
        require(self.loss_agg_mode in LOSS_AGG_MODES, "loss_agg_mode", f"expected one of {', '.join(LOSS_AGG_MODES)}")
        require(self.kl_coef >= 0, "kl_coef", f"must be >= 0, got {self.kl_coef}")
        require(self.kl_in in ("loss", "reward"), "kl_in", "expected loss or reward")
        require(not self.kl_estimator or self.kl_estimator in KL_ESTIMATORS.names(), "kl_estimator",
                f"expected one of {', '.join(KL_ESTIMATORS.names())} (or empty)")
        require(self.adv_eps > 0, "adv_eps", "must be > 0")
        require(self.max_extra_draws >= 0, "max_extra_draws", "must be >= 0")
        require(self.overlong_buffer >= 0 and self.overlong_penalty >= 0, "overlong_buffer",
                "overlong_buffer and overlong_penalty must be >= 0")

    def kl(self) -> str:
        """The KL estimator in use: the configured one, or k3 in the loss and k1 in the reward."""
        return self.kl_estimator or ("k3" if self.kl_in == "loss" else "k1")


@dataclasses.dataclass
class GRPOConfig:
    policy: str = field("", "the starting policy: a model folder (e.g. runs/sft/model), a .gguf file/name")
    reference: str = field("", "reference model; empty = the policy (a LoRA actor's base, with adapters off)")
    tokenizer: str = field("", "tokenizer folder; empty = the policy's own")
    out_dir: str = field("runs/grpo", "run folder: checkpoints, metrics, plots and the final model/")
    data: GRPODataConfig = field(GRPODataConfig(), "prompts")
    rollout: GroupRolloutConfig = field(GroupRolloutConfig(), "group sampling")
    reward: RewardConfig = field(RewardConfig(), "what an answer scores: a weighted sum of functions and a reward model")
    judge: str = field("", "module:function (or file.py:function) scoring rollouts for the log only (metric "
                           "judge_score), never trained on: judge(prompts, responses, **columns) -> list of floats")
    judge_kwargs: dict = field({}, "fixed keyword arguments of the judge")
    algo: GRPOAlgoConfig = field(GRPOAlgoConfig(), "the algorithm")
    optim: OptimConfig = field(OptimConfig(lr=1e-4, warmup_steps=5, schedule="constant"), "policy AdamW")
    lora: LoRAConfig = field(LoRAConfig(enabled=False), "LoRA actor (off unless lora.enabled=true): the reference is "
                                                        "then its base weights")
    log_every: int = field(1, "iterations between metric lines")
    eval_every: int = field(0, "iterations between held-out evaluations (data.heldout); 0 = only at the end")
    save_every: int = field(10, "iterations between checkpoints; 0 = only at the end")
    keep_checkpoints: int = field(2, "newest checkpoints kept")
    progress: bool = field(True, "show a progress bar")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, mode, seed")

    def validate(self):
        require(bool(self.policy), "policy", "set the starting policy, e.g. policy=runs/sft/model")
        require(not self.judge_kwargs or bool(self.judge), "judge_kwargs", "given without a judge")
        rows = self.rollout.batch_size * self.rollout.group_size
        require(rows % self.algo.mini_batch_size == 0, "algo.mini_batch_size",
                f"{self.algo.mini_batch_size} must divide rollout.batch_size × group_size = {rows}")
        require(self.algo.overlong_buffer < self.rollout.max_new_tokens, "algo.overlong_buffer",
                f"must be < rollout.max_new_tokens={self.rollout.max_new_tokens}")
        # Dropout would make the update's log π differ from the rollout's log π_old at ratio 1.
        require(not self.lora.enabled or self.lora.dropout == 0, "lora.dropout", "must be 0 in GRPO")

    def layout(self, world_size: int) -> tuple[int, int, int]:
        """(prompts rolled out per rank, mini-batch rows per rank, micro-batches per mini-batch), or a clear error."""
        for key, size in (("rollout.batch_size", self.rollout.batch_size),
                          ("algo.mini_batch_size", self.algo.mini_batch_size)):
            require(size % world_size == 0, key, f"{size} does not divide over {world_size} ranks")
        rows = self.algo.mini_batch_size // world_size
        micro = self.algo.micro_batch_size or rows
        require(rows % micro == 0, "algo.micro_batch_size", f"{micro} does not divide the {rows} rows of a rank's "
                                                            "mini-batch")
        per_rank = self.rollout.batch_size // world_size
        chunk = self.rollout.score_batch_size
        require(chunk == 0 or (per_rank * self.rollout.group_size) % chunk == 0, "rollout.score_batch_size",
                f"{chunk} must divide the {per_rank * self.rollout.group_size} rows each rank rolls out")
        return per_rank, rows, rows // micro
