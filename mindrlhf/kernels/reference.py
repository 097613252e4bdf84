"""The reference kernels: each fused operation written as a composition of MindSpore's own ops. They run on
every device, define what the fused kernels compute (tests/kernels compares them), and are what
``runtime.kernels=reference`` selects.

Several are shaped by MindSpore 2.10's CPU kernels (slow broadcasting multiplies, slow ReduceMean, a coarse
tanh): the figures are in docs/performance.md.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from ..algos import entropy_from_logits, logprobs_from_logits

GELU_C = 2.0 * math.sqrt(2.0 / math.pi)  # 0.5 (1 + tanh(z)) = sigmoid(2 z)


def gelu_tanh(x):
    """GPT-2's GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written as x sigmoid(2 sqrt(2/pi) (...)).

    The same function; on MindSpore's CPU this form is faster than ops.gelu(approximate="tanh") and closer
    to float64 than one written with the coarse CPU ops.tanh."""
    return x * ops.sigmoid(GELU_C * (x + 0.044715 * x * x * x))


def apply_rope(x, cos, sin):
    """x' = x * cos + rotate_half(x) * sin_plain, rotate_half([a, b]) = [-b, a], computed as
    x * cos + [b, a] * sin with the signed table sin = [-sin_plain, sin_plain] (the same numbers: IEEE
    negation is exact). x [..., D]; cos, sin broadcastable to x."""
    half = x.shape[-1] // 2
    return x * cos + ops.concat((x[..., half:], x[..., :half]), -1) * sin


class RMSNorm(nn.Cell):
    """y = x / sqrt(mean(x^2) + eps) * weight. construct(x [..., D], weight [D]) -> [..., D].

    The sum of squares is a matmul with a column of ones, scaled by 1/D afterwards (a column of 1/D would
    round each term), and the weight is folded into the per-row factor before the one full-size multiply."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.ones_column = Tensor(np.ones((dim, 1), np.float32))
        self.inv_dim = 1.0 / dim
        self.matmul = ops.MatMul()

    def construct(self, x, weight):
        x2 = x.reshape(-1, x.shape[-1])
        mean_square = self.matmul(x2 * x2, self.ones_column) * self.inv_dim            # [N, 1]
        return (x2 * (ops.rsqrt(mean_square + self.eps) * weight)).reshape(x.shape)


class SwiGLU(nn.Cell):
    """silu(a) * b with h = [a | b] on the last axis. construct(h [..., 2W]) -> [..., W]."""

    def construct(self, h):
        width = h.shape[-1] // 2
        return ops.silu(h[..., :width]) * h[..., width:]


class GeluTanh(nn.Cell):
    """`gelu_tanh` as a Cell. construct(x) -> same shape."""

    def construct(self, x):
        return gelu_tanh(x)


class Rope(nn.Cell):
    """`apply_rope` as a Cell. construct(x, cos, sin) -> x's shape."""

    def construct(self, x, cos, sin):
        return apply_rope(x, cos, sin)


class SwapAxes12(nn.Cell):
    """x [A, B, C, D] -> [A, C, B, D]."""

    def construct(self, x):
        return x.transpose(0, 2, 1, 3)


class AdamWUpdate(nn.Cell):
    """One parameter's AdamW step on its gradient clipped by the global norm, p, m and v updated in place:
    construct(p, m, v, grad, hyper, norm) -> the clipping factor s [1], hyper = [lr, β1, β2, ε, λ, t, max_norm],
    s = min(1, max_norm / (norm + 1e-6)) (1 when max_norm = 0, torch's ``clip_grad_norm_``). The update is
    torch's AdamW on s·grad (trainers/adamw.py), by MindSpore's fused ``ops.Adam``. ``decayed`` (λ > 0) and
    ``clipped`` (max_norm > 0), fixed when the step is built, leave out the decay and the clipping passes."""

    def __init__(self, decayed: bool = True, clipped: bool = True):
        super().__init__()
        self.adam = ops.Adam()
        self.decayed, self.clipped = decayed, clipped

    def construct(self, p, m, v, grad, hyper, norm):
        lr, beta1, beta2, eps, decay_rate, t, max_norm = ops.unstack(hyper)
        one = ops.ones((), ms.float32)
        scale = ops.select(max_norm > 0, ops.minimum(one, max_norm / (norm.reshape(()) + 1e-6)), one)
        beta2_power = ops.pow(beta2, t)
        if self.decayed:
            ops.assign(p, p * (1.0 - lr * decay_rate))
        if self.clipped:
            grad = grad * scale
        self.adam(p, m, v, ops.pow(beta1, t), beta2_power, lr, beta1, beta2, eps * ops.sqrt(1.0 - beta2_power), grad)
        return scale.reshape(1)


class SumSquares(nn.Cell):
    """Σ x², over every element of x: construct(x) -> [] (0-d)."""

    def construct(self, x):
        return ops.reduce_sum(ops.square(x.astype(ms.float32)))


class TokenLogprobs(nn.Cell):
    """construct(hidden [N, H], weight [V, H], labels [N]) -> (log p(labels) [N], entropy [N]) under
    p = softmax(hidden · weightᵀ): the [N, V] logits, then log-softmax (algos)."""

    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, hidden, weight, labels):
        logits = self.matmul(hidden, weight)
        return logprobs_from_logits(logits, labels.astype(ms.int32)), entropy_from_logits(logits)
