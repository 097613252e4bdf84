"""configs/compare_builtin.yaml, shortened: every algorithm and the oracle on one SFT model, one set of
rankings and one reward model, and one report with each policy against SFT."""
import json
import os

import pytest

from mindrlhf.config import load_config
from mindrlhf.pipeline import run_pipeline
from mindrlhf.pipeline_config import PipelineConfig
from mindrlhf.trainers.dpo import DPOConfig
from mindrlhf.trainers.grpo_config import GRPOConfig
from mindrlhf.trainers.ppo_config import PPOConfig

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "compare_builtin.yaml")
SHORT = [
    "builtin.seed=2", "builtin.n_train=1200", "builtin.n_prompts=200", "builtin.n_heldout=32",
    "sft.train.max_steps=300", "sft.train.eval_every=300", "sft.train.save_every=300", "sft.train.progress=false",
    "rankings.max_prompts=200", "rankings.k=4", "rm.train.epochs=1", "rm.train.progress=false",
    # this short SFT still rambles to the 48-token sampling limit: room for prompt + 48 tokens + EOS
    "rm.data.max_length=112", "dpo.data.max_length=112",
    "ppo.algo.iterations=4", "ppo.rollout.batch_size=32", "ppo.progress=false", "ppo.save_every=4",
    "iterate.rounds=1",
    "grpo.algo.iterations=4", "grpo.rollout.batch_size=4", "grpo.progress=false",
    "dpo.train.max_steps=12", "dpo.train.progress=false",
    "eval.max_prompts=32", "eval.decodings=[sample]", "eval.batch_size=32",
]


@pytest.mark.slow
def test_the_comparison_trains_every_algorithm_on_the_same_reward_model_and_reports_each(tmp_path):
    out = tmp_path / "run"
    summary = run_pipeline(load_config(PipelineConfig, CONFIG, [f"out_dir={out}", *SHORT]))

    sample = summary["sample"]
    assert list(sample) == ["sft", "ppo", "grpo", "dpo", "oracle"] and summary["headline"] == "ppo"
    for name in ("ppo", "grpo", "dpo", "oracle"):
        assert (out / name / "model" / "model.safetensors").is_file()
        assert 0.0 <= sample[name]["win_rate_vs_sft"] <= 1.0 and "judge_gain_interval_vs_sft" in sample[name]
    rm, sft = str(out / "rm" / "model"), str(out / "sft" / "model")
    ppo = load_config(PPOConfig, str(out / "ppo" / "config.yaml"))
    grpo = load_config(GRPOConfig, str(out / "grpo" / "config.yaml"))
    dpo = load_config(DPOConfig, str(out / "dpo" / "config.yaml"))
    oracle = load_config(PPOConfig, str(out / "oracle" / "config.yaml"))
    assert ppo.policy == grpo.policy == dpo.model == oracle.policy == sft
    # GRPO scores with the reward model alone: the recipe's reward function (the labeler) is not carried over.
    assert (grpo.reward.model, grpo.reward.functions) == (rm, [])
    assert dpo.data.train == str(out / "data" / "rankings.jsonl")
    assert oracle.reward.functions == ["mindrlhf.data.builtin.functions:judge"] and not ppo.reward.functions
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in ("ppo", "grpo", "dpo", "oracle"))
    assert json.loads((out / "summary.json").read_text())["headline"] == "ppo"
