"""Compiled generation: prefill + KV-cache decode, the whole decode loop in one graph.

Shapes are static per call: prompts are left-padded to a multiple of `prompt_bucket` and the batch
is padded to a bucket size, so a run compiles a handful of graphs. The key/value cache is a set of
preallocated Parameters [B, KV, P + max_new_tokens, D] per layer (one `KVCache` per shape bucket),
written in place. The model's weights are Parameters read by the graph, so a weight update (PPO
between rollouts) is seen by the next call without recompiling.

Why one graph for the whole loop: with the loop inside the graph, N tokens cost one call instead of
N calls with their launch and host round trips; the loop is a `while` over a step-counter tensor, so
it is compiled once as a loop, not unrolled N times. Why in-place caches: with caches as loop-carried
tensors, a compiled while loop keeps every step's new cache alive (peak memory grows by one cache per
token). Figures: docs/performance.md.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from mindrlhf.data.batching import bucket_length, pad_left
from mindrlhf.config import field, require
from mindrlhf.nn.graph import GraphCell
from mindrlhf.nn.sampling import filter_top_k, filter_top_p, sample_inverse_cdf, token_logprob


@dataclass
class GenerationConfig:
    max_new_tokens: int = field(32, "tokens generated per prompt")
    do_sample: bool = field(False, "sample; false = greedy (argmax), temperature/top_k/top_p ignored")
    temperature: float = field(1.0, "logits / temperature before filtering and sampling")
    top_k: int = field(0, "keep the k most likely tokens; 0 = off")
    top_p: float = field(1.0, "nucleus mass; 1.0 = off")
    eos_token_id: Optional[int] = field(None, "end of a response; null = always generate max_new_tokens")
    pad_token_id: int = field(0, "written after EOS and used to left-pad prompts")
    seed: int = field(0, "same seed -> same samples")

    def validate(self):
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(not self.do_sample or self.temperature > 0, "temperature",
                f"must be > 0 when do_sample, got {self.temperature} (use do_sample=False for greedy)")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        require(self.pad_token_id >= 0, "pad_token_id", f"must be >= 0, got {self.pad_token_id}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")


@dataclass
class GenerationOutput:
    prompt_ids: np.ndarray      # [B, P] int32, left-padded with pad_token_id; P = the bucketed prompt length
    prompt_mask: np.ndarray     # [B, P] int32, 1 = prompt token
    response_ids: np.ndarray    # [B, N] int32, N = max_new_tokens; pad_token_id after EOS
    response_mask: np.ndarray   # [B, N] int32, 1 up to and including EOS
    logprobs: np.ndarray        # [B, N] fp32, log-prob of each chosen token (0 where response_mask is 0)


class KVCache(nn.Cell):
    """Per-layer key and value caches, Parameters [B, KV, S, D] updated in place by prefill/decode_step."""
    _count = 0

    def __init__(self, model_config, batch: int, cache_len: int):
        super().__init__()
        KVCache._count += 1  # unique parameter names across the caches of one process
        shape = (batch, model_config.num_kv_heads, cache_len, model_config.head_dim)

        def zeros(kind, layer):
            return Parameter(Tensor(np.zeros(shape, np.float32)), name=f"kv_cache{KVCache._count}.{kind}.{layer}",
                             requires_grad=False)
        self.keys = ParameterTuple([zeros("k", i) for i in range(model_config.num_layers)])
        self.values = ParameterTuple([zeros("v", i) for i in range(model_config.num_layers)])


class TokenChooser(nn.Cell):
    """Next token from logits [B, V]: construct(logits, u [B], temperature, top_p) -> (token [B] int32, logprob [B]).

    `logprob` is log softmax(logits / temperature) at the chosen token: temperature applied, top-k/top-p
    filtering not (greedy: plain log softmax). PPO recomputes old log-probs in its scoring pass anyway."""

    def __init__(self, config: GenerationConfig, vocab_size: int):
        super().__init__()
        self.do_sample = config.do_sample
        self.top_k = min(config.top_k, vocab_size)
        self.use_top_p = config.top_p < 1.0

    def construct(self, logits, u, temperature, top_p):
        if not self.do_sample:
            token = ops.argmax(logits, -1).astype(ms.int32)
            return token, token_logprob(logits, token)
        scaled = logits / temperature
        filtered = scaled
        if self.top_k > 0:
            filtered = filter_top_k(filtered, self.top_k)
        if self.use_top_p:
            filtered = filter_top_p(filtered, top_p)
        token = sample_inverse_cdf(filtered, u)
        return token, token_logprob(scaled, token)


class DecodeLoop(GraphCell):
    """prefill + max_new_tokens decode steps + sampling in one graph.

    construct(prompt_ids [B, P], prompt_mask [B, P], uniforms [N, B], temperature, top_p)
      -> (tokens [B, N] int32, response_mask [B, N] int32, logprobs [B, N] fp32)"""

    def __init__(self, model, config: GenerationConfig, cache: KVCache):
        super().__init__()
        self.model = model
        self.n = config.max_new_tokens
        self.chooser = TokenChooser(config, model.vocab_size)
        self.cache = cache
        self.eos = -1 if config.eos_token_id is None else config.eos_token_id
        self.pad = config.pad_token_id

    def record(self, step, logits, u, temperature, top_p, done, tokens, masks, logprobs):
        """Choose the step-th token, write it into column `step` (pad after EOS), update done [B] bool."""
        token, logprob = self.chooser(logits, u, temperature, top_p)
        alive = ops.logical_not(done)
        token = ops.select(alive, token, ops.full_like(token, self.pad))
        logprob = ops.select(alive, logprob, ops.zeros_like(logprob))
        column = (ops.arange(0, self.n, 1, dtype=ms.int32) == step).expand_dims(0)  # [1, N]
        shape = tokens.shape
        tokens = ops.select(ops.broadcast_to(column, shape), ops.broadcast_to(token.expand_dims(1), shape), tokens)
        masks = ops.select(ops.broadcast_to(column, shape), ops.broadcast_to(alive.astype(ms.int32).expand_dims(1),
                                                                              shape), masks)
        logprobs = ops.select(ops.broadcast_to(column, shape), ops.broadcast_to(logprob.expand_dims(1), shape),
                              logprobs)
        done = ops.logical_or(done, token == self.eos)
        return token, done, tokens, masks, logprobs

    def construct(self, prompt_ids, prompt_mask, uniforms, temperature, top_p):
        b, p = prompt_ids.shape
        s = p + self.n
        mask = prompt_mask.astype(ms.int32)
        logits = self.model.prefill(prompt_ids, mask, self.cache.keys, self.cache.values)
        key_mask = ops.concat((mask, ops.zeros((b, self.n), ms.int32)), 1)   # [B, S]
        position = mask.sum(1).astype(ms.int32)                               # next position per row
        slots = ops.broadcast_to(ops.arange(0, s, 1, dtype=ms.int32).expand_dims(0), (b, s))
        opened = ops.ones((b, s), ms.int32)
        done = ops.zeros((b,), ms.bool_)
        tokens = ops.fill(ms.int32, (b, self.n), self.pad)  # already right for steps skipped after all rows end
        masks = ops.zeros((b, self.n), ms.int32)
        logprobs = ops.zeros((b, self.n), ms.float32)
        token, done, tokens, masks, logprobs = self.record(0, logits, uniforms[0], temperature, top_p,
                                                           done, tokens, masks, logprobs)
        step = Tensor(1, ms.int32)
        while ops.logical_and(step < self.n, ops.logical_not(done.all())):
            slot = p + step - 1                        # the cache slot of the token just chosen
            # select, not maximum: MindSpore's CPU int32 Maximum is slow here (docs/performance.md)
            key_mask = ops.select(slots == slot, opened, key_mask)
            logits = self.model.decode_step(token, position, key_mask, slot, self.cache.keys, self.cache.values)
            position = position + 1
            u = ops.gather(uniforms, step, 0)
            token, done, tokens, masks, logprobs = self.record(step, logits, u, temperature, top_p,
                                                               done, tokens, masks, logprobs)
            step = step + 1
        return tokens, masks, logprobs




def batch_bucket(b: int) -> int:
    """1, 2, 4, 8, then multiples of 8: few distinct batch shapes, at most 2x (small) or +7 rows of waste."""
    if b <= 8:
        return 1 << (b - 1).bit_length()
    return bucket_length(b, 8)


class Generator:
    """Reusable generation for one model. A compiled loop and its KV cache are kept per (batch bucket,
    prompt bucket, sampling setup); `clear()` frees them."""

    def __init__(self, model, prompt_bucket: int = 16):
        self.model = model
        self.prompt_bucket = prompt_bucket
        self._loops = {}

    def clear(self):
        self._loops.clear()

    def _loop(self, config: GenerationConfig, batch: int, prompt_len: int):
        key = (batch, prompt_len, config.max_new_tokens, config.do_sample, config.top_k if config.do_sample else 0,
               config.do_sample and config.top_p < 1.0, config.eos_token_id, config.pad_token_id)
        if key not in self._loops:
            cache = KVCache(self.model.config, batch, prompt_len + config.max_new_tokens)
            self._loops[key] = DecodeLoop(self.model, config, cache)
        return self._loops[key]

    def generate(self, prompts, config: GenerationConfig) -> GenerationOutput:
        """prompts: a list of token-id lists, or (ids [B, P], mask [B, P]) left-padded arrays."""
        config.validate()
        prompts = _as_lists(prompts)
        b = len(prompts)
        longest = max(len(x) for x in prompts)
        limit = self.model.config.max_position_embeddings
        if longest + config.max_new_tokens > limit:
            raise ValueError(f"generate: longest prompt ({longest}) + max_new_tokens ({config.max_new_tokens}) "
                             f"exceeds the model's max_position_embeddings ({limit})")
        fillers = [[config.pad_token_id]] * (batch_bucket(b) - b)  # a one-token prompt of padding, dropped below
        ids, mask = pad_left(prompts + fillers, config.pad_token_id, self.prompt_bucket)
        bb, p = ids.shape
        rng = np.random.default_rng(config.seed)
        # cap below 1 so u * cdf_last < cdf_last strictly in fp32
        uniforms = np.minimum(rng.random((config.max_new_tokens, bb)), 0.99999).astype(np.float32)
        temperature = Tensor(config.temperature if config.do_sample else 1.0, ms.float32)
        top_p = Tensor(config.top_p, ms.float32)
        loop = self._loop(config, bb, p)
        tokens, masks, logprobs = (x.asnumpy() for x in loop(Tensor(ids), Tensor(mask), Tensor(uniforms),
                                                             temperature, top_p))
        return GenerationOutput(prompt_ids=ids[:b], prompt_mask=mask[:b], response_ids=tokens[:b],
                                response_mask=masks[:b], logprobs=logprobs[:b])


def generate(model, prompts, config: GenerationConfig) -> GenerationOutput:
    """One-off generation; keep a Generator instead to reuse compiled graphs across calls."""
    return Generator(model).generate(prompts, config)


def _as_lists(prompts) -> list:
    if isinstance(prompts, tuple) and len(prompts) == 2 and isinstance(prompts[0], np.ndarray):
        ids, mask = prompts
        if ids.shape != mask.shape or ids.ndim != 2:
            raise ValueError(f"generate: ids {ids.shape} and mask {mask.shape} must both be [B, P]")
        prompts = [row[m.astype(bool)].tolist() for row, m in zip(ids, mask)]
    if not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("generate: prompts must be a non-empty list of token-id lists or an (ids, mask) pair")
    for i, x in enumerate(prompts):
        if len(x) == 0:
            raise ValueError(f"generate: prompt {i} is empty; every prompt needs at least one token")
    return [list(map(int, x)) for x in prompts]
