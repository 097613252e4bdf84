"""The reward model's ranking loss over K ranked responses per prompt (InstructGPT, Ouyang et al. 2022).

InstructGPT shows labelers K responses to a prompt and trains on all C(K, 2) comparisons of the
ranking at once: each prompt's K rewards are computed in one forward pass and every pair is a
term, and the loss is averaged per prompt first so prompts with larger K do not dominate (and the
model does not overfit to one prompt's correlated pairs).
"""
from mindspore import ops


def _pairs(rewards, k_mask):
    """Pairwise reward gaps and the mask of valid ordered pairs.

    Returns diff [P, K, K] with diff[p, i, j] = r_i − r_j, and pair_mask [P, K, K] = 1 where i < j and
    both slots exist (slot i ranked above slot j).
    """
    k = rewards.shape[-1]
    slot = ops.arange(k)
    upper = (slot.reshape(k, 1) < slot.reshape(1, k)).astype(rewards.dtype)  # [K, K], i < j
    diff = ops.expand_dims(rewards, 2) - ops.expand_dims(rewards, 1)
    pair_mask = ops.expand_dims(k_mask, 2) * ops.expand_dims(k_mask, 1) * upper
    return diff, pair_mask


def _mean_over_pairs(pair_values, pair_mask):
    """(each prompt's mean over its valid pairs [P] (0 without one), 1 where a prompt has a pair [P])."""
    pairs_per_prompt = ops.reduce_sum(pair_mask, (1, 2))  # [P], C(K_p, 2)
    per_prompt = ops.reduce_sum(pair_values * pair_mask, (1, 2)) / ops.maximum(pairs_per_prompt, 1.0)
    return per_prompt, (pairs_per_prompt > 0).astype(per_prompt.dtype)


def _mean_over_pairs_then_prompts(pair_values, pair_mask):
    per_prompt, has_pairs = _mean_over_pairs(pair_values, pair_mask)  # prompts with < 2 responses drop out
    return ops.reduce_sum(per_prompt * has_pairs) / ops.maximum(ops.reduce_sum(has_pairs), 1.0)


def ranking_loss(rewards, k_mask, margin=0.0):
    """loss = mean_p [ 1/C(K_p,2) · Σ_{i<j valid} −log σ(r_i − r_j − margin) ].

    −log σ(x) is computed as softplus(−x), finite for any gap.

    Args:
        rewards: r_φ(x_p, y_{p,k}), float [P, K], each row ordered BEST FIRST.
        k_mask: 0/1 float [P, K], 1 where response slot k exists; padded slots (usually the last
            ones) are 0 and their rewards are ignored.
        margin: float; a pair counts as won only once r_i − r_j exceeds it (Llama 2's margin loss).
    Returns:
        0-d tensor; prompts with fewer than 2 responses are left out of the mean.
    """
    diff, pair_mask = _pairs(rewards, k_mask)
    return _mean_over_pairs_then_prompts(ops.softplus(-(diff - margin)), pair_mask)


def prompt_ranking_losses(rewards, k_mask, margin=0.0):
    """ℓ_p = 1/C(K_p,2) · Σ_{i<j valid} −log σ(r_i − r_j − margin) for each prompt: the terms whose mean is
    :func:`ranking_loss`, for losses that weight prompts (a bootstrap resample's counts).

    rewards, k_mask: [P, K] as in :func:`ranking_loss` → [P]; 0 for a prompt with fewer than 2 responses.
    """
    diff, pair_mask = _pairs(rewards, k_mask)
    return _mean_over_pairs(ops.softplus(-(diff - margin)), pair_mask)[0]


def pairwise_accuracy(rewards, k_mask):
    """Fraction of valid pairs i < j ranked correctly (r_i > r_j; ties count as wrong), averaged per
    prompt then over prompts like ``ranking_loss``.   rewards, k_mask: [P, K] → 0-d tensor."""
    diff, pair_mask = _pairs(rewards, k_mask)
    return _mean_over_pairs_then_prompts((diff > 0).astype(rewards.dtype), pair_mask)
