"""Each fused CPU kernel (mindrlhf/kernels/cpu.py, lm_head.py) against its reference composition of MindSpore ops
and against float64 numpy, forward and gradient, in graph and PyNative mode.

Tolerance: float32 rounding. The fused kernels round differently from the compositions (their own exp, sums in
another order), so each comparison allows |got − expected| ≤ TOL · max|expected| per output, TOL = 1e-5,
against the float64 values and between fused and reference alike. Measured relative errors against float64:
fused 4e-8 to 1.3e-6, reference 4e-8 to 2.7e-6 (the largest: gradients of GELU and of the LM head).
"""
import ctypes
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from mindrlhf.kernels import build, cpu, lm_head, reference
from mindrlhf.nn.layers import rope_tables

import float64_kernels as numeric

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the fused CPU kernels cannot be built")

TOL = 1e-5
RNG = np.random.default_rng(0)


def _case(name):
    """(fused Cell, reference Cell, numpy function, float32 inputs, indices of the inputs to differentiate)."""
    if name == "rms_norm":
        x = (RNG.normal(size=(3, 5, 32)) * np.array([1e-2, 1.0, 30.0])[:, None, None]).astype(np.float32)
        w = RNG.uniform(0.5, 1.5, 32).astype(np.float32)
        return (cpu.RMSNorm(32, 1e-5), reference.RMSNorm(32, 1e-5), lambda x, w: numeric.rms_norm(x, w, 1e-5),
                [x, w], [0, 1])
    if name == "swiglu":
        h = (RNG.normal(size=(2, 3, 64)) * 3.0).astype(np.float32)
        return cpu.SwiGLU(), reference.SwiGLU(), numeric.swiglu, [h], [0]
    if name == "gelu_tanh":
        x = (RNG.normal(size=(3, 4, 40)) * 3.0).astype(np.float32)
        return cpu.GeluTanh(), reference.GeluTanh(), numeric.gelu_tanh, [x], [0]
    if name == "rope":
        # the model's layout: [B, T, heads, D] with full-size tables, the signed sin table of rope_tables
        cos, sin = (t.asnumpy() for t in rope_tables(16, 16, 500.0))
        positions = np.array([[0, 3, 7], [15, 1, 2]])
        cos = np.broadcast_to(cos[positions][:, :, None, :], (2, 3, 4, 16)).astype(np.float32)
        sin = np.broadcast_to(sin[positions][:, :, None, :], (2, 3, 4, 16)).astype(np.float32)
        plain_sin = sin * np.concatenate([-np.ones(8), np.ones(8)])  # rope_tables' sin carries rotate-half's sign
        x = RNG.normal(size=(2, 3, 4, 16)).astype(np.float32)
        return (cpu.Rope(), reference.Rope(), lambda x, c, s: numeric.rope(x, c, plain_sin), [x, cos, sin], [0])
    if name == "swap_axes12":
        x = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
        return cpu.SwapAxes12(), reference.SwapAxes12(), numeric.swap_axes12, [x], [0]
    if name == "token_logprobs":
        # 10 rows, 300 vocabulary rows in chunks of 128 (three, the last partial); labels in every chunk
        hidden = (RNG.normal(size=(10, 16)) * 2.0).astype(np.float32)
        weight = RNG.normal(size=(300, 16)).astype(np.float32)
        labels = np.array([0, 127, 128, 255, 256, 299, 5, 140, 290, 64], np.int32)
        return (lm_head.TokenLogprobs(elements=10 * 128), reference.TokenLogprobs(), numeric.token_logprobs,
                [hidden, weight, labels], [0, 1])
    raise KeyError(name)


class Probe(nn.Cell):
    """construct(*inputs) = Σ_k Σ kernel(*inputs)[k] · cotangents[k], a scalar whose gradient checks the bprop."""

    def __init__(self, kernel, cotangents):
        super().__init__()
        self.kernel = kernel
        self.cotangents = tuple(Tensor(c) for c in cotangents)

    def construct(self, *inputs):
        outs = self.kernel(*inputs)
        if not isinstance(outs, tuple):
            outs = (outs,)
        total = 0.0
        for out, cot in zip(outs, self.cotangents):
            total = total + (out * cot).sum()
        return total


def _run(kernel, inputs, cotangents, wrt):
    """(outputs, gradients of the probe) as float64 numpy, in the current mode."""
    tensors = [Tensor(a) for a in inputs]
    outs = kernel(*tensors)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = ms.grad(Probe(kernel, cotangents), grad_position=tuple(wrt))(*tensors)
    grads = grads if isinstance(grads, tuple) else (grads,)
    return [o.asnumpy().astype(np.float64) for o in outs], [g.asnumpy().astype(np.float64) for g in grads]


def _close(got, expected, what):
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape, f"{what} {i}: shape {g.shape}, expected {e.shape}"
        err = np.abs(g - e).max() / np.abs(e).max()
        assert err < TOL, f"{what} {i}: relative error {err:.2e}"


