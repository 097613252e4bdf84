"""Direct preference optimisation and its family: losses of a preference pair's sequence log-probs.

Every variant is a function of the pair's preference logit h, registered under its config name:

    reference-tied (sigmoid, ipo, hinge):  s(y) = log π(y) − log π_ref(y)       (log-probs summed over tokens)
    reference-free (simpo, orpo):          s(y) = log π(y) / |y|                (mean over the response's tokens)
    h = s(y_w) − s(y_l)                    (y_w chosen, y_l rejected)
    odds ratio (orpo):                     h = lo(s(y_w)) − lo(s(y_l)),  lo(s) = s − log(1 − e^s): log-odds of e^s

so adding one touches one function: ``@register_dpo_loss("name") def f(logits, beta, label_smoothing, gamma)
-> losses [batch]`` (``register_dpo_loss("name", reference_free=True)`` when its h is built without π_ref).
:func:`dpo_loss` builds h, applies the variant, adds the NLL term (RPO's, and ORPO's own) and returns the
implicit rewards β·s.
"""
import mindspore as ms
from mindspore import ops

from mindrlhf.algos.registry import Registry

DPO_LOSSES = Registry("DPO loss type")
get_dpo_loss = DPO_LOSSES.get
# Names of the losses with each property (graph mode reads these lists, not attributes of the functions).
REFERENCE_FREE = []  # h is built from π alone: no reference pass
LOG_ODDS = []  # h is the difference of the log-odds of the mean token probabilities (ORPO)
WITH_NLL = []  # the loss includes the chosen answer's NLL per token with weight 1 (ORPO's SFT term)


def register_dpo_loss(name, reference_free=False, log_odds=False, with_nll=False):
    """Decorator: ``@register_dpo_loss("sigmoid")`` adds a loss under ``name``; ``reference_free`` when its h
    is built from length-normalised policy log-probs (no reference pass), ``log_odds`` when from their
    log-odds, ``with_nll`` when the loss adds the chosen answer's NLL per token."""
    register = DPO_LOSSES.register(name)

    def add(fn):
        fn = register(fn)
        for flag, names in ((reference_free, REFERENCE_FREE), (log_odds, LOG_ODDS), (with_nll, WITH_NLL)):
            if flag:
                names.append(name)
        return fn

    return add


@register_dpo_loss("sigmoid")
def dpo_sigmoid(logits, beta, label_smoothing=0.0, gamma=0.0):
    """DPO (Rafailov et al. 2023), with conservative label smoothing ε (labels flipped w.p. ε; Mitchell 2023):

    loss = −(1 − ε) · log σ(β h) − ε · log σ(−β h)      logits h: [batch] → [batch]; ``gamma`` unused.
    """
    scaled = beta * logits
    return (1.0 - label_smoothing) * ops.softplus(-scaled) + label_smoothing * ops.softplus(scaled)


@register_dpo_loss("ipo")
def dpo_ipo(logits, beta, label_smoothing=0.0, gamma=0.0):
    """IPO (Azar et al. 2023): regress h to 1/(2β) instead of pushing it to infinity.

    loss = (h − 1/(2β))²      logits h: [batch] → [batch]; ``label_smoothing`` and ``gamma`` unused.
    """
    gap = logits - 1.0 / (2.0 * beta)
    return gap * gap


@register_dpo_loss("hinge")
def dpo_hinge(logits, beta, label_smoothing=0.0, gamma=0.0):
    """SLiC's hinge on the preference logit (Zhao et al. 2023; TRL's "hinge"), 1/β the margin in h:

    loss = max(0, 1 − β h)      logits h: [batch] → [batch]; ``label_smoothing`` and ``gamma`` unused.
    """
    return ops.relu(1.0 - beta * logits)


@register_dpo_loss("simpo", reference_free=True)
def dpo_simpo(logits, beta, label_smoothing=0.0, gamma=0.5):
    """SimPO (Meng et al. 2024): reference-free, h from length-normalised log-probs, target margin γ:

    loss = −(1 − ε) · log σ(β h − γ) − ε · log σ(−(β h − γ))
    h = log π(y_w)/|y_w| − log π(y_l)/|y_l|      logits h: [batch] → [batch].
    """
    scaled = beta * logits - gamma
    return (1.0 - label_smoothing) * ops.softplus(-scaled) + label_smoothing * ops.softplus(scaled)


