"""The built-in task's labeler and judge as the functions a task names (see :mod:`mindrlhf.tasks`).

Both read the world from the ``world.json`` file given in their kwargs (``{world: data/world.json}``):

- :func:`rank` ranks each prompt's K answers best first by the hidden labeler's score plus Gaussian noise
  (:meth:`~mindrlhf.data.builtin.labeler.Labeler.rank`), drawing from ``rng`` prompt by prompt in order;
- :func:`judge` is the labeler's score without noise, for evaluation (and as a reward, where a run asks for
  the task's true score).
"""
from __future__ import annotations

import functools
import os
from typing import List, Sequence

import numpy as np

from mindrlhf.data.builtin.labeler import Labeler
from mindrlhf.data.builtin.world import load_world


@functools.lru_cache(maxsize=4)
def _labeler(path: str, mtime_ns: int) -> Labeler:
    return Labeler(load_world(path))


def labeler_of(world: str) -> Labeler:
    """The labeler of the world in the file ``world`` (read once per file version)."""
    path = os.path.abspath(world)
    return _labeler(path, os.stat(path).st_mtime_ns)


def rank(prompts: Sequence[str], responses_per_prompt: Sequence[Sequence[str]], *, world: str,
         rng: np.random.Generator, noise: float = 0.0, **columns) -> List[List[int]]:
    """For each prompt, the indices of its responses best first by ``score + noise · N(0, 1)``."""
    labeler = labeler_of(world)
    return [labeler.rank(p, responses, rng, noise) for p, responses in zip(prompts, responses_per_prompt)]


def judge(prompts: Sequence[str], responses: Sequence[str], *, world: str, **columns) -> List[float]:
    """The hidden labeler's score of each response to its prompt (the rubric of :mod:`.labeler`)."""
    labeler = labeler_of(world)
    return [labeler.score(p, r) for p, r in zip(prompts, responses)]
