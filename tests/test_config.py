"""Config loading: YAML + dotted overrides, with errors that name the file, line and key."""
import dataclasses
import functools
import glob
import importlib
import os
from typing import List, Optional

import pytest

from mindrlhf.cli import STAGES
from mindrlhf.config import ConfigError, describe, field, load_config, load_run_config, require, save_config
from mindrlhf.generation import GenerateConfig
from mindrlhf.nn.config import ModelConfig
from mindrlhf.nn.generate import GenerationConfig
from mindrlhf.pipeline import _filled
from mindrlhf.pipeline_config import PipelineConfig
from mindrlhf.scoring import ScoreConfig
from mindrlhf.trainers.ppo_config import PPOConfig
from mindrlhf.trainers.rankings import RankingsCommandConfig, RankingsConfig
from mindrlhf.trainers.reward import RMConfig
from mindrlhf.trainers.sft import SFTConfig


@dataclasses.dataclass
class Inner:
    lr: float = field(1e-3, "learning rate")
    steps: int = field(10, "steps")
    names: List[str] = field(["a"], "names")

    def validate(self):
        require(self.lr > 0, "lr", "must be > 0")  # relative to the section


@dataclasses.dataclass
class Outer:
    name: str = field("run", "run name")
    flag: bool = field(False, "a flag")
    maybe: Optional[int] = field(None, "optional int")
    inner: Inner = field(Inner(), "nested section")


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "name: x\ninner:\n  lr: 3e-4\n  names: [p, q]\n")
    cfg = load_config(Outer, path, ["inner.steps=7", "flag=true", "maybe=3"])
    assert cfg.name == "x" and cfg.flag is True and cfg.maybe == 3
    assert cfg.inner.lr == pytest.approx(3e-4) and cfg.inner.steps == 7 and cfg.inner.names == ["p", "q"]
    # defaults are not shared between instances
    a, b = Outer(), Outer()
    a.inner.names.append("z")
    assert b.inner.names == ["a"]


def test_unknown_key_names_file_line_and_valid_keys(tmp_path):
    path = write(tmp_path, "name: x\ninner:\n  lr: 0.1\n  stesp: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:4: ") and "'inner.stesp'" in msg and "steps" in msg and "lr" in msg


