"""PPO policy losses ("clip", "kl_penalty") and the clipped value loss against hand numbers."""
import numpy as np
import pytest

from mindrlhf.algos import POLICY_LOSSES, get_policy_loss, policy_loss_clip, policy_loss_kl_penalty, value_loss

from .cells import FnCell, GradCell, pynative, t

# Two rows of three tokens; the last token of row 1 is padding with a wild ratio and advantage.
RATIO = np.array([[1.0, 1.5, 0.5], [0.7, 1.1, np.e**3]])
ADV = np.array([[1.0, 2.0, 1.0], [-1.0, -1.0, 5.0]])
MASK = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.float64)
OLD = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.0]])
LOGP = OLD + np.log(RATIO)
ARGS = (LOGP, OLD, ADV, MASK)
APPROX_KL = 0.5 * (np.log(RATIO) ** 2 * MASK).sum() / 5


def test_clip_hand_numbers_graph():
    # ℓ = −min(r·A, clip(r, 0.8, 1.2)·A) per valid token:
    #   r=1,A=1: −1 | r=1.5,A=2: −min(3, 2.4) = −2.4 (clipped) | r=0.5,A=1: −min(0.5, 0.8) = −0.5
    #   r=0.7,A=−1: −min(−0.7, −0.8) = 0.8 (clipped) | r=1.1,A=−1: 1.1
    loss, clipfrac, approx_kl = FnCell(policy_loss_clip, clip_range=0.2)(*map(t, ARGS))
    assert loss.asnumpy() == pytest.approx((-1 - 2.4 - 0.5 + 0.8 + 1.1) / 5, rel=1e-5)
    assert clipfrac.asnumpy() == pytest.approx(2 / 5, rel=1e-6)
    assert approx_kl.asnumpy() == pytest.approx(APPROX_KL, rel=1e-5)


def test_clip_gradient_vanishes_on_clipped_tokens():
    # d ℓ / d log π = −A·r where the unclipped term is active, 0 where the clip is (and on padding)
    _, grad = GradCell(policy_loss_clip, clip_range=0.2)(*map(t, ARGS))
    expected = np.array([[-1.0, 0.0, -0.5], [0.0, 1.1, 0.0]]) / 5
    np.testing.assert_allclose(grad.asnumpy(), expected, rtol=1e-5, atol=1e-7)


def test_clip_pynative_matches_graph():
    graph = [o.asnumpy() for o in FnCell(policy_loss_clip, clip_range=0.2)(*map(t, ARGS))]
    pynative()
    eager = [o.asnumpy() for o in policy_loss_clip(*map(t, ARGS), clip_range=0.2)]
    np.testing.assert_allclose(eager, graph, rtol=1e-6)


def test_kl_penalty_loss_hand_numbers():
    beta = 0.5
    kl = RATIO - np.log(RATIO) - 1.0  # k3 estimate of KL(π_old ‖ π) per token
    loss_mat = -RATIO * ADV + beta * kl
    loss, clipfrac, approx_kl = FnCell(policy_loss_kl_penalty, kl_coef=beta)(*map(t, ARGS))
    assert loss.asnumpy() == pytest.approx((loss_mat * MASK).sum() / 5, rel=1e-5)
    assert clipfrac.asnumpy() == 0.0
    assert approx_kl.asnumpy() == pytest.approx(APPROX_KL, rel=1e-5)
    # d ℓ / d log π = −A·r + β·(r − 1)
    _, grad = GradCell(policy_loss_kl_penalty, kl_coef=beta)(*map(t, ARGS))
    np.testing.assert_allclose(grad.asnumpy(), (-ADV * RATIO + beta * (RATIO - 1)) * MASK / 5, rtol=1e-5, atol=1e-7)
    # the penalty only pushes back: at ratio 1 it adds nothing
    pynative()
    same = policy_loss_kl_penalty(t(OLD), t(OLD), t(ADV), t(MASK), kl_coef=beta)[0].asnumpy()
    assert same == pytest.approx(-(ADV * MASK).sum() / 5, rel=1e-6)


def test_policy_losses_share_one_call():
    pynative()
    assert POLICY_LOSSES.names() == ["clip", "kl_penalty"]
    for name in POLICY_LOSSES.names():
        out = get_policy_loss(name)(
            *map(t, ARGS), clip_range=0.2, kl_coef=0.1, loss_agg_mode="seq-mean-token-mean", normalizer=None
        )
        assert len(out) == 3 and all(o.shape == () for o in out)
    with pytest.raises(ValueError, match="valid names: clip, kl_penalty"):
        get_policy_loss("ppo")


# Value loss: five tokens, the last one padding.
VALUES = np.array([[1.0, 0.5, 2.0, 3.0, 0.0]])
OLD_VALUES = np.array([[0.9, 1.0, 2.0, 2.5, 0.0]])
RETURNS = np.array([[1.5, 0.0, 2.5, 2.0, 100.0]])
V_MASK = np.array([[1, 1, 1, 1, 0]], dtype=np.float64)


def test_value_loss_hand_numbers():
    # ε_v = 0.2:  V^clip = (1.0, 0.8, 2.0, 2.7)
    #   ½·max((V−R)², (V^clip−R)²) = ½·(0.25, max(0.25, 0.64), 0.25, max(1.0, 0.49))
    #                              = (0.125, 0.32, 0.125, 0.5)
    cell = GradCell(value_loss, clip_range_value=0.2)
    loss, grad = cell(*map(t, (VALUES, OLD_VALUES, RETURNS, V_MASK)))
    assert loss.asnumpy() == pytest.approx((0.125 + 0.32 + 0.125 + 0.5) / 4, rel=1e-5)
    # the clipped error wins only at token 1, where V is pinned at V_old − ε: no gradient there
    np.testing.assert_allclose(grad.asnumpy(), [[-0.5 / 4, 0.0, -0.5 / 4, 1.0 / 4, 0.0]], rtol=1e-5, atol=1e-7)
    _, clipfrac = FnCell(value_loss, clip_range_value=0.2)(*map(t, (VALUES, OLD_VALUES, RETURNS, V_MASK)))
    assert clipfrac.asnumpy() == pytest.approx(1 / 4)


def test_value_loss_pynative():
    pynative()
    loss, clipfrac = value_loss(*map(t, (VALUES, OLD_VALUES, RETURNS, V_MASK)), 0.2)
    assert loss.asnumpy() == pytest.approx(1.07 / 4, rel=1e-5)
    assert clipfrac.asnumpy() == pytest.approx(1 / 4)
