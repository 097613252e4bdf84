"""agg_loss: each mode against numpy, and micro-batch losses/gradients summing to the full batch's."""
import numpy as np
import pytest
from mindspore import nn

from mindrlhf.algos import LOSS_AGG_MODES, agg_loss, policy_loss_clip

from .cells import FnCell, GradCell, pynative, t

RNG = np.random.default_rng(1)
LOSS = RNG.normal(size=(4, 5))
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=np.float64)


def np_agg(loss, mask, mode):
    valid_rows = mask.sum(-1) > 0
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum()
    if mode == "seq-mean-token-sum":
        return (loss * mask).sum(-1)[valid_rows].mean()
    if mode == "seq-mean-token-sum-norm":  # Dr. GRPO: a constant length, the padded width
        return ((loss * mask).sum(-1)[valid_rows] / loss.shape[-1]).mean()
    return ((loss * mask).sum(-1)[valid_rows] / mask.sum(-1)[valid_rows]).mean()


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_agg_loss_matches_numpy(mode):
    got = FnCell(agg_loss, loss_agg_mode=mode)(t(LOSS), t(MASK)).asnumpy()
    np.testing.assert_allclose(got, np_agg(LOSS, MASK, mode), rtol=1e-5)


def test_agg_loss_hand_numbers_pynative():
    pynative()
    loss = t([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    assert agg_loss(loss, mask, "token-mean").asnumpy() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert agg_loss(loss, mask, "seq-mean-token-sum").asnumpy() == pytest.approx((6 + 4) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-mean").asnumpy() == pytest.approx((2 + 4) / 2)
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm").asnumpy() == pytest.approx((6 / 3 + 4 / 3) / 2)
    assert agg_loss(loss, mask, "token-mean", normalizer=8.0).asnumpy() == pytest.approx(10 / 8)


def test_agg_loss_unknown_mode():
    pynative()
    with pytest.raises(ValueError, match="seq-mean-token-mean"):
        agg_loss(t(LOSS), t(MASK), "sequence-mean")


class ClipLossWithNormalizer(nn.Cell):
    """The PPO clipped loss of a micro-batch, normalised by a global count passed as a tensor."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def construct(self, logprobs, old_logprobs, advantages, response_mask, normalizer):
        return policy_loss_clip(logprobs, old_logprobs, advantages, response_mask, 0.2, 0.0, self.mode, normalizer)[0]


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batches_sum_to_full_batch(mode):
    """Split the batch in two, pass the global normalizer: losses and gradients add up exactly."""
    logprobs = RNG.normal(size=(4, 5)) * 0.3
    old_logprobs = logprobs + RNG.normal(size=(4, 5)) * 0.3  # ratios both inside and outside the clip
    advantages = RNG.normal(size=(4, 5))
    args = [logprobs, old_logprobs, advantages, MASK]

    full_loss, full_grad = GradCell(policy_loss_clip, clip_range=0.2, loss_agg_mode=mode)(*map(t, args))
    normalizer = MASK.sum() if mode == "token-mean" else float((MASK.sum(-1) > 0).sum())
    half_cell = GradCell(ClipLossWithNormalizer(mode))
    halves = [half_cell(*(t(a[rows]) for a in args), t(normalizer)) for rows in (slice(0, 2), slice(2, 4))]

    np.testing.assert_allclose(halves[0][0].asnumpy() + halves[1][0].asnumpy(), full_loss.asnumpy(), rtol=1e-5)
    grads = np.concatenate([h[1].asnumpy() for h in halves])
    np.testing.assert_allclose(grads, full_grad.asnumpy(), rtol=1e-5, atol=1e-7)
    assert np.abs(full_grad.asnumpy()).sum() > 0  # the comparison is not between two zeros
    # without the global normalizer, the halves would not add up (the test can fail)
    local = FnCell(policy_loss_clip, clip_range=0.2, loss_agg_mode=mode)
    naive = sum(local(*(t(a[rows]) for a in args))[0].asnumpy() for rows in (slice(0, 2), slice(2, 4)))
    assert abs(naive - full_loss.asnumpy()) > 1e-3
