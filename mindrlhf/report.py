"""The pipeline's report: a Markdown page with the held-out comparison, plots and answers side by side, and
:func:`plot_overoptimisation`, the judge's and the reward model's score of an RL run's rollouts against √KL."""
from __future__ import annotations

import json
import math
import os
from typing import List, Mapping, Optional, Sequence

import numpy as np

from .io import atomic_write, atomic_write_text
from .trainers.metrics import plot_metrics, read_metrics

PPO_CURVES = ["score", "judge_score", "kl", "kl_coef", "reward", "entropy", "clipfrac", "approx_kl",
              "pg_loss", "vf_loss", "explained_var", "response_len"]


def _bar_plot(summary: dict, answers: list, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("judge_score", "rm_score", "kl_to_ref") if all(k in summary[a.name] for a in answers)]
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.4 * (len(keys) + 1), 3.0))
    for ax, key in zip(axes, keys):
        ax.bar([a.name for a in answers], [summary[a.name][key] for a in answers], color=["#888", "#2a7"][: len(answers)])
        ax.set_title(key, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    if answers[0].judge_scores is not None:
        ax = axes[-1]
        bins = np.linspace(min(a.judge_scores.min() for a in answers), max(a.judge_scores.max() for a in answers), 16)
        for a in answers:
            ax.hist(a.judge_scores, bins=bins, alpha=0.5, label=a.name)
        ax.set_title("judge score per prompt", fontsize=9)
        ax.legend(fontsize=8)
    else:
        axes[-1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# What plot_overoptimisation draws against √KL: metric → label (Gao et al.'s gold and proxy reward models)
OVEROPTIMISATION = {"judge_score": "judge (gold)", "rm_score": "reward model (proxy)"}


def overoptimisation_points(metrics_file: str) -> Optional[dict]:
    """What :func:`plot_overoptimisation` draws for one run: ``{"sqrt_kl": [n], key: [n] for each score of
    OVEROPTIMISATION the run logged}`` over its n iterations that logged ``response_kl`` (the mean over
    rollouts of Σ_t KL_t, an estimate: read as 0 below 0), each score as its change from the first of them.
    None without response_kl or a score."""
    rows = [r for r in read_metrics(metrics_file) if isinstance(r.get("response_kl"), (int, float))]
    keys = [k for k in OVEROPTIMISATION if rows and all(isinstance(r.get(k), (int, float)) for r in rows)]
    if not keys:
        return None
    points = {"sqrt_kl": np.sqrt(np.maximum([r["response_kl"] for r in rows], 0.0))}
    for key in keys:
        y = np.array([r[key] for r in rows], np.float64)
        points[key] = y - y[0]
    return points


def plot_overoptimisation(runs: Mapping[str, str], png_path: str) -> Optional[str]:
    """The picture of Gao et al. (2023), one panel per run (``runs``: name → its metrics.jsonl, PPO or GRPO): the
    judge's and the reward model's mean score of each iteration's rollouts (``judge_score``, ``rm_score``)
    against √KL to the reference (:func:`overoptimisation_points`). Where the reward model's score keeps rising
    while the judge's stalls or falls, the policy is exploiting the reward model rather than getting better.

    The judge's change since the first iteration is on the left axis, the reward model's on the right (their
    units differ): a dot per iteration, and a line through the running means over an eighth of the run.
    Returns ``png_path``, or None when no run logged response_kl and a score.
    """
    panels = [(name, points) for name, points in ((n, overoptimisation_points(p)) for n, p in runs.items()) if points]
    if not panels:
        return None
    import matplotlib  # optional plotting dependency, imported only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional plotting dependency (see above)

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels):
        x = points["sqrt_kl"]
        window = max(1, math.ceil(len(x) / 8))
        lines = []
        for i, key in enumerate(k for k in OVEROPTIMISATION if k in points):
            axis = ax if i == 0 else ax.twinx()
            color = ("#c0392b", "#2471a3")[list(OVEROPTIMISATION).index(key)]
            axis.scatter(x, points[key], s=8, alpha=0.35, color=color)
            lines += axis.plot(_running_mean(x, window), _running_mean(points[key], window), color=color,
                               label=OVEROPTIMISATION[key])
            axis.set_ylabel(f"Δ {OVEROPTIMISATION[key]}", fontsize=8, color=color)
            axis.tick_params(labelsize=7)
        ax.set_xlabel("√KL to the reference (√nats)", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return png_path


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value with up to ``window`` − 1 values before it."""
    total = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (total[ends] - total[starts]) / (ends - starts)


def _overoptimisation_lines(out_dir: str, stage: str) -> List[str]:
    png = "report_overoptimisation_" + stage.replace("/", "_") + ".png"
    metrics = os.path.join(out_dir, stage, "metrics.jsonl")
    if plot_overoptimisation({stage: metrics}, os.path.join(out_dir, png)) is None:
        return []
    if "judge_score" not in overoptimisation_points(metrics):  # a task without a judge: the proxy alone
        return ["The reward model's score of the rollouts against √KL to the reference, as changes from the first "
                "iteration (Gao et al. 2023).", "", f"![over-optimisation]({png})", ""]
    return ["Over-optimisation (Gao et al. 2023): the judge's and the reward model's score of the rollouts against "
            "√KL to the reference, as changes from the first iteration. Where the reward model's keeps rising and "
            "the judge's does not, the policy is exploiting the reward model.", "", f"![over-optimisation]({png})", ""]


def _stage_section(out_dir: str, stage: str) -> List[str]:
    head, name = os.path.split(stage)
    title = (head.replace("round", "Round ") + ": " if head else "") + name.upper() + " training"
    ppo_metrics = os.path.join(out_dir, stage, "metrics.jsonl")
    if name == "ppo" and os.path.isfile(ppo_metrics):
        png = "report_" + stage.replace("/", "_") + ".png"
        plot_metrics(ppo_metrics, os.path.join(out_dir, png), PPO_CURVES, "PPO iterations")
        rows = read_metrics(ppo_metrics)
        span = max(1, len(rows) // 4)
        trends = [f"{label} {_mean(rows[:span], key):.3f} → {_mean(rows[-span:], key):.3f}"
                  for key, label in (("score", "reward-model score of rollouts"), ("kl", "KL to reference"),
                                     ("judge_score", "judge score of rollouts"))
                  if all(key in r for r in rows)]
        window = "iteration" if span == 1 else f"{span} iterations"
        return [f"## {title}", "",
                f"{len(rows)} logged iterations; means of the first and last {window}: " + "; ".join(trends) + ".",
                "", f"![{stage}]({png})", ""] + _overoptimisation_lines(out_dir, stage)
    if os.path.isfile(os.path.join(out_dir, stage, "metrics.png")):
        return [f"## {title}", "", f"![{stage}]({stage}/metrics.png)", ""] + _overoptimisation_lines(out_dir, stage)
    return []


def _mean(rows: List[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def _head_to_head_lines(rows: dict) -> List[str]:
    """One sentence per policy compared with the baseline: its record, win rate and score gain, each
    with its 95% bootstrap interval over the distinct prompts."""
    lines = []
    for name, row in rows.items():
        for key in [k for k in row if k.startswith("wins_losses_ties_vs_")]:
            base = key[len("wins_losses_ties_vs_"):]
            (wins, losses, ties), (lo, hi) = row[key], row[f"win_rate_interval_vs_{base}"]
            gain, (glo, ghi) = row[f"judge_gain_vs_{base}"], row[f"judge_gain_interval_vs_{base}"]
            distinct = row.get(f"prompts_vs_{base}", wins + losses + ties)
            lines.append(f"{name} against {base}: {wins} wins, {losses} losses, {ties} ties; win rate "
                         f"{row[f'win_rate_vs_{base}']:.3f} (95% bootstrap interval over {distinct} distinct "
                         f"prompts {lo:.3f} to {hi:.3f}); judge score {gain:+.3f} per prompt ({glo:+.3f} to {ghi:+.3f}).")
    return lines + [""] if lines else []


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(out_dir: str, summary: dict, answers: dict, n_samples: int,
                 stages: Sequence[str] = ("ppo", "sft", "rm")) -> str:
    """Write ``out_dir/report.md`` (+ PNGs beside it); return its path.

    ``summary[decoding][policy]`` holds the metrics and ``answers[decoding]`` the PolicyAnswers;
    ``stages`` are the training folders (relative to ``out_dir``) whose curves are shown, in order: a
    PPO folder's metrics are plotted afresh, any other folder's ``metrics.png`` is linked.
    """
    judged = any(a.judge_scores is not None for group in answers.values() for a in group)
    lines = ["# mindrlhf pipeline report", ""]
    if judged:
        lines += ["Held-out prompts answered by each policy; the task's judge (never seen in training) scores them.",
                  "Win rate: fraction of prompts where the policy's judge score beats the baseline's, ties ½."]
    else:
        lines += ["Held-out prompts answered by each policy. The task has no judge: the reward model's score (what "
                  "PPO optimised), the KL and the answers are all there is to compare."]
    lines += ["Each trained policy is the last checkpoint of its stage's schedule, fixed by its config before "
              "training: none is chosen by looking at the held-out scores.",
              "KL to reference = Σ_t log π(y_t) − log π_ref(y_t) over the answer, in nats."]
    if any(a.chosen_by_rm for group in answers.values() for a in group):
        lines.append("best_of_n rows: n sampled SFT answers per prompt, the reward model's pick; the same sampled "
                     "answers in every decoding's table (against SFT's greedy answers in the greedy one).")
    lines.append("")
    for decoding, group in answers.items():
        names = [a.name for a in group]
        png = f"report_scores_{decoding}.png"
        _bar_plot(summary[decoding], group, os.path.join(out_dir, png))
        cols = sorted({k for n in names for k, v in summary[decoding][n].items() if isinstance(v, float)})
        lines += [f"## {decoding} decoding", "", "| policy | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(_fmt(summary[decoding][n].get(c)) for c in cols) + " |")
        lines.append("")
        lines += _head_to_head_lines(summary[decoding])
        agreement = summary.get("reward_model_vs_judge", {}).get(decoding)
        if agreement:
            lines += [f"Reward model against the judge on these answers: it orders {agreement['pair_accuracy']:.1%} of "
                      f"the {agreement['pairs']} pairs (same prompt, two policies, different judge scores) as the "
                      f"judge does; Pearson r = {agreement['correlation']:.3f} over all answers.", ""]
        lines += [f"![scores]({png})", ""]
    for stage in stages:
        lines += _stage_section(out_dir, stage)
    if summary.get("stage_seconds"):
        lines += ["## Wall time", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in summary["stage_seconds"].items()]
        lines.append("")
    for decoding, group in answers.items():
        names = [a.name for a in group]
        lines += [f"## Answers side by side ({decoding})", "", "| prompt | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for i in range(min(n_samples, len(group[0].texts))):
            cells = []
            for a in group:
                score = f" ({a.judge_scores[i]:+.1f})" if a.judge_scores is not None else ""
                cells.append(_cell(a.texts[i]) + score)
            lines.append(f"| {_cell(group[0].prompts[i])} | " + " | ".join(cells) + " |")
        lines.append("")
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, "\n".join(lines) + "\n")
    _write_answers(os.path.join(out_dir, "answers.jsonl"), answers)
    return path


def _write_answers(path: str, answers: dict) -> None:
    """Every held-out answer, one JSON line per (decoding, prompt, policy), for analysis beyond the report."""
    records = []
    for decoding, group in answers.items():
        for i in range(len(group[0].texts)):
            for a in group:
                record = {"decoding": decoding, "policy": a.name, "prompt": a.prompts[i], "response": a.texts[i],
                          "rm_score": float(a.rm_scores[i]), "kl_to_ref": float(a.kl_to_ref[i])}
                if a.judge_scores is not None:
                    record["judge_score"] = float(a.judge_scores[i])
                records.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(path, "\n".join(records) + "\n")


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"
