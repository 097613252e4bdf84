"""Our CausalLM against transformers on small random models: load theirs, save ours, compare logits."""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import mindspore as ms

from mindrlhf.nn import CausalLM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 97
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


def _hf_configs():
    return {
        "gpt2": transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                        bos_token_id=0, eos_token_id=0),
        "llama": transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=4, intermediate_size=64, vocab_size=VOCAB,
                                          max_position_embeddings=64, rope_theta=500.0),
        # Qwen2 with GQA (4 query heads share 2 kv heads), q/k/v bias, tied head
        "qwen2": transformers.Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=64, vocab_size=VOCAB,
                                          max_position_embeddings=64, tie_word_embeddings=True),
    }


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    """name -> (transformers model, folder it was saved to)."""
    torch.manual_seed(0)
    out = {}
    for name, cfg in _hf_configs().items():
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():  # random (non-zero) biases and norm gains, so a mis-mapped one would show
            for pname, p in model.named_parameters():
                if pname.endswith("bias") or "norm" in pname or "ln_" in pname:
                    p.add_(0.1 * torch.randn_like(p))
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = (model, folder)
    return out


@pytest.fixture(scope="module")
def ours(hf_models):
    return {name: CausalLM.from_pretrained(folder) for name, (_, folder) in hf_models.items()}


def _ids(batch=2, seq=12, seed=0):
    return np.random.RandomState(seed).randint(0, VOCAB, (batch, seq)).astype(np.int32)


def _torch_logits(model, ids, mask=None):
    with torch.no_grad():
        kwargs = {}
        if mask is not None:  # transformers' forward does not derive positions from the mask; its generate does
            positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
            kwargs = {"attention_mask": torch.tensor(mask, dtype=torch.long),
                      "position_ids": torch.tensor(positions, dtype=torch.long)}
        return model(torch.tensor(ids, dtype=torch.long), **kwargs).logits.numpy()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2"])
def test_logits_match_transformers(hf_models, ours, name, mode):
    ms.set_context(mode=MODES[mode])
    ids = _ids()
    ref = _torch_logits(hf_models[name][0], ids)
    got = ours[name](ms.Tensor(ids)).asnumpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_left_padded_logits_match_transformers(hf_models, ours, name):
    ms.set_context(mode=ms.GRAPH_MODE)
    ids = _ids()
    mask = np.ones_like(ids)
    mask[0, :5] = 0  # row 0 is left-padded by 5
    ref = _torch_logits(hf_models[name][0], ids, mask)
    got = ours[name](ms.Tensor(ids), ms.Tensor(mask)).asnumpy()
    real = mask.astype(bool)
    assert np.abs(got[real] - ref[real]).max() <= 1e-4


def test_config_translated(ours):
    cfg = ours["qwen2"].config
    assert (cfg.arch, cfg.num_heads, cfg.num_kv_heads, cfg.qkv_bias, cfg.tie_word_embeddings) == \
        ("llama", 4, 2, True, True)
    assert ours["llama"].config.rope_theta == 500.0 and not ours["llama"].config.tie_word_embeddings
    assert ours["gpt2"].config.arch == "gpt2" and ours["gpt2"].config.intermediate_size == 128


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2"])
def test_num_parameters_matches_transformers(hf_models, ours, name):
    model = hf_models[name][0]
    unique = {id(p): p.numel() for p in model.parameters()}
    assert ours[name].num_parameters() == sum(unique.values())


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2"])
def test_save_pretrained_loads_in_transformers(hf_models, ours, name, tmp_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    ours[name].save_pretrained(tmp_path)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # atomic writes left no temp files
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(theirs).__name__ == type(hf_models[name][0]).__name__
    ids = _ids(seed=1)
    ref = _torch_logits(theirs, ids)
    got = ours[name](ms.Tensor(ids)).asnumpy()
    assert np.abs(got - ref).max() <= 1e-4
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_sharded_checkpoint_loads(hf_models, ours, tmp_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    hf_models["llama"][0].save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    sharded = CausalLM.from_pretrained(tmp_path)
    for (n1, p1), (n2, p2) in zip(sharded.named_weights(), ours["llama"].named_weights()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.asnumpy(), p2.asnumpy())


# ---- bad inputs: each error names the path and what was expected ----------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CausalLM.from_pretrained(tmp_path / "nowhere")


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        CausalLM.from_pretrained(tmp_path)


def test_corrupt_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{bad")
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'}: not valid JSON"):
        CausalLM.from_pretrained(tmp_path)


def test_missing_weights(hf_models, tmp_path):
    (tmp_path / "config.json").write_text((hf_models["gpt2"][1] / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        CausalLM.from_pretrained(tmp_path)


def test_unsupported_architecture(hf_models, tmp_path):
    cfg = json.loads((hf_models["gpt2"][1] / "config.json").read_text())
    cfg["architectures"] = ["BertForMaskedLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="BertForMaskedLM.*GPT2LMHeadModel.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        CausalLM.from_pretrained(tmp_path)


def test_weights_of_other_shape_are_refused(hf_models, tmp_path):
    cfg = json.loads((hf_models["gpt2"][1] / "config.json").read_text())
    cfg["n_embd"] = 64  # the file's tensors are 32 wide
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((hf_models["gpt2"][1] / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="shape"):
        CausalLM.from_pretrained(tmp_path)
