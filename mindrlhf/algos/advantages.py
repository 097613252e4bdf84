"""Advantage estimators, registered under their config names: "gae" (PPO, with a critic) and the
critic-free group estimators "grpo", "dr_grpo", "rloo", "reinforce_pp".

Every estimator returns ``(advantages, returns)``, both float [batch, response_len] and 0 at masked
positions of the advantages. Their inputs differ with what each needs (GAE a critic's values, the group
estimators one score per answer and the group size), so trainers call them with keywords.

The group estimators share one call, ``fn(scores, response_mask, group_size, eps=1e-6, norm_by_std=True)``:
the ``group_size`` answers to one prompt are consecutive rows, and each estimator ignores the keywords it
has no use for. A group of one answer has no baseline to compare with and gets advantage 0.

float32: the mean of equal scores that are not dyadic fractions is rounded (eight answers scored 7.3 have
the float32 mean 7.2999997), so "score minus group mean", divided by a std of about 0 plus eps, would give
every member of such a group the same sizeable advantage (0.3 here). Every group estimator first subtracts the group's first score (exact for equal
scores) and only then takes means, so a group whose scores are all equal gets advantage exactly 0.
"""
from mindspore import ops

from mindrlhf.algos.core import masked_whiten
from mindrlhf.algos.registry import Registry

ADV_ESTIMATORS = Registry("advantage estimator")
register_adv_estimator = ADV_ESTIMATORS.register
get_adv_estimator = ADV_ESTIMATORS.get


