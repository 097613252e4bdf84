"""Advantage estimators, registered under their config names ("gae", "grpo").

Every estimator returns ``(advantages, returns)``, both float [batch, response_len] and 0 at masked
positions of the advantages. Their inputs differ with what each needs (GAE a critic's values, GRPO a
group of sampled answers per prompt), so trainers call them with keywords.
"""
from mindspore import ops

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


@register_adv_estimator("grpo")
def grpo_advantages(scores, response_mask, group_size, eps=1e-6, norm_by_std=True):
    """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath), outcome supervision.

    A_i = (s_i − mean_g(s)) / (std_g(s) + eps)    over the ``group_size`` answers to one prompt
    (std with Bessel's correction; without ``norm_by_std`` only the mean is subtracted, as in
    Dr. GRPO), then broadcast to every valid token of answer i.

    Args:
        scores: one score per answer, float [batch]; the answers to a prompt are consecutive, so
            batch = n_prompts · group_size.
        response_mask: 0/1 float [batch, response_len].
        group_size: answers per prompt, a Python int ≥ 2.
    Returns:
        (advantages, returns), each float [batch, response_len]; returns = advantages (no critic).
    """
    batch = scores.shape[0]
    if group_size < 2 or batch % group_size != 0:
        raise ValueError(
            f"grpo_advantages: group_size={group_size} must be >= 2 and divide the batch of {batch} "
            f"scores (the answers of one prompt are consecutive)"
        )
    grouped = scores.reshape(batch // group_size, group_size)  # [n_prompts, group_size]
    centered = grouped - ops.mean(grouped, -1, keep_dims=True)
    if norm_by_std:
        std = ops.sqrt(ops.reduce_sum(centered * centered, -1) / (group_size - 1.0))
        centered = centered / (ops.expand_dims(std, -1) + eps)
    advantages = ops.expand_dims(centered.reshape(batch), -1) * response_mask
    return advantages, advantages
