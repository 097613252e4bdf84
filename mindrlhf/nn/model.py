"""CausalLM: one decoder-only language model Cell for the GPT-2 and Llama/Qwen2 families.

Read top to bottom: embeddings -> N pre-norm decoder layers -> final norm -> LM head.
Padding is on the left; positions come from the attention mask, so a left-padded row computes
exactly what the same tokens would compute alone:
    position_t = max(cumsum(mask)_t - 1, 0)
and attention is allowed from query t to key s iff s <= t and mask_s == 1.
"""
import math
import os

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindrlhf import kernels
from mindrlhf.algos import entropy_from_logits, logprobs_from_logits
from mindrlhf.io import read_safetensors, write_safetensors
from mindrlhf.io.gguf import is_gguf
from mindrlhf.nn.config import ModelConfig
from mindrlhf.nn.gguf import load_gguf
from mindrlhf.nn.hf import load_hf_folder, save_hf_folder
from mindrlhf.nn.layers import MASK_VALUE, DecoderLayer, Embedding, LayerNorm, Linear, RMSNorm, rope_tables
from mindrlhf.nn.lora import merged_weights


def positions_from_mask(mask):
    """mask [B, T] (1 real, 0 pad) -> positions [B, T] int32: cumsum(mask) - 1, clamped at 0."""
    return ops.maximum(ops.cumsum(mask, 1) - 1, 0)


