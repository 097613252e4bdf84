"""Log-probs, entropy and masked statistics against numpy (float64) references."""
import numpy as np
import pytest

from mindrlhf.algos import (
    entropy_from_logits, logprobs_from_logits, masked_mean, masked_moments, masked_sum, masked_var,
    masked_whiten, whiten_from_moments,
)

from .cells import FnCell, pynative, t

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(2, 3, 5)) * 3.0
LOGITS[1, 2] += 1000.0  # a naive exp/sum would overflow here
LABELS = np.array([[0, 4, 2], [1, 1, 3]])
X = RNG.normal(size=(4, 5)) * 2.0 + 1.0
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float64)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_whiten(x, m, shift_mean=True, ddof=1):
    valid = x[m > 0]
    mean, var = valid.mean(), valid.var(ddof=ddof)
    out = (x - mean) / np.sqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * m


@pytest.fixture(scope="module")
def cells():
    return {
        "logprobs": FnCell(logprobs_from_logits),
        "entropy": FnCell(entropy_from_logits),
        "sum_all": FnCell(masked_sum),
        "mean_rows": FnCell(masked_mean, axis=-1),
        "var": FnCell(masked_var, unbiased=True),
        "whiten": FnCell(masked_whiten),
        "moments": FnCell(masked_moments),
        "whiten_from_moments": FnCell(whiten_from_moments),
    }


def test_logprobs_from_logits_graph(cells):
    expected = np.take_along_axis(np_log_softmax(LOGITS), LABELS[..., None], -1)[..., 0]
    got = cells["logprobs"](t(LOGITS), t(LABELS, np.int32)).asnumpy()
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_logprobs_from_logits_pynative():
    pynative()
    expected = np.take_along_axis(np_log_softmax(LOGITS), LABELS[..., None], -1)[..., 0]
    got = logprobs_from_logits(t(LOGITS), t(LABELS, np.int32)).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_entropy_from_logits(cells):
    logp = np_log_softmax(LOGITS)
    expected = -(np.exp(logp) * logp).sum(-1)
    got = cells["entropy"](t(LOGITS)).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # uniform logits: the entropy is log V
    uniform = cells["entropy"](t(np.zeros((2, 3, 5)))).asnumpy()
    np.testing.assert_allclose(uniform, np.full((2, 3), np.log(5.0)), rtol=1e-5)


def test_masked_sum_and_mean(cells):
    np.testing.assert_allclose(cells["sum_all"](t(X), t(MASK)).asnumpy(), (X * MASK).sum(), rtol=1e-5)
    row_means = cells["mean_rows"](t(X), t(MASK)).asnumpy()
    expected = [X[0, :3].mean(), X[1].mean(), X[2, 0], 0.0]  # the empty row averages to 0, not NaN
    np.testing.assert_allclose(row_means, expected, rtol=1e-5, atol=1e-6)


def test_masked_mean_all_axes_pynative():
    pynative()
    got = masked_mean(t(X), t(MASK)).asnumpy()
    np.testing.assert_allclose(got, X[MASK > 0].mean(), rtol=1e-5)


def test_masked_var(cells):
    np.testing.assert_allclose(cells["var"](t(X), t(MASK)).asnumpy(), X[MASK > 0].var(ddof=1), rtol=1e-5)
    pynative()
    np.testing.assert_allclose(masked_var(t(X), t(MASK), unbiased=False).asnumpy(), X[MASK > 0].var(), rtol=1e-5)


def test_masked_whiten(cells):
    got = cells["whiten"](t(X), t(MASK)).asnumpy()
    np.testing.assert_allclose(got, np_whiten(X, MASK), rtol=1e-5, atol=1e-5)
    assert np.all(got[MASK == 0] == 0.0)
    valid = got[MASK > 0]
    np.testing.assert_allclose([valid.mean(), valid.std(ddof=1)], [0.0, 1.0], atol=1e-5)


def test_masked_whiten_keep_mean_pynative():
    pynative()
    got = masked_whiten(t(X), t(MASK), shift_mean=False).asnumpy()
    np.testing.assert_allclose(got, np_whiten(X, MASK, shift_mean=False), rtol=1e-5, atol=1e-5)


def test_whiten_from_moments_of_two_halves_equals_whole(cells):
    """Two shards whitened with their all-reduced (summed) moments == the whole batch whitened."""
    x = RNG.normal(size=(4, 5)) * 3.0 - 2.0
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=np.float64)
    whole = cells["whiten"](t(x), t(mask)).asnumpy()
    halves = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    moments = [[m.asnumpy() for m in cells["moments"](t(xs), t(ms_))] for xs, ms_ in halves]
    total, total_sq, count = (t(moments[0][i] + moments[1][i]) for i in range(3))
    assert count.asnumpy() == mask.sum()
    got = np.concatenate(
        [cells["whiten_from_moments"](t(xs), t(ms_), total, total_sq, count).asnumpy() for xs, ms_ in halves]
    )
    np.testing.assert_allclose(got, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, np_whiten(x, mask), rtol=1e-5, atol=1e-5)
