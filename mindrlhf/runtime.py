"""Where and how the code runs: device, graph or PyNative mode, seeds, and msrun data parallelism.

The same code runs as a plain process and as one of N ``msrun`` workers: :func:`setup` initialises the
communication only when msrun's environment is present (a bare ``init()`` fails outside msrun).
"""
from __future__ import annotations

import dataclasses
import os
import random

import numpy as np

from .config import field, require

DEVICES = ("CPU", "GPU", "Ascend")
MODES = ("graph", "pynative")
KERNELS = ("reference", "auto", "fused")


@dataclasses.dataclass
class RuntimeConfig:
    device: str = field("CPU", "device target: CPU, GPU or Ascend")
    mode: str = field("graph", "graph (compiled, the default) or pynative (eager, for debugging)")
    seed: int = field(0, "global seed for MindSpore, numpy and Python")
    jit_level: str = field("", "MindSpore jit level O0/O1/O2; empty = MindSpore's default")
    graph_kernel: bool = field(False, "MindSpore graph-kernel fusion (AKG): on CPU it halved GPT-2's generation "
                                      "memory but compiles up to 3.4x longer and slowed the tiny model "
                                      "(docs/performance.md)")
    device_id: int = field(-1, "device index; -1 = from the environment (msrun sets it per worker)")
    kernels: str = field("auto", "the model's hot operations (mindrlhf/kernels): auto = hand-written C++ kernels on "
                                 "CPU (built with g++ on first use; without g++, the reference) and MindSpore's fused "
                                 "ops on Ascend; fused = those or stop; reference = compositions of MindSpore ops on "
                                 "every device")
    recompute: bool = field(False, "recompute each decoder layer's activations in the backward instead of keeping "
                                   "them: less peak memory for one more forward per layer")

    def validate(self):
        require(self.device in DEVICES, "device", f"{self.device!r} is not one of {', '.join(DEVICES)}")
        require(self.mode in MODES, "mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.jit_level in ("", "O0", "O1", "O2"), "jit_level", "expected O0, O1, O2 or empty")
        require(self.device_id >= -1, "device_id", f"must be >= 0, or -1 for the environment's, got {self.device_id}")
        require(self.kernels in KERNELS, "kernels", f"{self.kernels!r} is not one of {', '.join(KERNELS)}")


@dataclasses.dataclass
class Runtime:
    """What :func:`setup` found: rank, world size and whether gradients must be reduced across ranks."""

    rank: int = 0
    world_size: int = 1
    device: str = "CPU"
    mode: str = "graph"
    kernels: str = "auto"
    recompute: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_msrun() -> bool:
    """msrun sets MS_ROLE in every process it starts: the workers and the scheduler.

    The scheduler runs this same script; its ``init()`` serves the cluster until the workers finish,
    so it must call ``init()`` too and never get to train on its own.
    """
    return "MS_ROLE" in os.environ and "MS_WORKER_NUM" in os.environ


def seed_everything(seed: int) -> None:
    import mindspore as ms  # MindSpore takes seconds to import; configs load without it

    random.seed(seed)
    np.random.seed(seed)
    ms.set_seed(seed)


_CURRENT = Runtime()


def current() -> Runtime:
    """The runtime set up last in this process (rank 0 of 1 until :func:`setup` runs)."""
    return _CURRENT


def setup(cfg: RuntimeConfig) -> Runtime:
    """Set MindSpore's context from ``cfg``, seed everything, and join the msrun group when launched by it."""
    global _CURRENT
    import mindspore as ms  # MindSpore takes seconds to import; configs load without it

    mode = ms.GRAPH_MODE if cfg.mode == "graph" else ms.PYNATIVE_MODE
    ms.set_context(mode=mode)
    ms.set_device(cfg.device, cfg.device_id) if cfg.device_id >= 0 else ms.set_device(cfg.device)
    if cfg.jit_level:
        ms.set_context(jit_config={"jit_level": cfg.jit_level})
    if cfg.graph_kernel:  # MindSpore's bundled AKG compiler imports `decorator` (an install requirement)
        ms.set_context(enable_graph_kernel=True)
    rank, world = 0, 1
    if launched_by_msrun():
        from mindspore.communication import get_group_size, get_rank, init  # as mindspore above: only under msrun

        init()
        rank, world = get_rank(), get_group_size()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    seed_everything(cfg.seed)
    _CURRENT = Runtime(rank=rank, world_size=world, device=cfg.device, mode=cfg.mode, kernels=cfg.kernels,
                       recompute=cfg.recompute)
    return _CURRENT


# ---------------------------------------------------------------------------------- host-side collectives
# Small numpy arrays between compiled calls (metrics, a PPO rollout batch): one tiny compiled Cell per
# collective, so the hot path's graphs stay as they are. In a single process each is the identity.

_COLLECTIVES: dict = {}


def _collective(name: str):
    if name not in _COLLECTIVES:
        from mindspore import nn, ops  # MindSpore takes seconds to import; configs load without it

        class Collective(nn.Cell):
            def __init__(self, op):
                super().__init__()
                self.op = op

            def construct(self, x):
                return self.op(x)

        _COLLECTIVES[name] = Collective(ops.AllReduce() if name == "sum" else ops.AllGather())
    return _COLLECTIVES[name]


def all_reduce_sum(values) -> np.ndarray:
    """Σ over ranks of a float32 array (every rank must call it, with the same shape)."""
    values = np.asarray(values, np.float32)
    if not _CURRENT.distributed:
        return values
    import mindspore as ms  # MindSpore takes seconds to import; configs load without it

    return _collective("sum")(ms.Tensor(values)).asnumpy()


def mean_over_ranks(values) -> np.ndarray:
    """(1/W) Σ over ranks: the global value of a quantity each rank measured on an equal share of the batch."""
    return all_reduce_sum(values) / _CURRENT.world_size


def all_gather(values: np.ndarray) -> np.ndarray:
    """Every rank's array concatenated along axis 0 in rank order; shapes and dtype must match across ranks."""
    if not _CURRENT.distributed:
        return values
    import mindspore as ms  # MindSpore takes seconds to import; configs load without it

    return _collective("gather")(ms.Tensor(np.ascontiguousarray(values))).asnumpy()
