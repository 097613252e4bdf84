"""CausalLM on its own: presets, padding, graph-mode use from other Cells, weight files, heads."""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor, nn

from mindrlhf.nn import CausalLM, ModelConfig, ScalarHead, available_presets, positions_from_mask

MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}


@pytest.fixture(scope="module")
def models():
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.set_seed(0)
    return {name: CausalLM(ModelConfig.from_preset(name)) for name in ("tiny", "tiny-gpt2")}


def test_presets_load_and_unknown_is_listed():
    assert {"tiny", "tiny-gpt2", "gpt2", "gpt2-medium", "qwen2.5-0.5b", "llama-2-7b"} <= set(available_presets())
    tiny = ModelConfig.from_preset("tiny")
    assert (tiny.arch, tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.num_kv_heads,
            tiny.intermediate_size, tiny.vocab_size, tiny.max_position_embeddings) == \
        ("llama", 64, 2, 4, 2, 128, 512, 128)
    assert ModelConfig.from_preset("tiny", vocab_size=300).vocab_size == 300
    qwen = ModelConfig.from_preset("qwen2.5-0.5b")
    assert qwen.qkv_bias and qwen.num_kv_heads == 2 and qwen.head_dim == 64
    with pytest.raises(ValueError, match="no-such-model.*available presets.*tiny"):
        ModelConfig.from_preset("no-such-model")


def test_preset_from_yaml_path_and_roundtrip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("arch: gpt2\nhidden_size: 32\nnum_heads: 2\nnum_layers: 1\n")
    cfg = ModelConfig.from_preset(str(path))
    assert cfg.arch == "gpt2" and cfg.intermediate_size == 128 and cfg.num_kv_heads == 2
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    path.write_text("arch: gpt2\nhiden_size: 32\n")
    with pytest.raises(ValueError, match="mine.yaml.*hiden_size"):
        ModelConfig.from_preset(str(path))


def test_config_validation_errors():
    with pytest.raises(ValueError, match="arch: 'bert'"):
        ModelConfig(arch="bert")
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="compute_dtype"):
        ModelConfig(compute_dtype="int8")


