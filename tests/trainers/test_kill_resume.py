"""Every stage runs on the one loop, so every stage survives SIGKILL the same way: a run killed after a
checkpoint and resumed with ``--resume`` ends with the same weights, bit for bit, and the same metrics
as a run that was never interrupted. The same path refuses a fresh run into a finished run's folder and
stops a diverging run. Each run is a real `mindrlhf` process."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindrlhf.trainers.checkpoint import CheckpointManager
from mindrlhf.trainers.metrics import read_metrics

STEPS, SAVE_EVERY = 12, 3
CADENCE = {"sft": "train.", "rm": "train.", "ppo": ""}


@pytest.fixture(scope="module")
def inputs(toy_task, tmp_path_factory):
    """Demonstrations, rankings (the right reversal against a scrambled one) and prompts of the toy task."""
    root = tmp_path_factory.mktemp("kill")
    demos = [json.loads(line) for line in (toy_task / "demos.jsonl").read_text().splitlines()]
    with open(root / "rankings.jsonl", "w") as fh:
        for d in demos:
            wrong = " ".join(sorted(d["response"].split()))
            fh.write(json.dumps({"prompt": d["prompt"], "chosen": d["response"], "rejected": wrong + " x"}) + "\n")
    with open(root / "prompts.jsonl", "w") as fh:
        for d in demos[:64]:
            fh.write(json.dumps({"prompt": d["prompt"]}) + "\n")
    return root


def stage_args(stage: str, toy_task, inputs, sft_model: str = "", rm_model: str = "") -> list:
    c = CADENCE[stage]
    common = [f"{c}save_every={SAVE_EVERY}", f"{c}log_every=1", f"{c}progress=false", f"{c}keep_checkpoints=2"]
    if stage == "sft":
        return ["sft", f"data.train={toy_task / 'demos.jsonl'}", f"tokenizer={toy_task / 'tok'}", "train.batch_size=8",
                f"train.max_steps={STEPS}", "train.eval_every=4", "optim.warmup_steps=2", *common]
    if stage == "rm":
        return ["rm", f"model={sft_model}", f"data.train={inputs / 'rankings.jsonl'}", "train.batch_size=8",
                f"train.max_steps={STEPS}", "train.eval_every=4", "optim.warmup_steps=2", *common]
    return ["ppo", f"policy={sft_model}", f"reward_model={rm_model}", f"data.prompts={inputs / 'prompts.jsonl'}",
            "rollout.batch_size=8", "rollout.max_new_tokens=8", "algo.mini_batch_size=4", "algo.epochs=1",
            f"algo.iterations={STEPS}", *common]


def cli(args: list, out_dir) -> list:
    return [sys.executable, "-m", "mindrlhf.cli", *args, f"out_dir={out_dir}"]


def run(args: list, out_dir) -> None:
    proc = subprocess.run(cli(args, out_dir), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]


def kill_after_a_checkpoint(args: list, out_dir) -> int:
    """Start the run, SIGKILL it once a mid-run checkpoint is complete; return that checkpoint's step."""
    proc = subprocess.Popen(cli(args, out_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out_dir / "checkpoints" / "latest"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text() >= f"step_{2 * SAVE_EVERY:08d}":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(latest.read_text().split("_")[1])


def weights(model_dir) -> dict:
    return load_file(os.path.join(model_dir, "model.safetensors"))


def same_run(a_dir, b_dir) -> None:
    wa, wb = weights(a_dir / "model"), weights(b_dir / "model")
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)
    ra, rb = read_metrics(str(a_dir / "metrics.jsonl")), read_metrics(str(b_dir / "metrics.jsonl"))
    assert [r["step"] for r in rb] == list(range(1, STEPS + 1))  # every step logged once across the kill
    for x, y in zip(ra, rb):
        for key, value in x.items():
            if not key.startswith("time_") and not key.endswith("_per_s"):
                assert y[key] == value, (x["step"], key)


@pytest.fixture(scope="module")
def full_runs(toy_task, inputs, tmp_path_factory):
    """Uninterrupted SFT, RM (on the SFT model) and PPO (on both) runs."""
    root = tmp_path_factory.mktemp("full")
    run(stage_args("sft", toy_task, inputs), root / "sft")
    run(stage_args("rm", toy_task, inputs, sft_model=root / "sft" / "model"), root / "rm")
    run(stage_args("ppo", toy_task, inputs, root / "sft" / "model", root / "rm" / "model"), root / "ppo")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_a_killed_run_resumes_to_the_same_weights_and_metrics(stage, full_runs, toy_task, inputs, tmp_path):
    args = stage_args(stage, toy_task, inputs, full_runs / "sft" / "model", full_runs / "rm" / "model")
    out_dir = tmp_path / stage
    step = kill_after_a_checkpoint(args, out_dir)
    assert SAVE_EVERY <= step < STEPS, f"the run was not killed mid-way (latest checkpoint {step})"
    assert not (out_dir / "model").exists()
    run([stage, f"--resume={out_dir}", *args[1:]], out_dir)
    same_run(full_runs / stage, out_dir)


def tree_digest(root) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            out[os.path.relpath(path, root)] = (os.path.getmtime(path), open(path, "rb").read())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_a_fresh_run_into_a_finished_run_changes_nothing(stage, full_runs, toy_task, inputs):
    finished = full_runs / stage
    before = tree_digest(finished)
    args = stage_args(stage, toy_task, inputs, full_runs / "sft" / "model", full_runs / "rm" / "model")
    proc = subprocess.run(cli(args, finished), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds an earlier run" in lines[0] and "--resume" in lines[0], proc.stderr[-2000:]
    assert tree_digest(finished) == before


@pytest.mark.slow
def test_a_diverging_learning_rate_stops_with_one_line_and_keeps_the_last_good_checkpoint(toy_task, inputs, tmp_path):
    """Four good steps (checkpoints 2 and 4), then the run resumes at lr 1e30: it must stop with exit 1 and
    one line, keep checkpoint 4 (not prune it for a bad one), and resume from it at a sane lr to the end."""
    out = tmp_path / "sft"
    base = stage_args("sft", toy_task, inputs)
    good = [a for a in base if not a.startswith(("train.max_steps", "train.save_every"))]
    run([*good, "train.max_steps=4", "train.save_every=2"], out)
    proc = subprocess.run(cli([*good, f"--resume={out}", "train.max_steps=8", "train.save_every=2",
                               "optim.lr=1e30"], out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mindrlhf: error: diverged at step "), proc.stderr[-2000:]
    manager = CheckpointManager(str(out))
    assert manager.steps() == [2, 4] and manager.latest().endswith("step_00000004")
    saved = load_file(os.path.join(manager.latest(), "model.safetensors"))
    assert all(np.isfinite(v).all() for v in saved.values())
    run([*good, f"--resume={out}", "train.max_steps=8", "train.save_every=2", "optim.lr=3e-3"], out)  # config.yaml says 1e30
    final = weights(out / "model")
    assert all(np.isfinite(v).all() for v in final.values())
    assert [r["step"] for r in read_metrics(str(out / "metrics.jsonl"))][-1] == 8