class CausalLM(nn.Cell):
    """Decoder LM. construct(input_ids [B, T], attention_mask [B, T] or None) -> logits [B, T, vocab] fp32."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gpt2 = config.arch == "gpt2"
        self.tied = config.tie_word_embeddings
        self.vocab_size = config.vocab_size
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        if self.gpt2:
            self.embed_positions = Embedding(config.max_position_embeddings, config.hidden_size)
            self.rope_cos, self.rope_sin = Tensor(np.zeros(1, np.float32)), Tensor(np.zeros(1, np.float32))
        else:
            self.rope_cos, self.rope_sin = rope_tables(config.max_position_embeddings, config.head_dim,
                                                       config.rope_theta)
            # per head of the [q | k] block that RoPE turns: q's rows carry the attention's 1/sqrt(D)
            head_scale = [1.0 / math.sqrt(config.head_dim)] * config.num_heads + [1.0] * config.num_kv_heads
            self.rope_head_scale = Tensor(np.array(head_scale, np.float32).reshape(-1, 1))  # [H + KV, 1]
        self.layers = nn.CellList([DecoderLayer(config) for _ in range(config.num_layers)])
        self.layers_recomputed = False  # see recompute_layers
        norm = LayerNorm if self.gpt2 else RMSNorm
        self.final_norm = norm(config.hidden_size, config.norm_eps)
        if not self.tied:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, False, config.compute_dtype)
        self.head_matmul = ops.MatMul(transpose_b=True)
        self.head_cast = config.compute_dtype != "float32"
        self.head_dtype = self.layers[0].attn.dtype
        if not self.head_cast:
            self.head_logprobs = kernels.token_logprobs()

    # ---- full-sequence forward -------------------------------------------------------------
    def construct(self, input_ids, attention_mask=None):
        return self.logits_from_hidden(self.hidden_states(input_ids, attention_mask))

    def hidden_states(self, input_ids, attention_mask=None):
        """Final-normed hidden states [B, T, hidden]; heads (value, reward) sit on these."""
        x, _, _ = self._run_layers(input_ids, attention_mask)
        return self.final_norm(x)

    def logits_from_hidden(self, hidden):
        """hidden [..., hidden] -> logits [..., vocab] fp32."""
        if not self.tied:
            return self.lm_head(hidden)
        lead = hidden.shape[:-1]
        flat = hidden.reshape(-1, hidden.shape[-1])
        weight = self.embed_tokens.weight
        if self.head_cast:
            logits = self.head_matmul(flat.astype(self.head_dtype), weight.astype(self.head_dtype))
            logits = logits.astype(ms.float32)
        else:
            logits = self.head_matmul(flat, weight)
        return logits.reshape(lead + (self.vocab_size,))

    def token_logprobs(self, hidden, labels):
        """hidden [B, T, hidden], labels [B, T] -> (log p(labels) [B, T], entropy [B, T]) of softmax(LM head).

        In fp32 the head, the log-softmax at the label and the entropy are one kernel (`kernels.token_logprobs`;
        on CPU it goes over the vocabulary in chunks and never holds the [B, T, vocab] logits); with a
        bf16/fp16 head, the logits and then their log-softmax."""
        if self.head_cast:
            logits = self.logits_from_hidden(hidden)
            return logprobs_from_logits(logits, labels), entropy_from_logits(logits)
        b, t = labels.shape
        if self.tied:
            weight = self.embed_tokens.weight
        else:
            weight = self.lm_head.weight
        logprobs, entropy = self.head_logprobs(hidden.reshape(b * t, hidden.shape[-1]), weight,
                                               labels.reshape(b * t).astype(ms.int32))
        return logprobs.reshape(b, t), entropy.reshape(b, t)

    def next_token_logprobs(self, input_ids, attention_mask=None):
        """(log π(token t+1 | tokens ≤ t), entropy at t) for t < T−1, [B, T-1] each: every position of a
        right-padded sequence scored (SFT's loss, DPO's and `mindrlhf score`'s sums), through `token_logprobs`."""
        hidden = self.hidden_states(input_ids, attention_mask)[:, :-1, :]
        return self.token_logprobs(hidden, input_ids[:, 1:])

    def _embed(self, input_ids, positions):
        x = self.embed_tokens(input_ids)
        if self.gpt2:
            x = x + self.embed_positions(positions)
            return x, self.rope_cos, self.rope_sin
        # [B, T, H + KV, D], built once per pass for all layers: full size, because MindSpore's CPU
        # multiplies are slow when they broadcast (docs/performance.md)
        cos = ops.gather(self.rope_cos, positions, 0).expand_dims(2) * self.rope_head_scale
        sin = ops.gather(self.rope_sin, positions, 0).expand_dims(2) * self.rope_head_scale
        return x, cos, sin

    def _full_bias(self, bias):
        """[B, T, S] additive attention bias -> [B, H, T, S], expanded once per pass (see Attention.attend)."""
        b, t, s = bias.shape
        return ops.broadcast_to(bias.expand_dims(1), (b, self.config.num_heads, t, s))

    def _run_layers(self, input_ids, attention_mask):
        """Embeddings and all layers; returns (x [B, T, hidden] before the final norm, keys, values)
        with keys/values tuples of per-layer [B, KV, T, D]."""
        if attention_mask is None:
            attention_mask = ops.ones_like(input_ids)
        mask = attention_mask.astype(ms.int32)
        x, cos, sin = self._embed(input_ids, positions_from_mask(mask))
        t = input_ids.shape[1]
        causal = ops.tril(ops.ones((t, t), ms.int32))                           # [T, T]
        allowed = causal.expand_dims(0) * mask.expand_dims(1)                   # [B, T(q), T(k)]
        bias = self._full_bias((1 - allowed).astype(ms.float32) * MASK_VALUE)   # [B, H, T, T]
        keys, values = (), ()
        for layer in self.layers:
            x, k, v = layer(x, cos, sin, bias)
            keys += (k,)
            values += (v,)
        return x, keys, values

    # ---- cache-aware forward (used by mindrlhf.nn.generate) -----------------------------------
    def prefill(self, input_ids, attention_mask, k_caches, v_caches):
        """Run the prompt [B, P], store its keys/values in slots [0, P) of the cache Parameters
        (tuples of per-layer [B, KV, S, D], see `KVCache`; later slots are zeroed) and return the
        last position's logits [B, vocab]."""
        x, keys, values = self._run_layers(input_ids, attention_mask)
        b, p = input_ids.shape
        for i in range(len(keys)):
            cache = k_caches[i]
            zeros = ops.zeros((b, cache.shape[1], cache.shape[2] - p, cache.shape[3]), ms.float32)
            ops.assign(k_caches[i], ops.concat((keys[i], zeros), 2))
            ops.assign(v_caches[i], ops.concat((values[i], zeros), 2))
        # [B, 1, V] -> [B, V] by reshape: picking index 0 of a middle axis (`[:, 0, :]`) runs MindSpore's
        # slow strided-slice path on CPU (docs/performance.md)
        return self.logits_from_hidden(self.final_norm(x[:, -1:, :])).reshape(b, self.vocab_size)

    def decode_step(self, token, position, key_mask, write_pos, k_caches, v_caches):
        """One token per row. token, position [B] int32; key_mask [B, S] (1 = slot may be attended,
        including the slot being written); write_pos: scalar int32 slot the token's key/value go to, one
        that prefill zeroed and no step has written yet. Updates the caches in place and returns the
        next-token logits [B, vocab]."""
        b, s = key_mask.shape
        slot = write_pos.reshape(1)
        x, cos, sin = self._embed(token.expand_dims(1), position.expand_dims(1))
        bias = self._full_bias(((1 - key_mask.astype(ms.float32)) * MASK_VALUE).reshape(b, 1, s))
        i = 0
        for layer in self.layers:
            x = layer.decode(x, cos, sin, bias, k_caches[i], v_caches[i], slot)
            i += 1
        return self.logits_from_hidden(self.final_norm(x)).reshape(b, self.vocab_size)  # see prefill

    # ---- memory -------------------------------------------------------------------------------
    def recompute_layers(self):
        """Mark every decoder layer for recompute (MindSpore's ``Cell.recompute``): a graph that differentiates
        this model keeps each layer's output, not its intermediate activations, and runs the layer's forward
        again in the backward. Call it once the layers are final (after LoRA), since cells attached later are
        not marked; a second call does nothing."""
        if not self.layers_recomputed:
            for layer in self.layers:
                layer.recompute()
            self.layers_recomputed = True

    # ---- weights ----------------------------------------------------------------------------
    def named_weights(self):
        """[(our name, Parameter)] relative to this model, whatever Cell it is nested in."""
        return list(self.parameters_and_names())

    def num_parameters(self) -> int:
        return int(sum(np.prod(p.shape) for _, p in self.named_weights()))

    def save_weights(self, path):
        """Our parameter names -> a safetensors file, written atomically (temp file + os.replace)."""
        write_safetensors(path, {name: p.asnumpy() for name, p in self.named_weights()}, metadata={"format": "mindrlhf"})

    def load_weights(self, path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_weights: no weights file at {path}")
        self.assign_weights(read_safetensors(path), source=str(path))

    def assign_weights(self, tensors: dict, source="<dict>"):
        """Copy numpy arrays named like `named_weights()` into the parameters; names and shapes must match."""
        params = dict(self.named_weights())
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        if missing or unexpected:
            raise ValueError(f"{source}: weights do not match the model; missing {missing[:8]}"
                             f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}")
        for name, p in params.items():
            arr = tensors[name]
            if tuple(arr.shape) != tuple(p.shape):
                raise ValueError(f"{source}: {name} has shape {tuple(arr.shape)}, the model expects {tuple(p.shape)}")
            p.set_data(Tensor(np.ascontiguousarray(arr, dtype=np.float32)))

    @classmethod
    def from_pretrained(cls, path, compute_dtype=None) -> "CausalLM":
        """Load a HuggingFace folder (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM), a llama.cpp
        `.gguf` file (dequantized to fp32), or a GGUF preset name such as `smollm2-135m-instruct`."""
        config, tensors = load_gguf(path) if is_gguf(path) else load_hf_folder(path)
        if compute_dtype is not None:
            config.compute_dtype = compute_dtype
            config.validate()
        model = cls(config)
        model.assign_weights(tensors, source=str(path))
        return model

    def save_pretrained(self, directory):
        """Write config.json + model.safetensors that transformers' AutoModelForCausalLM loads. LoRA
        adapters, if any, are written folded into their base weights (the model itself is unchanged);
        ``nn.lora.save_adapters`` writes the adapters alone."""
        save_hf_folder(self.config, merged_weights(self), directory)
