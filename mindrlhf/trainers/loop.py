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
import shutil
import signal
import sys
import threading
import time
from typing import Optional

from .. import runtime
from ..config import field, require, save_config
from .checkpoint import CheckpointError, CheckpointManager, save_cell_weights
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
    dead_after: int = 5  # this many steps in a row with a gradient norm of exactly 0: the model stopped learning
    total_steps: int = 0

    def cells(self) -> dict:
        """name -> Cell written to each checkpoint (the trainable parameters)."""
        raise NotImplementedError

    def updaters(self) -> dict:
        """name -> RoleOptimizer (an Updater is one) whose optimizer state goes into each checkpoint."""
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

    def boundary(self, done: int) -> bool:
        """True when step ``done`` ends a part of the run (a round of iterated DPO): the loop evaluates and
        saves a checkpoint there as at the end, so a resumed run starts the next part from it."""
        return False

    def finish(self, run_dir: str) -> None:
        """Write the stage's product (``run_dir/model``); called on rank 0 after the last step."""


RUN_PRODUCTS = ("checkpoints", "metrics.jsonl", "metrics.png", "model")  # what a run writes into its folder


class RunDirError(ValueError):
    """A fresh run pointed at a folder that holds an earlier run."""


class Interrupted(Exception):
    """SIGINT/SIGTERM: the loop finished the step, saved a checkpoint and stopped. ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def prepare_run_dir(run_dir: str, resume: Optional[str] = None, overwrite: bool = False) -> None:
    """Refuse a fresh run into a folder that holds an earlier run, unless ``overwrite``: then the files a
    run owns there (checkpoints, metrics, model) are removed first. Anything else in the folder is kept."""
    if resume or not runtime.current().is_main:
        return
    used = [name for name in RUN_PRODUCTS if os.path.exists(os.path.join(run_dir, name))]
    if used and not overwrite:
        raise RunDirError(f"{run_dir}: holds an earlier run ({', '.join(used)}); continue it with --resume "
                          f"{run_dir}, start over with --overwrite, or choose another out_dir")
    for name in used:
        path = os.path.join(run_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def run_loop(stage: Stage, cadence: CadenceConfig, run_dir: str, resume: Optional[str] = None,
             config=None) -> dict:
    """Train ``stage`` to its end (from ``resume``'s newest readable checkpoint when given); return the last
    metrics. ``config``, when given, is written to ``run_dir/config.yaml`` once the stage is built (its
    inputs read and checked) and the checkpoint loaded."""
    rt = runtime.current()
    total = stage.total_steps
    ckpt = CheckpointManager(run_dir, keep=cadence.keep_checkpoints)
    cells, updaters = stage.cells(), stage.updaters()
    start = _restore(stage, cells, updaters, resume) if resume else 0
    if rt.is_main and config is not None:
        os.makedirs(run_dir, exist_ok=True)
        save_config(config, os.path.join(run_dir, "config.yaml"))
    logger = MetricsLogger(run_dir, rt.is_main, resume_step=start if resume else None)

    interactive = cadence.progress and rt.is_main and sys.stderr.isatty()
    bar = _progress(interactive, total, start, stage.name)
    if rt.is_main and start < total:
        print(f"[{stage.name}] compiling the graphs of step {start + 1} (the first step of a run takes longest)",
              flush=True)
    final: dict = {}
    window_units, window_time = 0, time.perf_counter()
    flat = 0  # steps in a row whose gradient norm was exactly 0
    with _StopSignals() as stop:
        for step in range(start, total):
            metrics, units = stage.step(step)
            stop.rearm()
            done = step + 1
            _guard(stage, metrics, done)
            flat = flat + 1 if metrics.get("grad_norm") == 0.0 else 0
            if stage.dead_after and flat >= stage.dead_after:
                raise DivergedError(f"diverged at step {done}: the gradient norm has been exactly 0 for {flat} "
                                    f"steps (loss {metrics['loss']:.4g}): the model stopped learning, as a learning "
                                    "rate far too high leaves it; lower it and start again from a checkpoint "
                                    "before the collapse")
            window_units += units
            logged = done % cadence.log_every == 0 or done == total
            if logged and stage.unit:
                elapsed = time.perf_counter() - window_time
                metrics[f"{stage.unit}_per_s"] = window_units / max(elapsed, 1e-9)
                window_units, window_time = 0, time.perf_counter()
            end = done == total or stage.boundary(done)
            if (cadence.eval_every and done % cadence.eval_every == 0) or end:
                metrics.update(stage.evaluate())
            if logged or any(k.startswith("eval_") for k in metrics):
                logger.log(done, metrics)
                if bar is None and rt.is_main:
                    print(_plain_line(stage.name, done, total, metrics), flush=True)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(**stage.postfix(metrics))
            saving = (cadence.save_every and done % cadence.save_every == 0) or end
            if saving or stop.signum:
                stage.before_save()
                ckpt.save(done, cells, updaters, stage.state(), rt.is_main)
                dump_rank_weights(cells, rt.rank, done)
            final = metrics
            if stop.signum and done < total:
                if bar is not None:
                    bar.close()
                raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} after step {done}/{total}; "
                                  f"checkpoint saved: continue with --resume {run_dir}", 128 + stop.signum)
    if bar is not None:
        bar.close()
    if rt.is_main:
        plot_metrics(logger.path, os.path.join(run_dir, "metrics.png"))
        stage.finish(run_dir)
    return final


def _restore(stage: Stage, cells: dict, updaters: dict, resume: str) -> int:
    """Load the newest readable checkpoint under ``resume`` (falling back past corrupt ones); its step."""
    candidates = CheckpointManager(resume).candidates()
    if not candidates:
        raise FileNotFoundError(f"{resume}: no complete checkpoint to resume from (no checkpoints/step_* folder)")
    for i, path in enumerate(candidates):
        try:
            state = CheckpointManager.load(path, cells, updaters)
        except CheckpointError as err:
            if i + 1 == len(candidates):
                raise
            print(f"[{stage.name}] {err}; resuming from the previous checkpoint instead", flush=True)
            continue
        stage.restore(state)
        return int(state["step"])
    raise AssertionError("unreachable")


def _plain_line(name: str, done: int, total: int, metrics: dict) -> str:
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                     if isinstance(v, (int, float)) and not k.startswith("time_"))
    return f"[{name}] step {done}/{total} {shown}"


class _StopSignals:
    """Records SIGINT/SIGTERM instead of dying, so the loop can finish the step and save first."""

    def __init__(self):
        self.signum, self._old = 0, {}

    def _handle(self, signum, _frame):
        if self.signum:  # a second signal: stop at once
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def rearm(self) -> None:
        """Install the handlers again: MindSpore's runtime registers its own SIGINT handler while it runs a
        graph, and a Ctrl-C landing there reaches this handler as SIGTERM (exit 143 instead of 130)."""
        for sig in self._old:
            signal.signal(sig, self._handle)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def _guard(stage: Stage, metrics: dict, done: int) -> None:
    bad = [k for k in stage.guarded if k in metrics and not math.isfinite(float(metrics[k]))]
    if bad:
        raise DivergedError(f"diverged at step {done}: {', '.join(f'{k}={metrics[k]}' for k in bad)}; nothing "
                            "of this step was saved (lower the learning rate, or resume from the last checkpoint)")


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
