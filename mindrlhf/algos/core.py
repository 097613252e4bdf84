"""Log-probabilities, entropy, and masked statistics: the building blocks of every RLHF loss.

Conventions for the whole ``algos`` package:
- masks are float tensors of 0.0/1.0 with the shape of the values they mask (1 = a real token);
- values at masked positions must be finite (they are multiplied by 0, and ``inf * 0`` is NaN);
- every function is made of tensor ops on static shapes, so it compiles inside ``nn.Cell.construct``
  (graph mode) and runs eagerly (PyNative) alike.
"""
import mindspore as ms
from mindspore import ops


def logprobs_from_logits(logits, labels):
    """Log-probability of each label under the softmax of its logits.

    log π(y_t | ·) = logits[t, y_t] − logsumexp_v(logits[t, v]),  via a max-shifted log_softmax.

    Args:
        logits: float [batch, seq_len, vocab].
        labels: int [batch, seq_len], token ids in [0, vocab).
    Returns:
        float [batch, seq_len].
    """
    logp_all = ops.log_softmax(logits, axis=-1)  # [B, T, V]
    index = ops.expand_dims(labels.astype(ms.int32), -1)  # [B, T, 1]
    return ops.squeeze(ops.gather_elements(logp_all, -1, index), -1)


def entropy_from_logits(logits):
    """Entropy of the softmax distribution at every position.

    H_t = −Σ_v p_v log p_v,  p = softmax(logits_t),  computed from log_softmax so p log p never
    meets log 0.

    Args:
        logits: float [batch, seq_len, vocab].
    Returns:
        float [batch, seq_len].
    """
    logp_all = ops.log_softmax(logits, axis=-1)
    return -ops.reduce_sum(ops.exp(logp_all) * logp_all, -1)


def masked_sum(x, mask, axis=None):
    """Σ x·mask over ``axis`` (all axes when None).  x, mask: same shape; mask is 0/1 float."""
    if axis is None:
        return ops.reduce_sum(x * mask)
    return ops.reduce_sum(x * mask, axis)


def masked_count(mask, axis=None):
    """Number of valid entries, Σ mask, floored at 1 so that dividing by it never divides by 0."""
    count = ops.reduce_sum(mask) if axis is None else ops.reduce_sum(mask, axis)
    return ops.maximum(count, 1.0)


def masked_mean(x, mask, axis=None):
    """Σ x·mask / Σ mask over ``axis`` (all axes when None); 0 where nothing is valid.

    x, mask: same shape, e.g. [batch, response_len]; mask is 0/1 float.
    """
    return masked_sum(x, mask, axis) / masked_count(mask, axis)


def masked_var(x, mask, unbiased=True):
    """Variance of the valid entries of x (all axes), two-pass for accuracy.

    var = Σ mask·(x − mean)² / n, times n / (n − 1) when ``unbiased`` (Bessel's correction;
    with n = 1 the variance is 0).   x, mask: same shape; returns a 0-d tensor.
    """
    mean = masked_mean(x, mask)
    centered = x - mean
    sum_sq = masked_sum(centered * centered, mask)
    count = masked_count(mask)
    if unbiased:
        return sum_sq / ops.maximum(count - 1.0, 1.0)
    return sum_sq / count


def masked_whiten(x, mask, shift_mean=True, unbiased=True, eps=1e-8):
    """Normalise the valid entries of x to zero mean and unit variance.

    whiten(x) = (x − mean) / sqrt(var + eps), plus mean back when not ``shift_mean`` (this keeps the
    sign of e.g. rewards while rescaling them).  Masked positions come out 0.

    Args:
        x, mask: same shape, e.g. [batch, response_len]; mask is 0/1 float.
    Returns:
        same shape as x.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased)
    whitened = (x - mean) * ops.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def masked_moments(x, mask):
    """The sufficient statistics for whitening: (Σ x·m, Σ x²·m, Σ m), each a 0-d tensor.

    Sums add across micro-batches and ranks (all-reduce SUM), so whitening a batch split over ranks
    with the combined moments equals whitening the whole batch (see ``whiten_from_moments``).
    """
    return masked_sum(x, mask), masked_sum(x * x, mask), ops.reduce_sum(mask)


def whiten_from_moments(x, mask, total, total_sq, count, shift_mean=True, unbiased=True, eps=1e-8):
    """``masked_whiten`` with the mean and variance taken from (possibly all-reduced) moments.

    mean = total / n,   var = (total_sq − n·mean²) / (n − 1 if unbiased else n),
    whiten(x) = (x − mean) / sqrt(var + eps) (+ mean when not ``shift_mean``); masked positions 0.

    The one-pass variance loses precision when |mean| ≫ std (float32 cancellation); whiten
    quantities of moderate scale (advantages, rewards) with it.

    Args:
        x, mask: same shape, the local shard; total, total_sq, count: 0-d tensors summed over all
        shards (from ``masked_moments``).
    """
    n = ops.maximum(count, 1.0)
    mean = total / n
    sum_sq_dev = ops.maximum(total_sq - n * mean * mean, 0.0)  # rounding can dip below 0
    if unbiased:
        var = sum_sq_dev / ops.maximum(n - 1.0, 1.0)
    else:
        var = sum_sq_dev / n
    whitened = (x - mean) * ops.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask
