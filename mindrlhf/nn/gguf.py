"""GGUF files (llama.cpp's format) -> our CausalLM, and a HuggingFace folder with the file's tokenizer.

The file is read by :mod:`mindrlhf.io.gguf` (metadata, tensors dequantized to fp32); here the metadata
becomes a ModelConfig and the tensors get HuggingFace names, so `hf.hf_to_ours` does the rest.

llama.cpp's converter reorders the rows of q and k inside each head, from HF's half-split RoPE
layout (rows [x_0..x_{d/2-1} | y_0..y_{d/2-1}]) to interleaved pairs (x_0, y_0, x_1, y_1, ...):
    gguf = hf.reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(rows, in)
`_unpermute` applies the inverse. Qwen2 files are written without that reordering.
"""
import json
import os

from mindrlhf.data.gguf_tokenizer import tokenizer_parts
from mindrlhf.io import atomic_write, atomic_write_text, write_safetensors
from mindrlhf.io.gguf import dequantize, metadata, metadata_light, read_gguf
from mindrlhf.nn.config import ModelConfig
from mindrlhf.nn.hf import config_to_hf, hf_to_ours

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")


# ---- config -----------------------------------------------------------------------------------
def config_from_gguf(meta: dict, tensor_names, where="") -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{where}: general.architecture is {arch!r}; mindrlhf reads GGUF files of the "
                         f"architectures {SUPPORTED_ARCHITECTURES}")

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"{where}: metadata key {arch}.{key} is missing")
        if isinstance(value, list):
            raise ValueError(f"{where}: {arch}.{key} varies per layer ({value[:4]}...), which CausalLM cannot hold")
        return value

    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise ValueError(f"{where}: RoPE scaling ({scaling!r}, or a rope_freqs tensor) is not supported; "
                         "only plain RoPE")
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    rotary = int(get("rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise ValueError(f"{where}: {arch}.rope.dimension_count={rotary} rotates part of each head "
                         f"(head_dim={head_dim}); only full-head RoPE is supported")
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
    if not vocab:
        raise ValueError(f"{where}: no {arch}.vocab_size and no tokenizer.ggml.tokens to count")
    return ModelConfig(arch="llama", vocab_size=int(vocab), hidden_size=hidden, num_layers=int(get("block_count")),
                       num_heads=heads, num_kv_heads=int(get("attention.head_count_kv", heads)),
                       intermediate_size=int(get("feed_forward_length")),
                       max_position_embeddings=int(get("context_length")),
                       norm_eps=float(get("attention.layer_norm_rms_epsilon")),
                       rope_theta=float(get("rope.freq_base", 10000.0)), qkv_bias=arch == "qwen2",
                       tie_word_embeddings="output.weight" not in tensor_names, head_dim=head_dim)


# ---- tensors ----------------------------------------------------------------------------------
def _unpermute(w, heads):
    """Undo llama.cpp's per-head row interleaving of q/k (see the module docstring); w [rows, ...]."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name_table(cfg: ModelConfig):
    """Rows (gguf name, HF name, heads to unpermute by or 0)."""
    permute = not cfg.qkv_bias  # llama files are permuted, qwen2 files are not
    rows = [("token_embd.weight", "model.embed_tokens.weight", 0), ("output_norm.weight", "model.norm.weight", 0)]
    if not cfg.tie_word_embeddings:
        rows.append(("output.weight", "lm_head.weight", 0))
    for i in range(cfg.num_layers):
        g, h = f"blk.{i}.", f"model.layers.{i}."
        rows += [(g + "attn_norm.weight", h + "input_layernorm.weight", 0),
                 (g + "attn_q.weight", h + "self_attn.q_proj.weight", cfg.num_heads * permute),
                 (g + "attn_k.weight", h + "self_attn.k_proj.weight", cfg.num_kv_heads * permute),
                 (g + "attn_v.weight", h + "self_attn.v_proj.weight", 0),
                 (g + "attn_output.weight", h + "self_attn.o_proj.weight", 0),
                 (g + "ffn_norm.weight", h + "post_attention_layernorm.weight", 0),
                 (g + "ffn_gate.weight", h + "mlp.gate_proj.weight", 0),
                 (g + "ffn_up.weight", h + "mlp.up_proj.weight", 0),
                 (g + "ffn_down.weight", h + "mlp.down_proj.weight", 0)]
        if cfg.qkv_bias:
            rows += [(g + f"attn_{p}.bias", h + f"self_attn.{p}_proj.bias", 0) for p in "qkv"]
    return rows


def hf_tensors_from_gguf(reader, cfg: ModelConfig, where="") -> dict:
    """HuggingFace-named fp32 tensors of a GGUF; any tensor left over is an error (it would be ignored)."""
    by_name = {t.name: t for t in reader.tensors}
    table = _hf_name_table(cfg)
    missing = [g for g, _, _ in table if g not in by_name]
    if missing:
        raise ValueError(f"{where}: tensor {missing[0]} is missing ({len(missing)} missing in all); "
                         f"the file has e.g. {sorted(by_name)[:5]}")
    unknown = sorted(set(by_name) - {g for g, _, _ in table})
    if unknown:
        raise ValueError(f"{where}: tensors {unknown[:5]} have no place in a CausalLM (unsupported feature?)")
    out = {}
    for g, h, heads in table:
        arr = dequantize(by_name[g], where)
        out[h] = _unpermute(arr, heads) if heads else arr
    return out


def load_gguf(name_or_path):
    """(ModelConfig, our-named fp32 tensors) from a GGUF path or preset name."""
    path, reader = read_gguf(name_or_path)
    cfg = config_from_gguf(metadata_light(reader), {t.name for t in reader.tensors}, where=path)
    return cfg, hf_to_ours(cfg, hf_tensors_from_gguf(reader, cfg, where=path), where=path)


# ---- HuggingFace folder -----------------------------------------------------------------------
def gguf_to_hf_folder(name_or_path, out_dir) -> str:
    """Write config.json, model.safetensors (fp32, dequantized), tokenizer.json and
    tokenizer_config.json (with `chat_template`) that transformers and `CausalLM.from_pretrained` load.
    Returns out_dir."""
    path, reader = read_gguf(name_or_path)
    meta = metadata(reader)
    cfg = config_from_gguf(meta, {t.name for t in reader.tensors}, where=path)
    hf = hf_tensors_from_gguf(reader, cfg, where=path)
    tok, tok_config = tokenizer_parts(meta, where=path)
    config = config_to_hf(cfg)
    for name in ("bos", "eos", "pad"):
        key = "padding" if name == "pad" else name
        if meta.get(f"tokenizer.ggml.{key}_token_id") is not None:
            config[f"{name}_token_id"] = int(meta[f"tokenizer.ggml.{key}_token_id"])
    write_safetensors(os.path.join(out_dir, "model.safetensors"), hf, metadata={"format": "pt"})
    atomic_write(os.path.join(out_dir, "tokenizer.json"), lambda tmp: tok.save(tmp))
    tok_config = dict(tok_config, tokenizer_class="PreTrainedTokenizerFast", model_max_length=cfg.max_position_embeddings)
    for name, content in (("config.json", config), ("tokenizer_config.json", tok_config)):
        atomic_write_text(os.path.join(out_dir, name), json.dumps(content, indent=2, ensure_ascii=False))
    return os.fspath(out_dir)
