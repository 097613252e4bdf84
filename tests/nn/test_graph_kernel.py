"""runtime.graph_kernel: MindSpore's graph-kernel fusion really compiles fused kernels on CPU, and the
compiled model gives the same logits and greedy tokens as without it. Each setting runs in its own
process, since the context switch is process-wide."""
import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import json, sys
import numpy as np
from mindrlhf import runtime
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.generate import GenerationConfig, Generator
import mindspore as ms

runtime.setup(runtime.RuntimeConfig(graph_kernel=sys.argv[1] == "on"))
lm = CausalLM(ModelConfig.from_preset("tiny"))
rng = np.random.default_rng(0)
lm.assign_weights({n: (1.0 + 0.1 * rng.standard_normal(p.shape) if "norm" in n else 0.3 * rng.standard_normal(p.shape))
                   for n, p in lm.named_weights()})
prompts = [[5, 17, 99, 3, 250], [7, 8, 9, 10, 11, 12, 13]]
out = Generator(lm).generate(prompts, GenerationConfig(max_new_tokens=8))
logits = lm(ms.Tensor(np.array([[5, 17, 99, 3, 250, 6, 7, 8]], np.int32))).asnumpy()
print(json.dumps({"tokens": np.asarray(out.response_ids).tolist(), "logits": logits.ravel()[:512].tolist(),
                  "graph_kernel": ms.get_context("enable_graph_kernel")}))
"""


def _run(setting, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, setting], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_graph_kernel_fuses_and_matches(tmp_path):
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on, off = _run("on", tmp_path / "on"), _run("off", tmp_path / "off")
    assert on["graph_kernel"] and not off["graph_kernel"]
    assert any((tmp_path / "on" / "akg_kernel_meta").glob("*")), "no fused kernel was compiled"
    assert not (tmp_path / "off" / "akg_kernel_meta").exists()
    np.testing.assert_allclose(on["logits"], off["logits"], atol=1e-4, rtol=1e-4)
    assert on["tokens"] == off["tokens"]
