"""Per-token rewards, GAE and GRPO advantages against hand numbers and a plain-Python loop."""
import numpy as np
import pytest

from mindrlhf.algos import (
    ADV_ESTIMATORS, compute_gae, get_adv_estimator, grpo_advantages, last_token_mask, token_level_rewards,
)

from .cells import FnCell, pynative, t


def python_gae(rewards, values, mask, gamma, lam):
    """The textbook recursion, one row and one step at a time."""
    advantages = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        next_adv, next_value = 0.0, 0.0
        for s in reversed(range(rewards.shape[1])):
            if mask[b, s] == 0:
                next_adv, next_value = 0.0, 0.0
                continue
            delta = rewards[b, s] + gamma * next_value - values[b, s]
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b, s]
            advantages[b, s] = next_adv
    return advantages


# ---- token_level_rewards -------------------------------------------------------------------------

def test_token_level_rewards_hand_numbers():
    score = t([1.0, 2.0, -1.0])
    kl = t([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    mask = t([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])  # full row, a row ending at EOS, an empty row
    expected = [[-0.01, -0.02, -0.03, 0.96], [-0.05, 1.95, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    got = FnCell(token_level_rewards, kl_coef=0.1)(score, kl, mask).asnumpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    pynative()
    np.testing.assert_allclose(token_level_rewards(score, kl, mask, 0.1).asnumpy(), expected, rtol=1e-6, atol=1e-7)


def test_last_token_mask():
    pynative()
    mask = t([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]])
    expected = [[0, 0, 1], [1, 0, 0], [0, 0, 0], [0, 1, 0]]
    np.testing.assert_array_equal(last_token_mask(mask).asnumpy(), expected)


# ---- GAE -----------------------------------------------------------------------------------------

def test_gae_hand_numbers_graph():
    rewards = t([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])  # 5.0 sits on a padded position
    values = t([[0.5, 0.4, 0.2], [1.0, 0.5, 9.0]])  # so does 9.0
    mask = t([[1, 1, 1], [1, 1, 0]])
    # γ = 0.9, λ = 0.5 (γλ = 0.45)
    # row 0: A2 = 1 − 0.2 = 0.8;  A1 = (0.9·0.2 − 0.4) + 0.45·0.8 = 0.14;
    #        A0 = (0.9·0.4 − 0.5) + 0.45·0.14 = −0.077
    # row 1: A2 = 0 (pad);  A1 = 2 − 0.5 = 1.5;  A0 = (0.9·0.5 − 1.0) + 0.45·1.5 = 0.125
    advantages, returns = FnCell(compute_gae, gamma=0.9, lam=0.5)(rewards, values, mask)
    np.testing.assert_allclose(advantages.asnumpy(), [[-0.077, 0.14, 0.8], [0.125, 1.5, 0.0]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(returns.asnumpy(), [[0.423, 0.54, 1.0], [1.125, 2.0, 9.0]], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def random_episode():
    rng = np.random.default_rng(3)
    rewards, values = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=np.float64)
    return rewards, values, mask


def test_gae_matches_python_loop_graph(random_episode):
    rewards, values, mask = random_episode
    advantages, returns = FnCell(compute_gae, gamma=0.99, lam=0.95)(t(rewards), t(values), t(mask))
    expected = python_gae(rewards, values, mask, 0.99, 0.95)
    np.testing.assert_allclose(advantages.asnumpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(returns.asnumpy(), expected + values, rtol=1e-5, atol=1e-6)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value(random_episode):
    pynative()
    rewards, values, mask = random_episode
    advantages, _ = compute_gae(t(rewards), t(values), t(mask), 1.0, 1.0)
    reward_to_go = np.flip(np.cumsum(np.flip(rewards * mask, -1), -1), -1)
    np.testing.assert_allclose(advantages.asnumpy(), (reward_to_go - values) * mask, rtol=1e-5, atol=1e-5)


def test_gae_lambda_zero_is_one_step_td(random_episode):
    pynative()
    rewards, values, mask = random_episode
    advantages, _ = compute_gae(t(rewards), t(values), t(mask), 0.9, 0.0)
    next_values = np.concatenate([values[:, 1:] * mask[:, 1:], np.zeros((3, 1))], -1)
    one_step_td = (rewards + 0.9 * next_values - values) * mask
    np.testing.assert_allclose(advantages.asnumpy(), one_step_td, rtol=1e-5, atol=1e-6)


# ---- GRPO ----------------------------------------------------------------------------------------

GRPO_MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], np.float64)


def test_grpo_hand_numbers_graph():
    scores = t([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])  # two prompts, three answers each
    advantages, returns = FnCell(grpo_advantages, group_size=3)(scores, t(GRPO_MASK))
    # group 1: mean 2, std 1 → (−1, 0, 1)/(1 + 1e-6);  group 2: all equal → 0
    per_answer = np.array([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) / (1.0 + 1e-6)
    np.testing.assert_allclose(advantages.asnumpy(), per_answer[:, None] * GRPO_MASK, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(returns.asnumpy(), advantages.asnumpy())


def test_grpo_pairs_and_no_std_pynative():
    pynative()
    mask = t(np.ones((4, 2)))
    advantages, _ = grpo_advantages(t([0.0, 1.0, 4.0, 2.0]), mask, 2)
    # each pair: mean ± 0.5·gap, std (Bessel) = gap/√2 → ±1/√2
    expected = np.array([-1, 1, 1, -1]) / np.sqrt(2.0)
    np.testing.assert_allclose(advantages.asnumpy()[:, 0], expected, rtol=1e-5)
    advantages, _ = grpo_advantages(t([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), t(GRPO_MASK), 3, norm_by_std=False)
    np.testing.assert_allclose(advantages.asnumpy()[:, 0], [-1, 0, 1, 0, 0, 0], atol=1e-6)


@pytest.mark.parametrize("group_size", [1, 4])
def test_grpo_rejects_bad_group_size(group_size):
    pynative()
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(t(np.zeros(6)), t(np.ones((6, 2))), group_size)


def test_adv_registry():
    assert ADV_ESTIMATORS.names() == ["gae", "grpo"]
    assert get_adv_estimator("gae") is compute_gae and get_adv_estimator("grpo") is grpo_advantages
    with pytest.raises(ValueError, match="valid names: gae, grpo"):
        get_adv_estimator("rloo")
