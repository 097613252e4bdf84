"""DPO ("sigmoid", with label smoothing) and IPO losses against hand numbers."""
import math

import numpy as np
import pytest

from mindrlhf.algos import DPO_LOSSES, dpo_loss, get_dpo_loss

from .cells import FnCell, GradCell, pynative, t

POLICY_CHOSEN = [-1.0, -2.0]
POLICY_REJECTED = [-3.0, -1.0]
REF_CHOSEN = [-1.5, -2.0]
REF_REJECTED = [-2.5, -2.0]
ARGS = tuple(map(t, (POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED)))
# log-ratios: chosen (0.5, 0.0), rejected (−0.5, 1.0)  →  h = (1.0, −1.0);  β = 0.1


def softplus(x):
    return math.log1p(math.exp(x))


def test_sigmoid_hand_numbers_graph():
    losses, chosen_rewards, rejected_rewards = FnCell(dpo_loss, beta=0.1)(*ARGS)
    # −log σ(β h) = softplus(−β h)
    np.testing.assert_allclose(losses.asnumpy(), [softplus(-0.1), softplus(0.1)], rtol=1e-5)
    np.testing.assert_allclose(chosen_rewards.asnumpy(), [0.05, 0.0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rejected_rewards.asnumpy(), [-0.05, 0.1], rtol=1e-5, atol=1e-7)


def test_sigmoid_gradient():
    # d/d log π(y_w) of softplus(−β h) = −β · σ(−β h)
    _, grad = GradCell(dpo_loss, beta=0.1)(*ARGS)
    sigmoid = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    np.testing.assert_allclose(grad.asnumpy(), [-0.1 * sigmoid(-0.1), -0.1 * sigmoid(0.1)], rtol=1e-5)


def test_label_smoothing_and_ipo_pynative():
    pynative()
    losses = dpo_loss(*ARGS, beta=0.1, label_smoothing=0.1)[0].asnumpy()
    expected = [0.9 * softplus(-0.1) + 0.1 * softplus(0.1), 0.9 * softplus(0.1) + 0.1 * softplus(-0.1)]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    # IPO: (h − 1/(2β))² = (1 − 5)², (−1 − 5)²
    ipo = dpo_loss(*ARGS, beta=0.1, loss_type="ipo")[0].asnumpy()
    np.testing.assert_allclose(ipo, [16.0, 36.0], rtol=1e-5)
    # a policy equal to its reference: h = 0, loss log 2
    zero = dpo_loss(ARGS[2], ARGS[3], ARGS[2], ARGS[3], beta=0.5)[0].asnumpy()
    np.testing.assert_allclose(zero, [math.log(2.0)] * 2, rtol=1e-5)


def test_ipo_graph():
    losses = FnCell(dpo_loss, beta=0.1, loss_type="ipo")(*ARGS)[0].asnumpy()
    np.testing.assert_allclose(losses, [16.0, 36.0], rtol=1e-5)


def test_dpo_registry():
    assert DPO_LOSSES.names() == ["ipo", "sigmoid"]
    with pytest.raises(ValueError, match="unknown DPO loss type 'hinge'.*ipo, sigmoid"):
        get_dpo_loss("hinge")
