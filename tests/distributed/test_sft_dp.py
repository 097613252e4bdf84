"""SFT on 2 msrun workers equals one process on the same global batch, step for step; both ranks hold the
same parameters; the 2-worker run, killed halfway, resumes from its checkpoint in a single process (so
checkpoints do not depend on the worker count) and ends where the single-process run ends.

One 2-worker job does it all (a job costs tens of seconds here): it is killed once its checkpoint at
step ``KILL_AT`` or later and both ranks' weights at that step are on disk. Meanwhile the single-process
reference trains in this process.
"""
import os
import shutil
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindrlhf.config import load_config
from mindrlhf.trainers.checkpoint import CheckpointManager
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.sft import SFTConfig, train_sft

from . import jobs

pytestmark = pytest.mark.slow

STEPS, SAVE_EVERY, KILL_AT = 24, 4, 12
TOL = 1e-5


def sft_args(task, out):
    return [f"data.train={task / 'demos.jsonl'}", f"tokenizer={task / 'tok'}", f"out_dir={out}",
            "model=tiny", f"train.max_steps={STEPS}", "train.batch_size=8", "train.log_every=1",
            f"train.save_every={SAVE_EVERY}", f"train.keep_checkpoints={STEPS}", "train.eval_every=0",
            "train.progress=false"]


def step_of(checkpoint: str) -> int:
    return int(os.path.basename(checkpoint).split("_")[1])


def kill_when_saved(proc, run_dir, ranks_dir, record: dict):
    """Kill the job once a checkpoint at step >= KILL_AT and both ranks' weights at that step are on disk."""
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            latest = CheckpointManager(str(run_dir)).latest()
            if latest is not None and step_of(latest) >= KILL_AT:
                dumps = ranks_dir / os.path.basename(latest)
                if all((dumps / f"rank{r}.model.safetensors").exists() for r in (0, 1)):
                    record["step"] = step_of(latest)
                    return
            if proc.poll() is not None:
                record["error"] = f"the job exited ({proc.returncode}) before step {KILL_AT} was saved"
                return
            time.sleep(0.05)
        record["error"] = "timed out waiting for the checkpoint"
    finally:
        jobs.kill_tree(proc.pid)
        record["returncode"] = proc.wait()


@pytest.fixture(scope="module")
def runs(task, tmp_path_factory):
    return jobs.once(tmp_path_factory, "sft_dp", lambda root: make_runs(task, root))


def make_runs(task, root):
    dp, single, ranks = root / "dp2", root / "single", root / "ranks"
    proc = jobs.start(2, "sft", sft_args(task, dp), root / "logs", rank_weights=ranks)
    killed: dict = {}
    killer = threading.Thread(target=kill_when_saved, args=(proc, dp, ranks, killed))
    killer.start()
    try:
        train_sft(load_config(SFTConfig, None, sft_args(task, single)))  # the reference, meanwhile
    finally:
        killer.join()
    assert "error" not in killed, killed["error"] + "\n" + open(str(root / "logs") + ".console.txt").read()[-3000:]
    at_kill = root / "dp2_at_kill"
    shutil.copytree(dp, at_kill)
    return {"dp": str(dp), "at_kill": str(at_kill), "single": str(single), "ranks": str(ranks), "killed": killed}


def weights_at(run_dir, step: int) -> dict:
    return load_file(os.path.join(str(run_dir), "checkpoints", f"step_{step:08d}", "model.safetensors"))


def test_two_workers_match_one_process_until_killed(runs):
    step = runs["killed"]["step"]
    assert step < STEPS and runs["killed"]["returncode"] != 0, runs["killed"]  # killed, not finished
    for s in range(SAVE_EVERY, step + 1, SAVE_EVERY):
        diff = jobs.max_difference(weights_at(runs["dp"], s), weights_at(runs["single"], s))
        assert diff <= TOL, (s, diff)


def test_both_ranks_hold_identical_parameters(runs):
    folder = runs["ranks"] / f"step_{runs['killed']['step']:08d}"
    rank0 = load_file(str(folder / "rank0.model.safetensors"))
    rank1 = load_file(str(folder / "rank1.model.safetensors"))
    assert jobs.max_difference(rank0, rank1) == 0.0
    assert jobs.max_difference(rank0, weights_at(runs["dp"], runs["killed"]["step"])) == 0.0  # rank 0 saved them


def test_logged_loss_is_the_global_batch_loss(runs):
    """Rank 0 logs the loss of the whole batch (all-reduced), not of its half: the single process's numbers."""
    dp = read_metrics(str(runs["at_kill"] / "metrics.jsonl"))
    single = {r["step"]: r for r in read_metrics(str(runs["single"] / "metrics.jsonl"))}
    assert len(dp) >= runs["killed"]["step"]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in dp], [single[r["step"]][key] for r in dp], rtol=TOL, err_msg=key)


def test_killed_two_worker_run_resumes_in_one_process(runs, task, tmp_path):
    """Checkpoints are plain weights: one process continues the killed 2-worker run to the same end."""
    run_dir = tmp_path / "resumed"
    shutil.copytree(runs["at_kill"], run_dir)
    train_sft(load_config(SFTConfig, None, sft_args(task, run_dir)), resume=str(run_dir))
    diff = jobs.max_difference(weights_at(run_dir, STEPS), weights_at(runs["single"], STEPS))
    assert diff <= TOL, diff
    steps = [r["step"] for r in read_metrics(str(run_dir / "metrics.jsonl"))]
    assert steps == list(range(1, STEPS + 1))  # nothing lost or logged twice across the kill