CASES = ("rms_norm", "swiglu", "gelu_tanh", "rope", "swap_axes12", "token_logprobs")


@pytest.fixture(scope="module")
def cases():
    """Per kernel: its Cells, inputs, cotangents and the float64 forward and gradients, computed once."""
    out = {}
    for name in CASES:
        fused, ref, fn, inputs, wrt = _case(name)
        expected = fn(*[np.asarray(a, np.float64) if a.dtype.kind == "f" else a for a in inputs])
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        cotangents = [RNG.normal(size=e.shape).astype(np.float32) for e in expected]
        grads = numeric.numeric_grads(fn, inputs, cotangents, wrt)
        out[name] = dict(fused=fused, reference=ref, inputs=inputs, wrt=wrt, cotangents=cotangents,
                         expected=expected, grads=grads)
    return out


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_fused_kernel_matches_float64(cases, name, mode):
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
    c = cases[name]
    outs, grads = _run(c["fused"], c["inputs"], c["cotangents"], c["wrt"])
    _close(outs, c["expected"], f"{name} output")
    _close(grads, c["grads"], f"{name} gradient")


@pytest.mark.parametrize("name", CASES)
def test_fused_kernel_matches_reference(cases, name):
    c = cases[name]
    outs, grads = _run(c["fused"], c["inputs"], c["cotangents"], c["wrt"])
    ref_outs, ref_grads = _run(c["reference"], c["inputs"], c["cotangents"], c["wrt"])
    _close(outs, ref_outs, f"{name} output")
    _close(grads, ref_grads, f"{name} gradient")


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_sum_squares(mode):
    """Σ x² of a gradient-sized tensor (many blocks) against float64 and the composition; forward only."""
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
    x = (RNG.normal(size=(300, 1001)) * np.linspace(0.01, 10.0, 1001)).astype(np.float32)
    expected = (x.astype(np.float64) ** 2).sum()
    got = cpu.SumSquares()(Tensor(x))
    assert got.shape == ()
    assert abs(float(got.asnumpy()) - expected) < 1e-6 * expected
    ref = float(reference.SumSquares()(Tensor(x)).asnumpy())
    assert abs(float(got.asnumpy()) - ref) < TOL * expected


def test_results_do_not_depend_on_the_thread_count():
    """The kernels cut their work into blocks by size alone and add partial sums in block order: RMSNorm's
    weight gradient and the sum of squares come out bit for bit the same on 1, 2 or 3 threads."""
    lib = ctypes.CDLL(build.library())  # the library MindSpore's operators run in
    x = RNG.normal(size=(256, 512)).astype(np.float32)
    w = RNG.uniform(0.5, 1.5, 512).astype(np.float32)
    cot = [RNG.normal(size=x.shape).astype(np.float32)]
    norm, total = cpu.RMSNorm(512, 1e-6), cpu.SumSquares()
    results = []
    try:
        for threads in (1, 2, 3):
            lib.mindrlhf_set_threads(threads)
            assert lib.mindrlhf_threads() == threads
            outs, grads = _run(norm, [x, w], cot, [0, 1])
            results.append(outs + grads + [total(Tensor(x)).asnumpy()])
    finally:
        lib.mindrlhf_set_threads(build.kernel_threads())
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_token_logprobs_chunks_agree_and_survive_large_logits():
    """One chunk and many give the same numbers; logits in the thousands (a naive exp overflows) stay exact."""
    hidden = (RNG.normal(size=(6, 16)) * 40.0).astype(np.float32)       # logits of order 1e3
    weight = RNG.normal(size=(1000, 16)).astype(np.float32)
    labels = RNG.integers(0, 1000, 6).astype(np.int32)
    expected = numeric.token_logprobs(hidden.astype(np.float64), weight.astype(np.float64), labels)
    one = lm_head.TokenLogprobs(elements=1 << 20)(Tensor(hidden), Tensor(weight), Tensor(labels))
    many = lm_head.TokenLogprobs(elements=6 * 128)(Tensor(hidden), Tensor(weight), Tensor(labels))
    assert lm_head.chunk_size(6, 1000, 6 * 128) == 128 and lm_head.chunk_size(6, 1000, 1 << 20) == 1000
    for got in (one, many):
        logp, entropy = (t.asnumpy().astype(np.float64) for t in got)
        assert np.all(np.isfinite(logp)) and np.all(np.isfinite(entropy))
        # float32 logits of order 1e3 carry absolute errors of order 1e-4
        np.testing.assert_allclose(logp, expected[0], atol=2e-3 * np.abs(expected[0]).max() + 1e-3)
        np.testing.assert_allclose(entropy, expected[1], atol=1e-3)
    np.testing.assert_allclose(one[0].asnumpy(), many[0].asnumpy(), rtol=1e-5, atol=1e-3)
