"""Win rates of the held-out comparison and the reward model's agreement with the labeler, checked by hand."""
import math

import numpy as np

from scipy import stats

from mindrlhf.evaluation import (PolicyAnswers, bootstrap_interval, decisive_win_rate, head_to_head,
                                 reward_model_agreement, win_rate)
from mindrlhf.report import _head_to_head_lines


def test_win_rate_counts_ties_half_and_decisive_rate_leaves_them_out():
    ppo = np.array([3.5, 3.5, 2.0, 1.0, 3.0])
    sft = np.array([3.5, 1.0, 2.5, 1.0, 2.0])  # tie, win, loss, tie, win
    assert win_rate(ppo, sft) == (2 + 0.5 * 2) / 5
    assert decisive_win_rate(ppo, sft) == 2 / 3
    assert win_rate(sft, ppo) == (1 + 0.5 * 2) / 5  # the two views add up to 1
    assert decisive_win_rate(sft, ppo) == 1 / 3


def test_all_ties():
    same = np.array([1.0, 2.0])
    assert win_rate(same, same) == 0.5
    assert math.isnan(decisive_win_rate(same, same))


def test_head_to_head_record_gain_and_intervals():
    ppo = np.array([3.5, 3.5, 2.0, 1.0, 3.0])
    sft = np.array([3.5, 1.0, 2.5, 1.0, 2.0])  # tie, win (+2.5), loss (-0.5), tie, win (+1)
    out = head_to_head(ppo, sft)
    assert out["wins_losses_ties"] == [2, 1, 2]
    assert math.isclose(out["judge_gain"], (2.5 - 0.5 + 1.0) / 5)
    assert out["win_rate"] == win_rate(ppo, sft) and out["ties"] == 2 / 5
    # a bootstrap mean of per-prompt values lies between their min and max, around the point estimate
    lo, hi = out["win_rate_interval"]
    assert 0.0 <= lo < out["win_rate"] < hi <= 1.0
    lo, hi = out["judge_gain_interval"]
    assert -0.5 <= lo < out["judge_gain"] < hi <= 2.5
    line, blank = _head_to_head_lines({"sft": {}, "ppo": {f"{k}_vs_sft": v for k, v in out.items()}})
    assert line.startswith("ppo against sft: 2 wins, 1 losses, 2 ties; win rate 0.600 (95% bootstrap interval "
                           "over 5 distinct prompts") and blank == ""


def test_bootstrap_interval_of_constant_values_is_that_value():
    lo, hi = bootstrap_interval(np.full(12, 0.7))
    assert math.isclose(lo, 0.7) and math.isclose(hi, 0.7)


def test_bootstrap_interval_matches_scipy_and_the_normal_approximation():
    values = np.random.default_rng(3).normal(0.4, 1.0, size=60)
    lo, hi = bootstrap_interval(values)
    ref = stats.bootstrap((values,), np.mean, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    assert abs(lo - ref.low) < 0.02 and abs(hi - ref.high) < 0.02  # Monte Carlo error of each is ~0.006
    many = np.random.default_rng(4).normal(0.0, 2.0, size=2000)
    half = 1.96 * many.std() / math.sqrt(len(many))
    lo, hi = bootstrap_interval(many)
    assert abs(lo - (many.mean() - half)) < 0.1 * half and abs(hi - (many.mean() + half)) < 0.1 * half
    assert bootstrap_interval(values, seed=5) == bootstrap_interval(values, seed=5)


def test_cluster_bootstrap_resamples_distinct_prompts():
    values = np.random.default_rng(5).normal(0.3, 1.0, size=40)
    # every prompt distinct: the row bootstrap, draw for draw
    assert np.allclose(bootstrap_interval(values, groups=[f"p{i}" for i in range(40)]), bootstrap_interval(values),
                       rtol=1e-12)
    # each prompt repeated 5 times with one value (greedy answers to one text): the interval of the 8 prompts'
    # values, not the narrower one of 40 independent rows
    per_prompt = values[:8]
    rows, texts = np.repeat(per_prompt, 5), np.repeat([f"p{i}" for i in range(8)], 5)
    assert np.allclose(bootstrap_interval(rows, groups=list(texts)), bootstrap_interval(per_prompt), rtol=1e-12)
    lo_rows, hi_rows = bootstrap_interval(rows)
    lo, hi = bootstrap_interval(rows, groups=list(texts))
    assert hi - lo > 1.8 * (hi_rows - lo_rows)  # sqrt(5) wider in expectation
    # unequal clusters: each resample's mean weighs every row once (ratio of sums), by hand for two prompts
    lo, hi = bootstrap_interval(np.array([1.0, 1.0, 1.0, -1.0]), groups=["a", "a", "a", "b"], level=0.8)
    # resamples: {a,a} -> 1 (p 1/4), {a,b} or {b,a} -> (3 - 1) / 4 = 0.5 (p 1/2), {b,b} -> -1 (p 1/4); its 10th
    # and 90th percentiles (rows resampled one by one would put the 10th percentile at 0 or -0.5)
    assert (lo, hi) == (-1.0, 1.0)
    out = head_to_head(np.array([2.0, 2.0, 0.0]), np.array([1.0, 1.0, 1.0]), groups=["x", "x", "y"])
    assert out["prompts"] == 2 and out["wins_losses_ties"] == [2, 1, 0]


def _answers(name, rm, labeler):
    n = len(rm)
    return PolicyAnswers(name, ["p"] * n, ["a"] * n, np.array(rm, float), np.zeros(n), np.array(labeler, float))


def test_reward_model_agreement_counts_pairs_the_labeler_separates():
    # prompt 0: labeler a < b < c; rm orders a < b (right), a < c (right), b > c (wrong)
    # prompt 1: labeler a == b (left out), c above both; rm ties a-c (½), orders b < c (right)
    group = [_answers("a", [0.0, 1.0], [1.0, 2.0]),
             _answers("b", [2.0, 0.0], [2.0, 2.0]),
             _answers("c", [1.0, 1.0], [3.0, 3.0])]
    out = reward_model_agreement(group)
    assert out["pairs"] == 5
    assert out["pair_accuracy"] == (2 + 0.5 + 1) / 5
    rm, lab = np.array([0.0, 1.0, 2.0, 0.0, 1.0, 1.0]), np.array([1.0, 2.0, 2.0, 2.0, 3.0, 3.0])
    assert math.isclose(out["correlation"], float(np.corrcoef(rm, lab)[0, 1]))
