"""ModelConfig: the sizes of a decoder LM, and the presets in `models/*.yaml`.

One dataclass describes both families:
- "gpt2":  learned positions, LayerNorm, tanh-GELU MLP, biases everywhere, tied head.
- "llama": RoPE, RMSNorm, SwiGLU MLP, grouped-query attention (num_kv_heads < num_heads),
           optional q/k/v bias (Qwen2 is llama with `qkv_bias=True`), tied or untied head.
"""
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import yaml

from mindrlhf.config import ConfigError, field, require

ARCHS = ("gpt2", "llama")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# models/ sits at the repo root, next to the package folder.
PRESET_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass
class ModelConfig:
    arch: str = field("llama", "gpt2 or llama (Qwen2 = llama + qkv_bias)")
    vocab_size: int = field(512, "token vocabulary size")
    hidden_size: int = field(64, "width of the residual stream")
    num_layers: int = field(2, "decoder blocks")
    num_heads: int = field(4, "attention heads")
    num_kv_heads: Optional[int] = field(None, "key/value heads (grouped-query attention); null = num_heads")
    intermediate_size: Optional[int] = field(None, "MLP width; null = 4 * hidden_size")
    max_position_embeddings: int = field(128, "longest sequence (prompt + response) in tokens")
    norm_eps: float = field(1e-5, "epsilon of LayerNorm / RMSNorm")
    rope_theta: float = field(10000.0, "RoPE base (llama only)")
    qkv_bias: bool = field(False, "biases on q/k/v (llama only; gpt2 always has biases)")
    tie_word_embeddings: bool = field(True, "lm_head shares the token embedding matrix")
    compute_dtype: str = field("float32", "matmul dtype: float32, bfloat16 or float16; parameters, norms and "
                                          "softmax stay fp32")
    head_dim: Optional[int] = field(None, "width of one head; null = hidden_size // num_heads")

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.head_dim is None:
            require(self.num_heads > 0 and self.hidden_size % self.num_heads == 0, "head_dim",
                    f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                    "set head_dim explicitly")
            self.head_dim = self.hidden_size // self.num_heads
        self.validate()

    def validate(self):
        require(self.arch in ARCHS, "arch", f"{self.arch!r}: expected one of {', '.join(ARCHS)}")
        require(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype",
                f"{self.compute_dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_position_embeddings", "head_dim"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.norm_eps > 0, "norm_eps", f"must be > 0, got {self.norm_eps}")
        require(self.rope_theta > 0, "rope_theta", f"must be > 0, got {self.rope_theta}")
        require(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
        require(self.arch != "gpt2" or (self.num_kv_heads == self.num_heads and self.tie_word_embeddings), "arch",
                "gpt2 has num_kv_heads == num_heads and a tied head")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"ModelConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name_or_path: str, **overrides) -> "ModelConfig":
        """Load `models/<name>.yaml`, or a YAML file given by path; `overrides` replace fields."""
        path = Path(name_or_path)
        if not (path.suffix in (".yaml", ".yml") and path.is_file()):
            path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown model preset {name_or_path!r}: no such YAML file and no "
                             f"{path}; available presets: {available_presets()}")
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f) or {}
        d.pop("tokenizer", None)  # tokenizer settings may sit beside the sizes; they are data's business
        d.update(overrides)
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: {e}") from e


def available_presets() -> list:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
