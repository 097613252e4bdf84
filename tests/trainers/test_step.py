"""The shared optimizer step: AdamW + clipping against torch, accumulation against one big batch."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn, ops

from mindrlhf.trainers.step import OptimConfig, Updater, learning_rate

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 4)).astype(np.float32)
Y = RNG.normal(size=8).astype(np.float32)
W0 = RNG.normal(size=(1, 4)).astype(np.float32)


class SquaredError(nn.Cell):
    """loss = Σ (x·w + b − y)² / normalizer; aux = mean residual."""

    def __init__(self):
        super().__init__()
        self.net = nn.Dense(4, 1)
        self.net.weight.set_data(ms.Tensor(W0))
        self.net.bias.set_data(ms.Tensor(np.zeros(1, np.float32)))

    def construct(self, x, y, normalizer):
        d = self.net(x)[:, 0] - y
        return ops.reduce_sum(d * d) / normalizer, ops.reduce_mean(d)


CFG = OptimConfig(lr=0.05, weight_decay=0.1, beta1=0.9, beta2=0.99, warmup_steps=0, schedule="constant",
                  max_grad_norm=0.5)


def run_ours(accum, steps=4):
    cell = SquaredError()
    up = Updater(cell, cell.trainable_params(), CFG, total_steps=steps, accum_steps=accum)
    norms = []
    for _ in range(steps):
        n = ms.Tensor(8.0)
        if accum == 1:
            micro = [(ms.Tensor(X), ms.Tensor(Y), n)]
        else:
            micro = [(ms.Tensor(X[i::accum]), ms.Tensor(Y[i::accum]), n) for i in range(accum)]
        _, _, norm = up.step(micro)
        norms.append(norm)
    return cell.net.weight.asnumpy(), cell.net.bias.asnumpy(), norms


def run_torch(steps=4):
    w = torch.tensor(W0, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=CFG.lr, betas=(CFG.beta1, CFG.beta2), eps=CFG.eps,
                            weight_decay=CFG.weight_decay)
    norms = []
    for _ in range(steps):
        opt.zero_grad()
        d = torch.from_numpy(X) @ w[0] + b - torch.from_numpy(Y)
        (d.pow(2).sum() / 8).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_([w, b], CFG.max_grad_norm)))
        opt.step()
    return w.detach().numpy(), b.detach().numpy(), norms


@pytest.fixture(scope="module")
def torch_result():
    return run_torch()


def test_train_step_matches_torch_adamw_with_clipping(torch_result):
    w, b, norms = run_ours(accum=1)
    tw, tb, tnorms = torch_result
    np.testing.assert_allclose(norms, tnorms, rtol=1e-5)
    assert norms[0] > CFG.max_grad_norm  # clipping was really exercised
    np.testing.assert_allclose(w, tw, atol=1e-5)
    np.testing.assert_allclose(b, tb, atol=1e-5)


def test_gradient_accumulation_equals_one_big_batch(torch_result):
    w, b, norms = run_ours(accum=2)
    tw, tb, tnorms = torch_result
    np.testing.assert_allclose(norms, tnorms, rtol=1e-5)
    np.testing.assert_allclose(w, tw, atol=1e-5)


def test_learning_rate_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(cfg, 0, 14) == pytest.approx(0.25)
    assert learning_rate(cfg, 3, 14) == pytest.approx(1.0)
    assert learning_rate(cfg, 4, 14) == pytest.approx(1.0)
    assert learning_rate(cfg, 9, 14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(cfg, 14, 14) == pytest.approx(0.1)
    const = OptimConfig(lr=2.0, warmup_steps=0, schedule="constant")
    assert learning_rate(const, 100, 10) == 2.0
