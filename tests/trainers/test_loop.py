"""The one loop's promises, on a one-layer regression stage: the divergence guard, run-folder ownership,
checkpoint fallback and pruning, SIGINT/SIGTERM, and plain log lines without a terminal."""
import hashlib
import os
import shutil
import signal

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindrlhf.trainers.checkpoint import CheckpointManager
from mindrlhf.trainers.loop import (CadenceConfig, DivergedError, Interrupted, RunDirError, Stage, prepare_run_dir,
                                    run_loop)
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.step import OptimConfig, Updater

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 4)).astype(np.float32)
Y = RNG.normal(size=8).astype(np.float32)
STEPS = 6


class SquaredError(nn.Cell):
    def __init__(self):
        super().__init__()
        self.net = nn.Dense(4, 1, weight_init="ones", bias_init="zeros")

    def construct(self, x, y, normalizer):
        d = self.net(x)[:, 0] - y
        return ops.reduce_sum(d * d) / normalizer, ops.reduce_mean(d)


class Regression(Stage):
    """Step i fits (X, Y); ``nan_at`` feeds a NaN target at that step; ``on_step`` runs as each step starts."""

    name, unit = "toy", "row"

    def __init__(self, nan_at: int = -1, on_step=None):
        self.cell = SquaredError()
        self.updater = Updater(self.cell, self.cell.trainable_params(), OptimConfig(lr=0.05, warmup_steps=0),
                               total_steps=STEPS)
        self.total_steps, self.nan_at, self.on_step, self.seen = STEPS, nan_at, on_step, 0

    def cells(self):
        return {"model": self.cell}

    def updaters(self):
        return {"model": self.updater}

    def step(self, step):
        if self.on_step:
            self.on_step(step)
        y = np.full_like(Y, np.nan) if step == self.nan_at else Y
        loss, _, grad_norm = self.updater.step([(ms.Tensor(X), ms.Tensor(y), ms.Tensor(8.0, ms.float32))])
        self.seen += 1
        return {"loss": loss, "grad_norm": grad_norm}, 8

    def state(self):
        return {"seen": self.seen}

    def restore(self, state):
        self.seen = state["seen"]

    def weight(self):
        return self.cell.net.weight.asnumpy().copy()


def cadence(**kw):
    return CadenceConfig(**{"log_every": 1, "eval_every": 0, "save_every": 2, "keep_checkpoints": 2,
                            "progress": False, **kw})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    stage = Regression()
    run_loop(stage, cadence(), str(tmp_path_factory.mktemp("full")))
    return stage.weight()


def test_a_diverged_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(DivergedError, match=r"diverged at step 4: loss=nan"):
        run_loop(Regression(nan_at=3), cadence(), str(tmp_path))
    manager = CheckpointManager(str(tmp_path))
    assert manager.steps() == [2] and manager.latest().endswith("step_00000002")
    resumed = Regression()
    run_loop(resumed, cadence(), str(tmp_path), resume=str(tmp_path))  # the good checkpoint still resumes
    assert np.isfinite(resumed.weight()).all()


def test_a_model_that_stopped_learning_stops_the_run(tmp_path):
    """A target of zeros and a zero-initialised regression: the gradient is exactly 0 from the first step."""

    class Dead(Regression):
        def __init__(self):
            super().__init__()
            self.cell.net.weight.set_data(ms.Tensor(np.zeros((1, 4), np.float32)))

        def step(self, step):
            loss, _, grad_norm = self.updater.step([(ms.Tensor(X), ms.Tensor(np.zeros_like(Y)),
                                                     ms.Tensor(8.0, ms.float32))])
            return {"loss": loss, "grad_norm": grad_norm}, 8

    stage = Dead()
    stage.dead_after = 3
    with pytest.raises(DivergedError, match="gradient norm has been exactly 0 for 3 steps"):
        run_loop(stage, cadence(), str(tmp_path))


def tree_digest(root) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            path = os.path.join(folder, f)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_a_fresh_run_into_a_used_folder_is_refused_and_changes_nothing(tmp_path):
    run_loop(Regression(), cadence(), str(tmp_path), config=None)
    (tmp_path / "notes.txt").write_text("mine")
    before = tree_digest(tmp_path)
    with pytest.raises(RunDirError, match="--resume"):
        prepare_run_dir(str(tmp_path))
    assert tree_digest(tmp_path) == before
    prepare_run_dir(str(tmp_path), overwrite=True)  # removes what a run owns, keeps the rest
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_resume_falls_back_past_a_corrupt_checkpoint_and_a_missing_pointer(tmp_path, uninterrupted, capsys):
    run_loop(Regression(), cadence(keep_checkpoints=3), str(tmp_path))
    ckpts = tmp_path / "checkpoints"
    assert CheckpointManager(str(tmp_path)).steps() == [2, 4, 6]
    shutil.rmtree(ckpts / "step_00000006")
    os.remove(ckpts / "latest")  # no pointer: the newest complete folder is found by scanning
    (ckpts / "step_00000004" / "model.safetensors").write_bytes(b"\0" * 40)  # truncated
    resumed = Regression()
    run_loop(resumed, cadence(), str(tmp_path), resume=str(tmp_path))
    assert "step_00000004/model.safetensors: unreadable" in capsys.readouterr().out
    np.testing.assert_array_equal(resumed.weight(), uninterrupted)  # from step 2, bit for bit


def test_pruning_keeps_the_newest_steps_of_this_run_and_cleans_stray_temporaries(tmp_path):
    (tmp_path / "checkpoints" / "step_00000100").mkdir(parents=True)  # a later step number, not this run's
    (tmp_path / "checkpoints" / ".tmp-step_00000002-999").mkdir()  # a save killed half-way
    run_loop(Regression(), cadence(), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_00000004", "step_00000006",
                                                            "step_00000100"]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000006"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_resumes_to_the_same_weights(sig, tmp_path, uninterrupted, capsys):
    stage = Regression(on_step=lambda step: os.kill(os.getpid(), sig) if step == 2 else None)
    handler = signal.getsignal(sig)
    with pytest.raises(Interrupted) as stopped:
        run_loop(stage, cadence(save_every=100), str(tmp_path))
    assert stopped.value.exit_code == 128 + sig and "--resume" in str(stopped.value)
    assert CheckpointManager(str(tmp_path)).steps() == [3]  # saved at the step it stopped, off the cadence
    assert signal.getsignal(sig) is handler  # the loop's handler is gone once the loop returns
    resumed = Regression()
    run_loop(resumed, cadence(save_every=100), str(tmp_path), resume=str(tmp_path))
    np.testing.assert_array_equal(resumed.weight(), uninterrupted)
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == list(range(1, STEPS + 1))


def test_without_a_terminal_the_loop_prints_plain_metric_lines(tmp_path, capsys):
    run_loop(Regression(), cadence(progress=True, log_every=3), str(tmp_path))  # pytest's stderr is no tty
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("[toy] step")]
    assert [line.split()[2] for line in lines] == ["3/6", "6/6"] and "loss=" in lines[0] and "row_per_s=" in lines[0]
    assert "[toy] compiling" in out.out and "\r" not in out.err
