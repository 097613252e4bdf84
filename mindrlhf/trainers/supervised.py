"""What the supervised stages (SFT, reward model) share on top of the loop: records → global batches.

:class:`SupervisedStage` turns a list of encoded records into optimizer steps: a seeded order per epoch
(restorable for resume), the global batch split across ranks and micro-batches, the loss normalised by
the global batch's count, and the ranks' losses and auxiliary sums reduced for logging.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from .. import runtime
from ..config import field, require
from .loop import CadenceConfig, Stage


@dataclasses.dataclass
class LoopConfig(CadenceConfig):
    batch_size: int = field(16, "global batch size (sequences per optimizer step, summed over ranks)")
    micro_batch_size: int = field(0, "sequences per forward pass on one rank; 0 = the whole per-rank batch")
    epochs: float = field(1.0, "passes over the training data (fractions allowed); ignored when max_steps > 0")
    max_steps: int = field(0, "optimizer steps to run; 0 = derive from epochs")

    def validate(self):
        super().validate()
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.micro_batch_size >= 0, "micro_batch_size",
                f"must be >= 0 (0 = the whole per-rank batch), got {self.micro_batch_size}")
        require(self.max_steps >= 0, "max_steps", f"must be >= 0 (0 = derive from epochs), got {self.max_steps}")
        require(self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        require(self.max_steps > 0 or self.epochs > 0, "epochs", "set epochs > 0 or max_steps > 0")

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


@dataclasses.dataclass
class DataConfig:
    """The data keys of a stage trained on a file of records (demonstrations, rankings, pairs)."""

    train: str = field("", "training records, JSONL (or .mindrecord)")
    eval: str = field("", "held-out records; empty = hold out eval_fraction of train")
    eval_fraction: float = field(0.05, "fraction of train held out when eval is empty")
    max_length: int = field(128, "longest prompt+response in tokens; longer records are errors (or skipped)")
    pad_multiple: int = field(32, "pad each batch to a multiple of this (few distinct shapes = few compiles)")
    skip_invalid: bool = field(False, "skip malformed or too-long records (counted and logged) instead of stopping")
    chat_template: bool = field(True, "encode through the tokenizer's chat template; false = plain continuation "
                                      "([bos] prompt response eos, the loss on response and EOS: data/encoding.py)")

    def validate(self):
        require(bool(self.train), "train", "set the training file, e.g. data.train=train.jsonl")
        require(0 <= self.eval_fraction < 1, "eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        require(self.max_length > 1, "max_length", f"must be > 1, got {self.max_length}")
        require(self.pad_multiple >= 1, "pad_multiple", f"must be >= 1, got {self.pad_multiple}")


def split_heldout(records, data_cfg: DataConfig, seed: int, encode_file: Callable) -> tuple[list, list]:
    """(train, eval) records: ``encode_file(data.eval)`` when an eval file is set, else a seeded slice of train."""
    if data_cfg.eval:
        return list(records), list(encode_file(data_cfg.eval))
    perm = np.random.default_rng(seed).permutation(len(records))
    n_eval = int(round(len(records) * data_cfg.eval_fraction))
    return [records[i] for i in perm[n_eval:]], [records[i] for i in perm[:n_eval]]


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


class SupervisedStage(Stage):
    """A stage whose step is one optimizer step of ``updater`` over the next global batch of ``records``.

    ``make_batch(records, normalizer)`` gives the loss cell's Tensors for one micro-batch; ``count(records)``
    the number the loss is normalised by (tokens, sequences or prompts: ``unit``); ``describe_aux(auxes)``
    turns the loss cell's aux arrays (sums over rows; under msrun one array, the global sum) into metrics.
    """

    def __init__(self, records: Sequence, make_batch: Callable, count: Callable, updater, cells: dict,
                 loop: LoopConfig, seed: int, evaluate: Optional[Callable] = None,
                 describe_aux: Optional[Callable] = None, unit: str = "tok", export: Optional[Callable] = None,
                 name: str = "train"):
        self.rt, self.name = runtime.current(), name
        self.records, self.make_batch, self.count = records, make_batch, count
        self.updater, self._cells, self.unit = updater, cells, unit
        self._evaluate, self.describe_aux, self.export = evaluate, describe_aux, export
        self.per_rank, self.n_micro = loop.layout(self.rt.world_size)
        self.total_steps = loop.total_steps(len(records))
        updater.total_steps = self.total_steps
        self.order = DataOrder(len(records), loop.batch_size, seed)

    def cells(self) -> dict:
        return self._cells

    def updaters(self) -> dict:
        return {"model": self.updater}

    def step(self, step: int) -> tuple[dict, int]:
        rt = self.rt
        batch = [self.records[i] for i in self.order.next_batch()]
        normalizer = self.count(batch) / rt.world_size  # ranks' gradients are averaged, not summed
        mine = batch[rt.rank * self.per_rank : (rt.rank + 1) * self.per_rank]
        micro = len(mine) // self.n_micro
        micro_batches = [self.make_batch(mine[i * micro : (i + 1) * micro], normalizer) for i in range(self.n_micro)]
        loss, auxes, grad_norm = self.updater.step(micro_batches)
        if rt.distributed:
            loss, auxes = _over_ranks(loss, auxes)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": float(self.updater.optimizer.lr.asnumpy())}
        if self.describe_aux is not None:
            metrics.update(self.describe_aux(auxes))
        return metrics, self.count(batch)

    def evaluate(self) -> dict:
        return self._evaluate() if self._evaluate is not None else {}

    def state(self) -> dict:
        return {"data_order": self.order.state()}

    def restore(self, state: dict) -> None:
        self.order.restore(state["data_order"])

    def finish(self, run_dir: str) -> None:
        if self.export is not None:
            self.export(run_dir)


def with_dropout(model, evaluate: Callable) -> Callable:
    """Put ``model`` in training mode (LoRA dropout on) and return ``evaluate`` wrapped to run in eval
    mode. Only the Python flag flips; the train step and the evaluation forward are separate graphs."""
    model.set_train(True)

    def wrapped():
        model.set_train(False)
        try:
            return evaluate()
        finally:
            model.set_train(True)

    return wrapped


def _over_ranks(loss: float, auxes: list) -> tuple[float, list]:
    """The global batch's loss and aux sums from this rank's. A rank's loss is Σ_rank ℓ / (N / W), so the
    global Σ ℓ / N is the mean over ranks; aux arrays are sums over rows, so they add up."""
    aux = np.sum([np.asarray(a, np.float32) for a in auxes], axis=0)
    flat = np.concatenate([[loss / runtime.current().world_size], aux.ravel()])
    total = runtime.all_reduce_sum(flat)
    return float(total[0]), [total[1:].reshape(aux.shape)]
