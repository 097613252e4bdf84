"""The model with the fused kernels equals the model with the reference ones to float32 rounding: the SFT loss
and every parameter's gradient, for both architectures (llama: RMSNorm, RoPE, SwiGLU; GPT-2: GELU; both: the
fused LM-head log-probability), and the RL passes' response log-probs and entropies. Tolerance: 1e-5 of the largest gradient entry of each parameter, as in
test_kernels.py (measured: 1e-6 to 2e-6)."""
import dataclasses
import shutil

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from mindrlhf import runtime
from mindrlhf.kernels import cpu, lm_head
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.roles import Policy
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


class _ResponseTerms(nn.Cell):
    """(Σ w·log π + Σ v·H, (log π, H)) over the last N tokens (Policy.response_logprobs: every RL pass's head)."""

    def __init__(self, lm, n):
        super().__init__()
        self.policy, self.n = Policy(lm), n

    def construct(self, input_ids, attention_mask, w, v):
        logprobs, entropy = self.policy.response_logprobs(input_ids, attention_mask, self.n)
        return (logprobs * w).sum() + (entropy * v).sum(), (logprobs, entropy)


def test_fused_response_logprobs_and_entropy_match_reference(monkeypatch):
    """PPO's and GRPO's passes (log-probs and entropies of the response, a left-padded row) with the fused
    kernels equal the reference ones to float32 rounding, values and every parameter's gradient."""
    rng = np.random.default_rng(2)
    ids = Tensor(rng.integers(0, 512, (2, 12)).astype(np.int32))
    mask = np.ones((2, 12), np.int32)
    mask[1, :4] = 0
    w, v = (Tensor(rng.normal(size=(2, 5)).astype(np.float32)) for _ in range(2))
    reference = _build("tiny", "reference", monkeypatch)
    fused = _build("tiny", "fused", monkeypatch)
    fused.assign_weights({name: p.asnumpy() for name, p in reference.named_weights()})
    out = {}
    for name, model in (("reference", reference), ("fused", fused)):
        grad_fn = ms.value_and_grad(_ResponseTerms(model, 5), None, model.trainable_params(), has_aux=True)
        (_, terms), grads = grad_fn(ids, Tensor(mask), w, v)
        out[name] = [t.asnumpy() for t in terms], [g.asnumpy() for g in grads]
    (ref_terms, ref_grads), (terms, grads) = out["reference"], out["fused"]
    for got, want in zip(terms, ref_terms):  # log-probs, entropies [2, 5]
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert len(grads) == len(ref_grads) > 0
    for g, want in zip(grads, ref_grads):
        assert np.abs(g - want).max() <= 1e-5 * np.abs(want).max()
