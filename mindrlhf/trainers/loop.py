"""The loop the supervised stages share (SFT, reward model, DPO): batches → compiled step → log/eval/save.

A stage supplies what differs: how a list of records becomes the Tensors of one micro-batch, the
Updater (loss Cell + optimizer), the Cells to checkpoint and an evaluation function. The loop owns
the rest: the global batch split across ranks and micro-batches, the progress bar, metrics JSONL,
periodic evaluation, atomic checkpoints, resume, and the plot at the end.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from .. import runtime
from ..config import field, require
from .checkpoint import CheckpointManager, save_cell_weights
from .metrics import MetricsLogger, plot_metrics


@dataclasses.dataclass
class LoopConfig:
    batch_size: int = field(16, "global batch size (sequences per optimizer step, summed over ranks)")
    micro_batch_size: int = field(0, "sequences per forward pass on one rank; 0 = the whole per-rank batch")
    epochs: float = field(1.0, "passes over the training data (fractions allowed); ignored when max_steps > 0")
    max_steps: int = field(0, "optimizer steps to run; 0 = derive from epochs")
    log_every: int = field(5, "steps between metric lines")
    eval_every: int = field(50, "steps between held-out evaluations; 0 = only at the end")
    save_every: int = field(100, "steps between checkpoints; 0 = only at the end")
    keep_checkpoints: int = field(2, "newest checkpoints kept on disk")
    progress: bool = field(True, "show a progress bar")

    def validate(self):
        require(self.batch_size > 0, "train.batch_size", "must be > 0")
        require(self.micro_batch_size >= 0, "train.micro_batch_size", "must be >= 0")
        require(self.max_steps > 0 or self.epochs > 0, "train.epochs", "set epochs > 0 or max_steps > 0")

    def total_steps(self, n_records: int) -> int:
        if self.max_steps > 0:
            return self.max_steps
        return max(1, int(self.epochs * n_records // self.batch_size))

    def layout(self, world_size: int) -> tuple[int, int]:
        """(per-rank batch, micro-batches per step), or a clear error when the sizes do not divide."""
        require(self.batch_size % world_size == 0, "train.batch_size",
                f"{self.batch_size} does not divide over {world_size} ranks")
        per_rank = self.batch_size // world_size
        micro = self.micro_batch_size or per_rank
        require(per_rank % micro == 0, "train.micro_batch_size",
                f"{micro} does not divide the per-rank batch of {per_rank}")
        return per_rank, per_rank // micro


class DataOrder:
    """Which records form each global batch: a seeded permutation per epoch, restorable for resume."""

    def __init__(self, n_records: int, batch_size: int, seed: int):
        if n_records < batch_size:
            raise ValueError(f"{n_records} training records are fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n_records, batch_size, seed
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def next_batch(self) -> np.ndarray:
        if self.cursor + self.batch_size > self.n:  # drop the ragged tail; start the next epoch
            self.epoch, self.cursor = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def restore(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._perm = self._permutation(self.epoch)


@dataclasses.dataclass
class Stage:
    """What a supervised stage hands the loop."""

    records: Sequence  # training records
    make_batch: Callable  # (records, normalizer) -> tuple of Tensors for the loss cell
    count: Callable  # (records) -> number the loss is normalised by (tokens, sequences or prompts)
    updater: object  # trainers.step.Updater
    cells: dict  # name -> Cell, written to each checkpoint
    evaluate: Optional[Callable] = None  # () -> dict of held-out metrics
    # (list of aux arrays) -> dict of extra train metrics. Aux arrays must be sums over rows: under msrun
    # the list holds one array, the sum over micro-batches and ranks (the global batch's sums).
    describe_aux: Optional[Callable] = None
    unit: str = "tok"  # what count() counts, for the throughput shown


def run_loop(stage: Stage, cfg: LoopConfig, run_dir: str, seed: int, resume: Optional[str] = None) -> dict:
    """Train to the end (or from ``resume``'s newest checkpoint to the end); return the final metrics."""
    rt = runtime.current()
    per_rank, n_micro = cfg.layout(rt.world_size)
    total = cfg.total_steps(len(stage.records))
    stage.updater.total_steps = total
    order = DataOrder(len(stage.records), cfg.batch_size, seed)
    ckpt = CheckpointManager(run_dir, keep=cfg.keep_checkpoints)

    start = 0
    if resume:
        path = CheckpointManager(resume, keep=cfg.keep_checkpoints).latest()
        if path is None:
            raise FileNotFoundError(f"{resume}: no complete checkpoint to resume from (checkpoints/latest missing)")
        state = CheckpointManager.load(path, stage.cells, {"model": stage.updater})
        order.restore(state["data_order"])
        start = state["step"]
    logger = MetricsLogger(run_dir, rt.is_main, resume_step=start if resume else None)

    bar = _progress(cfg.progress and rt.is_main, total, start)
    final: dict = {}
    window_units, window_time = 0, time.perf_counter()
    for step in range(start, total):
        idx = order.next_batch()
        batch = [stage.records[i] for i in idx]
        normalizer = stage.count(batch) / rt.world_size  # ranks' gradients are averaged, not summed
        mine = batch[rt.rank * per_rank : (rt.rank + 1) * per_rank]
        micro = len(mine) // n_micro
        micro_batches = [stage.make_batch(mine[i * micro : (i + 1) * micro], normalizer) for i in range(n_micro)]
        loss, auxes, grad_norm = stage.updater.step(micro_batches)
        if rt.distributed:
            loss, auxes = _over_ranks(loss, auxes)
        window_units += stage.count(batch)
        done = step + 1
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": _lr(stage.updater)}
        if stage.describe_aux is not None:
            metrics.update(stage.describe_aux(auxes))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
        if done % cfg.log_every == 0 or done == total:
            elapsed = time.perf_counter() - window_time
            metrics[f"{stage.unit}_per_s"] = window_units / max(elapsed, 1e-9)
            window_units, window_time = 0, time.perf_counter()
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.4f}", **{f"{stage.unit}/s": f"{metrics[f'{stage.unit}_per_s']:.0f}"})
        if stage.evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == total):
            metrics.update(stage.evaluate())
        if done % cfg.log_every == 0 or done == total or any(k.startswith("eval_") for k in metrics):
            logger.log(done, metrics)
        if (cfg.save_every and done % cfg.save_every == 0) or done == total:
            ckpt.save(done, stage.cells, {"model": stage.updater}, {"data_order": order.state()}, rt.is_main)
            dump_rank_weights(stage.cells, rt.rank, done)
        final = metrics
    if bar is not None:
        bar.close()
    if rt.is_main:
        plot_metrics(logger.path, os.path.join(run_dir, "metrics.png"))
    return final


def _over_ranks(loss: float, auxes: list) -> tuple[float, list]:
    """The global batch's loss and aux sums from this rank's. A rank's loss is Σ_rank ℓ / (N / W), so the
    global Σ ℓ / N is the mean over ranks; aux arrays are sums over rows, so they add up."""
    aux = np.sum([np.asarray(a, np.float32) for a in auxes], axis=0)
    flat = np.concatenate([[loss / runtime.current().world_size], aux.ravel()])
    total = runtime.all_reduce_sum(flat)
    return float(total[0]), [total[1:].reshape(aux.shape)]


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


def _lr(updater) -> float:
    return float(updater.optimizer.lr.asnumpy())


def _progress(enabled: bool, total: int, start: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, leave=True, mininterval=1.0)
