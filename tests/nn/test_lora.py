"""LoRA on tiny models: zero-init is a no-op, only adapters train, merging is exact, adapters round-trip."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import nn, ops

from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.lora import (LoRAConfig, apply_lora, has_lora, is_lora_name, load_adapters, lora_parameters,
                              merge_lora, save_adapters)
from mindrlhf.trainers.step import OptimConfig, Updater

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
CONFIGS = {
    "llama": dict(arch="llama", vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=64, max_position_embeddings=32),
    "gpt2": dict(arch="gpt2", vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                 max_position_embeddings=32),
}
IDS = ms.Tensor(np.random.RandomState(0).randint(0, 128, (2, 12)).astype(np.int32))


def _model(arch="llama", seed=0):
    model = CausalLM(ModelConfig(**CONFIGS[arch]))
    rng = np.random.RandomState(seed)
    model.assign_weights({n: (rng.randn(*p.shape) * 0.2).astype(np.float32) for n, p in model.named_weights()})
    return model


def _randomize_adapters(model, seed=1):
    rng = np.random.RandomState(seed)
    for p in lora_parameters(model):
        p.set_data(ms.Tensor((rng.randn(*p.shape) * 0.3).astype(np.float32)))


def _weights(model):
    return {n: p.asnumpy().copy() for n, p in model.named_weights()}


def test_config_validation():
    with pytest.raises(ValueError, match="qkv"):
        LoRAConfig(targets=("qkv",))
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    assert LoRAConfig(rank=4, alpha=8).scale == 2.0


@pytest.mark.parametrize("mode", MODES)
def test_fresh_adapter_leaves_logits_unchanged(mode):
    ms.set_context(mode=MODES[mode])
    model = _model()
    before = model(IDS).asnumpy()  # compiled before the change: apply_lora must invalidate that graph
    apply_lora(model, LoRAConfig(rank=4, targets=("q", "v", "gate", "down")))
    np.testing.assert_array_equal(model(IDS).asnumpy(), before)
    _randomize_adapters(model)
    assert np.abs(model(IDS).asnumpy() - before).max() > 1e-3  # the adapters are really in the forward


def test_only_adapter_parameters_train():
    model = _model()
    adapters = apply_lora(model, LoRAConfig(rank=4, alpha=8, targets=("q", "k", "v", "o", "gate", "up", "down")))
    trainable = {p.name for p in model.trainable_params()}
    assert trainable == {p.name for p in adapters} and all(is_lora_name(n) for n in trainable)
    # 2 layers x (q, k, v, o, gate, up, down) x (A, B)
    assert len(adapters) == 2 * 7 * 2
    frozen = {n: w for n, w in _weights(model).items() if not is_lora_name(n)}
    b_before = {p.name: p.asnumpy().copy() for p in adapters if ".lora_B." in p.name}
    assert all(not b.any() for b in b_before.values())  # B starts at zero

    class NextTokenNLL(nn.Cell):
        def __init__(self, lm):
            super().__init__(auto_prefix=False)
            self.lm = lm

        def construct(self, ids):
            logprobs = ops.log_softmax(self.lm(ids)[:, :-1, :], -1)
            nll = -ops.gather_elements(logprobs, 2, ids[:, 1:].expand_dims(-1)).mean()
            return nll, nll

    updater = Updater(NextTokenNLL(model), model.trainable_params(),
                      OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant", max_grad_norm=1.0), total_steps=4)
    losses = [updater.step([(IDS,)])[0] for _ in range(4)]
    assert losses[-1] < losses[0]
    after = _weights(model)
    for name, w in frozen.items():
        np.testing.assert_array_equal(after[name], w, err_msg=name)
    assert all(np.abs(after[name]).max() > 0 for name in b_before)  # every B moved off zero


@pytest.mark.parametrize("arch,mode", [("llama", "graph"), ("gpt2", "graph"), ("llama", "pynative")])
def test_merge_matches_adapted_model(arch, mode, tmp_path):
    ms.set_context(mode=MODES[mode])
    model = _model(arch)
    base = _weights(model)
    cfg = LoRAConfig(rank=4, alpha=16, targets=("q", "v", "up", "down"))
    apply_lora(model, cfg)
    _randomize_adapters(model)
    adapters = {p.name: p.asnumpy() for p in lora_parameters(model)}
    adapted = model(IDS).asnumpy()
    model.save_pretrained(tmp_path / "unmerged")  # still adapted: written folded, the model left as it is
    assert has_lora(model)
    np.testing.assert_allclose(CausalLM.from_pretrained(tmp_path / "unmerged")(IDS).asnumpy(), adapted,
                               atol=1e-5, rtol=0)
    merge_lora(model)
    assert not has_lora(model) and all(p.requires_grad for p in model.get_parameters())
    np.testing.assert_allclose(model(IDS).asnumpy(), adapted, atol=1e-5, rtol=0)

    # the fold itself, by hand: q rows get W_q + (alpha / r) B_q A_q, k rows are untouched
    c = model.config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    name = "layers.1.attn.qkv_proj"
    w = model.layers[1].attn.qkv_proj.weight.asnumpy()
    delta_q = cfg.scale * adapters[f"{name}.lora_B.q"] @ adapters[f"{name}.lora_A.q"]
    np.testing.assert_allclose(w[:q], base[f"{name}.weight"][:q] + delta_q, atol=1e-6)
    np.testing.assert_array_equal(w[q:q + kv], base[f"{name}.weight"][q:q + kv])

    model.save_pretrained(tmp_path)  # the export holds the merged weights under the usual names
    reloaded = CausalLM.from_pretrained(tmp_path)
    for (n1, p1), (n2, p2) in zip(model.named_weights(), reloaded.named_weights()):
        assert n1 == n2
        np.testing.assert_allclose(p2.asnumpy(), p1.asnumpy(), atol=1e-7, err_msg=n1)


def test_adapter_save_load_round_trip(tmp_path):
    model = _model()
    cfg = LoRAConfig(rank=2, alpha=4, dropout=0.1, targets=("k", "o", "gate"))
    apply_lora(model, cfg)
    _randomize_adapters(model)
    expected = model(IDS).asnumpy()  # eval mode: dropout is off
    save_adapters(model, tmp_path / "adapter.safetensors")

    fresh = _model()  # same base weights, no adapters: load applies them with the saved config
    load_adapters(fresh, tmp_path / "adapter.safetensors")
    assert fresh.lora_config == cfg
    for (n1, p1), (n2, p2) in zip(model.named_weights(), fresh.named_weights()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.asnumpy(), p2.asnumpy(), err_msg=n1)
    np.testing.assert_array_equal(fresh(IDS).asnumpy(), expected)

    from safetensors.numpy import load_file
    assert set(load_file(str(tmp_path / "adapter.safetensors"))) == {p.name for p in lora_parameters(model)}
    other = _model()
    apply_lora(other, LoRAConfig(rank=2, alpha=4, targets=("q",)))
    with pytest.raises(ValueError, match="saved with"):
        load_adapters(other, tmp_path / "adapter.safetensors")
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(other, cfg)


def test_dropout_only_in_training():
    model = _model()
    apply_lora(model, LoRAConfig(rank=4, dropout=0.5, targets=("q", "down")))
    _randomize_adapters(model)
    model.set_train(False)
    eval_logits = model(IDS).asnumpy()
    np.testing.assert_array_equal(model(IDS).asnumpy(), eval_logits)
    model.set_train(True)
    assert np.abs(model(IDS).asnumpy() - eval_logits).max() > 1e-4
    model.set_train(False)
