"""The compiled optimizer step every stage shares: gradients, all-reduce, global-norm clipping, AdamW.

A step is a Cell (``value_and_grad`` plus the optimizer inside ``construct``): measured here, that form
compiled and ran faster than the ``@jit`` function form. With gradient accumulation the work splits
into two compiled Cells sharing accumulator Parameters: :class:`AccumulateStep` (one per micro-batch)
and :class:`ApplyStep` (once per optimizer step). Loss functions take their normaliser as an input,
so summing micro-batch gradients gives exactly the full batch's gradient. Roles trained side by side on the
same batch (PPO's actor and critic) share one compiled step, :class:`JointTrainStep`: one graph, one backward
of the sum of their losses, each role's own clipping and AdamW.
"""
from __future__ import annotations

import dataclasses
import inspect
import math

import mindspore as ms
from mindspore import nn, ops

from .. import kernels, runtime
from ..config import field, require
from ..nn.graph import GraphCell
from ..nn.model import CausalLM
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


def build_optimizer(params, cfg: OptimConfig, scope: str = "") -> AdamW:
    """The fused in-place :class:`~mindrlhf.trainers.adamw.AdamW` (torch's AdamW update, gradients clipped to
    ``cfg.max_grad_norm``) over ``params``; ``scope`` names its scalar Parameters apart from another AdamW's in
    the same graph."""
    return AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
                 max_grad_norm=cfg.max_grad_norm, scope=scope)


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


@_zero.register("Tensor", "Tensor")
def _zero_accumulator(after, acc):
    return ops.assign(acc, ops.depend(ops.zeros_like(acc), after))


def global_norm(squares):
    """sqrt(Σ over the gradients of their Σ g²): ``squares`` holds each gradient's (`kernels.sum_squares`)."""
    total = ops.zeros((), ms.float32)
    for s in squares:
        total = total + s
    return ops.sqrt(total)


def _reducer(params):
    if runtime.current().distributed:
        return nn.DistributedGradReducer(params, mean=True)
    return None


class ApplyGradients(nn.Cell):
    """Mean-reduce gradients over data-parallel ranks, take their global norm and apply ``optimizer`` (which
    clips them by it to its ``max_grad_norm``): construct(grads) → the pre-clip global norm, once the update
    has run."""

    def __init__(self, optimizer):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.reducer = _reducer(optimizer.parameters)
        self.sum_squares = kernels.sum_squares()
        self.map = ops.HyperMap()

    def construct(self, grads):
        if self.reducer is not None:
            grads = self.reducer(grads)
        norm = global_norm(self.map(ops.partial(_sum_of_squares, self.sum_squares), grads))
        return ops.depend(norm, self.optimizer(grads, norm))


def _value_and_grad(loss_cell: nn.Cell, params):
    """``ms.value_and_grad`` of ``loss_cell(*inputs) -> (loss, aux)`` w.r.t. ``params``. With ``runtime.recompute``
    every CausalLM inside ``loss_cell`` first has its decoder layers marked for recompute: the backward runs each
    layer's forward again instead of keeping its activations. Marking here, where every stage's backward is
    built, covers every trained model once its structure is final (LoRA applied)."""
    if runtime.current().recompute:
        for _, cell in loss_cell.cells_and_names():
            if isinstance(cell, CausalLM):
                cell.recompute_layers()
    return ms.value_and_grad(loss_cell, None, params, has_aux=True)


class TrainStep(GraphCell):
    """One optimizer step on one batch: ``loss_cell(*inputs) -> (loss, aux)``; returns (loss, aux, grad_norm)."""

    def __init__(self, loss_cell: nn.Cell, optimizer):
        super().__init__(auto_prefix=False)
        self.grad_fn = _value_and_grad(loss_cell, optimizer.parameters)
        self.apply_grads = ApplyGradients(optimizer)

    def construct(self, *inputs):
        (loss, aux), grads = self.grad_fn(*inputs)
        return loss, aux, self.apply_grads(grads)


