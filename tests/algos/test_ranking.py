"""InstructGPT's K-wise ranking loss: hand numbers for K = 2, 3, 4, padding, and equality (loss and
gradient) with the loss built from every pair explicitly (in torch)."""
import math

import numpy as np
import pytest
import torch

from mindrlhf.algos import pairwise_accuracy, prompt_ranking_losses, ranking_loss

from .cells import FnCell, GradCell, pynative, t


def neg_log_sigmoid(x):
    return math.log1p(math.exp(-x))


# K = 4: rewards (3, 2, 1, 0), all six pairs ranked right with gaps 1, 2, 3, 1, 2, 1
LOSS_K4 = (3 * neg_log_sigmoid(1) + 2 * neg_log_sigmoid(2) + neg_log_sigmoid(3)) / 6
# K = 3: rewards (1, 0, 0.5): pairs (0,1) gap 1, (0,2) gap 0.5, (1,2) gap −0.5 (ranked wrong)
LOSS_K3 = (neg_log_sigmoid(1) + neg_log_sigmoid(0.5) + neg_log_sigmoid(-0.5)) / 3
# K = 2: rewards (2, 1): one pair, gap 1
LOSS_K2 = neg_log_sigmoid(1)

MIXED_REWARDS = np.array([[3.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.5, 9.0], [2.0, 1.0, -7.0, 4.0], [5.0, 0.0, 0.0, 0.0]])
MIXED_MASK = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=np.float64)
# per prompt first (K = 4, 3, 2), then over prompts; the prompt with one response has no pair
LOSS_MIXED = (LOSS_K4 + LOSS_K3 + LOSS_K2) / 3


@pytest.mark.parametrize(
    "rewards, expected",
    [([[2.0, 1.0]], LOSS_K2), ([[1.0, 0.0, 0.5]], LOSS_K3), ([[3.0, 2.0, 1.0, 0.0]], LOSS_K4)],
    ids=["K2", "K3", "K4"],
)
def test_ranking_loss_hand_numbers(rewards, expected):
    pynative()
    mask = t(np.ones_like(rewards))
    assert ranking_loss(t(rewards), mask).asnumpy() == pytest.approx(expected, rel=1e-5)


def test_ranking_loss_margin():
    pynative()
    # −log σ(2 − 1 − 0.5)
    got = ranking_loss(t([[2.0, 1.0]]), t([[1.0, 1.0]]), margin=0.5).asnumpy()
    assert got == pytest.approx(neg_log_sigmoid(0.5), rel=1e-5)


def test_ranking_loss_mixed_batch_with_padding():
    got = FnCell(ranking_loss)(t(MIXED_REWARDS), t(MIXED_MASK)).asnumpy()
    assert got == pytest.approx(LOSS_MIXED, rel=1e-5)
    pynative()
    assert ranking_loss(t(MIXED_REWARDS), t(MIXED_MASK)).asnumpy() == pytest.approx(LOSS_MIXED, rel=1e-5)


def test_prompt_ranking_losses_are_the_terms_of_the_mean():
    # each prompt's own mean pair loss; the one-response prompt has none: 0
    expected = [LOSS_K4, LOSS_K3, LOSS_K2, 0.0]
    got = FnCell(prompt_ranking_losses)(t(MIXED_REWARDS), t(MIXED_MASK)).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    pynative()
    np.testing.assert_allclose(prompt_ranking_losses(t(MIXED_REWARDS), t(MIXED_MASK)).asnumpy(), expected, rtol=1e-5)
    # with a margin: −log σ(2 − 1 − 0.5)
    got = prompt_ranking_losses(t([[2.0, 1.0]]), t([[1.0, 1.0]]), margin=0.5).asnumpy()
    np.testing.assert_allclose(got, [neg_log_sigmoid(0.5)], rtol=1e-5)


def test_pairwise_accuracy():
    # 6/6, 2/3, 1/1 per prompt (the one-response prompt drops out); a tie counts as wrong
    got = FnCell(pairwise_accuracy)(t(MIXED_REWARDS), t(MIXED_MASK)).asnumpy()
    assert got == pytest.approx((1 + 2 / 3 + 1) / 3, rel=1e-5)
    pynative()
    assert pairwise_accuracy(t([[1.0, 1.0, 0.0]]), t([[1, 1, 1]])).asnumpy() == pytest.approx(2 / 3, rel=1e-5)


def explicit_pairs_loss(rewards, mask, margin):
    """The naive form: list every (better, worse) pair, average within a prompt, then over prompts."""
    per_prompt = []
    for p in range(rewards.shape[0]):
        valid = [k for k in range(rewards.shape[1]) if mask[p, k] > 0]
        pairs = [(i, j) for a, i in enumerate(valid) for j in valid[a + 1:]]
        if pairs:
            terms = [-torch.nn.functional.logsigmoid(rewards[p, i] - rewards[p, j] - margin) for i, j in pairs]
            per_prompt.append(torch.stack(terms).mean())
    return torch.stack(per_prompt).mean()


def test_one_forward_of_k_rewards_equals_all_pairs_loss_and_gradient():
    rng = np.random.default_rng(5)
    rewards = rng.normal(size=(4, 4))
    margin = 0.1
    loss, grad = GradCell(ranking_loss, margin=margin)(t(rewards), t(MIXED_MASK))

    rewards_torch = torch.tensor(rewards, dtype=torch.float64, requires_grad=True)
    reference = explicit_pairs_loss(rewards_torch, MIXED_MASK, margin)
    reference.backward()
    assert loss.asnumpy() == pytest.approx(reference.item(), rel=1e-5)
    np.testing.assert_allclose(grad.asnumpy(), rewards_torch.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert np.all(grad.asnumpy()[MIXED_MASK == 0] == 0.0)  # padded slots get no gradient
    assert np.all(grad.asnumpy()[3] == 0.0)  # nor does a prompt with a single response
