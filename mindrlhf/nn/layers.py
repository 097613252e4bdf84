"""The building blocks of the decoder, in the order data flows through them.

Parameters are fp32; matmuls run in the config's compute dtype; norms, softmax and the
residual stream stay fp32. Weight layouts follow torch's `nn.Linear` ([out, in]) so HuggingFace
tensors copy across without reshuffling.
"""
import math

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from mindrlhf import kernels

DTYPES = {"float32": ms.float32, "bfloat16": ms.bfloat16, "float16": ms.float16}
# Finite, not -inf: a query row whose keys are all padding (a left pad) must give finite garbage, not NaN.
MASK_VALUE = -1e9
INIT_STD = 0.02  # GPT-2 / Llama initializer range


def _param(shape, init):
    return Parameter(initializer(init, shape, ms.float32))


class Linear(nn.Cell):
    """y = x W^T + b, W [out, in]; the product is computed in `compute_dtype`, returned in fp32."""

    def __init__(self, in_features, out_features, bias, compute_dtype):
        super().__init__()
        self.out_features = out_features
        self.weight = _param((out_features, in_features), Normal(INIT_STD))
        self.bias = _param((out_features,), "zeros") if bias else None
        self.dtype = DTYPES[compute_dtype]
        self.cast = compute_dtype != "float32"
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, x):
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if self.cast:
            y = self.matmul(x2.astype(self.dtype), self.weight.astype(self.dtype)).astype(ms.float32)
        else:
            y = self.matmul(x2, self.weight)
        if self.bias is not None:
            # BiasAdd, not a broadcasting `y + bias`: MindSpore's CPU broadcast kernels keep index tables of
            # 16 bytes per output element for the graph's life (docs/performance.md)
            y = ops.bias_add(y, self.bias)
        return y.reshape(lead + (self.out_features,))


class Embedding(nn.Cell):
    """Row lookup: weight [num, dim]; ids [...] -> [..., dim]."""

    def __init__(self, num, dim):
        super().__init__()
        self.weight = _param((num, dim), Normal(INIT_STD))

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


class RMSNorm(nn.Cell):
    """y = x / sqrt(mean(x^2) + eps) * g   (Zhang & Sennrich, 2019), computed by `kernels.rms_norm`."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = _param((dim,), "ones")
        self.norm = kernels.rms_norm(dim, eps)

    def construct(self, x):
        return self.norm(x, self.weight)


class LayerNorm(nn.Cell):
    """y = (x - mean) / sqrt(var + eps) * g + b; the fused CPU kernel behind `nn.LayerNorm`."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = _param((dim,), "ones")
        self.bias = _param((dim,), "zeros")
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        y, _, _ = self.layer_norm(x, self.weight, self.bias)
        return y


