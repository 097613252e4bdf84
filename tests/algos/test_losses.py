"""Policy losses ("clip", "kl_penalty", "clip_higher", "dual_clip", "gspo") and the clipped value loss against
hand numbers; the variants reduce to "clip" where they should."""
import numpy as np
import pytest

from mindrlhf.algos import (
    LOSS_AGG_MODES, POLICY_LOSSES, get_policy_loss, policy_loss_clip, policy_loss_clip_higher, policy_loss_dual_clip,
    policy_loss_gspo, policy_loss_kl_penalty, value_loss,
)

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
    assert POLICY_LOSSES.names() == ["clip", "clip_higher", "dual_clip", "gspo", "kl_penalty"]
    for name in POLICY_LOSSES.names():
        out = get_policy_loss(name)(
            *map(t, ARGS), clip_range=0.2, kl_coef=0.1, loss_agg_mode="seq-mean-token-mean", normalizer=None,
            clip_range_high=0.28, clip_c=3.0,
        )
        assert len(out) == 3 and all(o.shape == () for o in out)
    with pytest.raises(ValueError, match="valid names: clip, clip_higher, dual_clip, gspo, kl_penalty"):
        get_policy_loss("ppo")


# ---- DAPO clip-higher, dual clip, GSPO ------------------------------------------------------------

def test_clip_higher_hand_numbers_graph():
    # clip to [0.8, 1.28]: as "clip" except r=1.5, A=2: −min(3, 2.56) = −2.56
    loss, clipfrac, approx_kl = FnCell(policy_loss_clip_higher, clip_range=0.2, clip_range_high=0.28)(*map(t, ARGS))
    assert loss.asnumpy() == pytest.approx((-1 - 2.56 - 0.5 + 0.8 + 1.1) / 5, rel=1e-5)
    assert clipfrac.asnumpy() == pytest.approx(2 / 5, rel=1e-6)
    assert approx_kl.asnumpy() == pytest.approx(APPROX_KL, rel=1e-5)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_clip_higher_with_equal_bounds_is_clip(mode):
    """ε_high = ε_low (or unset) gives "clip": the same loss, clipfrac and gradient."""
    want = GradCell(policy_loss_clip, clip_range=0.2, loss_agg_mode=mode)(*map(t, ARGS))
    for high in (0.2, None):
        got = GradCell(policy_loss_clip_higher, clip_range=0.2, clip_range_high=high, loss_agg_mode=mode)(*map(t, ARGS))
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-6, atol=1e-7)
    clipfracs = [FnCell(fn, clip_range=0.2, clip_range_high=0.2)(*map(t, ARGS))[1].asnumpy()
                 for fn in (policy_loss_clip, policy_loss_clip_higher)]
    assert clipfracs[0] == clipfracs[1] == pytest.approx(2 / 5)


# Dual clip: one row, all valid. r=4, A=−1: max(4, 1.2) = 4, capped at c·|A| = 3;  r=0.5, A=−2: max(1, 1.6) = 1.6
# (below 6);  r=1.1, A=1: −1.1 (inside the clip).
D_RATIO, D_ADV, D_MASK = np.array([[4.0, 0.5, 1.1]]), np.array([[-1.0, -2.0, 1.0]]), np.ones((1, 3))
D_OLD = np.array([[-2.0, -1.0, -0.5]])
D_ARGS = (D_OLD + np.log(D_RATIO), D_OLD, D_ADV, D_MASK)


def test_dual_clip_hand_numbers_and_gradient():
    loss, grad = GradCell(policy_loss_dual_clip, clip_range=0.2, clip_c=3.0)(*map(t, D_ARGS))
    assert loss.asnumpy() == pytest.approx((3 + 1.6 - 1.1) / 3, rel=1e-5)
    # d ℓ / d log π: 0 on the dual-clipped and the clipped token, −A·r = −1.1 on the last
    np.testing.assert_allclose(grad.asnumpy(), [[0.0, 0.0, -1.1 / 3]], rtol=1e-5, atol=1e-7)
    _, clipfrac, _ = FnCell(policy_loss_dual_clip, clip_range=0.2, clip_c=3.0)(*map(t, D_ARGS))
    assert clipfrac.asnumpy() == pytest.approx(2 / 3)
    # plain clip lets the first token's loss grow with its ratio (4), and its gradient (−A·r = 4)
    plain, plain_grad = GradCell(policy_loss_clip, clip_range=0.2)(*map(t, D_ARGS))
    assert plain.asnumpy() == pytest.approx((4 + 1.6 - 1.1) / 3, rel=1e-5)
    assert plain_grad.asnumpy()[0, 0] == pytest.approx(4 / 3, rel=1e-5)


