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

ARCHS = ("gpt2", "llama")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# models/ sits at the repo root, next to the package folder.
PRESET_DIR = Path(__file__).resolve().parents[2] / "models"


@dataclass
class ModelConfig:
    arch: str = "llama"                      # "gpt2" | "llama" (Qwen2 = llama + qkv_bias)
    vocab_size: int = 512
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: Optional[int] = None       # GQA; None = num_heads (plain multi-head attention)
    intermediate_size: Optional[int] = None  # MLP width; None = 4 * hidden_size
    max_position_embeddings: int = 128
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0              # llama only
    qkv_bias: bool = False                   # llama only; gpt2 always has biases
    tie_word_embeddings: bool = True         # lm_head shares the token embedding matrix
    compute_dtype: str = "float32"           # matmul dtype; parameters, norms and softmax stay fp32
    head_dim: Optional[int] = None           # None = hidden_size // num_heads

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"ModelConfig: hidden_size={self.hidden_size} is not divisible by "
                                 f"num_heads={self.num_heads}; set head_dim explicitly")
            self.head_dim = self.hidden_size // self.num_heads
        self.validate()

    def validate(self):
        if self.arch not in ARCHS:
            raise ValueError(f"ModelConfig.arch={self.arch!r}; expected one of {ARCHS}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"ModelConfig.compute_dtype={self.compute_dtype!r}; expected one of {COMPUTE_DTYPES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig: num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.arch == "gpt2" and (self.num_kv_heads != self.num_heads or not self.tie_word_embeddings):
            raise ValueError("ModelConfig: arch='gpt2' has num_kv_heads == num_heads and a tied head")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name_or_path: str, **overrides) -> "ModelConfig":
        """Load `models/<name>.yaml`, or a YAML file given by path; `overrides` replace fields."""
        path = Path(name_or_path)
        if not (path.suffix in (".yaml", ".yml") and path.is_file()):
            path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown model preset {name_or_path!r}: no such YAML file and no "
                             f"{path}; available presets: {available_presets()}")
        with open(path, encoding="utf-8") as f:
            d = yaml.safe_load(f) or {}
        d.pop("tokenizer", None)  # tokenizer settings may sit beside the sizes; they are data's business
        d.update(overrides)
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e


def available_presets() -> list:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
