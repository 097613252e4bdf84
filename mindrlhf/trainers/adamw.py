"""AdamW as one fused in-place kernel per parameter, numerically the same update as ``torch.optim.AdamW``.

torch's AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) at step t ≥ 1,
with learning rate α, weight decay λ and gradient g (already clipped):

    p ← p · (1 − α·λ)                                       decoupled weight decay
    m ← β1·m + (1 − β1)·g
    v ← β2·v + (1 − β2)·g²
    p ← p − α / (1 − β1^t) · m / (√v / √(1 − β2^t) + ε)

MindSpore's ``ops.Adam`` kernel does the last three lines in one in-place pass, but adds ε to √v itself:
``p ← p − α·√(1 − β2^t) / (1 − β1^t) · m / (√v + ε̂)``. Multiplying torch's numerator and denominator by
√(1 − β2^t) shows the two are the same update when ε̂ = ε·√(1 − β2^t), so that is the ε we pass. The CPU
kernel (``kernels/csrc/adamw.cc``) computes the same form, the clipping factor and the decay included.

Why not ``mindspore.experimental.optim.AdamW``: it spends about ten element-wise ops (each a full-size
temporary) per parameter and allocates AMSGrad state even with amsgrad off. On the GPT-2 (124M) SFT step
it took 9.8 GB and 8.8 s per step against 4.7 GB and 5.6 s with this kernel (probe, 2-core CPU).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from .. import kernels


# One parameter's update, mapped over all of them: a Python loop over a few hundred parameters compiles into
# nested calls past MindSpore's call-depth limit of 1000 (SmolLM2's 240 LoRA tensors with gradient accumulation).
_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Function", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _update(update, hyper, norm, p, m, v, g):
    return update(p, m, v, g, hyper, norm)


class AdamW(nn.Cell):
    """``adamw(grads, norm)`` applies one AdamW step to ``parameters`` in place (grads in the same order), on the
    gradients clipped to ``max_grad_norm`` by their global L2 norm ``norm`` (torch's ``clip_grad_norm_``; 0 = no
    clipping); returns t. Each parameter's step is one ``kernels.adamw_update``: on CPU a C++ kernel that scales
    the gradient as it reads it (no clipped copy of the gradients), elsewhere the clip multiply and ``ops.Adam``.

    State, all Parameters updated in place: ``exp_avg.<name>`` (m) and ``exp_avg_sq.<name>`` (v) per
    parameter and ``state_step`` (t, int32), the names ``mindspore.experimental.optim.AdamW`` uses. ``lr`` is
    a Parameter as well, so :meth:`set_learning_rate` changes it between steps without recompiling the step
    that holds this Cell.
    Every parameter is decayed (torch's default for one parameter group).

    ``scope`` prefixes the Parameter names of t and lr (``<scope>.state_step``), for a graph that holds several
    AdamWs: MindSpore renames every Parameter of a graph by its path when two distinct ones share a name.
    :meth:`state` names t ``state_step`` whatever the scope.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 max_grad_norm: float = 0.0, scope: str = ""):
        super().__init__(auto_prefix=False)  # keep the model's parameter names, and build the state's from them
        self.parameters = ms.ParameterTuple(params)
        self.exp_avg = self.parameters.clone("exp_avg", "zeros")
        self.exp_avg_sq = self.parameters.clone("exp_avg_sq", "zeros")
        prefix = f"{scope}." if scope else ""
        self.state_step = ms.Parameter(ms.Tensor(0, ms.int32), name=f"{prefix}state_step", requires_grad=False)
        self.lr = ms.Parameter(ms.Tensor(lr, ms.float32), name=f"{prefix}learning_rate", requires_grad=False)
        # β1, β2, ε, λ and max_norm of the kernels' hyper-parameter vector, beside lr and t
        self.constants = tuple(ms.Tensor(float(c), ms.float32) for c in (*betas, eps, weight_decay, max_grad_norm))
        self.update = kernels.adamw_update(weight_decay > 0, max_grad_norm > 0)
        self.map = ops.HyperMap()

    def construct(self, grads, norm):
        t = self.state_step + 1
        ops.assign(self.state_step, t)
        beta1, beta2, eps, decay, max_norm = self.constants
        lr = self.lr * 1.0  # a value: PyNative's stack takes no Parameter (a Ref) beside plain Tensors
        hyper = ops.stack((lr, beta1, beta2, eps, decay, t.astype(ms.float32), max_norm))  # t exact to 2^24
        scales = self.map(ops.partial(_adamw_update, self.update, hyper, norm),
                          self.parameters, self.exp_avg, self.exp_avg_sq, grads)
        return ops.depend(t, scales)  # the kernels' outputs used: without it the updates are dead code

    def set_learning_rate(self, lr: float) -> None:
        self.lr.set_data(ms.Tensor(lr, ms.float32))

    def state(self) -> dict:
        """name → Parameter of what a resumed run needs: m, v and t. The lr is not state: the trainer
        sets it from its schedule before every step."""
        return {**{p.name: p for p in (*self.exp_avg, *self.exp_avg_sq)}, "state_step": self.state_step}
