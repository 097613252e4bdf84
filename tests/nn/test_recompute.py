"""runtime.recompute: the compiled train step marks every decoder layer of the trained model (LoRA adapters included)
for recompute, and recomputing the activations in the backward changes no number, in graph and PyNative mode."""
import dataclasses

import mindspore as ms
import numpy as np
import pytest

from mindrlhf import cli, runtime
from mindrlhf.config import describe
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.lora import LoRAConfig, apply_lora
from mindrlhf.trainers.sft import SFTConfig, SFTLoss
from mindrlhf.trainers.step import OptimConfig, Updater

STEPS = 2


def tiny_weights():
    rng = np.random.default_rng(0)
    lm = CausalLM(ModelConfig.from_preset("tiny"))
    return {n: (1.0 + 0.1 * rng.standard_normal(p.shape) if "norm" in n else 0.3 * rng.standard_normal(p.shape))
            .astype(np.float32) for n, p in lm.named_weights()}


def batch(vocab_size):
    rng = np.random.default_rng(1)
    ids = rng.integers(3, vocab_size, (4, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, :5] = 0  # one left-padded row
    loss_mask = np.zeros(ids.shape, np.float32)
    loss_mask[:, 8:] = 1.0
    return (ms.Tensor(ids), ms.Tensor(mask), ms.Tensor(loss_mask), ms.Tensor(float(loss_mask[:, 1:].sum())))


def sft_steps(monkeypatch, recompute, weights, lora=False):
    """STEPS SFT steps of the tiny model from ``weights`` → (losses, grad norms, final weights, the model)."""
    monkeypatch.setattr(runtime, "_CURRENT", dataclasses.replace(runtime.current(), recompute=recompute))
    lm = CausalLM(ModelConfig.from_preset("tiny"))
    lm.assign_weights(weights)
    if lora:
        rng = np.random.default_rng(2)
        for p in apply_lora(lm, LoRAConfig(enabled=True, rank=4)):  # both runs start from the same adapters
            p.set_data(ms.Tensor(0.1 * rng.standard_normal(p.shape).astype(np.float32)))
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant", max_grad_norm=1.0)
    updater = Updater(SFTLoss(lm), lm.trainable_params(), cfg, total_steps=STEPS)
    inputs = batch(lm.config.vocab_size)
    losses, norms = [], []
    for _ in range(STEPS):
        loss, _, norm = updater.step([inputs])
        losses.append(loss)
        norms.append(norm)
    return losses, norms, {n: p.asnumpy() for n, p in lm.named_weights()}, lm


def marked(layer) -> bool:
    """What Cell.recompute leaves on a cell and its sub-cells: a graph scope named recompute_ (graph mode)."""
    return all(cell._scope is not None and cell._scope.startswith("recompute_")  # pylint: disable=protected-access
               for _, cell in layer.cells_and_names())


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_recompute_marks_the_layers_and_changes_no_number(monkeypatch, mode, lora):
    if mode == "pynative":
        ms.set_context(mode=ms.PYNATIVE_MODE)
    weights = tiny_weights()
    off_losses, off_norms, off_weights, off_lm = sft_steps(monkeypatch, False, weights, lora)
    on_losses, on_norms, on_weights, on_lm = sft_steps(monkeypatch, True, weights, lora)
    assert not any(marked(layer) for layer in off_lm.layers)
    assert on_lm.layers_recomputed and all(marked(layer) for layer in on_lm.layers)
    # The recomputed forward runs the same kernels on the same inputs: bit-equal, not just close.
    assert on_losses == off_losses and on_norms == off_norms
    assert off_losses[1] != off_losses[0]  # the weights moved between the steps
    for name, value in off_weights.items():
        np.testing.assert_array_equal(on_weights[name], value, err_msg=name)


def test_recompute_layers_marks_once():
    lm = CausalLM(ModelConfig.from_preset("tiny"))
    lm.recompute_layers()
    lm.recompute_layers()  # MindSpore's recompute may be configured once per cell; the second call is a no-op
    assert all(marked(layer) for layer in lm.layers)


def test_runtime_carries_recompute_and_help_config_lists_it(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "_CURRENT", runtime.current())  # setup replaces it; put it back afterwards
    assert runtime.setup(runtime.RuntimeConfig(recompute=True)).recompute is True
    assert runtime.current().recompute is True
    assert runtime.Runtime().recompute is False
    assert cli.main(["sft", "--help-config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == describe(SFTConfig)
    assert any(line.startswith("runtime.recompute (bool, default False): recompute each decoder layer's activations")
               for line in lines)
