"""`mindrlhf generate`: answer every prompt of a prompts JSONL file with a model, one output line per prompt.

Input is the project's prompt format (``{"prompt": "...", ...}``; a bad line is a DataError naming
file:line). Each output line, in input order::

    {"prompt": "...", "response": "...", "num_tokens": 17, "finished": true, "sum_logprob": -12.3,
     "meta": {...}}          # "meta": the prompt line's other keys, only when it has some

- ``num_tokens``: response tokens generated, the closing EOS included when there is one;
- ``finished``: the response ended with EOS (false: cut at ``max_new_tokens``);
- ``sum_logprob``: Σ_t log softmax(logits_t / T)[y_t] over those tokens, T = the temperature (1 for
  greedy); top-k/top-p filtering is not applied to it (as in :class:`mindrlhf.nn.generate.TokenChooser`).

With ``num_samples`` K > 1 each prompt gets K lines in a row, numbered by ``"sample": 0 .. K−1``. The K
copies of a prompt are rows of the same generation call, and every row of a call draws its own random
numbers (one per row and step, :mod:`mindrlhf.nn.sampling`): the K answers are independent samples of the
policy (identical under greedy decoding).

A prompt too long for the model's positions after ``max_new_tokens`` is skipped (named on stdout), so the
others still get their answers; a model with non-finite weights is refused.
Prompts go through the tokenizer's chat template, exactly as SFT trained and evaluation feeds them
(:func:`mindrlhf.data.encoding.encode_prompts`); ``chat_template=False`` feeds plain text to a base model.
Generation is the compiled engine (:class:`mindrlhf.nn.generate.Generator`) in batches of ``batch_size``
prompts; batch ``b`` samples with seed ``seed + b``, so a run is reproducible from its seed and batch
size. The output file appears whole or not at all (written to a temporary file, then renamed).
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from . import runtime
from .config import field, require
from .data.encoding import EncodedPrompt, encode_prompts
from .data.formats import load_prompts
from .data.tokenizer import Tokenizer
from .io import write_jsonl
from .nn.generate import GenerationConfig, GenerationOutput, Generator, batch_bucket
from .roles import is_pretrained, load_lm
from .runtime import DEVICES, RuntimeConfig


@dataclasses.dataclass
class GenerateConfig:
    """`mindrlhf generate`: which model answers which prompts, and how it decodes."""

    model: str = field("", "model folder with its tokenizer, a .gguf file/name, or a preset (random weights; "
                           "needs tokenizer)")
    tokenizer: str = field("", "tokenizer folder/file; empty = the model's own")
    prompts: str = field("", 'prompts JSONL ({"prompt": ...} per line)')
    out: str = field("", "JSONL to write: prompt, response, num_tokens, finished, sum_logprob")
    max_new_tokens: int = field(64, "response length limit")
    temperature: float = field(0.0, "0 = greedy; > 0 = sampling")
    top_k: int = field(0, "sample from the k most likely tokens; 0 = off")
    top_p: float = field(1.0, "nucleus mass; 1 = off")
    seed: int = field(0, "same seed and batch size → same samples")
    num_samples: int = field(1, "answers per prompt (K lines in a row, each an independent sample)")
    batch_size: int = field(16, "prompts per generation call (each brings num_samples rows)")
    chat_template: bool = field(True, "feed each prompt through the tokenizer's chat template (off: the text as it "
                                      "is, for base models)")
    device: str = field("CPU", "device target: CPU, GPU or Ascend")
    progress: bool = field(True, "show a progress bar")

    def validate(self):
        for key, example in (("model", "runs/ppo/model"), ("prompts", "prompts.jsonl"), ("out", "answers.jsonl")):
            require(bool(getattr(self, key)), key, f"required, e.g. --{key} {example}")
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.temperature >= 0, "temperature", f"must be >= 0 (0 = greedy), got {self.temperature}")
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.num_samples >= 1, "num_samples", f"must be >= 1, got {self.num_samples}")
        require(self.device in DEVICES, "device", f"{self.device!r} is not one of {', '.join(DEVICES)}")


def generation_config(tokenizer, max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
                      top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> GenerationConfig:
    """A validated GenerationConfig that stops at ``tokenizer``'s EOS and pads with its pad id.
    ``do_sample=False``: greedy (temperature, top_k, top_p unused)."""
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                              top_k=top_k, top_p=top_p, eos_token_id=tokenizer.eos_id,
                              pad_token_id=tokenizer.pad_id, seed=seed)
    config.validate()
    return config


def generate_batches(generator: Generator, prompts: Sequence[Sequence[int]], config: GenerationConfig,
                     batch_size: int, samples_per_prompt: int = 1, seed_stride: int = 1, fill_last: bool = False,
                     progress: bool = False) -> Iterator[GenerationOutput]:
    """Generate for token-id ``prompts`` ``batch_size`` prompts a call; yield each call's output, in order.

    A call's rows are its prompts, each repeated ``samples_per_prompt`` times in a row (prompt p's samples
    are rows p·K .. p·K+K−1 of its output). Call b samples with seed ``config.seed + b * seed_stride``, so
    a run is reproducible from its seed, batch size and stride. ``fill_last``: a short last call is filled
    up with copies of its first row (dropped from the output) when that keeps the others' batch bucket: one
    compiled graph fewer, for a few wasted rows (the filled call draws for more rows, so its samples differ
    from an unfilled call's). ``progress``: a tqdm bar over the calls with the tokens generated per second.
    """
    if batch_size < 1:
        raise ValueError(f"generate: batch_size={batch_size}; expected >= 1")
    starts = range(0, len(prompts), batch_size)
    full = batch_size * samples_per_prompt
    bar = None
    if progress:
        bar = tqdm(total=len(starts), desc="generate", unit="batch", dynamic_ncols=True, mininterval=1.0)
    tokens, began = 0, time.perf_counter()
    try:
        for b, start in enumerate(starts):
            rows = [ids for ids in prompts[start : start + batch_size] for _ in range(samples_per_prompt)]
            real = len(rows)
            if fill_last and len(starts) > 1 and batch_bucket(real) != batch_bucket(full):
                rows += [rows[0]] * (full - real)
            gen = generator.generate(rows, dataclasses.replace(config, seed=config.seed + b * seed_stride))
            if len(rows) > real:
                gen = GenerationOutput(*(getattr(gen, f.name)[:real] for f in dataclasses.fields(gen)))
            if bar is not None:
                tokens += int(gen.response_mask.sum())
                bar.update(1)
                bar.set_postfix({"tokens/s": f"{tokens / (time.perf_counter() - began):.1f}"})
            yield gen
    finally:
        if bar is not None:
            bar.close()


def response_texts(tokenizer, gen: GenerationOutput) -> list:
    """Each row's response decoded: the tokens up to and including EOS, special tokens dropped by decode."""
    return [tokenizer.decode(ids[mask > 0]) for ids, mask in zip(gen.response_ids, gen.response_mask)]


def load_generation_model(model: str, tokenizer: str = ""):
    """(CausalLM, Tokenizer) from a model folder or .gguf file/name holding its tokenizer, or from a
    model preset (random weights: for smoke tests and timing) with ``tokenizer`` naming one."""
    if not tokenizer and not is_pretrained(model):
        raise FileNotFoundError(f"generate: model {model!r} is neither a model folder nor a .gguf file/name, so it "
                                "brings no tokenizer; pass --tokenizer DIR (a model preset gets random weights)")
    tok = Tokenizer.load(tokenizer or model)
    return load_lm(model, tok.vocab_size), tok


def check_finite_weights(lm, model: str) -> None:
    """Refuse a model with NaN or infinite weights (what a diverged run leaves): its answers would be empty."""
    for param in lm.get_parameters():
        if not np.isfinite(param.asnumpy()).all():
            raise ValueError(f"{model}: parameter {param.name} holds NaN or infinite values; the run that wrote "
                             "this model diverged, so it cannot generate")


def _record(prompt: EncodedPrompt, ids: np.ndarray, mask: np.ndarray, logprobs: np.ndarray, tokenizer) -> dict:
    """ids, mask, logprobs: one row [N] of a GenerationOutput."""
    kept = ids[mask > 0]
    record = {"prompt": prompt.text, "response": tokenizer.decode(kept), "num_tokens": int(kept.size),
              "finished": bool(kept.size and kept[-1] == tokenizer.eos_id),
              "sum_logprob": float(logprobs[mask > 0].sum())}
    if prompt.meta:
        record["meta"] = prompt.meta
    return record


def generate_file(model: str, prompts_file: str, out: str, tokenizer: str = "", max_new_tokens: int = 64,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
                  chat_template: bool = True, progress: bool = True, num_samples: int = 1,
                  runtime_cfg: Optional[RuntimeConfig] = None) -> dict:
    """Answer every prompt of ``prompts_file`` ``num_samples`` times with ``model`` (see
    :func:`load_generation_model`) and write the records to ``out`` atomically. Returns a summary: prompts,
    answers, tokens, finished, seconds, out."""
    if temperature < 0:
        raise ValueError(f"generate: temperature={temperature}; expected 0 (greedy) or a positive temperature")
    if os.path.isdir(out):
        raise ValueError(f"generate: --out {out} is a folder; give the JSONL file to write")
    records = load_prompts(prompts_file)  # a bad line fails here, before a large model is loaded
    runtime.setup(runtime_cfg or RuntimeConfig(seed=seed))
    lm, tok = load_generation_model(model, tokenizer)
    config = generation_config(tok, max_new_tokens, do_sample=temperature > 0,
                               temperature=temperature if temperature > 0 else 1.0, top_k=top_k, top_p=top_p,
                               seed=seed)
    room = lm.config.max_position_embeddings - max_new_tokens
    if room < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                         f"{lm.config.max_position_embeddings} positions; lower --max-new-tokens")
    check_finite_weights(lm, model)
    prompts = encode_prompts(records, tok, room, skip_invalid=True, chat_template=chat_template)
    if prompts.skipped:  # one over-long prompt must not cost the others their answers
        print(f"[generate] skipped {prompts.skipped} prompts longer than the {room} tokens the model's "
              f"{lm.config.max_position_embeddings} positions leave after {max_new_tokens} new tokens; "
              f"first: {prompts.skip_reasons[0].split(': prompt is')[0]}")
    began = time.perf_counter()
    answers = []
    k = num_samples
    batches = generate_batches(Generator(lm), [p.input_ids for p in prompts], config, batch_size,
                               samples_per_prompt=k, fill_last=True, progress=progress)
    for b, gen in enumerate(batches):
        for i, prompt in enumerate(prompts[b * batch_size : (b + 1) * batch_size]):
            for j in range(k):  # prompt i's samples are rows i·K .. i·K+K−1
                row = i * k + j
                record = _record(prompt, gen.response_ids[row], gen.response_mask[row], gen.logprobs[row], tok)
                answers.append({**record, "sample": j} if k > 1 else record)
    seconds = time.perf_counter() - began
    write_jsonl(out, answers)
    return {"prompts": len(prompts), "answers": len(answers), "tokens": sum(r["num_tokens"] for r in answers),
            "finished": sum(r["finished"] for r in answers), "seconds": seconds, "out": out}
