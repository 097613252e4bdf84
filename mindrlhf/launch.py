"""`mindrlhf launch`: run one stage on N data-parallel workers per node through MindSpore's ``msrun``.

    mindrlhf launch -n 2 sft --config configs/sft_builtin.yaml train.max_steps=50
    mindrlhf launch -n 8 --nodes 2 --node-rank 1 --master-addr 10.0.0.1 ppo --config ppo.yaml

Every worker runs the stage's own command unchanged (``msrun_entry.py``); ``runtime.setup`` joins the
group and the trainers split each global batch over the ranks. What this module adds is what msrun
does not check before it spawns anything: that the scheduler's port is free, that the stage's config
loads, and that its batch sizes divide over the world size. Each of those fails in a second with one
line, instead of after a minute of workers waiting for one another. When the job fails, it names the
worker log that holds the first error and prints its last lines.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Callable, Optional

# The stages that train under msrun, and how each checks its batch sizes against the world size
# (a clear error, or the per-rank sizes).
WORLD_CHECKS = {
    "sft": lambda cfg, world: cfg.train.layout(world),
    "rm": lambda cfg, world: cfg.train.layout(world),
    "ppo": lambda cfg, world: cfg.layout(world),
    "dpo": lambda cfg, world: cfg.train.layout(world),
    "grpo": lambda cfg, world: cfg.layout(world),
}

# What a failed worker's log shows first: a Python traceback, our one-line error, MindSpore's C++ error.
ERROR_PATTERN = re.compile(r"Traceback \(most recent call last\)|^mindrlhf: error:|^\[ERROR\]|Error:", re.M)
# msrun's report of a worker that ended badly (killed, or a non-zero exit), and a worker's first line.
WORKER_EXIT = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")
WORKER_PID = re.compile(r"^\[worker\] pid (\d+)$", re.M)


@dataclasses.dataclass
class LaunchPlan:
    """One node's share of a job: ``workers`` local processes out of ``workers * nodes``."""

    stage: str
    stage_args: list
    workers: int = 1
    nodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 8118
    log_dir: str = ""
    cluster_timeout: int = 600

    @property
    def world_size(self) -> int:
        return self.workers * self.nodes


def _fail(message: str):
    raise ValueError(f"launch: {message}")


def check_plan(plan: LaunchPlan, stage_config: Callable[[str, list], object]):
    """Everything that can be checked before spawning: sizes, the stage's config and batch layout, the port.
    ``stage_config(stage, stage_args)`` reads the config as the stage command does. Returns that config."""
    if plan.stage not in WORLD_CHECKS:
        _fail(f"stage {plan.stage!r} cannot be launched; expected one of {', '.join(WORLD_CHECKS)} "
              "(run a pipeline's stages one launch at a time)")
    if plan.workers < 1 or plan.nodes < 1:
        _fail(f"-n {plan.workers} --nodes {plan.nodes}: both must be >= 1")
    if not 0 <= plan.node_rank < plan.nodes:
        _fail(f"--node-rank {plan.node_rank} is outside 0..{plan.nodes - 1} for --nodes {plan.nodes}")
    if not 1024 <= plan.master_port <= 65535:
        _fail(f"--master-port {plan.master_port}: expected a port in 1024..65535")
    cfg = stage_config(plan.stage, plan.stage_args)
    WORLD_CHECKS[plan.stage](cfg, plan.world_size)
    if plan.node_rank == 0:  # the scheduler listens on node 0; other nodes only connect to it
        check_port_free(plan.master_addr, plan.master_port)
    return cfg


def check_port_free(addr: str, port: int) -> None:
    """Bind ``addr:port`` the way a listening scheduler would; a clear error if something holds it.

    SO_REUSEADDR, as servers set it, so a port left in TIME_WAIT by the previous run still counts as free.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((addr, port))
    except OSError as err:
        _fail(f"--master-port {port} on {addr} is in use ({err.strerror}); pick another port with --master-port")
    finally:
        sock.close()


def msrun_command(plan: LaunchPlan) -> list:
    """The msrun command line; the active interpreter runs it, and PATH (see :func:`worker_env`) makes the
    workers' ``python`` the same interpreter."""
    entry = os.path.join(os.path.dirname(os.path.abspath(__file__)), "msrun_entry.py")
    cmd = [sys.executable, "-m", "mindspore.parallel.cluster.run",
           f"--worker_num={plan.world_size}", f"--local_worker_num={plan.workers}",
           f"--master_addr={plan.master_addr}", f"--master_port={plan.master_port}",
           f"--log_dir={plan.log_dir}", "--join=True", f"--cluster_time_out={plan.cluster_timeout}",
           "--tail_worker_log=0"]  # the console shows rank 0; every rank's output is in its log
    if plan.nodes > 1:
        cmd.append(f"--node_rank={plan.node_rank}")
    return cmd + [entry, plan.stage, *plan.stage_args]