def test_positions_from_mask():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)
    got = positions_from_mask(Tensor(mask)).asnumpy()
    np.testing.assert_array_equal(got, [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_left_padding_gives_the_unpadded_logits(models, name, mode):
    """Row 0 = 4 pads + a 12-token sequence; its real positions must match the sequence run alone."""
    ms.set_context(mode=MODES[mode])
    rng = np.random.RandomState(1)
    seq = rng.randint(0, 512, (1, 12)).astype(np.int32)
    batch = rng.randint(0, 512, (2, 16)).astype(np.int32)
    batch[0, 4:] = seq[0]
    mask = np.ones_like(batch)
    mask[0, :4] = 0
    model = models[name]
    alone = model(Tensor(seq)).asnumpy()[0]
    padded = model(Tensor(batch), Tensor(mask)).asnumpy()
    assert np.isfinite(padded).all()
    assert np.abs(padded[0, 4:] - alone).max() <= 1e-5
    # the unpadded row is untouched by its neighbour's padding
    np.testing.assert_allclose(padded[1], model(Tensor(batch[1:])).asnumpy()[0], atol=1e-5)


class _ValueModel(nn.Cell):
    """How a critic uses the trunk: hidden_states inside its own construct, a head on top."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.head = ScalarHead(lm.config.hidden_size, init_std=0.02)

    def construct(self, input_ids, attention_mask):
        return self.head(self.lm.hidden_states(input_ids, attention_mask))


@pytest.mark.parametrize("mode", list(MODES))
def test_hidden_states_inside_another_cell(models, mode):
    ms.set_context(mode=MODES[mode])
    lm = models["tiny"]
    critic = _ValueModel(lm)
    ids = Tensor(np.arange(16, dtype=np.int32).reshape(2, 8))
    mask = Tensor(np.ones((2, 8), np.int32))
    values = critic(ids, mask).asnumpy()
    hidden = lm.hidden_states(ids, mask).asnumpy()
    expected = hidden @ critic.head.weight.asnumpy()[:, 0] + critic.head.bias.asnumpy()[0]
    assert values.shape == (2, 8)
    np.testing.assert_allclose(values, expected, atol=1e-5)
    # the trunk's parameters are reachable through the wrapper (so an optimizer would train them)
    names = [n for n, _ in critic.parameters_and_names()]
    assert "lm.layers.0.attn.qkv_proj.weight" in names and "head.weight" in names
    # logits_from_hidden on the hidden states reproduces the full forward
    np.testing.assert_allclose(lm.logits_from_hidden(Tensor(hidden)).asnumpy(), lm(ids, mask).asnumpy(), atol=1e-5)


def test_scalar_head_starts_at_zero():
    head = ScalarHead(8)
    out = head(Tensor(np.random.randn(3, 5, 8).astype(np.float32))).asnumpy()
    assert out.shape == (3, 5) and not out.any()


def test_save_and_load_weights_roundtrip(models, tmp_path):
    ms.set_context(mode=ms.GRAPH_MODE)
    src = models["tiny-gpt2"]
    path = tmp_path / "ckpt" / "weights.safetensors"
    src.save_weights(path)
    dst = CausalLM(ModelConfig.from_preset("tiny-gpt2"))
    dst.load_weights(path)
    for (n1, p1), (n2, p2) in zip(src.named_weights(), dst.named_weights()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.asnumpy(), p2.asnumpy())
    with pytest.raises(ValueError, match="missing"):  # a gpt2 file into a llama model
        CausalLM(ModelConfig.from_preset("tiny")).load_weights(path)
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        dst.load_weights(tmp_path / "nothing.safetensors")


def test_num_parameters_by_hand():
    # gpt2, hidden 32, 1 layer, vocab 10, 8 positions, mlp 128
    cfg = ModelConfig(arch="gpt2", vocab_size=10, hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=8)
    layer = 2 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + 2 * 32 + (32 * 128 + 128) + (128 * 32 + 32)
    assert CausalLM(cfg).num_parameters() == 10 * 32 + 8 * 32 + layer + 2 * 32


def test_float16_compute_is_close_to_float32(models):
    ms.set_context(mode=ms.GRAPH_MODE)
    half = CausalLM(ModelConfig.from_preset("tiny", compute_dtype="float16"))
    half.assign_weights({n: p.asnumpy() for n, p in models["tiny"].named_weights()})
    assert all(p.dtype == ms.float32 for _, p in half.named_weights())  # parameters stay fp32
    ids = Tensor(np.arange(32, dtype=np.int32).reshape(2, 16))
    out, ref = half(ids).asnumpy(), models["tiny"](ids).asnumpy()
    assert out.dtype == np.float32
    assert 0 < np.abs(out - ref).max() < 1e-2


def test_gelu_tanh_matches_gpt2_gelu_in_float64():
    """gelu_tanh (written with a sigmoid) is GPT-2's tanh-approximate GELU, checked against numpy in float64."""
    from mindrlhf.kernels.reference import gelu_tanh

    x = np.random.default_rng(0).normal(0.0, 3.0, (4, 8, 512)).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    got = gelu_tanh(Tensor(x)).asnumpy().astype(np.float64)
    assert np.abs(got - expected).max() < 2e-6


def test_rmsnorm_matches_float64():
    """RMSNorm (with the kernel runtime.kernels selects) against numpy in float64, on rows from 1e-3 (where
    eps = 1e-5 matters) to 1e2 in scale."""
    from mindrlhf.nn.layers import RMSNorm

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 5, 96)) * np.array([1e-3, 1.0, 1e2])[:, None, None]).astype(np.float32)
    norm = RMSNorm(96, 1e-5)
    weight = rng.uniform(0.5, 1.5, 96).astype(np.float32)
    norm.weight.set_data(Tensor(weight))
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * weight
    got = norm(Tensor(x)).asnumpy()
    assert got.shape == x.shape
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-6


def test_apply_rope_signed_table_is_rotate_half():
    """apply_rope with the signed sin table equals x cos + rotate_half(x) sin with plain tables, computed in float64."""
    from mindrlhf.kernels.reference import apply_rope
    from mindrlhf.nn.layers import rope_tables

    d, positions = 16, np.array([0, 3, 17, 63])
    cos, sin = (t.asnumpy()[positions] for t in rope_tables(64, d, 500.0))
    x = np.random.default_rng(1).normal(size=(len(positions), 3, d)).astype(np.float32)   # [T, heads, D]
    angles = np.outer(positions, 1.0 / 500.0 ** (np.arange(0, d, 2) / d))
    angles = np.concatenate([angles, angles], -1)[:, None, :]
    x64 = x.astype(np.float64)
    rotate_half = np.concatenate([-x64[..., d // 2:], x64[..., :d // 2]], -1)
    expected = x64 * np.cos(angles) + rotate_half * np.sin(angles)
    got = apply_rope(Tensor(x), Tensor(cos[:, None, :]), Tensor(sin[:, None, :])).asnumpy()
    assert np.abs(got - expected).max() < 1e-5
