"""Direct Preference Optimisation losses (registered: "sigmoid", "ipo").

Every variant is a function of the preference logit
    h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l))
(y_w chosen, y_l rejected; log-probs summed over each response's tokens), so adding one touches one
function: ``@register_dpo_loss("name") def f(logits, beta, label_smoothing) -> losses [batch]``.
"""
from mindspore import ops

from mindrlhf.algos.registry import Registry

DPO_LOSSES = Registry("DPO loss type")
register_dpo_loss = DPO_LOSSES.register
get_dpo_loss = DPO_LOSSES.get


@register_dpo_loss("sigmoid")
def dpo_sigmoid(logits, beta, label_smoothing=0.0):
    """DPO (Rafailov et al. 2023), with conservative label smoothing ε (labels flipped w.p. ε):

    loss = −(1 − ε) · log σ(β h) − ε · log σ(−β h)      logits h: [batch] → [batch]
    """
    scaled = beta * logits
    return (1.0 - label_smoothing) * ops.softplus(-scaled) + label_smoothing * ops.softplus(scaled)


@register_dpo_loss("ipo")
def dpo_ipo(logits, beta, label_smoothing=0.0):
    """IPO (Azar et al. 2023): regress h to 1/(2β) instead of pushing it to infinity.

    loss = (h − 1/(2β))²      logits h: [batch] → [batch]; ``label_smoothing`` is unused.
    """
    gap = logits - 1.0 / (2.0 * beta)
    return gap * gap


def dpo_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
    beta=0.1, label_smoothing=0.0, loss_type="sigmoid",
):
    """Per-pair DPO loss and the implicit rewards β · log(π / π_ref).

    h                = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))
    losses           = get_dpo_loss(loss_type)(h, beta, label_smoothing)
    chosen_rewards   = β · (log π(y_w) − log π_ref(y_w))     (no gradient; for logging)
    rejected_rewards = β · (log π(y_l) − log π_ref(y_l))     (no gradient; for logging)

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps:
            sequence log-probs (sums over response tokens), float [batch].
        beta: β, a float; label_smoothing: ε ∈ [0, 0.5); loss_type: a registered name.
    Returns:
        (losses, chosen_rewards, rejected_rewards), each float [batch]; the trainer takes the mean.
    """
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    losses = get_dpo_loss(loss_type)(chosen_log_ratio - rejected_log_ratio, beta, label_smoothing)
    chosen_rewards = ops.stop_gradient(beta * chosen_log_ratio)
    rejected_rewards = ops.stop_gradient(beta * rejected_log_ratio)
    return losses, chosen_rewards, rejected_rewards
