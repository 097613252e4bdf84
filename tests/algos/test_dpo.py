"""DPO losses (sigmoid with label smoothing, IPO, hinge, SimPO, ORPO) and the RPO term against hand numbers."""
import math

import numpy as np
import pytest

from mindrlhf.algos import DPO_LOSSES, dpo_loss, get_dpo_loss, is_reference_free, nll_weight

from .cells import FnCell, GradCell, pynative, t

POLICY_CHOSEN = [-1.0, -2.0]
POLICY_REJECTED = [-3.0, -1.0]
REF_CHOSEN = [-1.5, -2.0]
REF_REJECTED = [-2.5, -2.0]
CHOSEN_TOKENS = [2.0, 1.0]
REJECTED_TOKENS = [3.0, 1.0]
ARGS = tuple(map(t, (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, CHOSEN_TOKENS, REJECTED_TOKENS)))
# log-ratios: chosen (0.5, 0.0), rejected (−0.5, 1.0)  →  h = (1.0, −1.0)
# SimPO: mean log-probs chosen (−0.5, −2.0), rejected (−1.0, −1.0)  →  h = (0.5, −1.0)


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def losses(loss_type, **kw):
    return FnCell(dpo_loss, loss_type=loss_type, **kw)(*ARGS)[0].asnumpy()


