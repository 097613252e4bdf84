"""The model with the fused kernels equals the model with the reference ones to float32 rounding: the SFT loss
and every parameter's gradient, for both architectures (llama: RMSNorm, RoPE, SwiGLU; GPT-2: GELU; both: the
fused LM-head log-probability). Tolerance: 1e-5 of the largest gradient entry of each parameter, as in
test_kernels.py (measured: 1e-6 to 2e-6)."""
import dataclasses
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from mindrlhf import runtime
from mindrlhf.kernels import cpu, lm_head
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.trainers.sft import SFTLoss

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the fused CPU kernels cannot be built")


def _build(preset, kernels, monkeypatch):
    monkeypatch.setattr(runtime, "_CURRENT", dataclasses.replace(runtime.current(), kernels=kernels))
    ms.set_seed(0)
    return CausalLM(ModelConfig.from_preset(preset))


def _loss_and_grads(model):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, model.config.vocab_size, (2, 12)).astype(np.int32)
    mask = np.ones((2, 12), np.int32)
    mask[1, :3] = 0  # a left-padded row
    loss_mask = np.zeros((2, 12), np.float32)
    loss_mask[:, 6:] = 1.0
    grad_fn = ms.value_and_grad(SFTLoss(model), None, model.trainable_params(), has_aux=True)
    (loss, _), grads = grad_fn(Tensor(ids), Tensor(mask), Tensor(loss_mask), Tensor(loss_mask[:, 1:].sum()))
    return float(loss.asnumpy()), {p.name: g.asnumpy() for p, g in zip(model.trainable_params(), grads)}


@pytest.mark.parametrize("preset, fused_cells", [("tiny", (cpu.RMSNorm, cpu.Rope, cpu.SwiGLU)),
                                                 ("tiny-gpt2", (cpu.GeluTanh,))])
def test_fused_model_matches_reference(preset, fused_cells, monkeypatch):
    reference = _build(preset, "reference", monkeypatch)
    fused = _build(preset, "fused", monkeypatch)
    fused.assign_weights({name: p.asnumpy() for name, p in reference.named_weights()})
    kinds = {type(cell) for _, cell in fused.cells_and_names()}
    assert set(fused_cells) | {lm_head.TokenLogprobs} <= kinds
    ref_loss, ref_grads = _loss_and_grads(reference)
    loss, grads = _loss_and_grads(fused)
    assert abs(loss - ref_loss) < 1e-5 * abs(ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = np.abs(ref_grads[name]).max()
        assert np.abs(g - ref_grads[name]).max() <= 1e-5 * scale, name
