"""PPO on 2 msrun workers equals one process on the same global batch: rollouts are split over the ranks,
gathered for the update, and every rank takes its rows of the same shuffled mini-batches.

Sampling is made deterministic (top_k = 1) so both runs see the same responses; the reward model is a
folder with a random head (a fresh head scores everything 0), the critic starts from it.
"""
import numpy as np
import pytest
from safetensors.numpy import load_file

from mindrlhf.config import load_config
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.ppo import PPOConfig, train_ppo

from . import jobs

pytestmark = pytest.mark.slow

ITERATIONS = 3
TOL = 1e-5
GLOBAL_METRICS = ("score", "reward", "kl", "explained_var", "pg_loss", "entropy", "vf_loss", "clipfrac")


def ppo_args(task, out):
    return [f"policy={task / 'policy'}", f"reward_model={task / 'rm'}", f"data.prompts={task / 'prompts.jsonl'}",
            f"out_dir={out}", "progress=false", f"algo.iterations={ITERATIONS}", "save_every=0",
            "rollout.batch_size=16", "algo.mini_batch_size=8", "algo.epochs=2", "rollout.max_new_tokens=8",
            "rollout.top_k=1", "actor_optim.lr=1e-2", "critic_optim.lr=1e-2", "algo.adaptive_kl=true",
            "algo.kl_target=0.5", "algo.kl_horizon=100"]


@pytest.fixture(scope="module")
def runs(task, tmp_path_factory):
    return jobs.once(tmp_path_factory, "ppo_dp", lambda root: make_runs(task, root))


def make_runs(task, root):
    dp, single, ranks = root / "dp2", root / "single", root / "ranks"
    proc = jobs.start(2, "ppo", ppo_args(task, dp), root / "logs", rank_weights=ranks)
    try:
        train_ppo(load_config(PPOConfig, None, ppo_args(task, single)))  # the reference, meanwhile
        jobs.finish(proc, root / "logs")
    finally:
        jobs.kill_tree(proc.pid)
    return {"dp": str(dp), "single": str(single), "ranks": str(ranks / f"step_{ITERATIONS:08d}")}


@pytest.mark.parametrize("cell", ["actor", "critic"])
def test_two_workers_match_one_process(runs, cell):
    diff = jobs.max_difference(jobs.final_weights(runs["dp"], cell), jobs.final_weights(runs["single"], cell))
    assert diff <= TOL, diff


@pytest.mark.parametrize("cell", ["actor", "critic"])
def test_both_ranks_hold_identical_parameters(runs, cell):
    rank0 = load_file(str(runs["ranks"] / f"rank0.{cell}.safetensors"))
    rank1 = load_file(str(runs["ranks"] / f"rank1.{cell}.safetensors"))
    assert jobs.max_difference(rank0, rank1) == 0.0


def test_logged_metrics_describe_the_global_batch(runs):
    """Score, KL (which also drives the adaptive β) and the losses are the whole batch's, as one process logs them."""
    dp, single = read_metrics(str(runs["dp"] / "metrics.jsonl")), read_metrics(str(runs["single"] / "metrics.jsonl"))
    assert [r["step"] for r in dp] == [r["step"] for r in single] == list(range(1, ITERATIONS + 1))
    for key in GLOBAL_METRICS + ("kl_coef",):
        np.testing.assert_allclose([r[key] for r in dp], [r[key] for r in single], rtol=1e-4, atol=1e-6, err_msg=key)
    assert dp[-1]["kl_coef"] != dp[0]["kl_coef"]  # β moved, on both sides alike


def test_products_written_once_by_rank_zero(runs):
    assert (runs["dp"] / "model" / "model.safetensors").is_file()
    assert (runs["dp"] / "metrics.png").is_file()
    assert not list(runs["dp"].glob("**/*.tmp-*"))  # no half-written files left by a second writer