@register_adv_estimator("gae")
def compute_gae(rewards, values, response_mask, gamma=1.0, lam=0.95):
    """Generalised Advantage Estimation (Schulman et al. 2016), backwards over the response.

    δ_t = r_t + γ · V_{t+1} · m_{t+1} − V_t
    A_t = (δ_t + γλ · A_{t+1}) · m_t          (A_T = 0, V_T = 0: the episode ends with the response)
    returns_t = A_t + V_t                     (the critic's regression target)

    Padded positions contribute nothing and get advantage 0. The mask is expected to be a prefix of
    ones (the response ends at EOS); a 0 inside a row ends the bootstrap there. With γ = λ = 1,
    A_t = Σ_{s≥t} r_s·m_s − V_t (reward-to-go minus value).

    Args:
        rewards: per-token rewards, float [batch, response_len] (``token_level_rewards``).
        values: critic values V(s_t), float [batch, response_len].
        response_mask: 0/1 float [batch, response_len].
        gamma, lam: Python floats.
    Returns:
        (advantages, returns), each float [batch, response_len].
    """
    response_len = rewards.shape[-1]
    next_advantage = ops.zeros_like(rewards[:, 0])  # [batch]
    next_value = ops.zeros_like(rewards[:, 0])  # V_{t+1}·m_{t+1}
    reversed_advantages = []
    # A Python loop over the static response length: unrolled once when the graph compiles.
    for t in range(response_len - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * response_mask[:, t]
        next_value = values[:, t] * response_mask[:, t]
        reversed_advantages.append(next_advantage)
    advantages = ops.stack(reversed_advantages[::-1], axis=1)
    return advantages, advantages + values


def _grouped(scores, group_size, name):
    """scores [batch] → (scores − each group's first score) as [n_groups, group_size]; exact for equal scores."""
    batch = scores.shape[0]
    if group_size < 1 or batch % group_size != 0:
        raise ValueError(
            f"{name}: group_size={group_size} must be >= 1 and divide the batch of {batch} scores "
            f"(the answers of one prompt are consecutive)"
        )
    grouped = scores.reshape(batch // group_size, group_size)  # [n_groups, group_size]
    return grouped - grouped[:, 0:1]


def _per_token(per_answer, response_mask):
    """[n_groups, group_size] → [batch, response_len]: each answer's advantage on its valid tokens."""
    return ops.expand_dims(per_answer.reshape(response_mask.shape[0]), -1) * response_mask


@register_adv_estimator("grpo")
def grpo_advantages(scores, response_mask, group_size, eps=1e-6, norm_by_std=True):
    """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath), outcome supervision.

    A_i = (s_i − mean_g(s)) / (std_g(s) + eps)    over the ``group_size`` answers to one prompt
    (std with Bessel's correction), then broadcast to every valid token of answer i. Without
    ``norm_by_std`` only the mean is subtracted (``dr_grpo``). The mean is taken of s − s_first (module
    docstring): a group of equal scores gets exactly 0, and so does a group of one.

    Args:
        scores: one score per answer, float [batch]; the answers to a prompt are consecutive, so
            batch = n_prompts · group_size.
        response_mask: 0/1 float [batch, response_len].
        group_size: answers per prompt, a Python int ≥ 1.
        eps: added to the std, a float.
        norm_by_std: divide by the group's std, a Python bool.
    Returns:
        (advantages, returns), each float [batch, response_len]; returns = advantages (no critic).
    """
    shifted = _grouped(scores, group_size, "grpo_advantages")
    if group_size == 1:
        return ops.zeros_like(response_mask), ops.zeros_like(response_mask)
    centered = shifted - ops.mean(shifted, -1, keep_dims=True)
    if norm_by_std:
        std = ops.sqrt(ops.reduce_sum(centered * centered, -1) / (group_size - 1.0))
        centered = centered / (ops.expand_dims(std, -1) + eps)
    advantages = _per_token(centered, response_mask)
    return advantages, advantages


@register_adv_estimator("dr_grpo")
def dr_grpo_advantages(scores, response_mask, group_size, eps=1e-6, norm_by_std=False):
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): GRPO without the std division.

    A_i = s_i − mean_g(s)     over the answers to one prompt, on every valid token of answer i.

    Dividing by the group's std up-weights prompts that are almost always (or never) solved; Dr. GRPO
    drops it, and pairs with the ``seq-mean-token-sum-norm`` aggregation (a constant length normaliser
    instead of each answer's length). ``eps`` and ``norm_by_std`` are accepted and ignored (one call for
    every group estimator). Arguments and returns as :func:`grpo_advantages`.
    """
    shifted = _grouped(scores, group_size, "dr_grpo_advantages")
    advantages = _per_token(shifted - ops.mean(shifted, -1, keep_dims=True), response_mask)
    return advantages, advantages


@register_adv_estimator("rloo")
def rloo_advantages(scores, response_mask, group_size, eps=1e-6, norm_by_std=False):
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024): each answer's baseline is the
    mean score of the other answers to the same prompt.

    A_i = s_i − (1 / (n − 1)) Σ_{j≠i} s_j  =  n / (n − 1) · (s_i − mean_g(s))     (n = group_size ≥ 2)

    computed on s − s_first (exactly 0 for equal scores); a group of one gets 0. ``eps`` and
    ``norm_by_std`` are ignored. Arguments and returns as :func:`grpo_advantages`.
    """
    shifted = _grouped(scores, group_size, "rloo_advantages")
    if group_size == 1:
        return ops.zeros_like(response_mask), ops.zeros_like(response_mask)
    others = (ops.sum(shifted, -1, keepdim=True) - shifted) / (group_size - 1.0)
    advantages = _per_token(shifted - others, response_mask)
    return advantages, advantages


@register_adv_estimator("reinforce_pp")
def reinforce_pp_advantages(scores, response_mask, group_size, eps=1e-6, norm_by_std=True):
    """REINFORCE++ with a group baseline (Hu 2025, "REINFORCE++"; veRL's ``reinforce_plus_plus_baseline``).

    b_i  = s_i − mean_g(s)                                 (the group-mean baseline, on every valid token)
    A    = (b − mean_B(b)) / sqrt(var_B(b) + eps)          (``masked_whiten`` over every valid token of the batch)

    The batch whitening re-centres the advantages over the whole batch, so an equal-scored group gets
    −mean_B(b) / std_B(b) rather than 0 (0 when every group of the batch is equal). The batch moments are
    the local batch's: a trainer that splits a batch over ranks gathers it first. ``norm_by_std`` is
    ignored. Arguments and returns as :func:`grpo_advantages`.
    """
    baseline, _ = dr_grpo_advantages(scores, response_mask, group_size)
    advantages = masked_whiten(baseline, response_mask, eps=eps)
    return advantages, advantages
