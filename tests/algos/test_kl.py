"""KL estimators (formulas, Monte-Carlo unbiasedness), the registry, and the KL controllers."""
import numpy as np
import pytest

from mindrlhf.algos import (
    AdaptiveKLController, FixedKLController, KL_ESTIMATORS, adapt_kl_penalty, agg_loss, get_kl_estimator, kl_loss,
    kl_penalty, register_kl_estimator,
)

from .cells import FnCell, GradCell, pynative, t

LOGP = np.array([[-1.0, -2.0, -0.5], [-3.0, -0.1, -0.7]])
REF = np.array([[-1.5, -1.0, -0.5], [-2.0, -0.3, -4.0]])
D = LOGP - REF  # log π − log π_ref
EXPECTED = {
    "k1": D,
    "abs": np.abs(D),
    "k2": 0.5 * D**2,
    "k3": np.exp(-D) + D - 1.0,  # exp(log r) − log r − 1 with log r = −D
}


def test_registry_names():
    assert KL_ESTIMATORS.names() == ["abs", "k1", "k2", "k3"]


@pytest.mark.parametrize("name", ["k1", "k2", "k3", "abs"])
def test_kl_penalty_graph(name):
    got = FnCell(kl_penalty, estimator=name)(t(LOGP), t(REF)).asnumpy()
    np.testing.assert_allclose(got, EXPECTED[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["k1", "k2", "k3", "abs"])
def test_kl_penalty_pynative(name):
    pynative()
    got = kl_penalty(t(LOGP), t(REF), name).asnumpy()
    np.testing.assert_allclose(got, EXPECTED[name], rtol=1e-5, atol=1e-6)


def test_k3_hand_numbers_and_sign():
    pynative()
    # log π = −1, log π_ref = −1.5: log r = −0.5, k3 = e^−0.5 + 0.5 − 1 = 0.1065306597
    assert kl_penalty(t([[-1.0]]), t([[-1.5]]), "k3").asnumpy()[0, 0] == pytest.approx(0.1065306597, rel=1e-5)
    assert np.all(kl_penalty(t(LOGP), t(REF), "k3").asnumpy() >= 0.0)
    assert np.all(kl_penalty(t(LOGP), t(LOGP), "k3").asnumpy() == 0.0)


def test_k3_stays_finite_for_large_log_ratios():
    """log π_ref − log π = +61: unclamped, exp(61) − 62 = 3.1e26; clamped at 10, e^10 − 11. At −61 the
    clamp gives e^−10 + 9. Values and gradients finite in graph mode."""
    logp, ref = t([[-61.0, 0.0, -1.0]]), t([[0.0, -61.0, -1.5]])
    got = FnCell(kl_penalty, estimator="k3")(logp, ref).asnumpy()[0]
    np.testing.assert_allclose(got, [np.exp(10.0) - 11.0, np.exp(-10.0) + 9.0, np.exp(-0.5) - 0.5], rtol=1e-5)
    _, grad = GradCell(kl_loss, estimator="k3", loss_agg_mode="token-mean")(logp, ref, t([[1.0, 1.0, 1.0]]))
    # d k3 / d log π = 1 − exp(log r) inside the clamp, 0 outside it
    np.testing.assert_allclose(grad.asnumpy(), [[0.0, 0.0, (1.0 - np.exp(-0.5)) / 3]], rtol=1e-5, atol=1e-7)


def test_kl_loss_is_the_aggregated_estimate():
    pynative()
    mask = t([[1, 1, 1], [1, 1, 0]])
    for mode in ("token-mean", "seq-mean-token-mean"):
        want = agg_loss(t(EXPECTED["k3"]), mask, mode).asnumpy()
        assert kl_loss(t(LOGP), t(REF), mask, "k3", mode).asnumpy() == pytest.approx(want, rel=1e-5)
    assert kl_loss(t(LOGP), t(REF), mask, "k1").asnumpy() == pytest.approx((D * [[1, 1, 1], [1, 1, 0]]).sum() / 5)


def test_k1_and_k3_are_unbiased_for_kl_policy_to_ref():
    """Sampling tokens from π, the means of k1 and k3 approach KL(π ‖ π_ref); k2 differs (biased)."""
    pynative()
    rng = np.random.default_rng(0)
    pi = np.array([0.5, 0.3, 0.15, 0.05])
    pi_ref = np.array([0.25, 0.25, 0.25, 0.25])
    true_kl = float((pi * np.log(pi / pi_ref)).sum())
    tokens = rng.choice(4, size=200_000, p=pi)
    logp, ref = t(np.log(pi)[tokens][None]), t(np.log(pi_ref)[tokens][None])
    for name in ("k1", "k3"):
        assert kl_penalty(logp, ref, name).asnumpy().mean() == pytest.approx(true_kl, rel=0.02), name


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown KL estimator 'k4'.*abs, k1, k2, k3"):
        get_kl_estimator("k4")


def test_duplicate_registration_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_kl_estimator("k1")(lambda logprobs, ref_logprobs: logprobs)


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    assert ctl.update(current_kl=100.0, n_steps=256) == 0.05
    assert ctl.kl_coef == 0.05


def test_adaptive_controller_moves_both_ways():
    """β rises while the KL is above target and falls while below (the error clip is symmetric)."""
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    # KL = 7.2: error = 7.2/6 − 1 = 0.2 → β = 0.1 · (1 + 0.2 · 256 / 10000) = 0.1 · 1.00512
    assert ctl.update(current_kl=7.2, n_steps=256) == pytest.approx(0.100512, rel=1e-12)
    # KL = 3.0: error = −0.5, clipped to −0.2 → β = 0.100512 · (1 − 0.2 · 256 / 10000)
    assert ctl.update(current_kl=3.0, n_steps=256) == pytest.approx(0.100512 * 0.99488, rel=1e-12)
    # a huge KL is clipped to +0.2 as well
    before = ctl.kl_coef
    assert ctl.update(current_kl=600.0, n_steps=100) == pytest.approx(before * (1 + 0.2 * 100 / 10_000), rel=1e-12)
    # on target: no change
    before = ctl.kl_coef
    assert ctl.update(current_kl=6.0, n_steps=256) == pytest.approx(before, rel=1e-12)


def test_adaptive_controller_converges_in_direction():
    up = AdaptiveKLController(0.1, target=1.0, horizon=100)
    down = AdaptiveKLController(0.1, target=1.0, horizon=100)
    for _ in range(10):
        up.update(2.0, 10)
        down.update(0.5, 10)
    assert up.kl_coef == pytest.approx(0.1 * 1.02**10) and down.kl_coef == pytest.approx(0.1 * 0.98**10)


def test_adaptive_controller_rejects_bad_target():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, target=0.0, horizon=100)


def test_adapt_kl_penalty_up_down_and_band():
    target = 0.01
    assert adapt_kl_penalty(1.0, measured_kl=0.02, target=target) == 2.0  # > 1.5 · target
    assert adapt_kl_penalty(1.0, measured_kl=0.005, target=target) == 0.5  # < target / 1.5
    for inside in (0.007, 0.01, 0.0149):
        assert adapt_kl_penalty(1.0, measured_kl=inside, target=target) == 1.0
