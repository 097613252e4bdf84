"""The `mindrlhf` command line: every error is one line on stderr with exit status 2 (a diverged run: 1),
overrides may follow options, `--resume DIR` reuses the run's config, and the tool commands take their
options and defaults from one dataclass each. Nothing here trains: each case stops before the first step."""
import dataclasses
import json
import subprocess
import sys

import pytest
import yaml

from mindrlhf import cli
from mindrlhf.config import describe, field, load_config, save_config
from mindrlhf.generation import GenerateConfig
from mindrlhf.trainers.loop import CadenceConfig, Stage, run_loop
from mindrlhf.scoring import ScoreConfig
from mindrlhf.trainers.rankings import RankingsCommandConfig
from mindrlhf.trainers.sft import SFTConfig


def error_line(capsys) -> str:
    """The one line the CLI printed on stderr (and nothing else)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mindrlhf: error: "), err
    return err[len("mindrlhf: error: "):].rstrip("\n")


@pytest.mark.parametrize("argv, line", [
    (["sft", "data.train=d.jsonl", "train.max_steps=-5"],
     "train.max_steps: must be >= 0 (0 = derive from epochs), got -5"),
    (["sft", "data.train=d.jsonl", "train.log_every=0"], "train.log_every: must be >= 1, got 0"),
    (["sft", "data.train=d.jsonl", "optim.beta1=1.5"], "optim.beta1: must be in [0, 1), got 1.5"),
    (["ppo", "policy=p", "reward_model=r", "data.prompts=q", "algo.clip_range=-1"],
     "algo.clip_range: must be > 0, got -1.0"),
    (["ppo", "ppo.clip_range=0.1"], "override 'ppo.clip_range=0.1': unknown key 'ppo.clip_range': the PPO algorithm "
                                    "section is 'algo' (algo.clip_range)"),
    (["sft", "train.max_steps=abc"], "override 'train.max_steps=abc': train.max_steps: expected an integer, got 'abc'"),
    (["generate", "--model", "m", "--prompts", "p", "--out", "o", "--top-p", "0"], "top_p: must be in (0, 1], got 0.0"),
    (["data", "rankings", "--prompts", "p", "--out", "o"], "policy: required, e.g. --policy runs/sft/model"),
])
def test_a_bad_config_is_one_line_and_status_2(argv, line, capsys):
    assert cli.main(argv) == 2
    assert error_line(capsys) == line


def test_the_cli_as_a_process_prints_one_line(tmp_path):
    argv = ["rm", "data.train=r.jsonl", "train.keep_checkpoints=0"]
    proc = subprocess.run([sys.executable, "-m", "mindrlhf.cli", *argv], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == "mindrlhf: error: train.keep_checkpoints: must be >= 1, got 0\n"


def saved_run(tmp_path) -> str:
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(SFTConfig, None, ["data.train=d.jsonl", f"out_dir={run}"]), str(run / "config.yaml"))
    return str(run)


def test_resume_reuses_the_runs_config_and_takes_overrides_on_either_side(tmp_path, capsys):
    run = saved_run(tmp_path)
    # No --config: the run's config.yaml is read; the override after --resume is parsed and compared.
    assert cli.main(["sft", "train.max_steps=3", "--resume", run, "train.batch_size=32"]) == 2
    assert error_line(capsys) == (f"train.batch_size: 16 in {run}/config.yaml, 32 now; a resumed run keeps the shapes "
                                  "and data order it started with (start a new run to change it)")
    assert cli.main(["sft", "--resume", str(tmp_path), "train.max_steps=3"]) == 2
    assert error_line(capsys).startswith(f"{tmp_path}/config.yaml: not found")


def test_unknown_options_are_still_refused(capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["sft", "a=1", "--bogus", "x"])
    assert err.value.code == 2 and "unrecognized arguments: --bogus x" in capsys.readouterr().err


@pytest.mark.parametrize("argv, cls", [(["generate"], GenerateConfig), (["data", "rankings"], RankingsCommandConfig),
                                       (["score"], ScoreConfig)])
def test_tool_help_config_lists_the_dataclass(argv, cls, capsys):
    assert cli.main([*argv, "--help-config"]) == 0
    assert capsys.readouterr().out.splitlines() == describe(cls)


def test_tool_flags_config_file_and_overrides_build_one_config(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text("max_new_tokens: 12\ntop_k: 2\n")
    args = cli.build_parser().parse_args(["generate", "--model", "m: odd name", "--prompts", "p.jsonl", "--out", "o",
                                          "--no-chat-template", "--top-k", "5", "--config", str(config), "seed=3"])
    cfg = cli._tool_config(args)
    assert (cfg.model, cfg.prompts, cfg.chat_template, cfg.top_k, cfg.max_new_tokens, cfg.seed) == \
        ("m: odd name", "p.jsonl", False, 5, 12, 3)
    assert cfg.progress is True and cfg.temperature == GenerateConfig().temperature
    args = cli.build_parser().parse_args(["data", "rankings", "--policy", "p", "--prompts", "q", "--out", "o",
                                          "--k", "6", "--noise", "0", "--labeler", "my_task.py:rank",
                                          "--labeler-kwargs", "{world: w.json, n: 3}"])
    cfg = cli._tool_config(args)
    assert (cfg.k, cfg.noise, cfg.batch_prompts) == (6, 0.0, 16)
    assert (cfg.labeler, cfg.labeler_kwargs) == ("my_task.py:rank", {"world": "w.json", "n": 3})


# ------------------------------------------------------------------------------- errors from files and runs


def real_errors(tmp_path) -> dict:
    """Errors as reading files really raises them."""
    out = {}
    try:
        open(tmp_path)  # a directory
    except OSError as err:
        out["os"] = err
    try:
        b"ok \xff".decode("utf-8")
    except UnicodeDecodeError as err:
        out["decode"] = err
    try:
        json.loads('{"a": 1,\n "b": }')
    except json.JSONDecodeError as err:
        out["json"] = err
    try:
        yaml.safe_load("a: [1,\nb: 2\n")
    except yaml.YAMLError as err:
        out["yaml"] = err
    return out


def test_errors_from_files_become_one_line(tmp_path):
    errors = real_errors(tmp_path)
    assert cli.describe_error(errors["os"]) == f"{tmp_path}: Is a directory"
    assert cli.describe_error(errors["decode"]) == "not UTF-8 text: byte 0xff at offset 3"
    assert cli.describe_error(errors["json"]) == "not valid JSON: Expecting value at line 2, column 7"
    assert "\n" not in cli.describe_error(errors["yaml"]) and "not valid YAML" in cli.describe_error(errors["yaml"])


@dataclasses.dataclass
class NoConfig:
    out_dir: str = field("", "run folder")


class Diverging(Stage):
    """A stage whose loss is finite once, then NaN: the loop must stop at step 2."""

    total_steps = 5

    def cells(self):
        return {}

    def updaters(self):
        return {}

    def step(self, step):
        return {"loss": 1.0 if step == 0 else float("nan"), "grad_norm": 1.0}, 0


def train_diverging(cfg, resume=None, overwrite=False):
    return run_loop(Diverging(), CadenceConfig(save_every=0, progress=False), cfg.out_dir, resume)


def test_a_diverged_run_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(cli.STAGES, "diverge", (__name__, "NoConfig", "train_diverging", "a stage that diverges"))
    assert cli.main(["diverge", f"out_dir={tmp_path}"]) == 1
    assert error_line(capsys).startswith("diverged at step 2: loss=nan")
    assert not (tmp_path / "checkpoints").exists()  # nothing of the bad step was saved


def test_debug_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("MINDRLHF_DEBUG", "1")
    with pytest.raises(ValueError, match="train.log_every: must be >= 1"):
        cli.main(["sft", "data.train=d.jsonl", "train.log_every=0"])
