"""kernels.adamw_update (one parameter's clipped AdamW step, p, m and v in place): the C++ kernel and the
composition (clip multiply, decay, ops.Adam) against torch's AdamW written out in float64 numpy, over three
steps, in graph and PyNative mode."""
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn

from mindrlhf.kernels import cpu, reference

RNG = np.random.default_rng(3)
LR, BETAS, EPS = 0.05, (0.9, 0.95), 1e-6


def torch_adamw(p, m, v, g, t, decay, max_norm, norm):
    """torch.optim.AdamW's step after clip_grad_norm_(max_norm) of a gradient whose global norm is ``norm``."""
    scale = min(1.0, max_norm / (norm + 1e-6)) if max_norm > 0 else 1.0
    g = g * scale
    p = p * (1 - LR * decay)
    m = BETAS[0] * m + (1 - BETAS[0]) * g
    v = BETAS[1] * v + (1 - BETAS[1]) * g * g
    p = p - LR / (1 - BETAS[0] ** t) * m / (np.sqrt(v) / np.sqrt(1 - BETAS[1] ** t) + EPS)
    return p, m, v, scale


class Step(nn.Cell):
    """Holds p, m, v as Parameters; construct(grad, hyper, norm) runs one update on them."""

    def __init__(self, update, p):
        super().__init__()
        self.update = update
        self.p = Parameter(Tensor(p), name="p")
        self.m = Parameter(Tensor(np.zeros_like(p)), name="m")
        self.v = Parameter(Tensor(np.zeros_like(p)), name="v")

    def construct(self, grad, hyper, norm):
        return self.update(self.p, self.m, self.v, grad, hyper, norm)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("kernel", ["fused", "reference"])
@pytest.mark.parametrize("decay, clip", [(0.1, 0.5), (0.0, 0.0)])
def test_adamw_update_matches_torch_in_float64(mode, kernel, decay, clip):
    if kernel == "fused" and shutil.which("g++") is None:
        pytest.skip("no g++: the fused CPU kernels cannot be built")
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
    p0 = RNG.normal(size=(37, 129)).astype(np.float32)  # 4773 elements: a full block of 4096 and a tail
    cell = (cpu.AdamWUpdate if kernel == "fused" else reference.AdamWUpdate)(decay > 0, clip > 0)
    step = Step(cell, p0)
    p, m, v = (p0.astype(np.float64), np.zeros(p0.shape), np.zeros(p0.shape))
    for t in (1, 2, 3):
        g = (RNG.normal(size=p0.shape) * 10.0 ** (t - 2)).astype(np.float32)  # clipped at t = 2, 3
        norm = float(np.sqrt((g.astype(np.float64) ** 2).sum())) * 1.5  # the other parameters' share too
        max_norm = clip * norm if t > 1 else 2.0 * norm if clip else 0.0  # t = 1: under the bound, no clipping
        hyper = np.array([LR, *BETAS, EPS, decay, t, max_norm], np.float32)
        scale = step(Tensor(g), Tensor(hyper), Tensor(np.float32(norm)))
        p, m, v, expected_scale = torch_adamw(p, m, v, g.astype(np.float64), t, decay, max_norm, norm)
        assert abs(float(scale.asnumpy()[0]) - expected_scale) < 1e-6
        for name, got, want in (("p", step.p, p), ("m", step.m, m), ("v", step.v, v)):
            err = np.abs(got.asnumpy() - want).max() / np.abs(want).max()
            assert err < 2e-6, f"step {t}: {name} relative error {err:.2e}"
    assert np.abs(step.p.asnumpy() - p0).max() > 1e-3  # the parameter really moved
