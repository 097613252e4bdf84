"""LoRA: low-rank adapters on a CausalLM's projections (Hu et al., 2021, arXiv:2106.09685).

A targeted projection W [out, in] becomes
    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T,     A [r, in], B [out, r]
with B = 0 at the start (so a fresh adapter changes nothing) and A random. Only A and B train;
every other parameter gets requires_grad=False. `merge_lora` folds W <- W + (alpha / r) B A back in
and restores plain Linear layers (`save_pretrained` writes the merged model either way).

Targets are named by projection: q, k, v, o, gate, up, down. Our q/k/v share one fused `qkv_proj`
and llama's gate/up one `up_proj`, so each targeted part of a fused layer gets its own A and B (the
same adapters PEFT puts on separate q_proj/k_proj/... layers); untargeted parts get none.
Adapter parameters are named `<layer path>.lora_A.<part>` / `.lora_B.<part>`, e.g.
`layers.0.attn.qkv_proj.lora_A.q`. Within one fused layer the targeted parts share one dropout mask.

Frozen weights are shared, not copied, between roles: `shared_copy(model)` is a second model over the
same Parameters without adapters (the PPO reference of a LoRA actor), and LoRA applied to such a copy
adapts the same base again (a critic on the reward model's trunk). `merged_weights`, and through it
`CausalLM.save_pretrained`, write the merged model without touching the adapted one.

Order of work: `apply_lora` (or `load_adapters`) first, then build train steps / generators around
the model; after `merge_lora`, build them again. Swapping sub-cells does not reach graphs that
MindSpore already compiled for cells wrapping the model (the model's own cache is cleared here).
"""
import json
import math
from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, initializer

from mindrlhf.config import field, require
from mindrlhf.io import read_safetensors, safetensors_metadata, write_safetensors
from mindrlhf.nn.layers import Linear

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# Next to a stage's merged model/. Not PEFT's adapter_model.safetensors + adapter_config.json: with those,
# transformers would load the folder as an adapter on a base model instead of as the merged model.
ADAPTER_FILE = "lora_adapters.safetensors"


