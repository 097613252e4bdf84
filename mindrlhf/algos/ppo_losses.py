"""Policy losses (registered: "clip", "kl_penalty", "clip_higher", "dual_clip", "gspo") and PPO's clipped
value loss.

Every policy loss takes the same arguments,

    fn(logprobs, old_logprobs, advantages, response_mask, clip_range=0.2, kl_coef=0.0,
       loss_agg_mode="token-mean", normalizer=None, clip_range_high=None, clip_c=3.0)

and returns ``(loss, clipfrac, approx_kl)``, so a trainer calls ``get_policy_loss(config_name)(...)``
without knowing which it got; a loss ignores the arguments it has no use for ("clip" ignores ``kl_coef``,
``clip_range_high`` and ``clip_c``; "kl_penalty" every clip argument). ``clip_range`` is ε_low and
``clip_range_high`` ε_high (None: = ε_low). The metrics carry no gradient:
    clipfrac  = fraction of valid tokens where clipping was active (0 for "kl_penalty"),
    approx_kl = masked mean of ½ (log π − log π_old)²  (the k2 estimator of KL(π_old ‖ π)).
"""
from mindspore import ops

from mindrlhf.algos.aggregation import agg_loss
from mindrlhf.algos.core import masked_count, masked_mean, masked_sum
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
    clip_range=0.2, kl_coef=0.0, loss_agg_mode="token-mean", normalizer=None, clip_range_high=None, clip_c=3.0,
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
        kl_coef, clip_range_high, clip_c: unused here; accepted so all policy losses share one call.
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
    clip_range=0.2, kl_coef=0.0, loss_agg_mode="token-mean", normalizer=None, clip_range_high=None, clip_c=3.0,
):
    """PPO with an (adaptive) KL penalty instead of clipping (Schulman et al. 2017, section 4).

    ℓ_t  = −ratio_t · A_t + β · KL_t(π_old ‖ π),   ratio_t = exp(log π − log π_old)
    KL_t = ratio_t − log ratio_t − 1   (the k3 estimator on tokens sampled from π_old: ≥ 0, unbiased,
           and its gradient is unbiased for ∇ KL(π_old ‖ π))
    loss = agg_loss(ℓ, response_mask, loss_agg_mode, normalizer)

    β is ``kl_coef``, adapted between updates by ``adapt_kl_penalty``. Arguments and returns as for
    "clip"; the clip arguments are unused and clipfrac is 0.
    """
    ratio = ops.exp(logprobs - old_logprobs)
    kl = kl_k3(old_logprobs, logprobs)  # estimates KL(π_old ‖ π)
    loss_mat = -advantages * ratio + kl_coef * kl
    loss = agg_loss(loss_mat, response_mask, loss_agg_mode, normalizer)
    clipfrac = ops.zeros((), logprobs.dtype)
    return loss, clipfrac, _approx_kl(logprobs, old_logprobs, response_mask)


def _clipped(ratio, advantages, clip_low, clip_high):
    """(−A·r, max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high))): the unclipped and the clipped per-token loss."""
    unclipped = -advantages * ratio
    clipped = -advantages * ops.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return unclipped, ops.maximum(unclipped, clipped)


def _high(clip_range, clip_range_high):
    return clip_range if clip_range_high is None else clip_range_high


def _finish(loss_mat, unclipped, logprobs, old_logprobs, response_mask, loss_agg_mode, normalizer):
    """(loss, clipfrac, approx_kl): aggregate ``loss_mat``; clipfrac counts tokens where it differs from −A·r."""
    loss = agg_loss(loss_mat, response_mask, loss_agg_mode, normalizer)
    clip_active = ops.not_equal(loss_mat, unclipped).astype(logprobs.dtype)
    clipfrac = ops.stop_gradient(masked_mean(clip_active, response_mask))
    return loss, clipfrac, _approx_kl(logprobs, old_logprobs, response_mask)