class AccumulateStep(GraphCell):
    """Add one micro-batch's gradients into ``accum``; returns (loss, aux)."""

    def __init__(self, loss_cell: nn.Cell, params, accum):
        super().__init__(auto_prefix=False)
        self.grad_fn = _value_and_grad(loss_cell, params)
        self.accum = accum
        self.map = ops.HyperMap()

    def construct(self, *inputs):
        (loss, aux), grads = self.grad_fn(*inputs)
        self.map(_add_into, self.accum, grads)
        return loss, aux


class ApplyStep(GraphCell):
    """Apply the accumulated gradients (:class:`ApplyGradients`), then zero them; returns the pre-clip norm."""

    def __init__(self, optimizer, accum):
        super().__init__(auto_prefix=False)
        self.accum = accum
        self.apply_grads = ApplyGradients(optimizer)
        self.map = ops.HyperMap()

    def construct(self):
        norm = self.apply_grads(tuple(self.accum))
        self.map(ops.partial(_zero, norm), self.accum)  # after the update has read them
        return norm


class SumOfLosses(nn.Cell):
    """The roles' losses side by side: construct(role 0's inputs, then role 1's, ...), ``arities[i]`` Tensors
    for ``loss_cells[i](*inputs) -> (loss, aux)`` → (Σ loss, ((loss, aux) per role))."""

    def __init__(self, loss_cells, arities):
        super().__init__(auto_prefix=False)
        self.loss_cells = nn.CellList(loss_cells, auto_prefix=False)
        self.bounds = _bounds(arities)

    def construct(self, *inputs):
        total = ops.zeros((), ms.float32)
        outs = ()
        for i in range(len(self.loss_cells)):  # unrolled at compile time
            start, stop = self.bounds[i]
            loss, aux = self.loss_cells[i](*inputs[start:stop])
            total = total + loss
            outs = outs + ((loss, aux),)
        return total, outs


class JointTrainStep(GraphCell):
    """One optimizer step of several roles on one batch in one graph: every role's forward, one backward of the
    sum of their losses, then each role's :class:`ApplyGradients` (its own all-reduce, clipping and AdamW).

    The roles' trainable parameters are disjoint, so the gradient of Σ loss w.r.t. a role's parameters is
    that role's own loss's. construct(each role's inputs in turn, as for :class:`SumOfLosses`) →
    (((loss, aux) per role), grad norms)."""

    def __init__(self, loss_cells, arities, optimizers):
        super().__init__(auto_prefix=False)
        params = [p for opt in optimizers for p in opt.parameters]
        self.grad_fn = _value_and_grad(SumOfLosses(loss_cells, arities), ms.ParameterTuple(params))
        self.apply_grads = nn.CellList([ApplyGradients(opt) for opt in optimizers],
                                       auto_prefix=False)
        self.bounds = _bounds([len(opt.parameters) for opt in optimizers])

    def construct(self, *inputs):
        (_, per_role), grads = self.grad_fn(*inputs)
        norms = ()
        for i in range(len(self.apply_grads)):
            start, stop = self.bounds[i]
            norms = norms + (self.apply_grads[i](grads[start:stop]),)
        return per_role, norms


def _bounds(sizes) -> tuple:
    """(start, stop) of each of consecutive runs of ``sizes`` items."""
    return tuple((sum(sizes[:i]), sum(sizes[: i + 1])) for i in range(len(sizes)))


class RoleOptimizer:
    """One role's AdamW over its trainable parameters, with its learning-rate schedule and step count: what a
    checkpoint holds of the role (:meth:`state_dict`). The compiled steps that apply it are built around it."""

    def __init__(self, params, cfg: OptimConfig, total_steps: int, scope: str = ""):
        self.cfg = cfg
        self.total_steps = total_steps
        self.params = list(params)
        self.optimizer = build_optimizer(self.params, cfg, scope)
        self.step_count = 0

    def set_learning_rate(self) -> None:
        """The schedule's lr for the coming step, ``step_count``."""
        self.optimizer.set_learning_rate(learning_rate(self.cfg, self.step_count, self.total_steps))

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


