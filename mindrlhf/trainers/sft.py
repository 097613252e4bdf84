"""Stage 1, supervised fine-tuning: maximise log π(response | prompt) on demonstrations.

    loss = − Σ_{b,t} m_{b,t} · log π(y_{b,t} | y_{b,<t}) / Σ m        (m = 1 on response tokens + EOS)

The prompt tokens are context only (m = 0). The normaliser Σ m is the whole global batch's token
count, passed into the compiled step, so micro-batches and ranks add up to the same gradient.

With ``lora.enabled`` only the adapters train (the loaded weights stay frozen, bit for bit), checkpoints
hold the adapters and their optimizer state, and ``model/`` holds the merged weights plus the adapters
alone in ``lora_adapters.safetensors``.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from .. import runtime
from ..algos import logprobs_from_logits
from ..config import field, require, save_config
from ..data.batching import sft_batch
from ..data.encoding import encode_demonstrations
from ..data.formats import load_demonstrations
from ..data.tokenizer import Tokenizer
from ..io.gguf import is_gguf
from ..nn.lora import ADAPTER_FILE, LoRAConfig, TrainableParams, has_lora, save_adapters
from ..roles import load_lm
from ..runtime import RuntimeConfig
from .loop import LoopConfig, Stage, run_loop
from .step import OptimConfig, Updater


@dataclasses.dataclass
class SFTDataConfig:
    train: str = field("", "demonstrations JSONL (or .mindrecord) to train on")
    eval: str = field("", "held-out demonstrations; empty = hold out eval_fraction of train")
    eval_fraction: float = field(0.05, "fraction of train held out when eval is empty")
    max_length: int = field(128, "longest prompt+response in tokens; longer lines are errors (or skipped)")
    pad_multiple: int = field(32, "pad each batch to a multiple of this (few distinct shapes = few compiles)")
    skip_invalid: bool = field(False, "skip malformed or too-long lines (counted and logged) instead of stopping")

    def validate(self):
        require(bool(self.train), "data.train", "set the demonstrations file, e.g. data.train=demos.jsonl")
        require(0 <= self.eval_fraction < 1, "data.eval_fraction", "must be in [0, 1)")
        require(self.max_length > 1, "data.max_length", "must be > 1")


@dataclasses.dataclass
class SFTConfig:
    model: str = field("tiny", "preset name (models/*.yaml), preset YAML path, HuggingFace folder, or GGUF file/name "
                               "(smollm2-135m-instruct) to start from")
    tokenizer: str = field("", "tokenizer folder (tokenizer.model or tokenizer.json); empty = the model's own")
    lora: LoRAConfig = field(LoRAConfig(enabled=False), "LoRA adapters (off unless lora.enabled=true)")
    out_dir: str = field("runs/sft", "run folder: checkpoints, metrics, plots and the final model/")
    data: SFTDataConfig = field(SFTDataConfig(), "demonstrations")
    train: LoopConfig = field(LoopConfig(), "batching, length and cadence of training")
    optim: OptimConfig = field(OptimConfig(lr=3e-3, warmup_steps=20), "AdamW and its schedule")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, mode, seed")


class SFTLoss(nn.Cell):
    """(input_ids, attention_mask, loss_mask [B, T], normalizer []) → (loss, summed NLL)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, attention_mask, loss_mask, normalizer):
        logits = self.model(input_ids, attention_mask)[:, :-1, :]
        logprobs = logprobs_from_logits(logits, input_ids[:, 1:])  # [B, T-1]: token t+1 given ≤ t
        mask = loss_mask[:, 1:].astype(ms.float32)
        nll = -ops.reduce_sum(logprobs * mask)
        return nll / normalizer, nll


def resolve_tokenizer(cfg_tokenizer: str, model: str) -> Tokenizer:
    source = cfg_tokenizer or (model if os.path.isdir(model) or is_gguf(model) else "")
    if not source:
        raise FileNotFoundError("no tokenizer: set tokenizer=DIR (train one with `mindrlhf tokenizer train`) "
                                "or start from a model folder that holds one")
    return Tokenizer.load(source)


def split_eval(records, data_cfg, tokenizer, seed, encode_file=None):
    """(train, eval) encoded records: the eval file, or a seeded held-out slice of train.

    ``encode_file(path)`` reads and encodes the eval file; the default reads demonstrations (other
    stages pass their own format's reader).
    """
    if data_cfg.eval:
        if encode_file is None:
            held = encode_demonstrations(load_demonstrations(data_cfg.eval, data_cfg.skip_invalid), tokenizer,
                                         data_cfg.max_length, data_cfg.skip_invalid)
        else:
            held = encode_file(data_cfg.eval)
        return list(records), list(held)
    perm = np.random.default_rng(seed).permutation(len(records))
    n_eval = int(round(len(records) * data_cfg.eval_fraction))
    return [records[i] for i in perm[n_eval:]], [records[i] for i in perm[:n_eval]]


