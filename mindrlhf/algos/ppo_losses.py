"""PPO's policy losses (registered: "clip", "kl_penalty") and the clipped value loss.

Every policy loss takes the same arguments and returns ``(loss, clipfrac, approx_kl)`` so a trainer
calls ``get_policy_loss(config_name)(...)`` without knowing which it got; a loss ignores the
arguments it has no use for ("clip" ignores ``kl_coef``, "kl_penalty" ignores ``clip_range``).
The metrics carry no gradient:
    clipfrac  = fraction of valid tokens where clipping was active (0 for "kl_penalty"),
    approx_kl = masked mean of ½ (log π − log π_old)²  (the k2 estimator of KL(π_old ‖ π)).
"""
from mindspore import ops

from mindrlhf.algos.aggregation import agg_loss
from mindrlhf.algos.core import masked_mean
from mindrlhf.algos.kl import kl_k2, kl_k3
from mindrlhf.algos.registry import Registry

POLICY_LOSSES = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register
get_policy_loss = POLICY_LOSSES.get


def _approx_kl(logprobs, old_logprobs, response_mask):
    return ops.stop_gradient(masked_mean(kl_k2(logprobs, old_logprobs), response_mask))


@register_policy_loss("clip")
def policy_loss_clip(
    logprobs, old_logprobs, advantages, response_mask,
    clip_range=0.2, kl_coef=0.0, loss_agg_mode="token-mean", normalizer=None,
):
    """PPO's clipped surrogate objective (Schulman et al. 2017, "PPO2"), as a loss to minimise.

    ratio_t = exp(log π(y_t) − log π_old(y_t))
    ℓ_t     = −min(ratio_t · A_t,  clip(ratio_t, 1 − ε, 1 + ε) · A_t)
    loss    = agg_loss(ℓ, response_mask, loss_agg_mode, normalizer)

    Args:
        logprobs: log π_θ of the sampled tokens (carries the gradient), float [batch, response_len].
        old_logprobs: log π_old from the rollout, float [batch, response_len].
        advantages: float [batch, response_len].
        response_mask: 0/1 float [batch, response_len].
        clip_range: ε, a float.
        kl_coef: unused here (see "kl_penalty"); accepted so all policy losses share one call.
        loss_agg_mode, normalizer: see ``agg_loss``.
    Returns:
        (loss, clipfrac, approx_kl), 0-d tensors.
    """
    ratio = ops.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ops.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss_mat = ops.maximum(unclipped, clipped)  # max of the negatives = −min of the objectives
    loss = agg_loss(loss_mat, response_mask, loss_agg_mode, normalizer)
    clip_active = (clipped > unclipped).astype(logprobs.dtype)
    clipfrac = ops.stop_gradient(masked_mean(clip_active, response_mask))
    return loss, clipfrac, _approx_kl(logprobs, old_logprobs, response_mask)


@register_policy_loss("kl_penalty")
def policy_loss_kl_penalty(
    logprobs, old_logprobs, advantages, response_mask,
    clip_range=0.2, kl_coef=0.0, loss_agg_mode="token-mean", normalizer=None,
):
    """PPO with an (adaptive) KL penalty instead of clipping (Schulman et al. 2017, section 4).

    ℓ_t  = −ratio_t · A_t + β · KL_t(π_old ‖ π),   ratio_t = exp(log π − log π_old)
    KL_t = ratio_t − log ratio_t − 1   (the k3 estimator on tokens sampled from π_old: ≥ 0, unbiased,
           and its gradient is unbiased for ∇ KL(π_old ‖ π))
    loss = agg_loss(ℓ, response_mask, loss_agg_mode, normalizer)

    β is ``kl_coef``, adapted between updates by ``adapt_kl_penalty``. Arguments and returns as for
    "clip"; ``clip_range`` is unused and clipfrac is 0.
    """
    ratio = ops.exp(logprobs - old_logprobs)
    kl = kl_k3(old_logprobs, logprobs)  # estimates KL(π_old ‖ π)
    loss_mat = -advantages * ratio + kl_coef * kl
    loss = agg_loss(loss_mat, response_mask, loss_agg_mode, normalizer)
    clipfrac = ops.zeros((), logprobs.dtype)
    return loss, clipfrac, _approx_kl(logprobs, old_logprobs, response_mask)


def value_loss(
    values, old_values, returns, response_mask, clip_range_value=0.2, loss_agg_mode="token-mean", normalizer=None,
):
    """PPO's clipped value loss: the critic may not move further than ε_v from its rollout values.

    V^clip_t = clip(V_t, V^old_t − ε_v, V^old_t + ε_v)
    ℓ_t      = ½ · max((V_t − R_t)², (V^clip_t − R_t)²)
    loss     = agg_loss(ℓ, response_mask, loss_agg_mode, normalizer)   (masked mean by default)

    Args:
        values: V_θ (carries the gradient), float [batch, response_len].
        old_values: values from the rollout, float [batch, response_len].
        returns: GAE returns, float [batch, response_len].
        response_mask: 0/1 float [batch, response_len].
        clip_range_value: ε_v, a float.
    Returns:
        (loss, clipfrac): clipfrac = fraction of valid tokens where the clipped error was larger.
    """
    clipped_values = ops.minimum(ops.maximum(values, old_values - clip_range_value), old_values + clip_range_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss_mat = 0.5 * ops.maximum(err_unclipped, err_clipped)
    loss = agg_loss(loss_mat, response_mask, loss_agg_mode, normalizer)
    clip_active = (err_clipped > err_unclipped).astype(values.dtype)
    clipfrac = ops.stop_gradient(masked_mean(clip_active, response_mask))
    return loss, clipfrac
