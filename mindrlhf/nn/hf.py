"""HuggingFace folders <-> our CausalLM: config.json translation and weight renaming.

Supported: GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, with `model.safetensors` or
sharded safetensors (`model.safetensors.index.json`). Our layout differs from HF's in two ways:
q/k/v are one fused `qkv_proj` ([q | k | v] rows) and llama's gate/up are one `up_proj`
([gate | up] rows); GPT-2's Conv1D weights are stored [in, out], so they are transposed.
"""
import json
import os

import numpy as np

from mindrlhf.io import atomic_write_text, read_safetensors, write_safetensors
from mindrlhf.nn.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM")


# ---- config.json ---------------------------------------------------------------------------
def _rope_theta(hf: dict, where: str) -> float:
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"{where}: rope type {kind!r} is not supported (only plain RoPE)")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, where="config.json") -> ModelConfig:
    archs = hf.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{where}: architectures entry {arch!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    if arch == "GPT2LMHeadModel":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{where}: GPT-2 activation {hf['activation_function']!r}; only tanh-GELU is supported")
        return ModelConfig(arch="gpt2", vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"],
                           num_layers=hf["n_layer"], num_heads=hf["n_head"], intermediate_size=hf.get("n_inner"),
                           max_position_embeddings=hf["n_positions"],
                           norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_word_embeddings=True)
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{where}: hidden_act {hf['hidden_act']!r}; only silu (SwiGLU) is supported")
    if arch == "LlamaForCausalLM" and (hf.get("attention_bias") or hf.get("mlp_bias")):
        raise ValueError(f"{where}: Llama attention_bias/mlp_bias (bias on o_proj and the MLP) is not supported")
    return ModelConfig(arch="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                       num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                       num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                       intermediate_size=hf["intermediate_size"],
                       max_position_embeddings=hf["max_position_embeddings"],
                       norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(hf, where),
                       qkv_bias=arch == "Qwen2ForCausalLM", tie_word_embeddings=hf.get("tie_word_embeddings", False),
                       head_dim=hf.get("head_dim"))


def config_to_hf(cfg: ModelConfig) -> dict:
    if cfg.arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
                "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
                "n_inner": cfg.intermediate_size, "n_positions": cfg.max_position_embeddings,
                "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
                "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": None}
    if cfg.qkv_bias:
        arch, model_type = "Qwen2ForCausalLM", "qwen2"
    else:
        arch, model_type = "LlamaForCausalLM", "llama"
    return {"architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim, "intermediate_size": cfg.intermediate_size,
            "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": cfg.tie_word_embeddings,
            "bos_token_id": None, "eos_token_id": None}


# ---- weight names: one table per family, (ours, hf, how) --------------------------------------
def _name_table(cfg: ModelConfig):
    """Rows (our name, [hf names], transpose): our tensor = concat(hf tensors, axis 0), transposed for Conv1D."""
    rows = []
    if cfg.arch == "gpt2":
        rows += [("embed_tokens.weight", ["wte.weight"], False), ("embed_positions.weight", ["wpe.weight"], False)]
        for i in range(cfg.num_layers):
            h, o = f"h.{i}.", f"layers.{i}."
            rows += [(o + "attn_norm.weight", [h + "ln_1.weight"], False), (o + "attn_norm.bias", [h + "ln_1.bias"], False),
                     (o + "attn.qkv_proj.weight", [h + "attn.c_attn.weight"], True),
                     (o + "attn.qkv_proj.bias", [h + "attn.c_attn.bias"], False),
                     (o + "attn.o_proj.weight", [h + "attn.c_proj.weight"], True),
                     (o + "attn.o_proj.bias", [h + "attn.c_proj.bias"], False),
                     (o + "mlp_norm.weight", [h + "ln_2.weight"], False), (o + "mlp_norm.bias", [h + "ln_2.bias"], False),
                     (o + "mlp.up_proj.weight", [h + "mlp.c_fc.weight"], True),
                     (o + "mlp.up_proj.bias", [h + "mlp.c_fc.bias"], False),
                     (o + "mlp.down_proj.weight", [h + "mlp.c_proj.weight"], True),
                     (o + "mlp.down_proj.bias", [h + "mlp.c_proj.bias"], False)]
        rows += [("final_norm.weight", ["ln_f.weight"], False), ("final_norm.bias", ["ln_f.bias"], False)]
        return rows
    rows.append(("embed_tokens.weight", ["model.embed_tokens.weight"], False))
    for i in range(cfg.num_layers):
        h, o = f"model.layers.{i}.", f"layers.{i}."
        qkv = [h + f"self_attn.{p}_proj." for p in "qkv"]
        rows += [(o + "attn_norm.weight", [h + "input_layernorm.weight"], False),
                 (o + "attn.qkv_proj.weight", [p + "weight" for p in qkv], False),
                 (o + "attn.o_proj.weight", [h + "self_attn.o_proj.weight"], False),
                 (o + "mlp_norm.weight", [h + "post_attention_layernorm.weight"], False),
                 (o + "mlp.up_proj.weight", [h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"], False),
                 (o + "mlp.down_proj.weight", [h + "mlp.down_proj.weight"], False)]
        if cfg.qkv_bias:
            rows.append((o + "attn.qkv_proj.bias", [p + "bias" for p in qkv], False))
    rows.append(("final_norm.weight", ["model.norm.weight"], False))
    if not cfg.tie_word_embeddings:
        rows.append(("lm_head.weight", ["lm_head.weight"], False))
    return rows


def hf_to_ours(cfg: ModelConfig, hf_tensors: dict, where="") -> dict:
    if cfg.arch == "gpt2":  # the hub's gpt2 files have no "transformer." prefix; save_pretrained's do
        hf_tensors = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in hf_tensors.items()}
    ours = {}
    for name, sources, transpose in _name_table(cfg):
        missing = [s for s in sources if s not in hf_tensors]
        if missing:
            raise ValueError(f"{where}: weight {missing[0]} is missing (needed for {name}); "
                             f"the file has e.g. {sorted(hf_tensors)[:5]}")
        arr = np.concatenate([hf_tensors[s] for s in sources], axis=0) if len(sources) > 1 else hf_tensors[sources[0]]
        ours[name] = np.ascontiguousarray(arr.T if transpose else arr)
    return ours


def ours_to_hf(cfg: ModelConfig, ours: dict) -> dict:
    hf = {}
    for name, targets, transpose in _name_table(cfg):
        arr = ours[name].T if transpose else ours[name]
        sizes = [cfg.num_heads * cfg.head_dim] + [cfg.num_kv_heads * cfg.head_dim] * 2 if len(targets) == 3 \
            else [arr.shape[0] // len(targets)] * len(targets)
        for target, part in zip(targets, np.split(arr, np.cumsum(sizes)[:-1], axis=0)):
            hf[("transformer." if cfg.arch == "gpt2" else "") + target] = np.ascontiguousarray(part, np.float32)
    return hf


# ---- folders -----------------------------------------------------------------------------------
def load_hf_folder(path):
    """(ModelConfig, our-named float32 tensors) from a HuggingFace model folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"from_pretrained: {path} is not a folder (expected a HuggingFace model folder)")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"from_pretrained: {config_path} is missing")
    with open(config_path, encoding="utf-8") as f:
        try:
            hf = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{config_path}: not valid JSON ({err})") from None
    cfg = config_from_hf(hf, where=config_path)
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        tensors = read_safetensors(single)
    elif os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(f"from_pretrained: {index} names shard {shard}, which is missing")
            tensors.update(read_safetensors(shard_path))
    else:
        raise FileNotFoundError(f"from_pretrained: no weights in {path}: expected model.safetensors or "
                                f"model.safetensors.index.json (pytorch_model.bin is not read; re-save as safetensors)")
    return cfg, hf_to_ours(cfg, tensors, where=path)


def save_hf_folder(cfg: ModelConfig, ours: dict, directory):
    """config.json + model.safetensors (fp32) that transformers loads; each file written atomically."""
    write_safetensors(os.path.join(directory, "model.safetensors"), ours_to_hf(cfg, ours), metadata={"format": "pt"})
    atomic_write_text(os.path.join(directory, "config.json"), json.dumps(config_to_hf(cfg), indent=2))
