"""Win rates of the held-out comparison and the reward model's agreement with the labeler, checked by hand."""
import math

import numpy as np

from mindrlhf.evaluation import PolicyAnswers, decisive_win_rate, reward_model_agreement, win_rate


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
