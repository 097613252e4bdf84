"""The per-token reward of RLHF-PPO: the reward model's score at the end, a KL penalty everywhere.

Ziegler et al. 2019 / Ouyang et al. 2022:  R(x, y) = r_φ(x, y) − β · KL(π ‖ π_ref),  spread over the
response as r_t = −β·kl_t on every token, plus the sequence score on the last one.
"""
from mindspore import ops


def last_token_mask(response_mask):
    """1.0 at the last valid token of each row, 0 elsewhere (rows with no valid token: all 0).

    The last valid token is the valid one with no valid token after it: its suffix count of valid
    tokens, Σ_{s≥t} m_s, is exactly 1.   response_mask: 0/1 float [batch, response_len].
    """
    suffix_count = ops.sum(response_mask, -1, keepdim=True) - ops.cumsum(response_mask, -1) + response_mask
    return response_mask * (suffix_count == 1.0).astype(response_mask.dtype)


def token_level_rewards(score, kl, response_mask, kl_coef):
    """r_t = −kl_coef · kl_t · m_t  +  score · [t is the last valid token].

    Rows may end early (EOS): the score lands on each row's own last valid token, and masked
    positions get 0.

    Args:
        score: reward-model score per sequence, float [batch].
        kl: per-token KL estimate (``kl_penalty``), float [batch, response_len].
        response_mask: 0/1 float [batch, response_len].
        kl_coef: β, a float or 0-d tensor (from a KL controller).
    Returns:
        float [batch, response_len].
    """
    kl_rewards = -kl_coef * kl * response_mask
    return kl_rewards + ops.expand_dims(score, -1) * last_token_mask(response_mask)
