"""Per-token estimators of KL(π ‖ π_ref) from log-probabilities of tokens sampled from π.

Schulman, "Approximating KL Divergence" (2020): with log-ratio  log r = log π_ref(y) − log π(y)
and y ~ π,
    k1 = −log r                     unbiased, high variance, can be negative
    k2 = ½ (log r)²                 biased, low variance, ≥ 0
    k3 = (r − 1) − log r            unbiased, low variance, ≥ 0; log r clamped to ±K3_MAX_LOG_RATIO
    abs = |log r|                   a magnitude, not an estimator; kept for configs that use it.
The config selects one by name: ``get_kl_estimator("k3")``. ``kl_loss`` is the KL term GRPO adds to
its loss (Shao et al. 2024): the aggregated k3 of the policy against the reference.
"""
from mindspore import ops

from mindrlhf.algos.aggregation import agg_loss
from mindrlhf.algos.registry import Registry

# exp(log r) of k3 overflows float32 near log r = 89 and is already 3.1e26 at 61; veRL clamps at 10 too
# (k3 ≈ 2.2e4 there). The clamp stops the gradient past it, where the estimate means nothing anyway.
K3_MAX_LOG_RATIO = 10.0

KL_ESTIMATORS = Registry("KL estimator")
register_kl_estimator = KL_ESTIMATORS.register
get_kl_estimator = KL_ESTIMATORS.get


@register_kl_estimator("k1")
def kl_k1(logprobs, ref_logprobs):
    """k1 = log π − log π_ref.   [batch, response_len] → [batch, response_len]."""
    return logprobs - ref_logprobs


@register_kl_estimator("abs")
def kl_abs(logprobs, ref_logprobs):
    """|log π − log π_ref|.   [batch, response_len] → [batch, response_len]."""
    return ops.abs(logprobs - ref_logprobs)


@register_kl_estimator("k2")
def kl_k2(logprobs, ref_logprobs):
    """k2 = ½ (log π − log π_ref)².   [batch, response_len] → [batch, response_len]."""
    log_ratio = logprobs - ref_logprobs
    return 0.5 * log_ratio * log_ratio


@register_kl_estimator("k3")
def kl_k3(logprobs, ref_logprobs):
    """k3 = exp(log r) − log r − 1,  log r = clamp(log π_ref − log π, ±K3_MAX_LOG_RATIO)
    (≥ 0, unbiased for KL(π ‖ π_ref) where |log r| ≤ 10; finite for any finite log-probs).

    [batch, response_len] → [batch, response_len].
    """
    log_r = ops.clamp(ref_logprobs - logprobs, -K3_MAX_LOG_RATIO, K3_MAX_LOG_RATIO)
    return ops.exp(log_r) - log_r - 1.0


def kl_penalty(logprobs, ref_logprobs, estimator="k1"):
    """Per-token KL(π ‖ π_ref) estimate with the named estimator ("k1", "k2", "k3", "abs").

    Args:
        logprobs: log π(y_t) of the sampled tokens, float [batch, response_len].
        ref_logprobs: log π_ref(y_t) of the same tokens, float [batch, response_len].
        estimator: registered name; a Python string fixed when the graph is built.
    Returns:
        float [batch, response_len]; masking is the caller's (see ``token_level_rewards``).
    """
    return get_kl_estimator(estimator)(logprobs, ref_logprobs)


def kl_loss(logprobs, ref_logprobs, response_mask, estimator="k3", loss_agg_mode="token-mean", normalizer=None):
    """The KL to the reference as a loss term: agg_loss(KL_t(π ‖ π_ref), response_mask, loss_agg_mode, normalizer).

    GRPO (Shao et al. 2024) adds β times this (k3, gradient through log π) to the policy loss instead of
    putting −β·KL into the reward. Args as ``kl_penalty`` and ``agg_loss``; returns a 0-d tensor.
    """
    return agg_loss(get_kl_estimator(estimator)(logprobs, ref_logprobs), response_mask, loss_agg_mode, normalizer)
