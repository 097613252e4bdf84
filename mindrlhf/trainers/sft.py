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
from typing import ClassVar, Optional

import mindspore as ms
from mindspore import nn, ops

from .. import runtime
from ..config import field, require
from ..data.batching import sft_batch
from ..data.encoding import encode_demonstrations
from ..data.formats import load_demonstrations
from ..nn.lora import LoRAConfig, TrainableParams
from ..roles import load_lm
from ..runtime import RuntimeConfig
from .artifacts import export_model, resolve_tokenizer
from .loop import prepare_run_dir, run_loop
from .step import OptimConfig, Updater
from .supervised import DataConfig, LoopConfig, SupervisedStage, split_heldout, with_dropout


@dataclasses.dataclass
class SFTDataConfig(DataConfig):
    train: str = field("", "demonstrations JSONL (or .mindrecord) to train on")
    eval: str = field("", "held-out demonstrations; empty = hold out eval_fraction of train")

    def validate(self):
        require(bool(self.train), "train", "set the demonstrations file, e.g. data.train=demos.jsonl")
        super().validate()


@dataclasses.dataclass
class SFTConfig:
    # What the checkpoints' shapes and the data order were made with; a resumed run may not change them.
    fixed_on_resume: ClassVar[tuple] = ("model", "lora.enabled", "lora.rank", "lora.targets", "data.max_length",
                                        "data.chat_template", "train.batch_size")

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
        logprobs, _ = self.model.next_token_logprobs(input_ids, attention_mask)  # [B, T-1]: token t+1 given ≤ t
        mask = loss_mask[:, 1:].astype(ms.float32)
        nll = -ops.reduce_sum(logprobs * mask)
        return nll / normalizer, nll


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


def train_sft(cfg: SFTConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Run SFT; write ``out_dir/model`` (HuggingFace folder + tokenizer). Returns the final metrics."""
    rt = runtime.setup(cfg.runtime)
    prepare_run_dir(cfg.out_dir, resume, overwrite)
    tokenizer = resolve_tokenizer(cfg.tokenizer, cfg.model)
    data = cfg.data

    def encode_file(path):
        encoded = encode_demonstrations(load_demonstrations(path, data.skip_invalid), tokenizer, data.max_length,
                                        data.skip_invalid, data.chat_template)
        if encoded.skipped:
            print(f"[sft] {path}: skipped {encoded.skipped} invalid lines; first: {encoded.skip_reasons[:1]}")
        return encoded

    train_set, eval_set = split_heldout(encode_file(data.train), data, cfg.runtime.seed, encode_file)

    model = load_lm(cfg.model, tokenizer.vocab_size, lora=cfg.lora)
    loss_cell = SFTLoss(model)
    per_rank, n_micro = cfg.train.layout(rt.world_size)
    updater = Updater(loss_cell, model.trainable_params(), cfg.optim,
                      cfg.train.total_steps(len(train_set)), accum_steps=n_micro)
    pad = tokenizer.pad_id

    def evaluate():
        return {"eval_loss": heldout_loss(loss_cell, eval_set, pad, data, per_rank)} if eval_set else {}

    if cfg.lora.enabled and cfg.lora.dropout > 0:
        evaluate = with_dropout(model, evaluate)

    def export(run_dir):
        model.set_train(False)
        export_model(model, tokenizer, cfg, os.path.join(run_dir, "model"), base=cfg.model)

    stage = SupervisedStage(
        records=train_set,
        make_batch=lambda items, norm: batch_tensors(items, pad, data.pad_multiple, data.max_length, norm),
        count=response_tokens,
        updater=updater,
        cells={"model": TrainableParams(model)},
        loop=cfg.train,
        seed=cfg.runtime.seed,
        evaluate=evaluate,
        export=export,
        name="sft",
    )
    return run_loop(stage, cfg.train, cfg.out_dir, resume, config=cfg)
