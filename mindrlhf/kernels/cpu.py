"""The fused CPU kernels as MindSpore operators: ``ops.Custom(func_type="aot")`` over the library that
``build.library()`` compiles from ``csrc/``, each with its backward attached as the operator's bprop.

Each Cell here has the contract of its reference composition in ``kernels/reference.py`` (same inputs,
same outputs) and computes the same function to float32 rounding (tests/kernels). They run in graph
and PyNative mode alike. float32 only: the model keeps norms, activations and the residual stream fp32.
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

from .build import library


def aot(name, out_shape, out_dtype, bprop=None):
    """The kernel ``name`` of the CPU library as an operator (``out_shape``/``out_dtype``: functions of the
    inputs' shapes / dtypes, as ops.Custom takes them)."""
    return ops.Custom(f"{library()}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot",
                      bprop=bprop)


def _same(*args):
    return args[0]


class RMSNorm(nn.Cell):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis. construct(x [..., D], weight [D]) -> [..., D].
    ``dim`` is the reference's argument (its column of ones); the kernel reads D from x."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = Tensor([eps], ms.float32)
        backward = aot("RmsNormBackward", lambda dy, x, w, r: (x, w), lambda dy, x, w, r: (x, w))

        def bprop(x, weight, eps, out, dout):
            dx, dw = backward(dout[0], x, weight, out[1])  # out[1]: the rows' 1 / rms from the forward
            return dx, dw, ops.zeros_like(eps)

        self.op = aot("RmsNormForward", lambda x, w, e: (x, x[:-1]), lambda x, w, e: (x, x), bprop)

    def construct(self, x, weight):
        y, _ = self.op(x, weight, self.eps)
        return y


class _OneInput(nn.Cell):
    """A kernel of one input whose backward reads (dy, x): ``{name}Forward`` and ``{name}Backward``."""

    def __init__(self, name, out_shape=_same):
        super().__init__()
        backward = aot(f"{name}Backward", lambda dy, x: x, _same)

        def bprop(x, out, dout):
            return (backward(dout, x),)

        self.op = aot(f"{name}Forward", out_shape, _same, bprop)

    def construct(self, x):
        return self.op(x)


class SwiGLU(_OneInput):
    """silu(a) * b with h = [a | b] on the last axis. construct(h [..., 2W]) -> [..., W]."""

    def __init__(self):
        super().__init__("Swiglu", lambda h: h[:-1] + [h[-1] // 2])


class GeluTanh(_OneInput):
    """GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). construct(x) -> same shape."""

    def __init__(self):
        super().__init__("GeluTanh")


class Rope(nn.Cell):
    """x cos + [b | a] sin for x = [a | b] on the last axis, with rotate-half's sign in the sin table
    (see ``reference.apply_rope``). construct(x, cos, sin), all three [..., D] of one shape -> [..., D].
    The tables are constants: their gradient is zero."""

    def __init__(self):
        super().__init__()
        backward = aot("RopeBackward", lambda dy, c, s: dy, _same)

        def bprop(x, cos, sin, out, dout):
            return backward(dout, cos, sin), ops.zeros_like(cos), ops.zeros_like(sin)

        self.op = aot("RopeForward", _same, _same, bprop)

    def construct(self, x, cos, sin):
        return self.op(x, cos, sin)


def _swapped(shape):
    return [shape[0], shape[2], shape[1], shape[3]]


class SwapAxes12(nn.Cell):
    """x [A, B, C, D] -> [A, C, B, D] (``x.transpose(0, 2, 1, 3)``), by row copies; the backward is the same
    swap of the gradient."""

    def __init__(self):
        super().__init__()
        backward = aot("SwapAxes12", _swapped, _same)

        def bprop(x, out, dout):
            return (backward(dout),)

        self.op = aot("SwapAxes12", _swapped, _same, bprop)

    def construct(self, x):
        return self.op(x)


class AdamWUpdate(nn.Cell):
    """One parameter's AdamW step, clipped, in place (``reference.AdamWUpdate`` is the contract):
    construct(p, m, v, grad, hyper [7], norm) -> the clipping factor [1]. The kernel writes p, m and v, which
    MindSpore takes for inputs only: the caller must use the output (or the update is dropped as dead code) and
    must not read p, m or v after it in the same graph. No backward. The kernel reads λ and max_norm from
    ``hyper``: ``decayed`` and ``clipped`` are the reference's."""

    def __init__(self, decayed: bool = True, clipped: bool = True):
        super().__init__()
        del decayed, clipped
        self.op = aot("AdamWUpdate", lambda p, m, v, g, h, n: [1], lambda p, m, v, g, h, n: h)

    def construct(self, p, m, v, grad, hyper, norm):
        return self.op(p, m, v, grad, hyper, norm)


class SumSquares(nn.Cell):
    """Σ x², over every element of x: construct(x) -> [] (0-d). No backward (a gradient norm is not
    differentiated)."""

    def __init__(self):
        super().__init__()
        self.op = aot("SumSquares", lambda x: [1], _same)

    def construct(self, x):
        return self.op(x).reshape(())
