"""Per-token estimators of KL(π ‖ π_ref) from log-probabilities of tokens sampled from π.

Schulman, "Approximating KL Divergence" (2020): with log-ratio  log r = log π_ref(y) − log π(y)
and y ~ π,
    k1 = −log r                     unbiased, high variance, can be negative
    k2 = ½ (log r)²                 biased, low variance, ≥ 0
    k3 = (r − 1) − log r            unbiased, low variance, ≥ 0
    abs = |log r|                   a magnitude, not an estimator; kept for configs that use it.
The config selects one by name: ``get_kl_estimator("k3")``.
"""
from mindspore import ops

from mindrlhf.algos.registry import Registry

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
    """k3 = exp(log π_ref − log π) − (log π_ref − log π) − 1  (≥ 0, unbiased for KL(π ‖ π_ref)).

    [batch, response_len] → [batch, response_len].
    """
    log_r = ref_logprobs - logprobs
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
