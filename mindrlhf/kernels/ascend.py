"""MindSpore's own fused operators for Ascend, behind the kernels' contracts (the same inputs and outputs as
``kernels/reference.py``). They cannot run on CPU: tests/kernels builds and runs them only where the
Ascend backend is present.

Not wired here: flash attention (``ops.flash_attention_score``) would replace the attention's softmax
and both batched matmuls together, i.e. ``nn.layers.Attention.attend`` with its additive bias and
grouped heads, not one of these kernels; the fused LM-head log-probability has no Ascend operator, so
Ascend uses the reference one.
"""
from mindspore import nn, ops


class RMSNorm(nn.Cell):
    """``ops.rms_norm`` (Ascend's RmsNorm). construct(x [..., D], weight [D]) -> [..., D]."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps

    def construct(self, x, weight):
        y, _ = ops.rms_norm(x, weight, self.eps)
        return y


class SwiGLU(nn.Cell):
    """``ops.swiglu`` over the last axis: silu(a) * b for h = [a | b]. construct(h [..., 2W]) -> [..., W]."""

    def construct(self, h):
        return ops.swiglu(h, -1)


class GeluTanh(nn.Cell):
    """``ops.gelu(approximate="tanh")``, one fused kernel on Ascend. construct(x) -> same shape."""

    def construct(self, x):
        return ops.gelu(x, approximate="tanh")


class Rope(nn.Cell):
    """``ops.rotary_position_embedding`` in rotate-half mode (mode 0). Our sin table carries rotate-half's
    sign on its first half (reference.apply_rope); Ascend's takes the plain table, so that half is negated
    back. construct(x, cos, sin), all [B, T, N, D] -> [B, T, N, D]."""

    def construct(self, x, cos, sin):
        half = x.shape[-1] // 2
        return ops.rotary_position_embedding(x, cos, ops.concat((-sin[..., :half], sin[..., half:]), -1), 0)
