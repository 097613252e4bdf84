"""The one training loop every stage runs on: step → log → evaluate → save, with resume and a guard.

A stage (SFT, reward model, PPO, ...) is an object with the methods of :class:`Stage`: it builds its roles
and optimizers, and its ``step(i)`` does one unit of training (an optimizer step over a global batch, or
a whole PPO iteration) and returns its metrics. The loop owns what is the same for all of them: resume
from the newest checkpoint, the progress bar (plain metric lines when the output is not a terminal),
the metrics JSONL and its plot, the evaluation and save cadence, rank-0 writes, and the divergence guard.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Optional

from .. import runtime
from ..config import field, require
from .checkpoint import CheckpointManager, save_cell_weights
from .metrics import MetricsLogger, plot_metrics


@dataclasses.dataclass
class CadenceConfig:
    """How often the loop logs, evaluates and saves; every stage's config carries these keys."""

    log_every: int = field(5, "steps between metric lines")
    eval_every: int = field(50, "steps between held-out evaluations; 0 = only at the end")
    save_every: int = field(100, "steps between checkpoints; 0 = only at the end")
    keep_checkpoints: int = field(2, "newest checkpoints kept on disk")
    progress: bool = field(True, "show a progress bar")

    def validate(self):
        require(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        require(self.eval_every >= 0, "eval_every", f"must be >= 0 (0 = only at the end), got {self.eval_every}")
        require(self.save_every >= 0, "save_every", f"must be >= 0 (0 = only at the end), got {self.save_every}")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")


class DivergedError(RuntimeError):
    """A non-finite loss or gradient norm: the run stops before anything of the bad step is saved."""


class Stage:
    """What a stage hands :func:`run_loop`. Subclasses set ``total_steps`` and implement :meth:`step`."""

    name = "train"  # the progress bar's label
    unit: Optional[str] = None  # what step() counts for the throughput metric ("tok", "prompt"); None = no metric
    guarded: tuple = ("loss", "grad_norm")  # metrics that must stay finite
    total_steps: int = 0

    def cells(self) -> dict:
        """name -> Cell written to each checkpoint (the trainable parameters)."""
        raise NotImplementedError

    def updaters(self) -> dict:
        """name -> Updater whose optimizer state goes into each checkpoint."""
        raise NotImplementedError

    def step(self, step: int) -> tuple[dict, int]:
        """Train step ``step`` (0-based); return its metrics and the number of ``unit``s it processed."""
        raise NotImplementedError

    def evaluate(self) -> dict:
        """Held-out metrics, keys prefixed ``eval_``; {} when the stage has none."""
        return {}

    def state(self) -> dict:
        """JSON-able trainer state beyond weights and optimizers (data order, controllers)."""
        return {}

    def restore(self, state: dict) -> None:
        """Take back what :meth:`state` returned, from a checkpoint."""

    def before_save(self) -> None:
        """Called before every checkpoint (e.g. to fix parameter names)."""

    def postfix(self, metrics: dict) -> dict:
        """What the progress bar shows after each step."""
        shown = {"loss": f"{metrics['loss']:.4f}"}
        if self.unit and f"{self.unit}_per_s" in metrics:
            shown[f"{self.unit}/s"] = f"{metrics[f'{self.unit}_per_s']:.0f}"
        return shown

    def finish(self, run_dir: str) -> None:
        """Write the stage's product (``run_dir/model``); called on rank 0 after the last step."""


def run_loop(stage: Stage, cadence: CadenceConfig, run_dir: str, resume: Optional[str] = None) -> dict:
    """Train ``stage`` to its end (from ``resume``'s newest checkpoint when given); return the last metrics."""
    rt = runtime.current()
    total = stage.total_steps
    ckpt = CheckpointManager(run_dir, keep=cadence.keep_checkpoints)
    cells, updaters = stage.cells(), stage.updaters()

    start = 0
    if resume:
        path = CheckpointManager(resume, keep=cadence.keep_checkpoints).latest()
        if path is None:
            raise FileNotFoundError(f"{resume}: no complete checkpoint to resume from (checkpoints/latest missing)")
        state = CheckpointManager.load(path, cells, updaters)
        stage.restore(state)
        start = state["step"]
    logger = MetricsLogger(run_dir, rt.is_main, resume_step=start if resume else None)

    bar = _progress(cadence.progress and rt.is_main, total, start, stage.name)
    final: dict = {}
    window_units, window_time = 0, time.perf_counter()
    for step in range(start, total):
        metrics, units = stage.step(step)
        done = step + 1
        _guard(stage, metrics, done)
        window_units += units
        logged = done % cadence.log_every == 0 or done == total
        if logged and stage.unit:
            elapsed = time.perf_counter() - window_time
            metrics[f"{stage.unit}_per_s"] = window_units / max(elapsed, 1e-9)
            window_units, window_time = 0, time.perf_counter()
        if (cadence.eval_every and done % cadence.eval_every == 0) or done == total:
            metrics.update(stage.evaluate())
        if logged or any(k.startswith("eval_") for k in metrics):
            logger.log(done, metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(**stage.postfix(metrics))
        if (cadence.save_every and done % cadence.save_every == 0) or done == total:
            stage.before_save()
            ckpt.save(done, cells, updaters, stage.state(), rt.is_main)
            dump_rank_weights(cells, rt.rank, done)
        final = metrics
    if bar is not None:
        bar.close()
    if rt.is_main:
        plot_metrics(logger.path, os.path.join(run_dir, "metrics.png"))
        stage.finish(run_dir)
    return final


def _guard(stage: Stage, metrics: dict, done: int) -> None:
    bad = [k for k in stage.guarded if k in metrics and not math.isfinite(float(metrics[k]))]
    if bad:
        raise DivergedError(f"diverged at step {done}: {', '.join(f'{k}={metrics[k]}' for k in bad)}; the run stopped "
                            "before saving this step (lower the learning rate, or resume from the last checkpoint)")


RANK_WEIGHTS_ENV = "MINDRLHF_RANK_WEIGHTS_DIR"


def dump_rank_weights(cells: dict, rank: int, step: int) -> None:
    """Test hook: with $MINDRLHF_RANK_WEIGHTS_DIR set, every rank writes its weights at each checkpoint to
    ``DIR/step_<n>/rank<r>.<cell>.safetensors``, so a test can check that data-parallel ranks stay identical
    (checkpoints hold rank 0's weights only). Unset, as in every real run, it does nothing."""
    directory = os.environ.get(RANK_WEIGHTS_ENV)
    if not directory:
        return
    folder = os.path.join(directory, f"step_{step:08d}")
    os.makedirs(folder, exist_ok=True)
    for name, cell in cells.items():
        save_cell_weights(cell, os.path.join(folder, f"rank{rank}.{name}.safetensors"))


def _progress(enabled: bool, total: int, start: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm  # optional at import time: only a run with a progress bar needs it

    return tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, leave=True, mininterval=1.0)
