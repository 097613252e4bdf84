"""How a per-token loss matrix becomes one scalar: one named choice, split-invariant.

Each mode is a sum over the batch divided by a normalizer. By default the normalizer counts the
local batch; a trainer that splits a batch into micro-batches (or ranks) passes the count of the
whole batch instead, and then the micro-batch losses, and their gradients, add up exactly to the
full-batch loss and gradient.
"""
from mindspore import ops

from mindrlhf.algos.core import masked_count

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def agg_loss(loss_mat, loss_mask, loss_agg_mode="token-mean", normalizer=None):
    """Reduce ``loss_mat`` [batch, response_len] to a scalar.

    token-mean:           Σ_{b,t} m·ℓ / N_tok    (every valid token weighs the same)
    seq-mean-token-sum:   Σ_b (Σ_t m·ℓ) / N_seq
    seq-mean-token-mean:  Σ_b (Σ_t m·ℓ / Σ_t m) / N_seq   (every sequence weighs the same)
    seq-mean-token-sum-norm:  Σ_b (Σ_t m·ℓ / L) / N_seq   (Dr. GRPO, Liu et al. 2025: L = response_len,
                          the padded width, a constant when responses are padded to max_new_tokens, so
                          long answers are not down-weighted per token as with seq-mean-token-mean)

    N_tok defaults to Σ m and N_seq to the number of rows with at least one valid token; pass
    ``normalizer`` (a float or 0-d tensor: the global token count for token-mean, the global sequence
    count otherwise) to make micro-batch losses sum to the full-batch loss.

    Args:
        loss_mat: float [batch, response_len].
        loss_mask: 0/1 float [batch, response_len].
        loss_agg_mode: one of LOSS_AGG_MODES (a Python string, fixed when the graph is built).
        normalizer: None, float, or 0-d tensor.
    Returns:
        0-d tensor.
    """
    if loss_agg_mode == "token-mean":
        total = ops.reduce_sum(loss_mat * loss_mask)
        if normalizer is None:
            normalizer = masked_count(loss_mask)
        return total / normalizer
    if loss_agg_mode == "seq-mean-token-sum":
        seq_losses = ops.reduce_sum(loss_mat * loss_mask, -1)  # [batch]
    elif loss_agg_mode == "seq-mean-token-mean":
        seq_losses = ops.reduce_sum(loss_mat * loss_mask, -1) / masked_count(loss_mask, -1)
    elif loss_agg_mode == "seq-mean-token-sum-norm":
        seq_losses = ops.reduce_sum(loss_mat * loss_mask, -1) / float(loss_mat.shape[-1])
    else:
        raise ValueError(
            f"agg_loss: unknown loss_agg_mode {loss_agg_mode!r}; valid modes: {', '.join(LOSS_AGG_MODES)}"
        )
    if normalizer is None:
        seq_valid = (ops.reduce_sum(loss_mask, -1) > 0).astype(loss_mat.dtype)
        normalizer = masked_count(seq_valid)
    return ops.reduce_sum(seq_losses) / normalizer