@register_policy_loss("clip_higher")
def policy_loss_clip_higher(
    logprobs, old_logprobs, advantages, response_mask,
    clip_range=0.2, kl_coef=0.0, loss_agg_mode="token-mean", normalizer=None, clip_range_high=None, clip_c=3.0,
):
    """The clipped ratio with decoupled bounds: DAPO's clip-higher (Yu et al. 2025).

    ratio_t = exp(log π(y_t) − log π_old(y_t))
    ℓ_t     = −min(ratio_t · A_t,  clip(ratio_t, 1 − ε_low, 1 + ε_high) · A_t)
    loss    = agg_loss(ℓ, response_mask, loss_agg_mode, normalizer)

    ε_low = ``clip_range``, ε_high = ``clip_range_high`` (DAPO: 0.2 and 0.28): a larger upper bound lets
    unlikely tokens with a positive advantage grow faster, which keeps the policy's entropy from
    collapsing. With ε_high = ε_low it is "clip". Arguments and returns as "clip"; ``kl_coef`` and
    ``clip_c`` are unused.
    """
    ratio = ops.exp(logprobs - old_logprobs)
    unclipped, loss_mat = _clipped(ratio, advantages, clip_range, _high(clip_range, clip_range_high))
    return _finish(loss_mat, unclipped, logprobs, old_logprobs, response_mask, loss_agg_mode, normalizer)


@register_policy_loss("dual_clip")
def policy_loss_dual_clip(
    logprobs, old_logprobs, advantages, response_mask,
    clip_range=0.2, kl_coef=0.0, loss_agg_mode="token-mean", normalizer=None, clip_range_high=None, clip_c=3.0,
):
    """Dual-clip PPO (Ye et al. 2020): the clipped ratio, and for A_t < 0 a second bound c · |A_t|.

    ℓ'_t = −min(ratio_t · A_t,  clip(ratio_t, 1 − ε_low, 1 + ε_high) · A_t)        (as "clip_higher")
    ℓ_t  = min(ℓ'_t, −c · A_t)  where A_t < 0,   ℓ'_t  where A_t ≥ 0
    loss = agg_loss(ℓ, response_mask, loss_agg_mode, normalizer)

    With a negative advantage the clipped loss −ratio·A grows without bound as the ratio does (a token the
    policy now likes far more than when it sampled it); the second bound caps it at ratio = c > 1 (and
    stops its gradient there). ``clip_c`` is c (veRL's default 3). Arguments and returns as "clip";
    ``kl_coef`` is unused.
    """
    ratio = ops.exp(logprobs - old_logprobs)
    unclipped, clipped = _clipped(ratio, advantages, clip_range, _high(clip_range, clip_range_high))
    loss_mat = ops.select(advantages < 0, ops.minimum(clipped, -clip_c * advantages), clipped)
    return _finish(loss_mat, unclipped, logprobs, old_logprobs, response_mask, loss_agg_mode, normalizer)


@register_policy_loss("gspo")
def policy_loss_gspo(
    logprobs, old_logprobs, advantages, response_mask,
    clip_range=0.2, kl_coef=0.0, loss_agg_mode="token-mean", normalizer=None, clip_range_high=None, clip_c=3.0,
):
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one importance ratio per sequence.

    log s_i = (1 / |y_i|) Σ_t m_t · (log π(y_t) − log π_old(y_t))      the geometric mean of token ratios
    s_i,t   = exp(sg[log s_i] + log π(y_t) − sg[log π(y_t)])          (GSPO-token: value s_i, gradient
                                                                     of each token's own log π)
    ℓ_t     = −min(s_i,t · A_t,  clip(s_i,t, 1 − ε_low, 1 + ε_high) · A_t)
    loss    = agg_loss(ℓ, response_mask, loss_agg_mode, normalizer)

    The whole sequence is clipped or not. With one advantage per sequence (GRPO's) and the paper's
    aggregation ``seq-mean-token-mean`` this is GSPO's objective −min(s_i·A_i, clip(s_i)·A_i) averaged
    over sequences. The paper's ranges are far narrower than PPO's (ε_low = 3e-4, ε_high = 4e-4), since
    a sequence's ratio moves much less than a token's. log s_i is clamped at 10 (veRL too), so s_i is
    finite. Where every token of a sequence has the same ratio (e.g. one-token answers) it equals
    "clip_higher". Arguments and returns as "clip"; ``kl_coef`` and ``clip_c`` are unused.
    """
    seq_log_ratio = masked_sum(logprobs - old_logprobs, response_mask, -1) / masked_count(response_mask, -1)  # [batch]
    seq_log_ratio = ops.minimum(ops.stop_gradient(seq_log_ratio), 10.0)
    ratio = ops.exp(ops.expand_dims(seq_log_ratio, -1) + logprobs - ops.stop_gradient(logprobs))
    unclipped, loss_mat = _clipped(ratio, advantages, clip_range, _high(clip_range, clip_range_high))
    return _finish(loss_mat, unclipped, logprobs, old_logprobs, response_mask, loss_agg_mode, normalizer)


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
