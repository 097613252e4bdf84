"""Small Cells that compile an ``algos`` function in graph mode, shared by the tests of this package.

Static arguments (mode strings, clip ranges) are fixed when the Cell is built, as a trainer does;
tensors are passed positionally to ``construct``.
"""
import mindspore as ms
import numpy as np
from mindspore import nn


class FnCell(nn.Cell):
    """construct(*tensors) = fn(*tensors, **static_kwargs)."""

    def __init__(self, fn, **static_kwargs):
        super().__init__()
        self.fn = fn
        self.static_kwargs = static_kwargs

    def construct(self, *args):
        return self.fn(*args, **self.static_kwargs)


class _FirstOutput(nn.Cell):
    def __init__(self, fn, **static_kwargs):
        super().__init__()
        self.fn = fn
        self.static_kwargs = static_kwargs

    def construct(self, *args):
        out = self.fn(*args, **self.static_kwargs)
        if isinstance(out, tuple):
            return out[0]
        return out


class GradCell(nn.Cell):
    """construct(*tensors) = (loss, d loss / d tensors[0]), loss being fn's (first) output."""

    def __init__(self, fn, **static_kwargs):
        super().__init__()
        self.value_and_grad = ms.value_and_grad(_FirstOutput(fn, **static_kwargs), grad_position=0)

    def construct(self, *args):
        return self.value_and_grad(*args)


def t(array, dtype=np.float32):
    """numpy/list → MindSpore tensor (float32 unless told)."""
    return ms.Tensor(np.asarray(array, dtype=dtype))


def pynative():
    """Switch to PyNative for the rest of the test (conftest switches graph mode back)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
