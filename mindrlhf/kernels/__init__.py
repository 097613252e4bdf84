"""The hot fused operations of the model, one implementation per backend, chosen by ``runtime.kernels``:

| kernel | contract | fused (CPU) | ascend | reference |
|---|---|---|---|---|
| ``rms_norm(dim, eps)`` | (x [..., D], weight [D]) -> [..., D] | ``cpu.RMSNorm`` | ``ops.rms_norm`` | ``reference.RMSNorm`` |
| ``swiglu()`` | (h [..., 2W]) -> silu(a) b [..., W] | ``cpu.SwiGLU`` | ``ops.swiglu`` | ``reference.SwiGLU`` |
| ``gelu_tanh()`` | (x) -> GELU, tanh form | ``cpu.GeluTanh`` | ``ops.gelu`` | ``reference.GeluTanh`` |
| ``rope()`` | (x, cos, sin [..., D]) -> rotated x | ``cpu.Rope`` | ``ops.rotary_position_embedding`` | ``reference.Rope`` |
| ``swap_axes12()`` | (x [A, B, C, D]) -> [A, C, B, D] (attention's heads-first layout) | ``cpu.SwapAxes12`` | reference | ``reference.SwapAxes12`` |
| ``token_logprobs()`` | (hidden [N, H], weight [V, H], labels [N]) -> (log p(label), entropy) [N] | ``lm_head.TokenLogprobs`` | reference | ``reference.TokenLogprobs`` |
| ``adamw_update()`` | (p, m, v, grad, hyper [7], norm) -> clip factor [1]; p, m, v updated in place | ``cpu.AdamWUpdate`` | reference | ``reference.AdamWUpdate`` |
| ``sum_squares()`` | (x) -> Σ x² [] (gradient clipping's norm) | ``cpu.SumSquares`` | reference | ``reference.SumSquares`` |

``auto`` (the default) takes the fused CPU kernels on CPU when their library builds (``build.py``; without a
compiler, one printed line and the reference ones), MindSpore's fused operators on Ascend, and the reference
compositions on GPU; ``fused`` insists on the CPU library (or Ascend's operators) and stops with the reason
when it cannot have them; ``reference`` takes the compositions on every device. Every factory returns a Cell without
parameters: a layer keeps its weights and passes them in, so checkpoints do not depend on the choice.
"""
import functools

from .. import runtime
from . import ascend, cpu, lm_head, reference
from ..runtime import KERNELS
from .build import KernelBuildError, library

_CELLS = {
    "rms_norm": {"fused": cpu.RMSNorm, "ascend": ascend.RMSNorm, "reference": reference.RMSNorm},
    "swiglu": {"fused": cpu.SwiGLU, "ascend": ascend.SwiGLU, "reference": reference.SwiGLU},
    "gelu_tanh": {"fused": cpu.GeluTanh, "ascend": ascend.GeluTanh, "reference": reference.GeluTanh},
    "rope": {"fused": cpu.Rope, "ascend": ascend.Rope, "reference": reference.Rope},
    "swap_axes12": {"fused": cpu.SwapAxes12, "reference": reference.SwapAxes12},
    "token_logprobs": {"fused": lm_head.TokenLogprobs, "reference": reference.TokenLogprobs},
    "adamw_update": {"fused": cpu.AdamWUpdate, "reference": reference.AdamWUpdate},
    "sum_squares": {"fused": cpu.SumSquares, "reference": reference.SumSquares},
}


@functools.lru_cache(maxsize=None)
def resolve(setting: str, device: str) -> str:
    """The backend for ``runtime.kernels`` = ``setting`` on ``device``: "fused", "ascend" or "reference".

    Raises KernelBuildError (one line: why, and what to set instead) for ``fused`` where there are none."""
    if setting not in KERNELS:
        raise ValueError(f"runtime.kernels={setting!r} is not one of {', '.join(KERNELS)}")
    if setting == "reference":
        return "reference"
    if device == "Ascend":
        return "ascend"
    if device != "CPU":
        if setting == "fused":
            raise KernelBuildError(f"runtime.kernels=fused: there are no fused kernels for {device}; "
                                   "set runtime.kernels=auto or reference")
        return "reference"
    try:
        library()
    except KernelBuildError as err:
        if setting == "fused":
            raise KernelBuildError(f"runtime.kernels=fused: {err}; set runtime.kernels=auto or reference "
                                   "to run with the reference kernels") from None
        print(f"[kernels] {err}; using the reference kernels")
        return "reference"
    return "fused"


def backend() -> str:
    """The backend of the runtime set up last (``runtime.setup``), or of the defaults (auto, CPU) before it."""
    rt = runtime.current()
    return resolve(rt.kernels, rt.device)


def _cell(name: str, *args):
    impls = _CELLS[name]
    return impls.get(backend(), impls["reference"])(*args)


def rms_norm(dim: int, eps: float):
    return _cell("rms_norm", dim, eps)


def swiglu():
    return _cell("swiglu")


def gelu_tanh():
    return _cell("gelu_tanh")


def swap_axes12():
    return _cell("swap_axes12")


def rope():
    return _cell("rope")


def token_logprobs():
    return _cell("token_logprobs")


def adamw_update(decayed: bool = True, clipped: bool = True):
    """The in-place CPU kernel writes p, m and v behind MindSpore's back. Under msrun a two-worker SFT run
    drifted from the one-process run with it (2e-3 by step 4, tests/distributed), so data-parallel runs take
    the composition, whose ``ops.Adam`` MindSpore knows to write its inputs."""
    if runtime.current().distributed:
        return reference.AdamWUpdate(decayed, clipped)
    return _cell("adamw_update", decayed, clipped)


def sum_squares():
    return _cell("sum_squares")
