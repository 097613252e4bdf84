"""The compiled optimizer step every stage shares: gradients, all-reduce, global-norm clipping, AdamW.

A step is a Cell (``value_and_grad`` plus the optimizer inside ``construct``): measured here, that form
compiled and ran faster than the ``@jit`` function form. With gradient accumulation the work splits
into two compiled Cells sharing accumulator Parameters: :class:`AccumulateStep` (one per micro-batch)
and :class:`ApplyStep` (once per optimizer step). Loss functions take their normaliser as an input,
so summing micro-batch gradients gives exactly the full batch's gradient.
"""
from __future__ import annotations

import dataclasses
import math

import mindspore as ms
from mindspore import nn, ops

from .. import kernels, runtime
from ..config import field, require
from .adamw import AdamW


@dataclasses.dataclass
class OptimConfig:
    lr: float = field(1e-3, "peak learning rate")
    weight_decay: float = field(0.0, "AdamW decoupled weight decay")
    beta1: float = field(0.9, "AdamW beta1")
    beta2: float = field(0.95, "AdamW beta2")
    eps: float = field(1e-8, "AdamW epsilon")
    warmup_steps: int = field(10, "linear warm-up steps from 0 to lr")
    schedule: str = field("cosine", "after warm-up: cosine (decays to min_lr_ratio·lr at the last step) or constant")
    min_lr_ratio: float = field(0.1, "floor of the cosine schedule, as a fraction of lr")
    max_grad_norm: float = field(1.0, "clip gradients to this global L2 norm; 0 disables clipping")

    def validate(self):
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 <= self.beta1 < 1, "beta1", f"must be in [0, 1), got {self.beta1}")
        require(0 <= self.beta2 < 1, "beta2", f"must be in [0, 1), got {self.beta2}")
        require(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        require(self.schedule in ("cosine", "constant"), "schedule", f"{self.schedule!r}: expected cosine or constant")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        require(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0 (0 = no clipping), got {self.max_grad_norm}")


def learning_rate(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """lr at optimizer step ``step`` (0-based): linear warm-up, then cosine decay or constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total_steps <= cfg.warmup_steps:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params, cfg: OptimConfig) -> AdamW:
    """The fused in-place :class:`~mindrlhf.trainers.adamw.AdamW` (torch's AdamW update) over ``params``."""
    return AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay)


# Per-tensor work on the gradients and their accumulators, mapped over all of them (see adamw.py: a Python loop
# over a few hundred tensors compiles into nested calls past MindSpore's call-depth limit).
_sum_of_squares = ops.MultitypeFuncGraph("sum_of_squares")
_add_into = ops.MultitypeFuncGraph("add_into")
_zero = ops.MultitypeFuncGraph("zero")


@_sum_of_squares.register("Function", "Tensor")
def _gradient_sum_of_squares(sum_squares, g):
    return sum_squares(g)


@_add_into.register("Tensor", "Tensor")
def _add_gradient(acc, g):
    return ops.assign_add(acc, g)


@_zero.register("Tensor")
def _zero_accumulator(acc):
    return ops.assign(acc, ops.zeros_like(acc))


def global_norm(squares):
    """sqrt(Σ over the gradients of their Σ g²): ``squares`` holds each gradient's (`kernels.sum_squares`)."""
    total = ops.zeros((), ms.float32)
    for s in squares:
        total = total + s
    return ops.sqrt(total)


def clip_by_norm(grads, norm, max_norm: float):
    """Scale all gradients by min(1, max_norm / norm), torch's ``clip_grad_norm_`` rule."""
    scale = ops.minimum(ops.ones((), ms.float32), max_norm / (norm + 1e-6))
    return tuple(g * scale.astype(g.dtype) for g in grads)


def _reducer(params):
    if runtime.current().distributed:
        return nn.DistributedGradReducer(params, mean=True)
    return None


class ApplyGradients(nn.Cell):
    """Mean-reduce gradients over data-parallel ranks, clip them to ``max_grad_norm`` (0: no clipping) and
    apply ``optimizer``: construct(grads) → the pre-clip global norm."""

    def __init__(self, optimizer, max_grad_norm: float):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.max_grad_norm = float(max_grad_norm)
        self.reducer = _reducer(optimizer.parameters)
        self.sum_squares = kernels.sum_squares()
        self.map = ops.HyperMap()

    def construct(self, grads):
        if self.reducer is not None:
            grads = self.reducer(grads)
        norm = global_norm(self.map(ops.partial(_sum_of_squares, self.sum_squares), grads))
        if self.max_grad_norm > 0:
            grads = clip_by_norm(grads, norm, self.max_grad_norm)
        self.optimizer(grads)
        return norm


class TrainStep(nn.Cell):
    """One optimizer step on one batch: ``loss_cell(*inputs) -> (loss, aux)``; returns (loss, aux, grad_norm)."""

    def __init__(self, loss_cell: nn.Cell, optimizer, max_grad_norm: float):
        super().__init__(auto_prefix=False)
        self.grad_fn = ms.value_and_grad(loss_cell, None, optimizer.parameters, has_aux=True)
        self.apply_grads = ApplyGradients(optimizer, max_grad_norm)

    def construct(self, *inputs):
        (loss, aux), grads = self.grad_fn(*inputs)
        return loss, aux, self.apply_grads(grads)


class AccumulateStep(nn.Cell):
    """Add one micro-batch's gradients into ``accum``; returns (loss, aux)."""

    def __init__(self, loss_cell: nn.Cell, params, accum):
        super().__init__(auto_prefix=False)
        self.grad_fn = ms.value_and_grad(loss_cell, None, params, has_aux=True)
        self.accum = accum
        self.map = ops.HyperMap()

    def construct(self, *inputs):
        (loss, aux), grads = self.grad_fn(*inputs)
        self.map(_add_into, self.accum, grads)
        return loss, aux


class ApplyStep(nn.Cell):
    """Apply the accumulated gradients (:class:`ApplyGradients`), then zero them; returns the pre-clip norm."""

    def __init__(self, optimizer, accum, max_grad_norm: float):
        super().__init__(auto_prefix=False)
        self.accum = accum
        self.apply_grads = ApplyGradients(optimizer, max_grad_norm)
        self.map = ops.HyperMap()

    def construct(self):
        norm = self.apply_grads(tuple(self.accum))
        self.map(_zero, self.accum)
        return norm


class Updater:
    """What a trainer holds per trainable role: optimizer, schedule and compiled step(s).

    ``step(batches)`` takes the micro-batches of one optimizer step (tuples of Tensors, each passed
    positionally to the loss cell) and returns (mean loss, list of aux, grad norm) as numpy values.
    """

    def __init__(self, loss_cell: nn.Cell, params, cfg: OptimConfig, total_steps: int, accum_steps: int = 1):
        self.cfg = cfg
        self.total_steps = total_steps
        self.params = list(params)
        self.optimizer = build_optimizer(self.params, cfg)
        self.accum_steps = accum_steps
        if accum_steps == 1:
            self.train_step = TrainStep(loss_cell, self.optimizer, cfg.max_grad_norm)
        else:
            accum = ms.ParameterTuple(
                ms.Parameter(ops.zeros(p.shape, p.dtype), name=f"accum.{p.name}", requires_grad=False)
                for p in self.params
            )
            self.accumulate = AccumulateStep(loss_cell, self.params, accum)
            self.apply = ApplyStep(self.optimizer, accum, cfg.max_grad_norm)
        self.step_count = 0

    def step(self, micro_batches):
        self.optimizer.set_learning_rate(learning_rate(self.cfg, self.step_count, self.total_steps))
        if self.accum_steps == 1:
            (batch,) = micro_batches
            loss, aux, norm = self.train_step(*batch)
            losses, auxes = [float(loss.asnumpy())], [_numpy(aux)]
        else:
            losses, auxes = [], []
            for batch in micro_batches:
                loss, aux = self.accumulate(*batch)
                losses.append(float(loss.asnumpy()))
                auxes.append(_numpy(aux))
            norm = self.apply()
        self.step_count += 1
        return sum(losses), auxes, float(norm.asnumpy())

    def restart(self, total_steps: int) -> None:
        """A fresh optimizer on the parameters as they are: AdamW's moments and step counter zeroed, and the
        schedule (warm-up, decay) from its first step again, over ``total_steps``."""
        for param in self.optimizer.state().values():
            param.set_data(ops.zeros(param.shape, param.dtype))
        self.step_count, self.total_steps = 0, total_steps

    # ------------------------------------------------------------------ state for checkpoints
    def state_dict(self) -> dict:
        """Optimizer state (AdamW's m, v and step counter) as name → Parameter, for ``ms.save_checkpoint``."""
        return self.optimizer.state()

    def load_state_dict(self, tensors: dict) -> None:
        """Restore what :meth:`state_dict` saved (copies, so the checkpoint's tensors are not aliased)."""
        own = self.optimizer.state()
        missing = [name for name in own if name not in tensors]
        unknown = [name for name in tensors if name not in own]
        problems = [f"lacks {len(missing)} of {len(own)} tensors, e.g. {missing[:3]}"] if missing else []
        if unknown:
            problems.append(f"holds {len(unknown)} tensors this optimizer does not have, e.g. {unknown[:3]}")
        if problems:
            raise ValueError(f"optimizer state {' and '.join(problems)}: was the checkpoint written for a different "
                             "model or set of trainable parameters?")
        for name, param in own.items():
            value = tensors[name]
            value = value.asnumpy() if isinstance(value, ms.Tensor) else value
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"optimizer state {name!r} has shape {tuple(value.shape)} in the checkpoint, "
                                 f"but the parameter it belongs to has shape {tuple(param.shape)}")
            param.set_data(ms.Tensor(value, param.dtype))


def _numpy(aux):
    if isinstance(aux, (tuple, list)):
        return [a.asnumpy() for a in aux]
    return aux.asnumpy()