def test_dual_clip_with_a_far_bound_is_clip():
    pynative()
    for args in (ARGS, D_ARGS):
        want = policy_loss_clip(*map(t, args), clip_range=0.2)
        got = policy_loss_dual_clip(*map(t, args), clip_range=0.2, clip_c=100.0)
        np.testing.assert_allclose([g.asnumpy() for g in got], [w.asnumpy() for w in want], rtol=1e-6)


# GSPO: row 0 token log-ratios (0.1, 0.3, −0.1) → log s = 0.1; row 1 (0.5, 0.9, pad) → log s = 0.7.
G_OLD = np.array([[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.0]])
G_LOG_RATIO = np.array([[0.1, 0.3, -0.1], [0.5, 0.9, 7.0]])
G_ADV = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 9.0]])
G_ARGS = (G_OLD + G_LOG_RATIO, G_OLD, G_ADV, MASK)


def test_gspo_hand_numbers_and_gradient():
    """s_0 = e^0.1 = 1.10517 (inside [0.8, 1.2]): ℓ = −1.10517 on each token; s_1 = e^0.7 = 2.01375, A = 1:
    clipped to −1.2, no gradient. seq-mean-token-mean: (−1.10517 − 1.2)/2; the gradient on row 0's tokens
    is −A·s_0 / (3 tokens · 2 sequences)."""
    cell = GradCell(policy_loss_gspo, clip_range=0.2, loss_agg_mode="seq-mean-token-mean")
    loss, grad = cell(*map(t, G_ARGS))
    s0 = np.exp(0.1)
    assert loss.asnumpy() == pytest.approx((-s0 - 1.2) / 2, rel=1e-5)
    np.testing.assert_allclose(grad.asnumpy(), [[-s0 / 6] * 3, [0.0, 0.0, 0.0]], rtol=1e-5, atol=1e-7)
    _, clipfrac, _ = FnCell(policy_loss_gspo, clip_range=0.2, loss_agg_mode="seq-mean-token-mean")(*map(t, G_ARGS))
    assert clipfrac.asnumpy() == pytest.approx(2 / 5)  # row 1's two valid tokens


def test_gspo_with_one_token_answers_is_clip():
    """One valid token per sequence: the sequence ratio is the token ratio; same loss, clipfrac and gradient
    as "clip" (symmetric) and "clip_higher" (asymmetric), in every aggregation mode."""
    mask = np.array([[1, 0, 0], [1, 0, 0]], np.float64)
    args = (LOGP, OLD, ADV, mask)
    for mode in LOSS_AGG_MODES:
        for plain, high in ((policy_loss_clip, None), (policy_loss_clip_higher, 0.28)):
            want = GradCell(plain, clip_range=0.2, clip_range_high=high, loss_agg_mode=mode)(*map(t, args))
            got = GradCell(policy_loss_gspo, clip_range=0.2, clip_range_high=high, loss_agg_mode=mode)(*map(t, args))
            for a, b in zip(got, want):
                np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-7)


def test_gspo_with_equal_token_ratios_is_clip_higher():
    """Every token of a sequence with the same ratio (row 0: 1.5, row 1: 0.7): GSPO = clip-higher."""
    ratio = np.array([[1.5, 1.5, 1.5], [0.7, 0.7, 0.7]])
    args = (OLD + np.log(ratio), OLD, ADV, MASK)
    pynative()
    for mode in LOSS_AGG_MODES:
        want = policy_loss_clip_higher(*map(t, args), clip_range=0.2, clip_range_high=0.28, loss_agg_mode=mode)
        got = policy_loss_gspo(*map(t, args), clip_range=0.2, clip_range_high=0.28, loss_agg_mode=mode)
        np.testing.assert_allclose([g.asnumpy() for g in got], [w.asnumpy() for w in want], rtol=1e-5, atol=1e-7)


def test_gspo_is_finite_for_a_huge_sequence_ratio():
    pynative()
    loss, _, _ = policy_loss_gspo(t([[60.0, 70.0]]), t([[0.0, 0.0]]), t([[-1.0, -1.0]]), t([[1.0, 1.0]]))
    assert np.isfinite(loss.asnumpy()) and loss.asnumpy() == pytest.approx(np.exp(10.0), rel=1e-5)


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