@register_dpo_loss("orpo", reference_free=True, log_odds=True, with_nll=True)
def dpo_orpo(logits, beta, label_smoothing=0.0, gamma=0.0):
    """ORPO (Hong et al. 2024; TRL's ORPOTrainer): the chosen answer's NLL plus β times the odds-ratio loss,
    no reference:

    loss = −log π(y_w)/|y_w| − β · log σ(h),  h = log odds(y_w) − log odds(y_l),  odds(y) = p / (1 − p),
    p = exp(log π(y)/|y|). This function is the β · log σ term; :func:`dpo_loss` adds the NLL.
    logits h: [batch] → [batch]; ``label_smoothing`` and ``gamma`` unused.
    """
    return beta * ops.softplus(-logits)


def _log_odds(mean_logp):
    """log(p / (1 − p)) of p = exp(mean_logp); p is kept below 1 − 1e-6 so the odds stay finite."""
    s = ops.minimum(mean_logp, -1e-6)
    return s - ops.log(-ops.expm1(s))


def nll_weight(loss_type: str, sft_coef: float) -> float:
    """The weight of the chosen answer's NLL per token in the loss: RPO's ``sft_coef``, plus 1 for a variant
    whose loss includes it (ORPO)."""
    return sft_coef + (1.0 if loss_type in WITH_NLL else 0.0)


def is_reference_free(loss_type: str) -> bool:
    """Whether the variant's h ignores the reference model (then no reference pass is needed)."""
    get_dpo_loss(loss_type)  # an unknown name is an error, not "reference-tied"
    return loss_type in REFERENCE_FREE


def dpo_loss(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_tokens,
    rejected_tokens, beta=0.1, label_smoothing=0.0, loss_type="sigmoid", gamma=0.0, sft_coef=0.0,
):
    """Per-pair loss of a DPO variant, plus the optional RPO term, and the implicit rewards β · s(y).

    s(y)             = log π(y) − log π_ref(y), or log π(y) / |y| for a reference-free loss_type
    h                = s(y_w) − s(y_l), or for ORPO the difference of the log-odds of e^s(y)
    losses           = get_dpo_loss(loss_type)(h, β, ε, γ) + (sft_coef + [1 for ORPO]) · (−log π(y_w) / |y_w|)
    chosen_rewards   = β · s(y_w)      (no gradient; for logging)
    rejected_rewards = β · s(y_l)      (no gradient; for logging)

    The sft_coef term is RPO's NLL of the chosen answer per chosen token (Pang et al. 2024); ORPO's loss
    has the same term with weight 1.

    Args:
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: sequence
            log-probs, sums over each response's tokens, float [batch] (the ref ones unused when reference-free).
        chosen_tokens, rejected_tokens: |y|, the response lengths in tokens, float [batch] (floored at 1).
        beta: β; label_smoothing: ε ∈ [0, 0.5); loss_type: a registered name; gamma: SimPO's margin γ;
        sft_coef: weight of the NLL term (0 = off). loss_type and the floats are constants of the Cell.
    Returns:
        (losses, chosen_rewards, rejected_rewards), each float [batch]; the trainer sums or averages them.
    """
    chosen_len = ops.maximum(chosen_tokens.astype(ms.float32), 1.0)
    rejected_len = ops.maximum(rejected_tokens.astype(ms.float32), 1.0)
    if loss_type in REFERENCE_FREE:
        chosen_score = policy_chosen_logps / chosen_len
        rejected_score = policy_rejected_logps / rejected_len
    else:
        chosen_score = policy_chosen_logps - ref_chosen_logps
        rejected_score = policy_rejected_logps - ref_rejected_logps
    if loss_type in LOG_ODDS:
        logits = _log_odds(chosen_score) - _log_odds(rejected_score)
    else:
        logits = chosen_score - rejected_score
    losses = get_dpo_loss(loss_type)(logits, beta, label_smoothing, gamma)
    nll_coef = nll_weight(loss_type, sft_coef)
    if nll_coef != 0.0:
        losses = losses - nll_coef * policy_chosen_logps / chosen_len
    chosen_rewards = ops.stop_gradient(beta * chosen_score)
    rejected_rewards = ops.stop_gradient(beta * rejected_score)
    return losses, chosen_rewards, rejected_rewards