class Updater(RoleOptimizer):
    """What a trainer holds per trainable role: optimizer, schedule and compiled step(s).

    ``step(batches)`` takes the micro-batches of one optimizer step (tuples of Tensors, each passed
    positionally to the loss cell) and returns (mean loss, list of aux, grad norm) as numpy values.
    """

    def __init__(self, loss_cell: nn.Cell, params, cfg: OptimConfig, total_steps: int, accum_steps: int = 1):
        super().__init__(params, cfg, total_steps)
        self.accum_steps = accum_steps
        if accum_steps == 1:
            self.train_step = TrainStep(loss_cell, self.optimizer)
        else:
            accum = ms.ParameterTuple(
                ms.Parameter(ops.zeros(p.shape, p.dtype), name=f"accum.{p.name}", requires_grad=False)
                for p in self.params
            )
            self.accumulate = AccumulateStep(loss_cell, self.params, accum)
            self.apply = ApplyStep(self.optimizer, accum)

    def step(self, micro_batches):
        self.set_learning_rate()
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


class JointUpdater:
    """Roles with disjoint trainable parameters (PPO's actor and critic) updated by one compiled step per batch
    (:class:`JointTrainStep`), each with its own AdamW, schedule and clipping.

    ``roles``: name → (loss cell, trainable params, OptimConfig). ``optimizers`` holds each role's
    :class:`RoleOptimizer` under its name: the state a checkpoint saves, named as a separate :class:`Updater`
    of that role would name it. ``step(inputs)`` takes name → the Tensors of that role's loss cell's
    ``construct`` (all its arguments, positionally) and returns name → (loss, aux, grad norm) as numpy values.
    """

    def __init__(self, roles: dict, total_steps: int):
        self.optimizers = {name: RoleOptimizer(params, cfg, total_steps, scope=name)
                           for name, (_, params, cfg) in roles.items()}
        _require_disjoint(self.optimizers)
        self.arities = {name: _arity(name, cell) for name, (cell, _, _) in roles.items()}
        self.train_step = JointTrainStep([cell for cell, _, _ in roles.values()], list(self.arities.values()),
                                         [opt.optimizer for opt in self.optimizers.values()])

    def step(self, inputs: dict) -> dict:
        for name, arity in self.arities.items():
            if len(inputs[name]) != arity:
                raise ValueError(f"{name}: {len(inputs[name])} inputs given, its loss cell takes {arity}")
        for opt in self.optimizers.values():
            opt.set_learning_rate()
        # Tensors flat and positional: a tuple argument of a graph is a constant, recompiled for every new value.
        per_role, norms = self.train_step(*(t for name in self.optimizers for t in inputs[name]))
        for opt in self.optimizers.values():
            opt.step_count += 1
        return {name: (float(loss.asnumpy()), _numpy(aux), float(norm.asnumpy()))
                for name, (loss, aux), norm in zip(self.optimizers, per_role, norms)}


def _arity(name: str, loss_cell: nn.Cell) -> int:
    params = inspect.signature(loss_cell.construct).parameters.values()
    if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
        raise ValueError(f"{name}: the loss cell's construct must name its inputs (no *args, **kwargs, keyword-only) "
                         "to be stepped jointly")
    return len(params)


def _require_disjoint(optimizers: dict) -> None:
    owner = {}
    for name, opt in optimizers.items():
        for p in opt.params:
            if id(p) in owner:
                raise ValueError(f"roles {owner[id(p)]!r} and {name!r} both train {p.name!r}: one joint step would give "
                                 "it the sum of both losses' gradients and two optimizer updates; freeze it in one "
                                 "role or step the roles with separate Updaters")
            owner[id(p)] = name


def _numpy(aux):
    if isinstance(aux, (tuple, list)):
        return [a.asnumpy() for a in aux]
    return aux.asnumpy()