@dataclass
class LoRAConfig:
    """Adapter shape, and (as a stage's ``lora:`` section) whether the stage trains adapters at all.

    In a stage config LoRA is off unless ``enabled: true``; the other keys are then the adapters' shape."""
    enabled: bool = field(True, "train LoRA adapters (and any head) instead of every weight, the base frozen")
    rank: int = field(8, "r, the adapters' inner width")
    alpha: float = field(16.0, "the update is scaled by alpha / rank")
    dropout: float = field(0.0, "dropout on the adapters' input while training (SFT and reward model only)")
    targets: Tuple[str, ...] = field(("q", "k", "v", "o"), f"projections that get adapters, from {list(TARGETS)}")

    def __post_init__(self):
        self.targets = tuple(self.targets)
        self.validate()

    def validate(self):
        unknown = [t for t in self.targets if t not in TARGETS]
        require(not unknown and bool(self.targets), "targets",
                f"{list(self.targets)}: expected a non-empty subset of {list(TARGETS)}")
        require(self.rank >= 1, "rank", f"must be >= 1 (turn LoRA off with enabled: false), got {self.rank}")
        require(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoRALinear(Linear):
    """A Linear (same weight/bias Parameters, same names) plus adapters on some row blocks ("parts").

    parts: [(name, rows)] covering the output rows in order, e.g. [("q", 256), ("k", 128), ("v", 128)];
    targets: the part names that get adapters."""

    def __init__(self, base: Linear, parts, targets, cfg: LoRAConfig):
        nn.Cell.__init__(self)  # not Linear.__init__: it would allocate and initialise a second weight
        in_features = base.weight.shape[1]
        self.out_features = base.out_features
        self.weight, self.bias = base.weight, base.bias  # the base Parameters themselves, same names
        self.dtype, self.cast, self.matmul = base.dtype, base.cast, ops.MatMul(transpose_b=True)
        self.parts = [(name, rows, name in targets) for name, rows in parts]
        self.scale = cfg.scale
        self.use_dropout = cfg.dropout > 0
        self.dropout = nn.Dropout(p=cfg.dropout) if self.use_dropout else None
        a, b = [], []
        for name, rows, on in self.parts:
            if on:
                a.append(Parameter(initializer(HeUniform(math.sqrt(5)), (cfg.rank, in_features), ms.float32),
                                   name=f"lora_A.{name}"))
                b.append(Parameter(initializer("zeros", (rows, cfg.rank), ms.float32), name=f"lora_B.{name}"))
        self.lora_A, self.lora_B = ms.ParameterTuple(a), ms.ParameterTuple(b)

    def construct(self, x):
        y = super().construct(x)
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        if self.use_dropout:
            h = self.dropout(h)
        if self.cast:
            h = h.astype(self.dtype)
        pieces = ()
        i = 0
        for _, rows, on in self.parts:
            if on:
                a, b = self.lora_A[i], self.lora_B[i]
                if self.cast:
                    a, b = a.astype(self.dtype), b.astype(self.dtype)
                pieces += (self.matmul(self.matmul(h, a), b).astype(ms.float32),)
                i += 1
            else:
                pieces += (ops.zeros((h.shape[0], rows), ms.float32),)
        delta = ops.concat(pieces, -1) if len(pieces) > 1 else pieces[0]
        return y + (delta * self.scale).reshape(lead + (self.out_features,))

    def merged_weight(self) -> np.ndarray:
        """W + scale * B A on the targeted row blocks, [out, in] (numpy, fp32); the layer is unchanged."""
        w = self.weight.asnumpy().copy()
        start, i = 0, 0
        for _, rows, on in self.parts:
            if on:
                w[start:start + rows] += self.scale * (self.lora_B[i].asnumpy() @ self.lora_A[i].asnumpy())
                i += 1
            start += rows
        return w

    def merged(self) -> Linear:
        """A plain Linear holding `merged_weight()` (new Parameters) and a copy of the bias."""
        w = self.merged_weight()
        dtype = {ms.float32: "float32", ms.bfloat16: "bfloat16", ms.float16: "float16"}[self.dtype]
        plain = Linear(w.shape[1], w.shape[0], self.bias is not None, dtype)
        plain.weight.set_data(Tensor(w))
        if self.bias is not None:
            plain.bias.set_data(Tensor(self.bias.asnumpy()))
        return plain


# ---- applying, merging, saving -----------------------------------------------------------------
def _sites(model):
    """(parent cell, attribute, [(part, rows)]) for every projection of a CausalLM's layers."""
    cfg = model.config
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    width = cfg.intermediate_size
    up_parts = [("gate", width), ("up", width)] if cfg.arch == "llama" else [("up", width)]
    for layer in model.layers:
        yield layer.attn, "qkv_proj", [("q", q), ("k", kv), ("v", kv)]
        yield layer.attn, "o_proj", [("o", cfg.hidden_size)]
        yield layer.mlp, "up_proj", up_parts
        yield layer.mlp, "down_proj", [("down", cfg.hidden_size)]


def _after_structure_change(model):
    """Two things MindSpore does not redo by itself when sub-cells are replaced after construction:
    - parameter names: a newly attached cell prefixes its parameters with its attribute name only, so
      every parameter gets its full path again (names must be unique for optimizers and checkpoints);
    - compiled graphs: a Cell's graph is cached per instance and input shapes, so a model called before
      would keep running its old graph (without, or still with, the adapters). Forgetting the model's
      own cache fixes direct calls; cells built around the model must be built after this point."""
    for path, p in model.parameters_and_names():
        p.name = path
    model.compile_cache.clear()


def apply_lora(model, cfg: LoRAConfig) -> list:
    """Wrap the targeted projections of `model` (a CausalLM) in place and freeze everything else.
    Returns the adapter parameters (pass them to the optimizer)."""
    if not cfg.enabled:
        raise ValueError("apply_lora: the LoRAConfig has enabled=False; callers apply adapters only when it is on")
    if has_lora(model):
        raise ValueError("apply_lora: this model already has LoRA adapters; merge_lora() it first")
    for parent, attr, parts in _sites(model):
        if any(name in cfg.targets for name, _ in parts):
            setattr(parent, attr, LoRALinear(getattr(parent, attr), parts, cfg.targets, cfg))
    _after_structure_change(model)
    model.lora_config = cfg
    for p in model.get_parameters():
        p.requires_grad = is_lora_name(p.name)
    return lora_parameters(model)


def is_lora_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def has_lora(model) -> bool:
    return any(is_lora_name(name) for name, _ in model.parameters_and_names())


def lora_parameters(model) -> list:
    return [p for name, p in model.parameters_and_names() if is_lora_name(name)]


def shared_copy(model):
    """A second CausalLM over the same frozen weights: every Parameter of the result IS ``model``'s
    (no copy) and it has no adapters, so it computes ``model`` with the adapters switched off.

    This is how one set of base weights serves several roles: the PPO reference is the LoRA actor's
    base, and ``apply_lora(shared_copy(m), cfg)`` gives a second adapted model (e.g. a critic) on the
    same base. Building the structure allocates a fresh model's parameters for a moment (CausalLM
    initialises eagerly); they are dropped when the shared ones take their place."""
    own = {name: p for name, p in model.parameters_and_names() if not is_lora_name(name)}
    view = type(model)(model.config)
    cells = dict(view.cells_and_names())
    for name, _ in list(view.parameters_and_names()):
        if name not in own:
            raise ValueError(f"shared_copy: {name} is missing from the model being shared (not a CausalLM?)")
        owner, attr = name.rsplit(".", 1)
        setattr(cells[owner], attr, own[name])
    _after_structure_change(view)
    return view


def merged_weights(model) -> dict:
    """{name: numpy} of the model with every adapter folded in (W + scale * B A), adapter tensors left
    out: what ``save_pretrained`` writes. The model itself is unchanged."""
    merged = {f"{path}.weight": cell.merged_weight() for path, cell in model.cells_and_names()
              if isinstance(cell, LoRALinear)}
    return {name: merged[name] if name in merged else p.asnumpy()
            for name, p in model.parameters_and_names() if not is_lora_name(name)}


class TrainableParams(nn.Cell):
    """The trainable Parameters of ``cell`` as a Cell of their own (the same objects, names kept).

    Checkpointing this instead of the whole Cell keeps a LoRA run's checkpoints to the adapters (and
    heads): the frozen base is the stage's input and never changes."""

    def __init__(self, cell):
        super().__init__(auto_prefix=False)
        self.params = ms.ParameterTuple(cell.trainable_params())


def merge_lora(model) -> None:
    """Fold every adapter into its base weight and put plain Linear layers back; all parameters
    become trainable again. Afterwards `model.save_pretrained` writes the merged weights."""
    for parent, attr, _ in _sites(model):
        layer = getattr(parent, attr)
        if isinstance(layer, LoRALinear):
            setattr(parent, attr, layer.merged())
    _after_structure_change(model)
    for p in model.get_parameters():
        p.requires_grad = True
    model.lora_config = None


def save_adapters(model, path, base: str = "") -> None:
    """The adapter parameters alone, plus their LoRAConfig in the file's metadata (safetensors);
    ``base`` records the model the adapters belong on (the stage's starting model)."""
    cfg = getattr(model, "lora_config", None)
    if cfg is None or not has_lora(model):
        raise ValueError("save_adapters: the model has no LoRA adapters (apply_lora first)")
    tensors = {name: p.asnumpy() for name, p in model.parameters_and_names() if is_lora_name(name)}
    meta = {"format": "mindrlhf-lora", "lora_config": json.dumps(asdict(cfg)), "base_model": str(base)}
    write_safetensors(path, tensors, metadata=meta)


def load_adapters(model, path) -> list:
    """Load adapters saved by `save_adapters`; a model without adapters gets them applied first with
    the saved LoRAConfig. Names and shapes must match. Returns the adapter parameters."""
    meta, tensors = safetensors_metadata(path), read_safetensors(path)
    if meta.get("format") != "mindrlhf-lora":
        raise ValueError(f"{path}: not a mindrlhf LoRA adapter file (metadata format={meta.get('format')!r})")
    saved = LoRAConfig(**json.loads(meta["lora_config"]))
    if not has_lora(model):
        apply_lora(model, saved)
    elif asdict(model.lora_config) != asdict(saved):
        raise ValueError(f"{path}: adapters were saved with {saved}, the model has {model.lora_config}")
    params = {name: p for name, p in model.parameters_and_names() if is_lora_name(name)}
    if set(params) != set(tensors):
        raise ValueError(f"{path}: adapter names do not match the model: missing "
                         f"{sorted(set(params) - set(tensors))[:4]}, unexpected {sorted(set(tensors) - set(params))[:4]}")
    for name, p in params.items():
        if tuple(tensors[name].shape) != tuple(p.shape):
            raise ValueError(f"{path}: {name} has shape {tensors[name].shape}, the model expects {tuple(p.shape)}")
        p.set_data(Tensor(np.ascontiguousarray(tensors[name], np.float32)))
    return list(params.values())