def test_wrong_type_names_key_line_and_expected_type(tmp_path):
    path = write(tmp_path, "inner:\n  steps: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    msg = str(err.value)
    assert f"{path}:2:" in msg and "inner.steps" in msg and "integer" in msg


def test_override_errors():
    with pytest.raises(ConfigError, match="inner.lrr"):
        load_config(Outer, None, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(Outer, None, ["inner.lr"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Outer, None, ["name.x=1"])
    with pytest.raises(ConfigError, match="true or false"):
        load_config(Outer, None, ["flag=maybe"])


def test_validate_runs_on_nested_sections():
    with pytest.raises(ConfigError, match="inner.lr: must be > 0"):
        load_config(Outer, None, ["inner.lr=-1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, write(tmp_path, "- 1\n- 2\n"))


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(Outer, None, ["inner.lr=0.5", "maybe=2"])
    out = tmp_path / "saved.yaml"
    save_config(cfg, str(out))
    assert load_config(Outer, str(out)) == cfg


def test_describe_lists_every_leaf_with_help():
    lines = describe(Outer)
    assert any(line.startswith("inner.lr (float, default 0.001): learning rate") for line in lines)
    assert len(lines) == 6


@dataclasses.dataclass
class WithCustomSection:
    inner: Inner = field(Inner(lr=0.25, names=["custom"]), "a section whose default is customised")


def test_partial_section_keeps_the_enclosing_default(tmp_path):
    """Setting one key of a section must not reset the section's other customised defaults."""
    cfg = load_config(WithCustomSection, write(tmp_path, "inner:\n  steps: 3\n"), ["inner.names=[x]"])
    assert cfg.inner.lr == 0.25 and cfg.inner.steps == 3 and cfg.inner.names == ["x"]
    assert load_config(WithCustomSection, None, ["inner.steps=4"]).inner.names == ["custom"]


# ------------------------------------------------------------------------------- the stages' own configs

COMMAND_CONFIGS = [SFTConfig, RMConfig, PPOConfig, PipelineConfig, RankingsCommandConfig, GenerateConfig, ScoreConfig]
# What each stage needs before it validates (files are only read when the stage runs).
REQUIRED = {SFTConfig: ["data.train=d.jsonl"], RMConfig: ["data.train=r.jsonl"],
            PPOConfig: ["policy=p", "reward_model=r", "data.prompts=q.jsonl"], PipelineConfig: [],
            RankingsCommandConfig: ["policy=p", "prompts=q.jsonl", "out=o.jsonl", "labeler=m:f"],
            GenerateConfig: ["model=m", "prompts=q.jsonl", "out=o.jsonl"],
            ScoreConfig: ["data=a.jsonl", "out=o.jsonl", "policy=p"]}


@pytest.mark.parametrize("cls", COMMAND_CONFIGS, ids=lambda c: c.__name__)
def test_help_config_prints_the_default_the_command_uses_for_every_key(cls):
    default = cls()
    lines = describe(cls)
    for line in lines:
        key = line.split(" (", 1)[0]
        value = functools.reduce(getattr, key.split("."), default)
        assert f", default {value!r}): " in line, line
    assert len({line.split(" (", 1)[0] for line in lines}) == len(lines)


def test_help_config_shows_customised_sections():
    sft, ppo = "\n".join(describe(SFTConfig)), "\n".join(describe(PPOConfig))
    assert "optim.lr (float, default 0.003)" in sft and "lora.enabled (bool, default False)" in sft
    assert "actor_optim.lr (float, default 0.0002)" in ppo and "critic_optim.lr (float, default 0.0005)" in ppo
    assert "actor_lora.enabled (bool, default False)" in ppo
    assert "ppo.data.prompts (str, default '{task.prompts}')" in "\n".join(describe(PipelineConfig))


def test_rankings_defaults_live_in_one_dataclass():
    """The pipeline's rankings section and `mindrlhf data rankings` share RankingsConfig's keys and defaults."""
    assert type(PipelineConfig().rankings) is RankingsConfig and issubclass(RankingsCommandConfig, RankingsConfig)
    assert RankingsCommandConfig().sampling() == RankingsConfig().sampling() == PipelineConfig().rankings.sampling()


@pytest.mark.parametrize("cls, override, message", [
    (SFTConfig, "train.max_steps=-5", "train.max_steps: must be >= 0"),
    (SFTConfig, "train.save_every=-1", "train.save_every: must be >= 0"),
    (SFTConfig, "train.keep_checkpoints=0", "train.keep_checkpoints: must be >= 1"),
    (SFTConfig, "train.log_every=0", "train.log_every: must be >= 1"),
    (SFTConfig, "train.eval_every=-2", "train.eval_every: must be >= 0"),
    (SFTConfig, "train.batch_size=0", "train.batch_size: must be >= 1"),
    (SFTConfig, "train.epochs=-1", "train.epochs: must be >= 0"),
    (SFTConfig, "optim.beta1=1.5", r"optim.beta1: must be in \[0, 1\)"),
    (SFTConfig, "optim.beta2=1", r"optim.beta2: must be in \[0, 1\)"),
    (SFTConfig, "optim.eps=0", "optim.eps: must be > 0"),
    (SFTConfig, "optim.lr=1e30000", "optim.lr: must be a finite number"),
    (SFTConfig, "optim.lr=nan", "optim.lr: must be a finite number"),
    (SFTConfig, "optim.weight_decay=-0.1", "optim.weight_decay: must be >= 0"),
    (SFTConfig, "optim.max_grad_norm=-1", "optim.max_grad_norm: must be >= 0"),
    (SFTConfig, "data.eval_fraction=1", r"data.eval_fraction: must be in \[0, 1\)"),
    (SFTConfig, "lora.dropout=1", r"lora.dropout: must be in \[0, 1\)"),
    (SFTConfig, "runtime.seed=-1", "runtime.seed: must be >= 0"),
    (RMConfig, "data.margin=-1", "data.margin: must be >= 0"),
    (RMConfig, "train.keep_checkpoints=0", "train.keep_checkpoints: must be >= 1"),
    (PPOConfig, "algo.clip_range=-1", "algo.clip_range: must be > 0"),
    (PPOConfig, "algo.clip_range_value=0", "algo.clip_range_value: must be > 0"),
    (PPOConfig, "algo.kl_coef=-0.1", "algo.kl_coef: must be >= 0"),
    (PPOConfig, "algo.kl_penalty_coef=-1", "algo.kl_penalty_coef: must be >= 0"),
    (PPOConfig, "algo.iterations=0", "algo.iterations: must be >= 1"),
    (PPOConfig, "algo.gamma=0", r"algo.gamma: must be in \(0, 1\]"),
    (PPOConfig, "algo.lam=1.5", r"algo.lam: must be in \(0, 1\]"),
    (PPOConfig, "algo.kl_horizon=0", "algo.kl_horizon: must be >= 1"),
    (PPOConfig, "algo.entropy_coef=-1", "algo.entropy_coef: must be >= 0"),
    (PPOConfig, "rollout.temperature=0", "rollout.temperature: must be > 0"),
    (PPOConfig, "rollout.top_p=0", r"rollout.top_p: must be in \(0, 1\]"),
    (PPOConfig, "rollout.batch_size=0", "rollout.batch_size: must be >= 1"),
    (PPOConfig, "log_every=0", "^log_every: must be >= 1"),
    (PPOConfig, "keep_checkpoints=0", "^keep_checkpoints: must be >= 1"),
    (PPOConfig, "actor_optim.beta1=-0.1", r"actor_optim.beta1: must be in \[0, 1\)"),
    (PPOConfig, "critic_optim.lr=0", "critic_optim.lr: must be > 0"),
    (PPOConfig, "actor_lora.rank=0", "actor_lora.rank: must be >= 1"),
    (PipelineConfig, "ppo.algo.clip_range=-1", "ppo.algo.clip_range: must be > 0"),
    (PipelineConfig, "sft.train.keep_checkpoints=0", "sft.train.keep_checkpoints: must be >= 1"),
    (PipelineConfig, "rankings.k=1", "rankings.k: must be >= 2"),
    (PipelineConfig, "eval.temperature=0", "eval.temperature: must be > 0"),
    (PipelineConfig, "builtin.n_train=0", "builtin.n_train: must be >= 1"),
    (RankingsCommandConfig, "noise=-1", "^noise: must be >= 0"),
    (RankingsCommandConfig, "device=TPU", "^device: 'TPU'"),
    (GenerateConfig, "temperature=-1", "^temperature: must be >= 0"),
    (GenerateConfig, "batch_size=0", "^batch_size: must be >= 1"),
    (GenerateConfig, "num_samples=0", "^num_samples: must be >= 1"),
    (ScoreConfig, "policy=", "^reward_model: give at least one of --reward-model, --policy, --reference"),
], ids=lambda v: v if isinstance(v, str) and "=" in v else "")
def test_range_checks_name_the_full_dotted_key(cls, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(cls, None, [*REQUIRED[cls], override])
    load_config(cls, None, REQUIRED[cls])  # the defaults themselves pass


def test_a_required_key_of_a_command_is_named():
    with pytest.raises(ConfigError, match="^policy: required, e.g. --policy"):
        load_config(RankingsCommandConfig)
    with pytest.raises(ConfigError, match="^model: required"):
        load_config(GenerateConfig)


SHIPPED = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                       "*.yaml")))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_shipped_config_loads_into_its_stage_and_validates(path):
    """configs/<stage>_*.yaml is what `mindrlhf <stage> --config` reads (files are only opened when it runs)."""
    stage = os.path.basename(path).split("_", 1)[0]
    stage = "pipeline" if stage == "compare" else stage  # the algorithms side by side: a pipeline config
    assert stage in STAGES, f"{path}: name it after the command that reads it ({', '.join(STAGES)})"
    module, cls_name = STAGES[stage][:2]
    cfg = load_config(getattr(importlib.import_module(module), cls_name), path)
    if os.path.basename(path) == "dpo_shelf_smollm2.yaml":  # LoRA on the SmolLM2 pipeline's SFT model
        assert cfg.lora.enabled and cfg.model == "runs/pipeline_smollm2/sft/model" and not cfg.reference
        assert cfg.data.train == "runs/pipeline_smollm2/data/rankings.jsonl" and cfg.algo.loss_type == "sigmoid"


# ------------------------------------------------------------------------------- the PPO algorithm section


def test_the_ppo_algorithm_section_is_algo(tmp_path):
    cfg = load_config(PPOConfig, write(tmp_path, "algo:\n  clip_range: 0.1\n"), [*REQUIRED[PPOConfig], "algo.epochs=2"])
    assert cfg.algo.clip_range == 0.1 and cfg.algo.epochs == 2 and not hasattr(cfg, "ppo")
    pipe = load_config(PipelineConfig, None, ["ppo.algo.clip_range=0.3"])
    assert pipe.ppo.algo.clip_range == 0.3


def test_a_ppo_section_in_a_ppo_config_names_algo(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(PPOConfig, None, ["ppo.clip_range=0.1"])
    assert str(err.value) == ("override 'ppo.clip_range=0.1': unknown key 'ppo.clip_range': "
                              "the PPO algorithm section is 'algo' (algo.clip_range)")
    path = write(tmp_path, "policy: p\nppo:\n  clip_range: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(PPOConfig, path)
    assert str(err.value) == (f"{path}:2: unknown key 'ppo.clip_range': the PPO algorithm section is 'algo' "
                              "(algo.clip_range)")
    with pytest.raises(ConfigError, match=r"unknown key 'ppo.ppo.epochs'.*\(ppo.algo.epochs\)$"):
        load_config(PipelineConfig, None, ["ppo.ppo.epochs=2"])


# ------------------------------------------------------------------------------- YAML and overrides


def test_a_duplicate_yaml_key_is_refused_with_both_lines(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, write(tmp_path, "model: tiny\ndata:\n  train: d.jsonl\nmodel: gpt2\n"))
    assert str(err.value) == f"{tmp_path / 'c.yaml'}:4: duplicate key 'model' (also on line 1); keep one of them"
    with pytest.raises(ConfigError, match=r"c.yaml:3: duplicate key 'lr' \(also on line 2\)"):
        load_config(Outer, write(tmp_path, "inner:\n  lr: 0.1\n  lr: 0.2\n"))


def test_a_bad_override_value_is_blamed_on_the_override(tmp_path):
    path = write(tmp_path, "data:\n  train: d.jsonl\ntrain:\n  max_steps: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path, ["train.max_steps=abc"])
    assert str(err.value) == "override 'train.max_steps=abc': train.max_steps: expected an integer, got 'abc'"


def test_a_yaml_file_with_a_bom_reads_and_bad_bytes_name_the_file(tmp_path):
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffname: x\n".encode("utf-8"))
    assert load_config(Outer, str(bom)).name == "x"
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\n")
    with pytest.raises(ConfigError, match=f"^{bad}: not UTF-8 text"):
        load_config(Outer, str(bad))
    with pytest.raises(ConfigError, match="not a file"):
        load_config(Outer, str(tmp_path))


# ------------------------------------------------------------------------------- ModelConfig, GenerationConfig


@pytest.mark.parametrize("cls", [ModelConfig, GenerationConfig], ids=lambda c: c.__name__)
def test_model_and_generation_configs_carry_help_for_every_field(cls):
    assert all(f.metadata.get("help") for f in dataclasses.fields(cls))
    assert len(describe(cls)) == len(dataclasses.fields(cls))


def test_model_and_generation_configs_raise_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="^num_layers: must be >= 1, got 0"):
        ModelConfig(num_layers=0)
    with pytest.raises(ConfigError, match="^norm_eps: must be > 0"):
        ModelConfig(norm_eps=0.0)
    with pytest.raises(ConfigError, match=r"^top_p: must be in \(0, 1\]"):
        GenerationConfig(top_p=0.0).validate()
    with pytest.raises(ConfigError, match="^temperature: must be > 0 when do_sample"):
        GenerationConfig(do_sample=True, temperature=0.0).validate()


# ------------------------------------------------------------------------------- resume


def saved_run(tmp_path, *overrides) -> str:
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(SFTConfig, None, ["data.train=d.jsonl", f"out_dir={run}", *overrides]),
                str(run / "config.yaml"))
    return str(run)


def test_resume_alone_reuses_the_runs_config_with_overrides_on_top(tmp_path):
    run = saved_run(tmp_path, "train.max_steps=7", "optim.lr=0.01")
    cfg = load_run_config(SFTConfig, None, ["train.max_steps=20"], resume=run)
    assert cfg.data.train == "d.jsonl" and cfg.optim.lr == 0.01 and cfg.train.max_steps == 20 and cfg.out_dir == run


@pytest.mark.parametrize("override, old, new", [
    ("train.batch_size=32", 16, 32), ("model=tiny-gpt2", "'tiny'", "'tiny-gpt2'"), ("data.max_length=64", 128, 64),
    ("lora.enabled=true", False, True)])
def test_resume_refuses_a_change_of_shape(tmp_path, override, old, new):
    run = saved_run(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_run_config(SFTConfig, None, [override], resume=run)
    key = override.split("=")[0]
    assert str(err.value).startswith(f"{key}: {old} in {run}/config.yaml, {new} now; a resumed run keeps")


def test_resume_without_a_saved_config_asks_for_one(tmp_path):
    with pytest.raises(ConfigError, match="config.yaml: not found.*--config"):
        load_run_config(SFTConfig, None, [], resume=str(tmp_path))
    cfg = load_run_config(SFTConfig, None, ["data.train=d.jsonl"], resume=None)
    assert cfg.out_dir == "runs/sft"


def test_resume_of_a_pipeline_fills_out_dir_before_comparing(tmp_path):
    run = tmp_path / "pipe"
    run.mkdir()
    saved = load_config(PipelineConfig, None, [f"out_dir={run}", "ppo.rollout.batch_size=16"])
    _filled(saved, {"out_dir": str(run)})  # as run_pipeline saves it, {out_dir} filled in
    save_config(saved, str(run / "config.yaml"))
    assert load_run_config(PipelineConfig, None, [], resume=str(run)).rm.model == str(run / "sft" / "model")
    config = write(tmp_path, "ppo:\n  rollout:\n    batch_size: 16\n")
    assert load_run_config(PipelineConfig, config, [], resume=str(run)).rm.model == "{out_dir}/sft/model"
    with pytest.raises(ConfigError, match="^ppo.rollout.batch_size: 16 in"):
        load_run_config(PipelineConfig, None, ["ppo.rollout.batch_size=8"], resume=str(run))