def worker_env(base: Optional[dict] = None) -> dict:
    """msrun starts workers as plain ``python``: put this interpreter's bin first on PATH, and this
    package's parent on PYTHONPATH so a source checkout works without installing."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("GLOG_v", "3")  # MindSpore's C++ log: errors only
    return env


def attempt_dir(log_root: str) -> str:
    """A new ``attempt_<n>`` folder under ``log_root``: a relaunch (e.g. with --resume) keeps earlier logs."""
    n = 1
    while os.path.exists(os.path.join(log_root, f"attempt_{n}")):
        n += 1
    return os.path.join(log_root, f"attempt_{n}")


def log_of_pid(log_dir: str, pid: int) -> Optional[str]:
    """The worker log whose process had ``pid`` (each worker writes its pid first, see msrun_entry.py)."""
    for path in sorted(glob.glob(os.path.join(log_dir, "worker_*.log"))):
        with open(path, encoding="utf-8", errors="replace") as fh:
            if any(int(m) == pid for m in WORKER_PID.findall(fh.read(4096))):
                return path
    return None


def relay(stream, seen: list) -> None:
    """Copy msrun's output to ours, without its INFO lines; keep its reports of workers that ended badly."""
    for line in stream:
        match = WORKER_EXIT.search(line)
        if match:
            seen.append((int(match.group(1)), int(match.group(2))))
        if not line.startswith("[INFO]"):
            sys.stdout.write(line)
            sys.stdout.flush()


def first_error_log(log_dir: str) -> Optional[str]:
    """The worker log (else the scheduler's) holding an error that stopped writing first.

    msrun kills the other workers once one fails, so their logs end later and mostly without an error;
    a log's modification time is when its process last wrote, its error included."""
    failed = []
    for path in glob.glob(os.path.join(log_dir, "worker_*.log")) + glob.glob(os.path.join(log_dir, "scheduler.log")):
        with open(path, encoding="utf-8", errors="replace") as fh:
            if ERROR_PATTERN.search(fh.read()):
                failed.append((os.path.basename(path) == "scheduler.log", os.path.getmtime(path), path))
    return min(failed)[2] if failed else None


def tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a worker log, without MindSpore's INFO lines."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        return "".join([line for line in fh if not line.startswith("[INFO]")][-lines:])


def launch(plan: LaunchPlan, stage_config: Callable[[str, list], object]) -> int:
    """Check the plan (see :func:`check_plan`), run msrun to the end, and on failure point at the first error.
    Returns msrun's status."""
    cfg = check_plan(plan, stage_config)
    plan = dataclasses.replace(plan, log_dir=attempt_dir(plan.log_dir or os.path.join(cfg.out_dir, "logs")))
    print(f"[launch] {plan.stage} on {plan.world_size} workers ({plan.workers} on this node, node "
          f"{plan.node_rank} of {plan.nodes}); logs in {plan.log_dir}", flush=True)
    proc = subprocess.Popen(msrun_command(plan), env=worker_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    exits: list = []
    pump = threading.Thread(target=relay, args=(proc.stdout, exits), daemon=True)
    pump.start()
    stopped = []

    def stop(signum, frame):  # SIGTERM (a job scheduler, `kill`): msrun stops its workers on SIGINT
        stopped.append(signum)
        proc.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # msrun got the same Ctrl-C and stops its workers; wait for it
        stopped.append(signal.SIGINT)
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        pump.join(timeout=5)
    if stopped:  # msrun exits 0 after stopping its workers on request; the job did not finish
        print(f"[launch] stopped by signal {stopped[0]}; worker logs in {plan.log_dir}", file=sys.stderr)
        return 128 + stopped[0]
    if code != 0:
        dead = [(pid, status, log_of_pid(plan.log_dir, pid)) for pid, status in exits]
        dead = [d for d in dead if d[2]]
        where = dead[0][2] if dead else first_error_log(plan.log_dir)
        if dead:
            pid, status, _ = dead[0]
            how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
            print(f"\n[launch] failed: {os.path.basename(where)[:-4].replace('_', ' ')} (pid {pid}) {how} first; "
                  f"its log is {where}; its last lines:\n{tail(where)}", file=sys.stderr, flush=True)
        elif where:
            print(f"\n[launch] failed (status {code}); the first error is in {where}; its last lines:\n"
                  f"{tail(where)}", file=sys.stderr, flush=True)
        else:
            print(f"\n[launch] failed (status {code}); no worker log shows an error; see {plan.log_dir}",
                  file=sys.stderr, flush=True)
    return code
