"""Next-token choice from logits [B, V]: pure tensor functions, compilable inside the decode graph.

Randomness comes in as data: one uniform number u in [0, 1) per (step, row), drawn on the host from
numpy's seeded generator. So the same seed gives the same samples, in graph and PyNative mode alike,
and the compiled graph holds no random-number state that would leak from one call into the next.
"""
import mindspore as ms
from mindspore import ops

from mindrlhf.nn.layers import MASK_VALUE


def token_logprob(logits, token):
    """log softmax(logits)[token]; logits [B, V] fp32, token [B] int32 -> [B]."""
    logprobs = ops.log_softmax(logits, -1)
    return ops.gather_elements(logprobs, 1, token.expand_dims(1)).squeeze(1)


def filter_top_k(logits, k):
    """Keep the k largest logits of each row, set the rest to MASK_VALUE (Fan et al., 2018).
    Ties with the k-th value are kept."""
    kth = ops.topk(logits, k)[0][:, k - 1:k]  # [B, 1]
    return ops.select(logits < kth, ops.full_like(logits, MASK_VALUE), logits)


def filter_top_p(logits, top_p):
    """Nucleus filter (Holtzman et al., 2020): keep the smallest set of highest-probability tokens whose
    probabilities sum to >= top_p; the most likely token is always kept. top_p: scalar fp32 tensor.

    In the descending order, token j is dropped iff sum_{i<j} p_i >= top_p; the kept set is a prefix,
    so it is 'logits >= the smallest kept sorted logit'."""
    sorted_logits, _ = ops.sort(logits, -1, True)
    probs = ops.softmax(sorted_logits, -1)
    mass_before = ops.cumsum(probs, -1) - probs
    kept = (mass_before < top_p).astype(ms.int32)
    num_kept = ops.maximum(kept.sum(-1, keepdims=True), 1)                 # [B, 1]
    threshold = ops.gather_elements(sorted_logits, 1, num_kept - 1)        # [B, 1]
    return ops.select(logits < threshold, ops.full_like(logits, MASK_VALUE), logits)


def sample_inverse_cdf(logits, u):
    """Draw one token per row from softmax(logits) by inverting the CDF at u [B] in [0, 1):
    token = #{j : cdf_j <= u * cdf_last}, the first j with cdf_j > u * cdf_last. A token of zero
    probability can never be drawn: its cdf equals its predecessor's."""
    probs = ops.softmax(logits, -1)
    cdf = ops.cumsum(probs, -1)
    target = u.expand_dims(1) * cdf[:, -1:]
    token = (cdf <= target).astype(ms.int32).sum(-1)
    return ops.minimum(token, logits.shape[-1] - 1)
