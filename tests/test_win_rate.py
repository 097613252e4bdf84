"""Win rates of the held-out comparison, checked by hand."""
import math

import numpy as np

from mindrlhf.evaluation import decisive_win_rate, win_rate


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
