"""Metrics as JSONL (one object per logged step) and PNG plots of their curves."""
from __future__ import annotations

import json
import math
import os
from typing import Iterable, Optional

from mindrlhf.io import atomic_write, atomic_write_text


class MetricsLogger:
    """Appends ``{"step": n, ...}`` lines to ``run_dir/metrics.jsonl``; only rank 0 writes.

    On resume from step ``s`` the lines logged after ``s`` by the killed run are dropped, so the file
    reads as if the run had never stopped.
    """

    def __init__(self, run_dir: str, is_main: bool = True, resume_step: Optional[int] = None):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.is_main = is_main
        if is_main:
            os.makedirs(run_dir, exist_ok=True)
            if resume_step is None:
                open(self.path, "w", encoding="utf-8").close()
            else:
                kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, step: int, metrics: dict) -> None:
        if not self.is_main:
            return
        row = {"step": int(step)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def _plain(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else str(value)


def read_metrics(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_metrics(jsonl_path: str, png_path: str, keys: Optional[Iterable[str]] = None, title: str = "") -> Optional[str]:
    """One small panel per numeric metric against step; returns the PNG path (None if nothing to plot)."""
    rows = read_metrics(jsonl_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if keys is None:
        keys = sorted({k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not keys:
        return None
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return png_path