def rope_tables(max_positions, head_dim, theta):
    """cos/sin tables [max_positions, head_dim] for RoPE (Su et al., 2021), half-split layout:
    angle(p, i) = p * theta^(-2i/d) for i < d/2, repeated for the second half. The sin table carries
    rotate-half's sign, [-sin, sin], so that `kernels.rope` needs no negation."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq)
    sin = np.sin(angles)
    cos = np.cos(np.concatenate([angles, angles], axis=-1))
    return Tensor(cos.astype(np.float32)), Tensor(np.concatenate([-sin, sin], axis=-1).astype(np.float32))


class Attention(nn.Cell):
    """Causal self-attention with grouped-query heads: query head h reads key/value head h // groups.

    Llama family: RoPE turns q and k in one pass over their [B, T, H + KV, D] block, and the tables it
    gets (`CausalLM._embed`) already hold q's 1/sqrt(D) on the query heads' rows, so the scores need no
    scaling multiply. GPT-2 scales the scores."""

    def __init__(self, cfg):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.groups = cfg.num_heads // cfg.num_kv_heads
        self.use_rope = cfg.arch == "llama"
        if self.use_rope:
            self.rope = kernels.rope()
        qkv_bias = cfg.arch == "gpt2" or cfg.qkv_bias
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_size, self.kv_size = q_size, kv_size
        # q, k and v in one matmul: rows [q | k | v] of the fused weight
        self.qkv_proj = Linear(cfg.hidden_size, q_size + 2 * kv_size, qkv_bias, cfg.compute_dtype)
        self.o_proj = Linear(q_size, cfg.hidden_size, cfg.arch == "gpt2", cfg.compute_dtype)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.dtype = DTYPES[cfg.compute_dtype]
        self.cast = cfg.compute_dtype != "float32"
        self.bmm_qk = ops.BatchMatMul(transpose_b=True)
        self.bmm_pv = ops.BatchMatMul()
        self.heads_first = kernels.swap_axes12()  # [B, T, H, D] <-> [B, H, T, D]

    def project(self, x, cos, sin):
        """x [B, T, hidden] -> q [B, H, T, D], k and v [B, KV, T, D]. Llama: cos/sin [B, T, H + KV, D],
        q comes out rotated and scaled by 1/sqrt(D), k rotated."""
        b, t = x.shape[0], x.shape[1]
        h, kv, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(x)
        if self.use_rope:
            qk = self.rope(qkv[:, :, :self.q_size + self.kv_size].reshape(b, t, h + kv, d), cos, sin)
            q = self.heads_first(qk[:, :, :h])
            k = self.heads_first(qk[:, :, h:])
        else:
            q = self.heads_first(qkv[:, :, :self.q_size].reshape(b, t, h, d))
            k = self.heads_first(qkv[:, :, self.q_size:self.q_size + self.kv_size].reshape(b, t, kv, d))
        v = self.heads_first(qkv[:, :, self.q_size + self.kv_size:].reshape(b, t, kv, d))
        return q, k, v

    def attend(self, q, k, v, bias):
        """softmax(q k^T / sqrt(D) + bias) v, then the output projection; bias [B, H, T, S] additive, at
        full size: MindSpore's CPU add is faster without broadcasting (the model expands it once per pass).

        Grouped-query heads are not given copies of their key/value head: the G query heads that share
        one are laid side by side as G·T query rows against it ([B, KV, G·T, D] x [B, KV, S, D]), a
        reshape; repeating K and V per query head would copy the whole cache G-fold at every decode step
        (docs/performance.md)."""
        b, t, s = q.shape[0], q.shape[2], k.shape[2]
        kv, g = self.num_kv_heads, self.groups
        q = q.reshape(b, kv, g * t, self.head_dim)
        if self.cast:
            q, k, v = q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype)
        scores = self.bmm_qk(q, k).astype(ms.float32)                      # [B, KV, G*T, S]: head h = j*G + i
        if not self.use_rope:
            scores = scores * self.scale
        probs = ops.softmax(scores.reshape(b, self.num_heads, t, s) + bias, -1).reshape(b, kv, g * t, s)
        out = self.bmm_pv(probs.astype(v.dtype), v).astype(ms.float32)     # [B, KV, G*T, D]
        out = self.heads_first(out.reshape(b, self.num_heads, t, self.head_dim))  # back to [B, T, H, D]
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))


class MLP(nn.Cell):
    """gpt2: down(gelu_tanh(up(x)));  llama: down(silu(gate(x)) * up(x)), gate and up fused as [gate | up]."""

    def __init__(self, cfg):
        super().__init__()
        self.gated = cfg.arch == "llama"
        width = cfg.intermediate_size
        bias = cfg.arch == "gpt2"
        self.up_proj = Linear(cfg.hidden_size, 2 * width if self.gated else width, bias, cfg.compute_dtype)
        self.down_proj = Linear(width, cfg.hidden_size, bias, cfg.compute_dtype)
        self.activation = kernels.swiglu() if self.gated else kernels.gelu_tanh()

    def construct(self, x):
        return self.down_proj(self.activation(self.up_proj(x)))


class DecoderLayer(nn.Cell):
    """Pre-norm block: x += attn(norm(x)); x += mlp(norm(x))."""

    def __init__(self, cfg):
        super().__init__()
        norm = LayerNorm if cfg.arch == "gpt2" else RMSNorm
        self.attn_norm = norm(cfg.hidden_size, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = norm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def construct(self, x, cos, sin, bias):
        """Full-sequence pass; returns the new hidden state and this layer's keys/values [B, KV, T, D]."""
        q, k, v = self.attn.project(self.attn_norm(x), cos, sin)
        x = x + self.attn.attend(q, k, v, bias)
        x = x + self.mlp(self.mlp_norm(x))
        return x, k, v

    def decode(self, x, cos, sin, bias, k_cache, v_cache, slot):
        """One new token per row: add its key/value into slot `slot` ([1] int32) of the cache Parameters
        [B, KV, S, D], in place, then attend over the whole static-size cache (bias hides empty and padded
        slots). In place, because a functional update makes a new cache per step and a compiled while
        loop keeps every one of them alive (memory grows by a cache per token).

        An add along the slot axis writes the key exactly because prefill zeroed every slot after the
        prompt and each slot is written once; on MindSpore's CPU it is far cheaper than scatter_nd_update,
        which copies the whole cache (docs/performance.md)."""
        q, k, v = self.attn.project(self.attn_norm(x), cos, sin)
        k_all = ops.index_add(k_cache, slot, k, 2)
        v_all = ops.index_add(v_cache, slot, v, 2)
        x = x + self.attn.attend(q, k_all, v_all, bias)
        x = x + self.mlp(self.mlp_norm(x))
        return x
