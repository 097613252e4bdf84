"""The math of RLHF as pure functions over MindSpore tensors.

Each function is one formula (stated in its docstring), compiles inside ``nn.Cell.construct`` and
runs in PyNative alike. Masks are 0/1 float tensors. Variants chosen by config string are looked up
with ``get_kl_estimator``, ``get_adv_estimator``, ``get_policy_loss`` and ``get_dpo_loss``; resolve
them when a Cell is built, not inside ``construct``.
"""
from mindrlhf.algos.advantages import (
    ADV_ESTIMATORS, compute_gae, dr_grpo_advantages, get_adv_estimator, grpo_advantages, register_adv_estimator,
    reinforce_pp_advantages, rloo_advantages,
)
from mindrlhf.algos.aggregation import LOSS_AGG_MODES, agg_loss
from mindrlhf.algos.core import (
    entropy_from_logits, logprobs_from_logits, masked_count, masked_mean, masked_moments, masked_sum,
    masked_var, masked_whiten, whiten_from_moments,
)
from mindrlhf.algos.dpo import (
    DPO_LOSSES, dpo_hinge, dpo_ipo, dpo_loss, dpo_orpo, dpo_sigmoid, dpo_simpo, get_dpo_loss, is_reference_free,
    nll_weight, register_dpo_loss,
)
from mindrlhf.algos.kl import (
    K3_MAX_LOG_RATIO, KL_ESTIMATORS, get_kl_estimator, kl_abs, kl_k1, kl_k2, kl_k3, kl_loss, kl_penalty,
    register_kl_estimator,
)
from mindrlhf.algos.kl_control import AdaptiveKLController, FixedKLController, adapt_kl_penalty
from mindrlhf.algos.ppo_losses import (
    POLICY_LOSSES, get_policy_loss, policy_loss_clip, policy_loss_clip_higher, policy_loss_dual_clip,
    policy_loss_gspo, policy_loss_kl_penalty, register_policy_loss, value_loss,
)
from mindrlhf.algos.ranking import pairwise_accuracy, prompt_ranking_losses, ranking_loss
from mindrlhf.algos.registry import Registry
from mindrlhf.algos.rewards import last_token_mask, token_level_rewards

__all__ = [
    # core
    "logprobs_from_logits", "entropy_from_logits", "masked_sum", "masked_count", "masked_mean", "masked_var",
    "masked_whiten", "masked_moments", "whiten_from_moments",
    # aggregation
    "agg_loss", "LOSS_AGG_MODES",
    # KL
    "kl_penalty", "kl_k1", "kl_k2", "kl_k3", "kl_abs", "kl_loss", "K3_MAX_LOG_RATIO", "KL_ESTIMATORS",
    "register_kl_estimator", "get_kl_estimator",
    "FixedKLController", "AdaptiveKLController", "adapt_kl_penalty",
    # rewards and advantages
    "token_level_rewards", "last_token_mask",
    "compute_gae", "grpo_advantages", "dr_grpo_advantages", "rloo_advantages", "reinforce_pp_advantages",
    "ADV_ESTIMATORS", "register_adv_estimator", "get_adv_estimator",
    # losses
    "policy_loss_clip", "policy_loss_kl_penalty", "policy_loss_clip_higher", "policy_loss_dual_clip",
    "policy_loss_gspo", "POLICY_LOSSES", "register_policy_loss", "get_policy_loss",
    "value_loss",
    "ranking_loss", "prompt_ranking_losses", "pairwise_accuracy",
    "dpo_loss", "dpo_sigmoid", "dpo_ipo", "dpo_hinge", "dpo_simpo", "dpo_orpo", "DPO_LOSSES", "register_dpo_loss",
    "get_dpo_loss", "nll_weight",
    "is_reference_free",
    "Registry",
]
