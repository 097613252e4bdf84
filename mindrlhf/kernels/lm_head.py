"""The LM head fused with the log-probability of the taken token and the entropy (CPU), after Liger-Kernel's
fused linear cross-entropy: logits = hidden · weightᵀ, then one kernel folds each row into its log-probability
and entropy, and in the backward one kernel turns the logits into their gradient, which two matmuls carry to
hidden and to the weight. Neither the log-softmax [N, V] nor a one-hot gradient is made.

    log p(y_n) = logits[n, y_n] − logsumexp_v logits[n, v],   entropy_n = −Σ_v p_nv log p_nv

When the logits would pass CHUNK_ELEMENTS they are made a chunk of vocabulary rows at a time, folded into
per-row running statistics (an online logsumexp), and made again chunk by chunk in the backward (one more
matmul per chunk), so one chunk exists at a time. With one chunk the backward reuses the forward's logits:
graph mode merges the two identical matmuls, so the graph keeps them, as the plain composition keeps its
log-softmax. Measured (docs/performance.md): in MindSpore 2.10's CPU graphs chunking did not lower the peak
resident memory below one chunk's up to 2048 rows of GPT-2's head (assembling the weight's gradient from
chunks costs about what the logits do), hence the large default.
"""
from mindspore import nn, ops

from .cpu import aot

# Logits per chunk, [N, chunk]: 128M floats, 512 MB (GPT-2's head on 2670 rows).
CHUNK_ELEMENTS = 1 << 27


def chunk_size(rows: int, vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Vocabulary rows per chunk for ``rows`` hidden rows: about ``elements`` logits, a multiple of 128."""
    return min(vocab, max(128, elements // max(rows, 1) // 128 * 128))


def _rows(weight, start: int, chunk: int):
    """weight[start : start + chunk]; the whole weight when that is all of it (MindSpore 2.10's CPU slice
    copies [0:V] of a [V, H] Parameter at a fraction of memcpy's speed: 1.2 s for GPT-2's head)."""
    if start == 0 and chunk >= weight.shape[0]:
        return weight
    return weight[start:start + chunk]


class _ChunkedHead(nn.Cell):
    """construct(hidden [N, H], weight [V, H], labels [N] int32) -> (logp [N], stats [N, 2]): stats holds each
    row's entropy and logsumexp (the backward's); one tensor, since MindSpore warns of an output of a Cell
    with a bprop that its caller drops."""

    def __init__(self, elements):
        super().__init__()
        self.elements = elements
        self.first = aot("LogitsChunkStats", lambda l, y: l[:-1] + [4], lambda l, y: l)
        self.next = aot("LogitsChunkStats", lambda l, y, st: st, lambda l, y, st: st)
        self.finish = aot("LogitsFinish", lambda st: (st[:-1], st[:-1] + [2]), lambda st: (st, st))
        self.grad = aot("LogitsChunkGrad", lambda l, *rest: l, lambda l, *rest: l)
        self.logits = ops.MatMul(transpose_b=True)
        # The backward's own matmul and slice for several chunks: primitives that differ from the forward's
        # (an attribute, another slice op), so that graph mode does not merge them with the forward's and
        # keep every chunk's logits and weight rows alive until the backward.
        self.logits_again = ops.MatMul(transpose_b=True).add_prim_attr("mindrlhf_recomputed", True)
        self.slice = ops.Slice()
        self.to_hidden = ops.MatMul()
        self.to_weight = ops.MatMul(transpose_a=True)

    def construct(self, hidden, weight, labels):
        vocab = weight.shape[0]
        chunk = chunk_size(hidden.shape[0], vocab, self.elements)
        state = self.first(self.logits(hidden, _rows(weight, 0, chunk)), labels)
        for start in range(chunk, vocab, chunk):
            logits = self.logits(hidden, weight[start:start + chunk])
            state = self.next(logits, labels - start, state)
        return self.finish(state)

    def bprop(self, hidden, weight, labels, out, dout):
        stats, g_lp, g_stats = out[1], dout[0], dout[1]  # g_stats[:, 0]: the entropy's gradient
        vocab, width = weight.shape
        chunk = chunk_size(hidden.shape[0], vocab, self.elements)
        if chunk >= vocab:
            d_logits = self.grad(self.logits(hidden, weight), labels, stats, g_lp, g_stats)
            return self.to_hidden(d_logits, weight), self.to_weight(d_logits, hidden), ops.zeros_like(labels)
        d_hidden = None
        d_weights = ()
        for start in range(0, vocab, chunk):
            rows = self.slice(weight, (start, 0), (min(chunk, vocab - start), width))
            d_logits = self.grad(self.logits_again(hidden, rows), labels - start, stats, g_lp, g_stats)
            part = self.to_hidden(d_logits, rows)
            d_hidden = part if start == 0 else d_hidden + part
            d_weights += (self.to_weight(d_logits, hidden),)
        return d_hidden, ops.concat(d_weights, 0), ops.zeros_like(labels)


class TokenLogprobs(nn.Cell):
    """construct(hidden [N, H], weight [V, H], labels [N] int32) -> (log p(labels) [N], entropy [N]), fp32,
    with p = softmax(hidden · weightᵀ) over the V rows of the weight."""

    def __init__(self, elements: int = CHUNK_ELEMENTS):
        super().__init__()
        self.head = _ChunkedHead(elements)

    def construct(self, hidden, weight, labels):
        logp, stats = self.head(hidden, weight, labels)
        return logp, stats[:, 0]
