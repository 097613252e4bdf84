"""The report's PPO section: the rollout trends it states are means over the first and last quarter of the
logged iterations (one iteration's 8 rollouts are too few to read a trend from); the over-optimisation plot of
an RL run (the judge's and the reward model's scores against √KL)."""
import json
import os

import numpy as np

from mindrlhf.report import _running_mean, _stage_section, overoptimisation_points, plot_overoptimisation


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


def _rl_rows(n=24, judge=True):
    """An RL run whose reward-model score keeps rising while the judge's peaks at iteration 12 and falls."""
    rows = []
    for i in range(n):
        row = {"step": i + 1, "response_kl": 0.05 * i * i, "rm_score": 0.1 * i, "kl": 0.05 * i * i}
        if judge:
            row["judge_score"] = -abs(i - 12) * 0.2
        rows.append(row)
    return rows


def test_overoptimisation_plot_of_an_rl_run(tmp_path):
    _write_ppo_metrics(str(tmp_path), _rl_rows())
    metrics = str(tmp_path / "ppo" / "metrics.jsonl")
    points = overoptimisation_points(metrics)
    np.testing.assert_allclose(points["sqrt_kl"], np.sqrt(0.05) * np.arange(24))
    np.testing.assert_allclose(points["rm_score"], 0.1 * np.arange(24))  # changes from the first iteration
    np.testing.assert_allclose(points["judge_score"], 2.4 - 0.2 * np.abs(np.arange(24) - 12), atol=1e-12)
    path = plot_overoptimisation({"ppo": metrics, "again": metrics}, str(tmp_path / "o.png"))
    assert path == str(tmp_path / "o.png") and os.path.getsize(path) > 1000
    # in the report: the PPO section draws it under its curves, for PPO and GRPO folders alike
    lines = _stage_section(str(tmp_path), "ppo")
    assert "![over-optimisation](report_overoptimisation_ppo.png)" in lines
    assert os.path.isfile(tmp_path / "report_overoptimisation_ppo.png")
    os.makedirs(tmp_path / "round2" / "grpo")
    with open(tmp_path / "round2" / "grpo" / "metrics.jsonl", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in _rl_rows(judge=False)))
    open(tmp_path / "round2" / "grpo" / "metrics.png", "wb").close()
    assert set(overoptimisation_points(str(tmp_path / "round2" / "grpo" / "metrics.jsonl"))) == {"sqrt_kl", "rm_score"}
    lines = _stage_section(str(tmp_path), "round2/grpo")
    assert lines[0] == "## Round 2: GRPO training"
    assert "![over-optimisation](report_overoptimisation_round2_grpo.png)" in lines


def test_no_overoptimisation_plot_without_the_kl_or_a_score(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "score": 1.0, "kl": 0.1}) + "\n" for i in range(5)))
    assert overoptimisation_points(str(path)) is None
    assert plot_overoptimisation({"old ppo": str(path)}, str(tmp_path / "o.png")) is None
    assert not os.path.exists(tmp_path / "o.png")
    _write_ppo_metrics(str(tmp_path / "run"), [{"step": 1, "score": 1.0, "kl": 0.0}])
    assert not any("over-optimisation" in line for line in _stage_section(str(tmp_path / "run"), "ppo"))


def test_a_negative_kl_estimate_is_read_as_zero(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "response_kl": kl, "rm_score": 1.0}) + "\n"
                            for i, kl in enumerate([-0.02, 0.04, 0.09])))
    np.testing.assert_allclose(overoptimisation_points(str(path))["sqrt_kl"], [0.0, 0.2, 0.3])


def test_running_mean():
    np.testing.assert_allclose(_running_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(_running_mean(np.array([1.0, 3.0]), 1), [1.0, 3.0])
