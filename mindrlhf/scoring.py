"""`mindrlhf score`: given answers scored by a reward model, a policy and a reference.

Input: a JSONL file of prompt/answer lines in the demonstrations format (``{"prompt": ..., "response":
...}`` or ``{"messages": [...]}``; ``mindrlhf generate``'s output has these keys too). Output, one line per
input line, in order::

    {"prompt": ..., "response": ..., "num_tokens": 12, "rm_score": 1.7, "logprob_policy": -20.5,
     "logprob_reference": -23.0, "kl": 2.5}

- each answer is scored as a finished one: its tokens and the tokenizer's EOS (``num_tokens`` counts both),
  after the prompt through the chat template (``chat_template=False``: plain continuation, as trained);
- ``rm_score``: the reward model's r(x, y), read at the EOS (as PPO scores a finished rollout); not
  normalised with rm_stats.json;
- ``logprob_policy``, ``logprob_reference``: Σ_t log π(y_t | x, y_<t) over those tokens;
- ``kl``: logprob_policy − logprob_reference, the answer's log-ratio; its mean over answers sampled from
  the policy estimates KL(π‖π_ref) (the k1 estimator, the report's ``kl_to_ref``).

A key appears when its model is given. The answers go through the compiled graphs in batches of
``batch_size`` rows (the last filled up with copies, dropped), padded to a multiple of ``pad_multiple``
tokens (each width compiles once); lines are written as their batch finishes, to a temporary file renamed
over ``out`` at the end, so ``out`` appears whole or not at all.
"""
from __future__ import annotations

import dataclasses
import json
import os

import mindspore as ms
import numpy as np

from . import runtime
from .config import field, require
from .data.batching import sft_batch
from .data.encoding import encode_demonstrations
from .data.formats import load_demonstrations
from .data.tokenizer import Tokenizer
from .io import atomic_write
from .nn import CausalLM
from .nn.graph import GraphCell
from .runtime import DEVICES, RuntimeConfig
from .trainers.artifacts import load_reward_model


@dataclasses.dataclass
class ScoreConfig:
    """`mindrlhf score`: which answers, and the models that score them."""

    data: str = field("", "JSONL of prompt/response lines (demonstrations format; generate's output too)")
    out: str = field("", "JSONL to write: one line per input line with its scores")
    reward_model: str = field("", "reward-model folder (a `mindrlhf rm` run's model/): rm_score")
    policy: str = field("", "policy folder: logprob_policy")
    reference: str = field("", "reference folder (e.g. the SFT model): logprob_reference, and kl with policy")
    tokenizer: str = field("", "tokenizer folder; empty = the first model folder's")
    chat_template: bool = field(True, "prompts through the tokenizer's chat template (off: plain continuation)")
    batch_size: int = field(16, "answers per compiled call")
    pad_multiple: int = field(32, "rows are padded to a multiple of this many tokens; each width compiles once")
    max_length: int = field(0, "longest prompt+answer in tokens; 0 = the models' context")
    skip_invalid: bool = field(False, "skip malformed or too-long lines (counted) instead of stopping")
    device: str = field("CPU", "device target: CPU, GPU or Ascend")

    def validate(self):
        for key, example in (("data", "answers.jsonl"), ("out", "scores.jsonl")):
            require(bool(getattr(self, key)), key, f"required, e.g. --{key} {example}")
        require(bool(self.reward_model or self.policy or self.reference), "reward_model",
                "give at least one of --reward-model, --policy, --reference")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.pad_multiple >= 1, "pad_multiple", f"must be >= 1, got {self.pad_multiple}")
        require(self.max_length >= 0, "max_length", f"must be >= 0 (0 = the context), got {self.max_length}")
        require(self.device in DEVICES, "device", f"{self.device!r} is not one of {', '.join(DEVICES)}")


class SequenceLogprob(GraphCell):
    """Σ_t loss_mask_t · log π(y_t | y_<t) per row of right-padded sequences.

    construct(input_ids [B, T], attention_mask [B, T], loss_mask [B, T] float) → [B]; the masks are
    token-aligned (:mod:`mindrlhf.data.batching`), so position t scores token t+1.
    """

    def __init__(self, lm: CausalLM):
        super().__init__(auto_prefix=False)
        self.lm = lm

    def construct(self, input_ids, attention_mask, loss_mask):
        logprobs, _ = self.lm.next_token_logprobs(input_ids, attention_mask)
        return (logprobs * loss_mask[:, 1:]).sum(-1)


def score_file(cfg: ScoreConfig) -> dict:
    """Score every line of ``cfg.data`` (module docstring) into ``cfg.out``; returns {answers, skipped, out}."""
    if os.path.isdir(cfg.out):
        raise ValueError(f"score: --out {cfg.out} is a folder; give the JSONL file to write")
    records = load_demonstrations(cfg.data, cfg.skip_invalid)  # a bad line fails before any model is loaded
    runtime.setup(RuntimeConfig(device=cfg.device))
    tokenizer = Tokenizer.load(cfg.tokenizer or cfg.reward_model or cfg.policy or cfg.reference)
    scorers, context = {}, []
    if cfg.reward_model:
        reward_model = load_reward_model(cfg.reward_model)
        scorers["rm_score"] = lambda ids, mask, loss_mask, last: reward_model(ids, mask, last)
        context.append(reward_model.trunk.config.max_position_embeddings)
    for key, folder in (("logprob_policy", cfg.policy), ("logprob_reference", cfg.reference)):
        if folder:
            cell = SequenceLogprob(CausalLM.from_pretrained(folder))
            scorers[key] = lambda ids, mask, loss_mask, last, cell=cell: cell(ids, mask, loss_mask)
            context.append(cell.lm.config.max_position_embeddings)
    max_length = cfg.max_length or min(context)
    encoded = encode_demonstrations(records, tokenizer, max_length, cfg.skip_invalid, cfg.chat_template)
    if encoded.skipped:
        print(f"[score] skipped {encoded.skipped} lines; first: {encoded.skip_reasons[0]}")
    kept = {r.where for r in encoded}
    records = [r for r in records if r.where in kept]

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            for start in range(0, len(encoded), cfg.batch_size):
                chunk = list(encoded[start : start + cfg.batch_size])
                real = len(chunk)
                chunk += [chunk[0]] * (cfg.batch_size - real)  # one row count: only the widths compile
                b = sft_batch(chunk, tokenizer.pad_id, cfg.pad_multiple, max_length)
                last = b["attention_mask"].sum(1) - 1
                args = (ms.Tensor(b["input_ids"]), ms.Tensor(b["attention_mask"]),
                        ms.Tensor(b["loss_mask"], ms.float32), ms.Tensor(last.astype(np.int32)))
                values = {key: fn(*args).asnumpy()[:real] for key, fn in scorers.items()}
                for i, (record, seq) in enumerate(zip(records[start : start + real], chunk)):
                    line = {"prompt": record.prompt, "response": record.response,
                            "num_tokens": int(sum(seq.loss_mask))}
                    line.update({key: float(v[i]) for key, v in values.items()})
                    if cfg.policy and cfg.reference:
                        line["kl"] = line["logprob_policy"] - line["logprob_reference"]
                    fh.write(json.dumps(line, ensure_ascii=False) + "\n")

    atomic_write(cfg.out, write)
    return {"answers": len(encoded), "skipped": encoded.skipped, "out": cfg.out}
