"""Checkpoints a run can resume from: weights, optimizer state, trainer state, config — written atomically.

Layout of a run folder::

    run/
      config.yaml                resolved config of the run
      metrics.jsonl              one JSON object per logged step
      metrics.png                curves, redrawn at the end
      checkpoints/step_00000040/ one folder per checkpoint:
          <cell>.safetensors     weights of each trained Cell (actor, critic, ...)
          <cell>.optim.ckpt      its optimizer's moments and step counter
          state.json             step, data-order RNG state, controller state, anything JSON
      checkpoints/latest         name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed into place only when complete, and
``latest`` is replaced atomically after it, so a run killed at any moment leaves the previous
checkpoint intact.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import mindspore as ms

from mindrlhf.io import atomic_write, atomic_write_text


def save_cell_weights(cell, path: str) -> None:
    """All parameters of ``cell`` to a safetensors file, atomically."""
    atomic_write(path, lambda tmp: ms.save_checkpoint(cell, tmp, format="safetensors"))


def load_cell_weights(cell, path: str) -> None:
    """Load a file written by :func:`save_cell_weights`; every parameter of ``cell`` must be present."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: weights file not found")
    tensors = ms.load_checkpoint(path, format="safetensors")
    own = {p.name: p for p in cell.get_parameters()}
    missing = sorted(set(own) - set(tensors))
    if missing:
        raise ValueError(f"{path}: lacks {len(missing)} parameters of {type(cell).__name__}, e.g. {missing[:3]}")
    for name, param in own.items():
        value = tensors[name]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, the model expects {tuple(param.shape)}")
        param.set_data(value)


class CheckpointManager:
    """Saves and finds checkpoints under ``run_dir/checkpoints``; keeps the newest ``keep``."""

    def __init__(self, run_dir: str, keep: int = 2):
        self.root = os.path.join(run_dir, "checkpoints")
        self.keep = keep

    def save(self, step: int, cells: dict, updaters: dict, state: dict, is_main: bool = True) -> Optional[str]:
        """Write checkpoint ``step``; ``cells``/``updaters`` map names to Cells/Updaters. Rank 0 only."""
        if not is_main:
            return None
        os.makedirs(self.root, exist_ok=True)
        name = f"step_{step:08d}"
        final = os.path.join(self.root, name)
        tmp = os.path.join(self.root, f".tmp-{name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for key, cell in cells.items():
            ms.save_checkpoint(cell, os.path.join(tmp, f"{key}.safetensors"), format="safetensors")
        for key, updater in updaters.items():
            params = [{"name": n, "data": t} for n, t in updater.state_dict().items()]
            ms.save_checkpoint(params, os.path.join(tmp, f"{key}.optim.ckpt"))
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as fh:
            json.dump(dict(state, step=step), fh)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(os.path.join(self.root, "latest"), name)
        self._prune()
        return final

    def _prune(self) -> None:
        done = sorted(d for d in os.listdir(self.root) if d.startswith("step_"))
        for old in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(os.path.join(self.root, old), ignore_errors=True)

    def latest(self) -> Optional[str]:
        pointer = os.path.join(self.root, "latest")
        if not os.path.isfile(pointer):
            return None
        with open(pointer, encoding="utf-8") as fh:
            path = os.path.join(self.root, fh.read().strip())
        return path if os.path.isdir(path) else None

    @staticmethod
    def load(path: str, cells: dict, updaters: dict) -> dict:
        """Restore ``cells`` and ``updaters`` from checkpoint folder ``path``; return its state dict."""
        for key, cell in cells.items():
            load_cell_weights(cell, os.path.join(path, f"{key}.safetensors"))
        for key, updater in updaters.items():
            optim_file = os.path.join(path, f"{key}.optim.ckpt")
            if not os.path.isfile(optim_file):
                raise FileNotFoundError(f"{optim_file}: optimizer state not found; the checkpoint is incomplete")
            updater.load_state_dict(ms.load_checkpoint(optim_file))
        with open(os.path.join(path, "state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
        for updater in updaters.values():
            updater.step_count = state.get("optimizer_steps", state["step"])
        return state
