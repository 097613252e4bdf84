"""MindSpore's fused Ascend operators behind the kernels' contracts (mindrlhf/kernels/ascend.py) against the
reference compositions, both on the Ascend device. They run only where MindSpore's Ascend backend is present;
elsewhere the test is skipped. A child process, because this test process has its device set to CPU."""
import subprocess
import sys

import pytest
import mindspore as ms

SCRIPT = """
import numpy as np
import mindspore as ms
from mindspore import Tensor
ms.set_device("Ascend")
from mindrlhf.kernels import ascend, reference
from mindrlhf.nn.layers import rope_tables

rng = np.random.default_rng(0)
x = Tensor(rng.normal(size=(2, 5, 64)).astype(np.float32))
w = Tensor(rng.uniform(0.5, 1.5, 64).astype(np.float32))
cos, sin = (t.asnumpy()[np.arange(5)] for t in rope_tables(8, 16, 500.0))
q = Tensor(rng.normal(size=(2, 5, 4, 16)).astype(np.float32))
cos = Tensor(np.broadcast_to(cos[None, :, None, :], (2, 5, 4, 16)).copy())
sin = Tensor(np.broadcast_to(sin[None, :, None, :], (2, 5, 4, 16)).copy())
pairs = {"rms_norm": (ascend.RMSNorm(64, 1e-6)(x, w), reference.RMSNorm(64, 1e-6)(x, w)),
         "swiglu": (ascend.SwiGLU()(x), reference.SwiGLU()(x)),
         "gelu_tanh": (ascend.GeluTanh()(x), reference.GeluTanh()(x)),
         "rope": (ascend.Rope()(q, cos, sin), reference.Rope()(q, cos, sin))}
for name, (got, expected) in pairs.items():
    np.testing.assert_allclose(got.asnumpy(), expected.asnumpy(), rtol=1e-3, atol=1e-4, err_msg=name)
print("ok")
"""


def _ascend_present() -> bool:
    try:
        return bool(ms.device_context.ascend.is_available())
    except (AttributeError, RuntimeError):
        return False


@pytest.mark.skipif(not _ascend_present(), reason="needs MindSpore's Ascend backend: ops.rms_norm, ops.swiglu and "
                                                  "ops.rotary_position_embedding have Ascend kernels only")
def test_ascend_kernels_match_reference():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
