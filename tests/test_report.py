"""The report's PPO section: the rollout trends it states are means over the first and last quarter of the
logged iterations (one iteration's 8 rollouts are too few to read a trend from)."""
import json
import os

from mindrlhf.report import _stage_section


def _write_ppo_metrics(out_dir, rows):
    os.makedirs(os.path.join(out_dir, "ppo"))
    with open(os.path.join(out_dir, "ppo", "metrics.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_ppo_trends_are_quarter_means(tmp_path):
    scores = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    rows = [{"step": i + 1, "score": s, "kl": 0.1 * i, "judge_score": -s} for i, s in enumerate(scores)]
    _write_ppo_metrics(str(tmp_path), rows)
    lines = _stage_section(str(tmp_path), "ppo")
    text = lines[2]
    # 8 iterations -> quarters of 2: score (0+1)/2 = 0.5 -> (6+7)/2 = 6.5; kl 0.05 -> 0.65
    assert text.startswith("8 logged iterations; means of the first and last 2 iterations:")
    assert "reward-model score of rollouts 0.500 → 6.500" in text
    assert "KL to reference 0.050 → 0.650" in text
    assert "judge score of rollouts -0.500 → -6.500" in text
    assert os.path.isfile(tmp_path / "report_ppo.png")


def test_ppo_trends_with_few_iterations_and_no_judge(tmp_path):
    _write_ppo_metrics(str(tmp_path), [{"step": 1, "score": 1.0, "kl": 0.0}, {"step": 2, "score": 3.0, "kl": 0.5}])
    text = _stage_section(str(tmp_path), "ppo")[2]
    assert text == ("2 logged iterations; means of the first and last iteration: "
                    "reward-model score of rollouts 1.000 → 3.000; KL to reference 0.000 → 0.500.")