def batch_tensors(items, pad_id: int, pad_multiple: int, max_length: int, normalizer: float):
    b = sft_batch(items, pad_id, pad_multiple, max_length)
    return (ms.Tensor(b["input_ids"], ms.int32), ms.Tensor(b["attention_mask"], ms.int32),
            ms.Tensor(b["loss_mask"], ms.float32), ms.Tensor(normalizer, ms.float32))


def response_tokens(items) -> int:
    # Tokens predicted: the loss reads loss_mask[:, 1:], and position 0 is always prompt.
    return sum(sum(s.loss_mask[1:]) for s in items)


def heldout_loss(loss_cell, records, pad_id, data_cfg, batch_size) -> float:
    """Mean per-token NLL over ``records`` (forward only)."""
    total, count = 0.0, 0
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        _, nll = loss_cell(*batch_tensors(chunk, pad_id, data_cfg.pad_multiple, data_cfg.max_length, 1.0))
        total += float(nll.asnumpy())
        count += response_tokens(chunk)
    return total / max(count, 1)


def train_sft(cfg: SFTConfig, resume: Optional[str] = None) -> dict:
    """Run SFT; write ``out_dir/model`` (HuggingFace folder + tokenizer). Returns the final metrics."""
    rt = runtime.setup(cfg.runtime)
    os.makedirs(cfg.out_dir, exist_ok=True)
    if rt.is_main:
        save_config(cfg, os.path.join(cfg.out_dir, "config.yaml"))
    tokenizer = resolve_tokenizer(cfg.tokenizer, cfg.model)
    demos = load_demonstrations(cfg.data.train, cfg.data.skip_invalid)
    encoded = encode_demonstrations(demos, tokenizer, cfg.data.max_length, cfg.data.skip_invalid)
    if encoded.skipped:
        print(f"[sft] skipped {encoded.skipped} invalid lines; first: {encoded.skip_reasons[:1]}")
    train_set, eval_set = split_eval(encoded, cfg.data, tokenizer, cfg.runtime.seed)

    model = load_lm(cfg.model, tokenizer.vocab_size, lora=cfg.lora)
    loss_cell = SFTLoss(model)
    per_rank, n_micro = cfg.train.layout(rt.world_size)
    updater = Updater(loss_cell, model.trainable_params(), cfg.optim,
                      cfg.train.total_steps(len(train_set)), accum_steps=n_micro)
    pad = tokenizer.pad_id

    def evaluate():
        return {"eval_loss": heldout_loss(loss_cell, eval_set, pad, cfg.data, per_rank)} if eval_set else {}

    if cfg.lora.enabled and cfg.lora.dropout > 0:
        evaluate = with_dropout(model, evaluate)

    stage = Stage(
        records=train_set,
        make_batch=lambda items, norm: batch_tensors(items, pad, cfg.data.pad_multiple, cfg.data.max_length, norm),
        count=response_tokens,
        updater=updater,
        cells={"model": TrainableParams(model)},
        evaluate=evaluate,
    )
    final = run_loop(stage, cfg.train, cfg.out_dir, cfg.runtime.seed, resume)
    model.set_train(False)
    if rt.is_main:
        export_model(model, tokenizer, cfg, os.path.join(cfg.out_dir, "model"), base=cfg.model)
    return final


def with_dropout(model, evaluate):
    """Put ``model`` in training mode (LoRA dropout on) and return ``evaluate`` wrapped to run in eval
    mode. Only the Python flag flips; the train step and the evaluation forward are separate graphs."""
    model.set_train(True)

    def wrapped():
        model.set_train(False)
        try:
            return evaluate()
        finally:
            model.set_train(True)

    return wrapped


def export_model(model, tokenizer, cfg, directory: str, base: str = "") -> None:
    """The stage's product: a HuggingFace folder with the tokenizer and the config that made it.

    A LoRA model is written merged (W + scale·BA: transformers and the next stage load it as a plain
    model) and its adapters alone go to ``lora_adapters.safetensors``, to reload on ``base`` with
    :func:`mindrlhf.nn.lora.load_adapters`."""
    if has_lora(model):
        save_adapters(model, os.path.join(directory, ADAPTER_FILE), base=base)
    model.save_pretrained(directory)  # merged when adapters are attached
    tokenizer.save(directory)
    save_config(cfg, os.path.join(directory, "mindrlhf_config.yaml"))
