"""ScalarHead: hidden [..., hidden] -> one number per position [...] (value and reward heads)."""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer


class ScalarHead(nn.Cell):
    """v = h w + b, w [hidden], b scalar; fp32. Returns [...] (the trailing size-1 axis is dropped)."""

    def __init__(self, hidden_size, init_std=0.0):
        super().__init__()
        # zero init (default) makes a fresh value/reward head start from 0 for every input
        init = Normal(init_std) if init_std > 0 else "zeros"
        self.weight = Parameter(initializer(init, (hidden_size, 1), ms.float32))
        self.bias = Parameter(initializer("zeros", (1,), ms.float32))

    def construct(self, hidden):
        lead = hidden.shape[:-1]
        out = ops.matmul(hidden.reshape(-1, hidden.shape[-1]).astype(ms.float32), self.weight) + self.bias
        return out.reshape(lead)
