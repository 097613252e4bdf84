"""float64 numpy versions of the kernels' functions, and their gradients by central differences, shared by the
tests of this package: an account of each function that shares no code or derivation with the kernels."""
import numpy as np

GELU_C = np.sqrt(2.0 / np.pi)


def rms_norm(x, weight, eps):
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * weight


def swiglu(h):
    a, b = np.split(h, 2, axis=-1)
    return a / (1.0 + np.exp(-a)) * b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x ** 3)))


def rope(x, cos, sin):
    """Rotate-half RoPE with the plain tables: x cos + rotate_half(x) sin, rotate_half([a, b]) = [-b, a]."""
    a, b = np.split(x, 2, axis=-1)
    return x * cos + np.concatenate([-b, a], -1) * sin


def swap_axes12(x):
    return np.swapaxes(x, 1, 2)


def token_logprobs(hidden, weight, labels):
    """(log p(labels), entropy) of softmax(hidden · weightᵀ), float64."""
    logits = hidden @ weight.T
    shifted = logits - logits.max(-1, keepdims=True)
    logp_all = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    logp = np.take_along_axis(logp_all, labels[:, None].astype(np.int64), -1)[:, 0]
    return logp, -(np.exp(logp_all) * logp_all).sum(-1)


def numeric_grads(fn, inputs, cotangents, wrt, step=1e-6):
    """d/d inputs[i] (i in ``wrt``) of L = Σ_k Σ fn(*inputs)[k] · cotangents[k], by central differences in float64."""
    def loss(args):
        outs = fn(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return sum(float((o * c).sum()) for o, c in zip(outs, cotangents))

    args = [np.array(a, np.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a for a in inputs]
    grads = []
    for i in wrt:
        grad = np.zeros_like(args[i])
        flat, gflat = args[i].reshape(-1), grad.reshape(-1)
        for j in range(flat.size):
            keep = flat[j]
            flat[j] = keep + step
            up = loss(args)
            flat[j] = keep - step
            down = loss(args)
            flat[j] = keep
            gflat[j] = (up - down) / (2 * step)
        grads.append(grad)
    return grads
