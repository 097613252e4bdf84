"""The shared optimizer step: AdamW + clipping against torch (graph and PyNative), accumulation against one
big batch, optimizer state through a checkpoint and back."""
import math

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import nn, ops

from mindrlhf.trainers.checkpoint import CheckpointManager
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


# Warm-up then cosine: the lr changes at every one of the STEPS steps.
CFG = OptimConfig(lr=0.05, weight_decay=0.1, beta1=0.9, beta2=0.99, warmup_steps=2, schedule="cosine",
                  min_lr_ratio=0.1, max_grad_norm=0.5)
STEPS = 5


def micro_batches(accum):
    n = ms.Tensor(8.0)
    return [(ms.Tensor(X[i::accum]), ms.Tensor(Y[i::accum]), n) for i in range(accum)]


def take_steps(up, accum, count):
    return [up.step(micro_batches(accum))[2] for _ in range(count)]


def run_ours(accum):
    cell = SquaredError()
    up = Updater(cell, cell.trainable_params(), CFG, total_steps=STEPS, accum_steps=accum)
    norms = take_steps(up, accum, STEPS)
    return cell.net.weight.asnumpy(), cell.net.bias.asnumpy(), norms


def run_torch():
    w = torch.tensor(W0, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=CFG.lr, betas=(CFG.beta1, CFG.beta2), eps=CFG.eps,
                            weight_decay=CFG.weight_decay)
    norms = []
    for step in range(STEPS):
        opt.param_groups[0]["lr"] = learning_rate(CFG, step, STEPS)
        opt.zero_grad()
        d = torch.from_numpy(X) @ w[0] + b - torch.from_numpy(Y)
        (d.pow(2).sum() / 8).backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_([w, b], CFG.max_grad_norm)))
        opt.step()
    return w.detach().numpy(), b.detach().numpy(), norms


@pytest.fixture(scope="module")
def torch_result():
    return run_torch()


@pytest.fixture(scope="module")
def ours_graph():
    return run_ours(accum=1)


def assert_matches_torch(ours, theirs):
    (w, b, norms), (tw, tb, tnorms) = ours, theirs
    np.testing.assert_allclose(norms, tnorms, rtol=1e-5)
    np.testing.assert_allclose(w, tw, atol=1e-5)
    np.testing.assert_allclose(b, tb, atol=1e-5)


def test_train_step_matches_torch_adamw_with_clipping(ours_graph, torch_result):
    lrs = [learning_rate(CFG, s, STEPS) for s in range(STEPS)]
    assert lrs[0] < lrs[1] and lrs[2] > lrs[3] > lrs[4]  # the lr really moved: warm-up, then cosine decay
    assert ours_graph[2][0] > CFG.max_grad_norm  # clipping was really exercised
    assert_matches_torch(ours_graph, torch_result)


def test_train_step_matches_torch_in_pynative(torch_result):
    ms.set_context(mode=ms.PYNATIVE_MODE)  # conftest puts graph mode back
    assert_matches_torch(run_ours(accum=1), torch_result)


def test_gradient_accumulation_equals_one_big_batch(torch_result):
    assert_matches_torch(run_ours(accum=2), torch_result)


def test_optimizer_state_round_trips_through_a_checkpoint(ours_graph, tmp_path):
    """2 steps, checkpoint, a fresh model and Updater resume for 3 more: bit-identical to 5 steps in one go."""
    cell = SquaredError()
    up = Updater(cell, cell.trainable_params(), CFG, total_steps=STEPS)
    norms = take_steps(up, 1, 2)
    manager = CheckpointManager(str(tmp_path))
    path = manager.save(2, {"model": cell}, {"model": up}, {"optimizer_steps": 2})
    assert {name.split(".")[0] for name in up.state_dict()} == {"exp_avg", "exp_avg_sq", "state_step"}

    resumed_cell = SquaredError()
    resumed = Updater(resumed_cell, resumed_cell.trainable_params(), CFG, total_steps=STEPS)
    CheckpointManager.load(path, {"model": resumed_cell}, {"model": resumed})
    for name, saved in up.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name].asnumpy(), saved.asnumpy(), err_msg=name)
    assert resumed.step_count == 2 and int(resumed.state_dict()["state_step"].asnumpy()) == 2
    norms += take_steps(resumed, 1, STEPS - 2)

    w, b, reference_norms = ours_graph
    np.testing.assert_array_equal(resumed_cell.net.weight.asnumpy(), w)
    np.testing.assert_array_equal(resumed_cell.net.bias.asnumpy(), b)
    assert norms == reference_norms


def test_load_state_dict_names_what_is_missing_or_unknown():
    cell = SquaredError()
    up = Updater(cell, cell.trainable_params(), CFG, total_steps=STEPS)
    state = {name: p.asnumpy() for name, p in up.state_dict().items() if name != "exp_avg.net.bias"}
    with pytest.raises(ValueError, match="exp_avg.net.bias"):
        up.load_state_dict(state)
    state["exp_avg.net.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"exp_avg.net.bias.*\(3,\).*\(1,\)"):
        up.load_state_dict(state)
    state["exp_avg.net.bias"] = np.zeros(1, np.float32)
    state["max_exp_avg_sq.net.bias"] = np.zeros(1, np.float32)  # AMSGrad state this AdamW does not keep
    with pytest.raises(ValueError, match=r"holds 1 tensors this optimizer does not have.*max_exp_avg_sq.net.bias"):
        up.load_state_dict(state)


class ManyTensors(nn.Cell):
    """loss = Σ_i Σ (x·w_i) / normalizer over ``n`` small weight tensors (a LoRA model has a few hundred)."""

    def __init__(self, n):
        super().__init__()
        self.weights = ms.ParameterTuple(ms.Parameter(ms.Tensor(np.zeros((4, 2), np.float32)), name=f"w{i}")
                                         for i in range(n))

    def construct(self, x, normalizer):
        return ops.addn([ops.matmul(x, w).sum() for w in self.weights]) / normalizer, x.sum()


@pytest.mark.slow
def test_an_accumulated_step_over_hundreds_of_tensors_compiles_and_moves_each_one():
    """SmolLM2-135M's LoRA adapters are 240 tensors: Python loops over them in the accumulation, zeroing and
    AdamW compiled into nested calls past MindSpore's depth limit of 1000 (it failed from about 200 on). Adam's
    first step moves each weight by lr·g/(|g| + ε) = −lr here (each gradient is Σ x over two micro-batches = 8
    per element). Slow: compiling the 300-tensor graphs took 2.5 min on the loaded 2-core CPU."""
    cell = ManyTensors(300)
    up = Updater(cell, list(cell.weights), OptimConfig(lr=0.01, warmup_steps=0), total_steps=1, accum_steps=2)
    x = ms.Tensor(np.ones((1, 4), np.float32))
    up.step([(x, ms.Tensor(1.0, ms.float32))] * 2)
    for w in cell.weights:
        np.testing.assert_allclose(w.asnumpy(), -0.01, rtol=1e-5, err_msg=w.name)


def test_learning_rate_schedule():
    cfg = OptimConfig(lr=1.0, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(cfg, 0, 14) == pytest.approx(0.25)
    assert learning_rate(cfg, 3, 14) == pytest.approx(1.0)
    assert learning_rate(cfg, 4, 14) == pytest.approx(1.0)
    assert learning_rate(cfg, 9, 14) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(cfg, 14, 14) == pytest.approx(0.1)
    const = OptimConfig(lr=2.0, warmup_steps=0, schedule="constant")
    assert learning_rate(const, 100, 10) == 2.0
