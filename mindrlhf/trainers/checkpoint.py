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
        """Write checkpoint ``step``; ``cells``/``updaters`` map names to Cells/RoleOptimizers. Rank 0 only."""
        if not is_main:
            return None
        os.makedirs(self.root, exist_ok=True)
        self.clean_temporary()
        name = _name(step)
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
        self._prune(step)
        return final

    def _prune(self, step: int) -> None:
        """Keep the ``keep`` checkpoints with the highest step numbers up to ``step`` (the one just written)."""
        steps = sorted(n for n in self.steps() if n <= step)
        for old in steps[: max(0, len(steps) - max(1, self.keep))]:
            shutil.rmtree(os.path.join(self.root, _name(old)), ignore_errors=True)

    def steps(self) -> list[int]:
        """Step numbers of the complete checkpoint folders (``step_<n>``; temporary folders excluded)."""
        if not os.path.isdir(self.root):
            return []
        out = []
        for d in os.listdir(self.root):
            if d.startswith("step_") and d[5:].isdigit() and os.path.isdir(os.path.join(self.root, d)):
                out.append(int(d[5:]))
        return sorted(out)

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint: the one ``latest`` names, or the highest step folder when the
        pointer is missing or names a folder that is gone."""
        candidates = self.candidates()
        return candidates[0] if candidates else None

    def candidates(self) -> list[str]:
        """Checkpoint folders to resume from, best first: ``latest``'s, then the others by step, newest first."""
        folders = [os.path.join(self.root, _name(n)) for n in reversed(self.steps())]
        pointer = os.path.join(self.root, "latest")
        if os.path.isfile(pointer):
            with open(pointer, encoding="utf-8") as fh:
                named = os.path.join(self.root, fh.read().strip())
            if named in folders:
                folders.remove(named)
                folders.insert(0, named)
        return folders

    def clean_temporary(self) -> None:
        """Remove ``.tmp-*`` folders that a run killed in the middle of a save left behind."""
        if os.path.isdir(self.root):
            for d in os.listdir(self.root):
                if d.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.root, d), ignore_errors=True)

    @staticmethod
    def load(path: str, cells: dict, updaters: dict) -> dict:
        """Restore ``cells`` and ``updaters`` from checkpoint folder ``path``; return its state dict.
        A missing or unreadable file raises :class:`CheckpointError` naming it."""
        for key, cell in cells.items():
            _read(os.path.join(path, f"{key}.safetensors"), lambda f, c=cell: load_cell_weights(c, f))
        for key, updater in updaters.items():
            _read(os.path.join(path, f"{key}.optim.ckpt"), lambda f, u=updater: u.load_state_dict(ms.load_checkpoint(f)))
        state = _read(os.path.join(path, "state.json"), _read_json)
        for updater in updaters.values():
            updater.step_count = state.get("optimizer_steps", state["step"])
        return state


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated or corrupt; the message starts with its path."""


def _read(path: str, read):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not found; the checkpoint is incomplete")
    try:
        return read(path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        state = json.load(fh)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("expected a JSON object with a 'step'")
    return state


def _name(step: int) -> str:
    return f"step_{step:08d}"
