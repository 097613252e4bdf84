"""`mindrlhf launch`: the msrun command it builds, and launches that must fail fast with a clear message
(port in use, batch sizes that do not divide over the ranks) or point at the worker log that failed."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from mindrlhf.cli import main
from mindrlhf.launch import LaunchPlan, first_error_log, msrun_command, worker_env

from . import jobs


def sft_args(task, out, *extra):
    return [f"data.train={task / 'demos.jsonl'}", f"tokenizer={task / 'tok'}", f"out_dir={out}",
            "train.batch_size=8", "train.max_steps=2", *extra]


# ------------------------------------------------------------------ the command (no processes started)

def test_msrun_command_counts_workers_over_nodes():
    plan = LaunchPlan("sft", ["--config", "x.yaml", "optim.lr=1e-3"], workers=8, nodes=2, node_rank=1,
                      master_addr="10.0.0.1", master_port=9123, log_dir="L")
    cmd = msrun_command(plan)
    assert cmd[:3] == [sys.executable, "-m", "mindspore.parallel.cluster.run"]
    for flag in ("--worker_num=16", "--local_worker_num=8", "--node_rank=1", "--master_addr=10.0.0.1",
                 "--master_port=9123", "--log_dir=L", "--join=True"):
        assert flag in cmd, flag
    entry = cmd.index(next(c for c in cmd if c.endswith("msrun_entry.py")))
    assert cmd[entry + 1:] == ["sft", "--config", "x.yaml", "optim.lr=1e-3"]  # the stage's arguments unchanged
    single = msrun_command(LaunchPlan("sft", [], workers=2, log_dir="L"))
    assert "--worker_num=2" in single and not any(c.startswith("--node_rank") for c in single)


def test_workers_get_this_interpreter_first_on_path():
    env = worker_env({"PATH": "/usr/bin:/bin"})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)  # msrun runs plain `python`
    assert env["PYTHONPATH"].split(os.pathsep)[0] == jobs.REPO


def test_first_error_log_prefers_the_worker_that_failed_first(tmp_path):
    (tmp_path / "scheduler.log").write_text("")
    (tmp_path / "worker_0.log").write_text("step 1\nstep 2\n")  # killed by msrun: no error of its own
    (tmp_path / "worker_1.log").write_text("Traceback (most recent call last):\nValueError: boom\n")
    (tmp_path / "worker_2.log").write_text("[ERROR] lost the connection to rank 1\n")
    os.utime(tmp_path / "worker_1.log", (1000, 1000))
    os.utime(tmp_path / "worker_2.log", (2000, 2000))
    assert first_error_log(str(tmp_path)) == str(tmp_path / "worker_1.log")
    (tmp_path / "worker_1.log").write_text("fine\n")
    (tmp_path / "worker_2.log").write_text("fine\n")
    assert first_error_log(str(tmp_path)) is None


# ------------------------------------------------------------------ launches refused before anything starts

def refused(capsys, argv, within: float = 20.0) -> str:
    t0 = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    assert elapsed < within, f"took {elapsed:.1f} s to refuse"
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    return err


@pytest.mark.slow
def test_port_in_use_is_refused_in_seconds(task, tmp_path, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        err = refused(capsys, ["launch", "-n", "2", "--master-port", str(port), "sft", *sft_args(task, tmp_path / "r")])
    assert f"--master-port {port}" in err and "in use" in err
    assert not (tmp_path / "r").exists()  # nothing was started


@pytest.mark.slow
@pytest.mark.parametrize("launch, stage_args, message", [
    (["-n", "2"], ["train.batch_size=7"], "train.batch_size: 7 does not divide over 2 ranks"),
    (["-n", "2", "--nodes", "2"], ["train.batch_size=6"], "train.batch_size: 6 does not divide over 4 ranks"),
    (["-n", "2"], ["train.batch_size=8", "train.micro_batch_size=3"],
     "train.micro_batch_size: 3 does not divide the per-rank batch of 4"),
])
def test_sft_batch_that_does_not_divide_is_refused(task, tmp_path, capsys, launch, stage_args, message):
    err = refused(capsys, ["launch", *launch, "--master-port", str(jobs.free_port()), "sft",
                           *sft_args(task, tmp_path / "r", *stage_args)])
    assert message in err


@pytest.mark.slow
@pytest.mark.parametrize("sizes, message", [
    (["rollout.batch_size=6", "algo.mini_batch_size=2"], "rollout.batch_size: 6 does not divide over 4 ranks"),
    (["rollout.batch_size=12", "algo.mini_batch_size=6"], "algo.mini_batch_size: 6 does not divide over 4 ranks"),
])
def test_ppo_batch_that_does_not_divide_is_refused(task, tmp_path, capsys, sizes, message):
    args = [f"policy={task / 'policy'}", f"reward_model={task / 'rm'}", f"data.prompts={task / 'prompts.jsonl'}",
            f"out_dir={tmp_path / 'r'}", *sizes]
    err = refused(capsys, ["launch", "-n", "4", "--master-port", str(jobs.free_port()), "ppo", *args])
    assert message in err


def test_a_stage_that_cannot_be_launched_is_refused(capsys):
    assert main(["launch", "-n", "2", "pipeline"]) == 2
    assert "stage 'pipeline' cannot be launched" in capsys.readouterr().err


# ------------------------------------------------------------------ a job whose workers fail

@pytest.mark.slow
def test_failed_job_points_at_the_worker_log_with_the_error(task, tmp_path):
    logs = tmp_path / "logs"
    cmd = jobs.launch_cmd(2, "sft", sft_args(task, tmp_path / "r", f"data.train={tmp_path / 'missing.jsonl'}"),
                          jobs.free_port(), logs)
    # msrun kills the other worker; the scheduler then waits out its heartbeat (MindSpore's MS_NODE_TIMEOUT,
    # 30 s by default) before the job ends: shortened here to save the test's time
    env = dict(os.environ, MS_NODE_TIMEOUT="10")
    code, err = jobs.run_briefly(cmd, cwd=tmp_path, env=env, timeout=150)  # the job ends: nothing hangs
    assert code not in (0, None), err
    summary = err[err.index("[launch] failed"):]
    assert str(logs / "attempt_1" / "worker_") in summary
    assert "missing.jsonl" in summary  # the log's last lines, with the worker's one-line error
    assert "[INFO]" not in err  # msrun's INFO lines stay in its logs


@pytest.mark.slow
def test_a_killed_worker_is_named_and_a_relaunch_keeps_the_earlier_logs(task, tmp_path):
    logs, out = tmp_path / "logs", tmp_path / "r"
    args = sft_args(task, out, "train.max_steps=100000", "train.save_every=0", "train.log_every=1")
    proc = subprocess.Popen(jobs.launch_cmd(2, "sft", args, jobs.free_port(), logs), cwd=tmp_path,
                            env=dict(os.environ, MS_NODE_TIMEOUT="10"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    worker0, worker1 = logs / "attempt_1" / "worker_0.log", logs / "attempt_1" / "worker_1.log"
    try:
        deadline, pid = time.time() + 240, None
        while time.time() < deadline and pid is None:  # training has started (rank 0 logs the steps)
            if worker0.exists() and "[sft] step 2/" in worker0.read_text():
                pid = int(worker1.read_text().split("[worker] pid ")[1].split()[0])
            time.sleep(0.2)
        assert pid is not None, "the job never started training"
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=150)
    finally:
        jobs.kill_tree(proc.pid)
    assert proc.returncode != 0
    assert f"worker 1 (pid {pid}) was killed by signal 9 first; its log is {worker1}" in err, err[-3000:]
    again = jobs.launch_cmd(2, "sft", sft_args(task, out, f"data.train={tmp_path / 'missing.jsonl'}"),
                            jobs.free_port(), logs)
    code, _ = jobs.run_briefly(again, cwd=tmp_path, env=dict(os.environ, MS_NODE_TIMEOUT="10"), timeout=150)
    assert code not in (0, None)
    assert worker1.exists() and (logs / "attempt_2" / "worker_1.log").exists()  # a folder per attempt


# ------------------------------------------------------------------ run/ scripts reach the launcher's checks

@pytest.mark.slow
@pytest.mark.parametrize("script, options, message", [
    ("launch.sh", ["8"], "train.batch_size: 12 does not divide over 8 ranks"),
    ("launch_multinode.sh", ["--node_rank", "1", "--master_addr", "127.0.0.1", "--nodes", "2", "--nproc", "5"],
     "train.batch_size: 12 does not divide over 10 ranks"),
])
def test_run_scripts_pass_stage_config_and_sizes_to_the_launcher(script, options, message, tmp_path):
    cmd = ["bash", os.path.join(jobs.REPO, "run", script), *options, "sft",
           os.path.join(jobs.REPO, "configs", "sft_builtin.yaml"), "train.batch_size=12"]
    code, err = jobs.run_briefly(cmd, cwd=tmp_path, env=dict(os.environ, PYTHON=sys.executable), timeout=60)
    assert code == 2 and message in err, err


def test_multinode_script_needs_its_node_rank_and_master_address():
    proc = subprocess.run(["bash", os.path.join(jobs.REPO, "run", "launch_multinode.sh"), "sft", "x.yaml"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "--node_rank" in proc.stderr
