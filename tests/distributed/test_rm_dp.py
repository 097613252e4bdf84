"""Reward model on 2 msrun workers equals one process on the same global batch, and the logged loss and
train accuracy are the whole batch's (accuracy from per-row sums added over the ranks)."""
import numpy as np
import pytest

from mindrlhf.config import load_config
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.reward import RMConfig, train_rm

from . import jobs

pytestmark = pytest.mark.slow

STEPS = 6


def rm_args(task, out):
    return [f"model={task / 'policy'}", f"data.train={task / 'rankings.jsonl'}", f"out_dir={out}",
            "train.batch_size=8", f"train.max_steps={STEPS}", "train.log_every=1", "train.eval_every=0",
            "train.progress=false", "optim.lr=1e-2"]


@pytest.fixture(scope="module")
def runs(task, tmp_path_factory):
    return jobs.once(tmp_path_factory, "rm_dp", lambda root: make_runs(task, root))


def make_runs(task, root):
    dp, single = root / "dp2", root / "single"
    proc = jobs.start(2, "rm", rm_args(task, dp), root / "logs", rank_weights=root / "ranks")
    try:
        train_rm(load_config(RMConfig, None, rm_args(task, single)))  # the reference, meanwhile
        jobs.finish(proc, root / "logs")
    finally:
        jobs.kill_tree(proc.pid)
    return {"dp": str(dp), "single": str(single), "ranks": str(root / "ranks" / f"step_{STEPS:08d}")}


def test_two_workers_match_one_process(runs):
    from safetensors.numpy import load_file

    # The ranking loss sees only reward differences, so the head's bias has gradient 0 up to rounding, and
    # AdamW scales that rounding noise up to lr-sized steps: it differs between any two summation orders.
    diff = jobs.max_difference(jobs.final_weights(runs["dp"], "model"), jobs.final_weights(runs["single"], "model"),
                               skip={"head.bias"})
    assert diff <= 1e-5, diff
    rank0, rank1 = (load_file(str(runs["ranks"] / f"rank{r}.model.safetensors")) for r in (0, 1))
    assert jobs.max_difference(rank0, rank1) == 0.0


def test_logged_loss_and_accuracy_are_the_global_batch_ones(runs):
    dp, single = read_metrics(str(runs["dp"] / "metrics.jsonl")), read_metrics(str(runs["single"] / "metrics.jsonl"))
    assert len(dp) == len(single) == STEPS
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose([r[key] for r in dp], [r[key] for r in single], rtol=1e-5, err_msg=key)
    assert len({r["accuracy"] for r in dp}) > 1  # the accuracy moves, so matching it means something
    assert (runs["dp"] / "model" / "rm_stats.json").is_file()  # rank 0 wrote the product
