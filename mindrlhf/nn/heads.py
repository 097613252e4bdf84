"""ScalarHead: hidden [..., hidden] -> one number per position [...] (value and reward heads), or ``outputs``
numbers per position [..., outputs] (the heads of a reward-model ensemble)."""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer


class ScalarHead(nn.Cell):
    """v = h W + b, W [hidden, outputs], b [outputs]; fp32. Returns [...] for one output (the trailing size-1
    axis is dropped), [..., outputs] for more."""

    def __init__(self, hidden_size, init_std=0.0, outputs=1):
        super().__init__()
        # zero init (default) makes a fresh value/reward head start from 0 for every input
        init = Normal(init_std) if init_std > 0 else "zeros"
        self.outputs = int(outputs)
        self.weight = Parameter(initializer(init, (hidden_size, self.outputs), ms.float32))
        self.bias = Parameter(initializer("zeros", (self.outputs,), ms.float32))

    def construct(self, hidden):
        lead = hidden.shape[:-1]
        out = ops.matmul(hidden.reshape(-1, hidden.shape[-1]).astype(ms.float32), self.weight) + self.bias
        return out.reshape(lead) if self.outputs == 1 else out.reshape(lead + (self.outputs,))
