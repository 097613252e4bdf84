"""Per-token rewards, GAE and the group estimators (GRPO, Dr. GRPO, RLOO, REINFORCE++) against hand
numbers and plain-Python loops."""
import numpy as np
import pytest

from mindrlhf.algos import (
    ADV_ESTIMATORS, compute_gae, dr_grpo_advantages, get_adv_estimator, grpo_advantages, last_token_mask,
    reinforce_pp_advantages, rloo_advantages, token_level_rewards,
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


# ---- the group estimators -----------------------------------------------------------------------

GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
# two prompts, three answers each; rows end at different lengths (masked tokens must get 0)
GRPO_MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], np.float64)
SCORES = [1.0, 2.0, 3.0, 5.0, 5.0, 5.0]


def test_grpo_hand_numbers_graph():
    advantages, returns = FnCell(grpo_advantages, group_size=3)(t(SCORES), t(GRPO_MASK))
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
    advantages, _ = grpo_advantages(t(SCORES), t(GRPO_MASK), 3, norm_by_std=False)
    np.testing.assert_allclose(advantages.asnumpy()[:, 0], [-1, 0, 1, 0, 0, 0], atol=1e-6)


def test_dr_grpo_hand_numbers_graph():
    advantages, returns = FnCell(dr_grpo_advantages, group_size=3)(t(SCORES), t(GRPO_MASK))
    np.testing.assert_allclose(advantages.asnumpy(), np.array([-1.0, 0, 1, 0, 0, 0])[:, None] * GRPO_MASK, atol=1e-6)
    np.testing.assert_array_equal(returns.asnumpy(), advantages.asnumpy())


def test_rloo_hand_numbers_graph():
    # group 1: baselines (2+3)/2 = 2.5, (1+3)/2 = 2, (1+2)/2 = 1.5 → (−1.5, 0, 1.5) = 3/2 · (s − mean)
    advantages, _ = FnCell(rloo_advantages, group_size=3)(t(SCORES), t(GRPO_MASK))
    np.testing.assert_allclose(advantages.asnumpy(), np.array([-1.5, 0, 1.5, 0, 0, 0])[:, None] * GRPO_MASK, atol=1e-6)


def test_rloo_matches_a_leave_one_out_loop():
    pynative()
    rng = np.random.default_rng(7)
    scores, n = rng.normal(size=12), 4
    want = [scores[i] - np.mean([scores[j] for j in range(i // n * n, i // n * n + n) if j != i]) for i in range(12)]
    advantages, _ = rloo_advantages(t(scores), t(np.ones((12, 1))), n)
    np.testing.assert_allclose(advantages.asnumpy()[:, 0], want, rtol=1e-5, atol=1e-6)


def test_reinforce_pp_hand_numbers_graph():
    """Group-mean baseline b = (−1, 0, 1 | 0, 0, 0) on 4+2+1+4+3+4 = 18 valid tokens, then whitened over them:
    mean = (−4 + 1)/18 = −1/6; Σ(b − mean)² = 4·(5/6)² + 2·(1/6)² + (7/6)² + 11·(1/6)² = 4.5; var = 4.5/17."""
    eps = 1e-6
    advantages, _ = FnCell(reinforce_pp_advantages, group_size=3, eps=eps)(t(SCORES), t(GRPO_MASK))
    baseline = np.array([-1.0, 0, 1, 0, 0, 0])[:, None]
    want = (baseline + 1 / 6) / np.sqrt(4.5 / 17 + eps) * GRPO_MASK
    np.testing.assert_allclose(advantages.asnumpy(), want, rtol=1e-5, atol=1e-6)
    got = advantages.asnumpy()[GRPO_MASK > 0]
    assert abs(got.mean()) < 1e-6 and got.std(ddof=1) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_a_group_of_equal_non_dyadic_rewards_gets_exactly_zero(name):
    """Eight answers scored 7.3: the float32 group mean is 7.2999997, and (s − mean)/(std + ε) without
    centring on a member first gave each answer 0.3; every estimator gives exactly 0 (graph and PyNative)."""
    scores = t(np.full(8, 7.3))
    mask = t(np.ones((8, 3)))
    fn = get_adv_estimator(name)
    graph = FnCell(fn, group_size=8)(scores, mask)[0].asnumpy()
    pynative()
    eager = fn(scores, mask, 8)[0].asnumpy()
    assert np.all(graph == 0.0) and np.all(eager == 0.0), (graph[:, 0], eager[:, 0])


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_an_equal_group_stays_exactly_zero_beside_a_varied_one(name):
    pynative()
    scores = t([7.3] * 4 + [0.1, 0.7, 0.2, 0.9])
    advantages = get_adv_estimator(name)(scores, t(np.ones((8, 2))), 4)[0].asnumpy()
    assert np.all(advantages[:4] == 0.0) and np.all(np.abs(advantages[4:]) > 0.1)


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_a_group_of_one_gets_zero(name):
    pynative()
    advantages, returns = get_adv_estimator(name)(t([1.0, -2.0, 3.5]), t(np.ones((3, 2))), 1)
    assert np.all(advantages.asnumpy() == 0.0) and np.all(returns.asnumpy() == 0.0)


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_group_size_must_divide_the_batch(name):
    pynative()
    with pytest.raises(ValueError, match="group_size=4 must be >= 1 and divide the batch of 6"):
        get_adv_estimator(name)(t(np.zeros(6)), t(np.ones((6, 2))), 4)


def test_adv_registry():
    assert ADV_ESTIMATORS.names() == ["dr_grpo", "gae", "grpo", "reinforce_pp", "rloo"]
    assert get_adv_estimator("gae") is compute_gae and get_adv_estimator("grpo") is grpo_advantages
    assert get_adv_estimator("rloo") is rloo_advantages and get_adv_estimator("dr_grpo") is dr_grpo_advantages
    with pytest.raises(ValueError, match="valid names: dr_grpo, gae, grpo, reinforce_pp, rloo"):
        get_adv_estimator("vtrace")