def test_sigmoid_hand_numbers_graph():
    out, chosen_rewards, rejected_rewards = FnCell(dpo_loss, beta=0.1)(*ARGS)
    # −log σ(β h) = softplus(−β h)
    np.testing.assert_allclose(out.asnumpy(), [softplus(-0.1), softplus(0.1)], rtol=1e-5)
    np.testing.assert_allclose(chosen_rewards.asnumpy(), [0.05, 0.0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rejected_rewards.asnumpy(), [-0.05, 0.1], rtol=1e-5, atol=1e-7)


def test_sigmoid_gradient():
    # d/d log π(y_w) of softplus(−β h) = −β · σ(−β h)
    _, grad = GradCell(dpo_loss, beta=0.1)(*ARGS)
    np.testing.assert_allclose(grad.asnumpy(), [-0.1 * sigmoid(-0.1), -0.1 * sigmoid(0.1)], rtol=1e-5)


def test_label_smoothing_ipo_and_hinge_pynative():
    pynative()
    out = dpo_loss(*ARGS, beta=0.1, label_smoothing=0.1)[0].asnumpy()
    expected = [0.9 * softplus(-0.1) + 0.1 * softplus(0.1), 0.9 * softplus(0.1) + 0.1 * softplus(-0.1)]
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # IPO: (h − 1/(2β))² = (1 − 5)², (−1 − 5)²
    np.testing.assert_allclose(dpo_loss(*ARGS, beta=0.1, loss_type="ipo")[0].asnumpy(), [16.0, 36.0], rtol=1e-5)
    # hinge: max(0, 1 − β h) = max(0, 1 − 2), max(0, 1 + 2)
    np.testing.assert_allclose(dpo_loss(*ARGS, beta=2.0, loss_type="hinge")[0].asnumpy(), [0.0, 3.0], atol=1e-6)


def test_ipo_and_hinge_graph():
    np.testing.assert_allclose(losses("ipo", beta=0.1), [16.0, 36.0], rtol=1e-5)
    np.testing.assert_allclose(losses("hinge", beta=0.1), [0.9, 1.1], rtol=1e-5)


def test_simpo_is_length_normalised_and_reference_free():
    # β h − γ = 2·(0.5, −1.0) − 0.5 = (0.5, −2.5)
    out, chosen_rewards, rejected_rewards = FnCell(dpo_loss, beta=2.0, gamma=0.5, loss_type="simpo")(*ARGS)
    np.testing.assert_allclose(out.asnumpy(), [softplus(-0.5), softplus(2.5)], rtol=1e-5)
    np.testing.assert_allclose(chosen_rewards.asnumpy(), [-1.0, -4.0], rtol=1e-5)  # β · log π(y) / |y|
    np.testing.assert_allclose(rejected_rewards.asnumpy(), [-2.0, -2.0], rtol=1e-5)
    # the reference log-probs do not enter: any other values give the same loss
    other = (ARGS[0], ARGS[1], t([9.0, -9.0]), t([3.0, 3.0]), ARGS[4], ARGS[5])
    again = FnCell(dpo_loss, beta=2.0, gamma=0.5, loss_type="simpo")(*other)[0]
    np.testing.assert_allclose(again.asnumpy(), out.asnumpy(), rtol=1e-6)
    # with label smoothing ε = 0.1: 0.9 softplus(−z) + 0.1 softplus(z)
    smoothed = losses("simpo", beta=2.0, gamma=0.5, label_smoothing=0.1)
    np.testing.assert_allclose(smoothed, [0.9 * softplus(-0.5) + 0.1 * softplus(0.5),
                                          0.9 * softplus(2.5) + 0.1 * softplus(-2.5)], rtol=1e-5)


def test_simpo_gradient_is_divided_by_the_chosen_length():
    # d/d log π(y_w) of softplus(−(β h − γ)) = −β σ(−(β h − γ)) / |y_w|
    _, grad = GradCell(dpo_loss, beta=2.0, gamma=0.5, loss_type="simpo")(*ARGS)
    np.testing.assert_allclose(grad.asnumpy(), [-2.0 * sigmoid(-0.5) / 2.0, -2.0 * sigmoid(2.5) / 1.0], rtol=1e-5)


def test_sft_coef_adds_the_chosen_nll_per_token():
    # RPO: + α · (−log π(y_w) / |y_w|) = 0.5 · (1/2, 2/1)
    out = losses("sigmoid", beta=0.1, sft_coef=0.5)
    np.testing.assert_allclose(out, [softplus(-0.1) + 0.25, softplus(0.1) + 1.0], rtol=1e-5)
    _, grad = GradCell(dpo_loss, beta=0.1, sft_coef=0.5)(*ARGS)
    np.testing.assert_allclose(grad.asnumpy(), [-0.1 * sigmoid(-0.1) - 0.25, -0.1 * sigmoid(0.1) - 0.5], rtol=1e-5)


def test_beta_to_zero():
    beta = 1e-6
    np.testing.assert_allclose(losses("sigmoid", beta=beta), [math.log(2.0)] * 2, rtol=1e-5)
    np.testing.assert_allclose(losses("hinge", beta=beta), [1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(losses("simpo", beta=beta, gamma=0.5), [softplus(0.5)] * 2, rtol=1e-5)
    # the gradient of the sigmoid loss vanishes as −β/2: nothing moves the policy at β → 0
    _, grad = GradCell(dpo_loss, beta=beta)(*ARGS)
    np.testing.assert_allclose(grad.asnumpy(), [-beta / 2] * 2, rtol=1e-4)
    # IPO's target 1/(2β) runs away: (h − 500)² at β = 1e-3
    np.testing.assert_allclose(losses("ipo", beta=1e-3), [499.0 ** 2, 501.0 ** 2], rtol=1e-5)


def test_equal_log_ratios():
    # the policy moved chosen and rejected alike (log-ratio 0.7 each): h = 0, equal rewards
    ref = (t([-2.0, -5.0]), t([-1.0, -3.0]))
    policy = (t([-1.3, -4.3]), t([-0.3, -2.3]))
    args = (*policy, *ref, ARGS[4], ARGS[5])
    expected = {"sigmoid": math.log(2.0), "ipo": 25.0, "hinge": 1.0}  # ipo: (0 − 1/(2·0.1))²
    for loss_type, value in expected.items():
        out, chosen_rewards, rejected_rewards = FnCell(dpo_loss, beta=0.1, loss_type=loss_type)(*args)
        np.testing.assert_allclose(out.asnumpy(), [value] * 2, rtol=1e-5, err_msg=loss_type)
        np.testing.assert_allclose(chosen_rewards.asnumpy(), [0.07, 0.07], rtol=1e-4)
        np.testing.assert_allclose(rejected_rewards.asnumpy(), chosen_rewards.asnumpy(), rtol=1e-6)
    # conservative DPO at h = 0 is log 2 whatever ε
    smoothed = FnCell(dpo_loss, beta=0.1, label_smoothing=0.2)(*args)[0]
    np.testing.assert_allclose(smoothed.asnumpy(), [math.log(2.0)] * 2, rtol=1e-5)


def test_dpo_registry():
    assert DPO_LOSSES.names() == ["hinge", "ipo", "orpo", "sigmoid", "simpo"]
    assert is_reference_free("simpo") and is_reference_free("orpo") and not is_reference_free("sigmoid")
    assert nll_weight("orpo", 0.0) == 1.0 and nll_weight("orpo", 0.3) == 1.3 and nll_weight("simpo", 0.0) == 0.0
    with pytest.raises(ValueError, match="unknown DPO loss type 'kto'.*hinge, ipo, orpo, sigmoid, simpo"):
        get_dpo_loss("kto")
    with pytest.raises(ValueError, match="unknown DPO loss type"):
        is_reference_free("kto")


def log_odds(m):
    return m - math.log1p(-math.exp(m))


def test_orpo_hand_numbers_and_gradient():
    # mean log-probs: chosen (−0.5, −2.0), rejected (−1.0, −1.0); h = odds(m_w) − odds(m_l)
    beta = 0.1
    h = [log_odds(-0.5) - log_odds(-1.0), log_odds(-2.0) - log_odds(-1.0)]
    out, chosen_rewards, rejected_rewards = FnCell(dpo_loss, beta=beta, loss_type="orpo")(*ARGS)
    # −log π(y_w)/|y_w| + β · softplus(−h): the NLL per chosen token is (0.5, 2.0)
    np.testing.assert_allclose(out.asnumpy(), [0.5 + beta * softplus(-h[0]), 2.0 + beta * softplus(-h[1])], rtol=1e-5)
    np.testing.assert_allclose(chosen_rewards.asnumpy(), [-0.05, -0.2], rtol=1e-5)  # β · log π(y) / |y|, as TRL logs
    np.testing.assert_allclose(rejected_rewards.asnumpy(), [-0.1, -0.1], rtol=1e-5)
    # d/d log π(y_w) = (−1 − β σ(−h) · d odds/dm) / |y_w|, d odds/dm = 1 / (1 − e^m)
    _, grad = GradCell(dpo_loss, beta=beta, loss_type="orpo")(*ARGS)
    expected = [(-1.0 - beta * sigmoid(-h[i]) / (1.0 - math.exp(m))) / n
                for i, (m, n) in enumerate(zip((-0.5, -2.0), CHOSEN_TOKENS))]
    np.testing.assert_allclose(grad.asnumpy(), expected, rtol=1e-5)
    # reference-free: other reference log-probs give the same loss; sft_coef adds to ORPO's own NLL
    other = (ARGS[0], ARGS[1], t([9.0, -9.0]), t([3.0, 3.0]), ARGS[4], ARGS[5])
    np.testing.assert_allclose(FnCell(dpo_loss, beta=beta, loss_type="orpo")(*other)[0].asnumpy(), out.asnumpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(losses("orpo", beta=beta, sft_coef=0.5), out.asnumpy() + [0.25, 1.0], rtol=1e-5)


def test_orpo_stays_finite_when_an_answer_is_certain():
    # mean log-prob 0 (p = 1): the odds are capped, the loss and its gradient stay finite
    args = (t([0.0, -1.0]), t([-2.0, 0.0]), ARGS[2], ARGS[3], t([3.0, 2.0]), t([3.0, 2.0]))
    loss, grad = GradCell(dpo_loss, beta=0.1, loss_type="orpo")(*args)
    assert np.all(np.isfinite(loss.asnumpy())) and np.all(np.isfinite(grad.asnumpy()))
