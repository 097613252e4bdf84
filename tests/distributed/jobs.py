"""Starting, killing and reading `mindrlhf launch` jobs from tests."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from mindrlhf.trainers.checkpoint import CheckpointManager
from mindrlhf.trainers.loop import RANK_WEIGHTS_ENV

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def once(tmp_path_factory, name: str, build) -> dict:
    """``build(folder) -> dict`` run once per test session, even when pytest-xdist spreads a module's tests
    over several workers: they share the folder and the JSON result through a file lock, instead of each
    starting the same jobs (minutes here). ``build`` returns paths as strings; absolute ones come back as Paths."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    folder = base / name
    with FileLock(str(folder) + ".lock"):
        done = folder / "result.json"
        if not done.exists():
            folder.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(build(folder)))
        result = json.loads(done.read_text())
    return {k: Path(v) if isinstance(v, str) and os.path.isabs(v) else v for k, v in result.items()}


def free_port() -> int:
    """A port nothing listens on now (the OS picks it), so parallel tests do not collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_cmd(workers: int, stage: str, args, port: int, log_dir) -> list:
    return [sys.executable, "-m", "mindrlhf.cli", "launch", "-n", str(workers), "--master-port", str(port),
            "--log-dir", str(log_dir), stage, *map(str, args)]


def start(workers: int, stage: str, args, log_dir, rank_weights=None) -> subprocess.Popen:
    """`mindrlhf launch` in the background; with ``rank_weights`` every rank dumps its final weights there."""
    env = dict(os.environ)
    if rank_weights is not None:
        env[RANK_WEIGHTS_ENV] = str(rank_weights)
    out = open(os.path.join(str(log_dir) + ".console.txt"), "w")
    return subprocess.Popen(launch_cmd(workers, stage, args, free_port(), log_dir), cwd=REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log_dir, timeout: float = 400) -> str:
    """Wait for a launch; return its console output, asserting it succeeded."""
    code = proc.wait(timeout=timeout)
    with open(str(log_dir) + ".console.txt") as fh:
        console = fh.read()
    assert code == 0, f"launch failed ({code}):\n{console[-3000:]}"
    return console


def kill_tree(pid: int) -> None:
    """SIGKILL a launch and everything it started (msrun, the scheduler, workers in their own sessions)."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    for proc in root.children(recursive=True) + [root]:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def run_briefly(cmd, cwd, env, timeout: float) -> tuple:
    """Run a command expected to stop by itself within ``timeout``; if it does not (a launch that got past
    its checks), kill everything it started. Returns (exit status, stderr)."""
    proc = subprocess.Popen(cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        _, err = proc.communicate()
        return None, f"still running after {timeout} s:\n{err}"
    return proc.returncode, err


def final_weights(run_dir, cell: str) -> dict:
    return load_file(os.path.join(CheckpointManager(str(run_dir)).latest(), f"{cell}.safetensors"))


def max_difference(a: dict, b: dict, skip=()) -> float:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))[:5]
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if k not in skip)
