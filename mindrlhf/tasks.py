"""A task: data files plus two optional functions, the labeler and the judge.

Files, in the JSONL formats of :mod:`mindrlhf.data.formats`:

- ``demonstrations``: what SFT learns from;
- ``prompts``: sampled for the rankings and rolled out by PPO; a line's other fields (``{"prompt": ...,
  "product": "kettle"}``) reach the labeler, the judge and reward functions as columns;
- ``heldout_prompts``: answered by every policy for the report, never trained on;
- ``rankings`` (optional): rankings files people made, used in place of the labeler's.

Functions, each named ``"module:function"`` or ``"path/to/file.py:function"`` with fixed keyword arguments
from ``labeler_kwargs`` / ``judge_kwargs`` (:mod:`mindrlhf.plugins`)::

    labeler(prompts, responses_per_prompt, *, rng, noise, **columns) -> list[list[int]]
    judge(prompts, responses, **columns) -> list[float]

The **labeler** stands in for the people who compare answers: for each prompt, the indices of its K
responses best first. ``rng`` is a seeded numpy Generator and ``noise`` the config's ``rankings.noise``,
to simulate labelers who disagree (a labeler that ranks deterministically may ignore both). Prompts whose
answers are blank or all the same never reach it. The **judge** scores one answer (higher is better), the
convention of TRL's reward functions; it is for evaluation only (the report's win rates and score gains,
and PPO's logged ``judge_score``): never select a checkpoint, a config or a seed by it.

A registered task (:data:`TASKS`) writes its own files and brings its own functions: ``builtin`` is the
movie world of :mod:`mindrlhf.data.builtin`, its parameters the pipeline's ``builtin`` section.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from mindrlhf.config import field, require
from mindrlhf.data.builtin.task import write_builtin_task
from mindrlhf.data.formats import load_demonstrations, load_prompts
from mindrlhf.io import atomic_write_text
from mindrlhf.plugins import call_rankings, load_function, load_scorer, prompt_columns


@dataclasses.dataclass
class TaskConfig:
    name: str = field("builtin", "a registered task (builtin: the movie world, its data written from the "
                                 "pipeline's builtin section) or your task's own name, with its files below")
    demonstrations: str = field("", "demonstrations JSONL (SFT)")
    prompts: str = field("", "prompts JSONL: sampled for the rankings and rolled out by PPO; a line's other fields "
                             "reach the labeler, judge and reward functions as columns")
    heldout_prompts: str = field("", "prompts JSONL every policy answers for the report (never trained on)")
    rankings: List[str] = field([], "rankings JSONL files people made: round 1's reward model trains on them "
                                    "(concatenated) instead of on the labeler's rankings")
    labeler: str = field("", "module:function (or file.py:function) ranking K answers: labeler(prompts, "
                             "responses_per_prompt, *, rng, noise, **columns) -> index lists, best first")
    labeler_kwargs: dict = field({}, "fixed keyword arguments of the labeler, e.g. {world: data/world.json}")
    judge: str = field("", "module:function (or file.py:function) scoring answers for evaluation only: "
                           "judge(prompts, responses, **columns) -> list of floats; empty = no judge-based rows")
    judge_kwargs: dict = field({}, "fixed keyword arguments of the judge")
    chat_template: bool = field(True, "prompts go through the tokenizer's chat template in every stage; false = "
                                      "plain continuation: the prompt text, then the answer and EOS")
    corpus: str = field("", "text a sentencepiece tokenizer is trained on when sft.model is a preset; empty = the "
                            "demonstrations' and prompts' text")
    vocab_size: int = field(1000, "vocabulary of that tokenizer")

    def validate(self):
        require(bool(self.name), "name", f"give the task a name: {', '.join(TASKS)} or your own")
        own = ("demonstrations", "prompts", "heldout_prompts", "labeler", "labeler_kwargs", "judge", "judge_kwargs",
               "corpus")
        if self.name in TASKS:
            for key in own:
                require(not getattr(self, key), key, f"task {self.name!r} brings its own; to use yours, give the "
                                                     "task a name of its own (task.name: my_task)")
        else:
            for key in ("demonstrations", "prompts", "heldout_prompts"):
                require(bool(getattr(self, key)), key, f"required for task {self.name!r} (registered tasks, which "
                                                       f"write their own files: {', '.join(TASKS)})")
            require(bool(self.labeler) or bool(self.rankings), "labeler",
                    "set a labeler (module:function ranking K answers) or rankings files people made")
        for key in ("labeler", "judge"):
            require(not getattr(self, f"{key}_kwargs") or bool(getattr(self, key)), f"{key}_kwargs",
                    f"given without a {key}")
        require(self.vocab_size >= 1, "vocab_size", f"must be >= 1, got {self.vocab_size}")


@dataclasses.dataclass
class BuiltinConfig:
    seed: int = field(0, "world seed: another seed gives another catalogue, prompts and labeler")
    n_train: int = field(2000, "demonstrations")
    n_prompts: int = field(1000, "prompts for rankings and PPO rollouts")
    n_heldout: int = field(200, "held-out prompts for the final evaluation")
    shelf: int = field(0, "films listed with their facts in every prompt, one of them the right answer "
                          "(0 = none: the model must learn the catalogue; at least 3 otherwise)")

    def validate(self):
        for key in ("n_train", "n_prompts", "n_heldout"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.shelf == 0 or self.shelf >= 3, "shelf",
                f"{self.shelf}: use 0 (no shelf) or at least 3 (the right film, the seen one, a wrong one)")


@dataclasses.dataclass(frozen=True)
class RegisteredTask:
    """A task that writes its own files into a data folder and names its own functions."""

    files: Callable[[str], dict]  # data folder -> the TaskConfig keys it fills (files, functions, kwargs)
    write: Callable[[str, object], None]  # (data folder, the parameters section) -> writes the files
    written: Callable[[str], bool]  # data folder -> whether the files are all there


def _builtin_files(data_dir: str) -> dict:
    world = {"world": os.path.join(data_dir, "world.json")}
    return {"demonstrations": os.path.join(data_dir, "demonstrations.jsonl"),
            "prompts": os.path.join(data_dir, "prompts.jsonl"),
            "heldout_prompts": os.path.join(data_dir, "heldout_prompts.jsonl"),
            "corpus": os.path.join(data_dir, "corpus.txt"),
            "labeler": "mindrlhf.data.builtin.functions:rank", "labeler_kwargs": world,
            "judge": "mindrlhf.data.builtin.functions:judge", "judge_kwargs": dict(world)}


def _builtin_write(data_dir: str, params: BuiltinConfig) -> None:
    write_builtin_task(data_dir, seed=params.seed, n_train=params.n_train, n_prompts=params.n_prompts,
                       n_heldout=params.n_heldout, shelf=params.shelf)


TASKS: Dict[str, RegisteredTask] = {
    # world.json is the last file write_builtin_task writes
    "builtin": RegisteredTask(_builtin_files, _builtin_write,
                              lambda data_dir: os.path.isfile(os.path.join(data_dir, "world.json"))),
}


def resolve_task(task: TaskConfig, data_dir: str) -> TaskConfig:
    """``task`` with a registered task's files (in ``data_dir``) and functions filled in."""
    if task.name in TASKS:
        return dataclasses.replace(task, **TASKS[task.name].files(data_dir))
    return dataclasses.replace(task)


def data_written(task: TaskConfig, data_dir: str) -> bool:
    """Whether a registered task's files are in ``data_dir`` (a task of your own brings its files: True)."""
    return task.name not in TASKS or TASKS[task.name].written(data_dir)


def write_data(task: TaskConfig, params, data_dir: str) -> None:
    """Write a registered task's files into ``data_dir`` from its parameters section ``params``."""
    if task.name in TASKS:
        TASKS[task.name].write(data_dir, params)


def write_corpus(task: TaskConfig, path: str) -> str:
    """The text a tokenizer learns from: ``task.corpus`` when set, else the demonstrations (prompt and
    response, every turn's text) and the prompts, one line each, written to ``path``. Returns the file."""
    if task.corpus:
        return task.corpus
    lines = []
    for d in load_demonstrations(task.demonstrations):
        turns = [d.prompt] if isinstance(d.prompt, str) else [m["content"] for m in d.prompt]
        lines += turns + [d.response]
    lines += [p.prompt for p in load_prompts(task.prompts)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def load_labeler(task: TaskConfig) -> Optional[Callable]:
    """The task's labeler with its kwargs bound (None without one); a bad spec is a one-line ConfigError."""
    return load_function(task.labeler, "task.labeler", task.labeler_kwargs) if task.labeler else None


def load_judge(task: TaskConfig) -> Optional[Callable]:
    """``judge(prompts, responses, columns) -> float64 [n]``, checked (None without a judge)."""
    return load_scorer(task.judge, "task.judge", task.judge_kwargs) if task.judge else None


def make_rankings(prompts: Sequence[str], responses_per_prompt: Sequence[Sequence[str]], labeler: Callable,
                  spec: str, rng: np.random.Generator, noise: float = 0.5,
                  metas: Optional[Sequence[dict]] = None, scorer: Optional[Callable] = None) -> List[dict]:
    """Ranking records ``{"prompt", "responses", "ranking"}`` (ranking best first) by the ``labeler``
    (the function named ``spec``), called once on every prompt that carries a preference.

    Blank responses (a policy that emitted EOS at once) are dropped, since the ranking format rejects them;
    a prompt left with fewer than 2 distinct responses is skipped. ``metas``: each prompt's other fields,
    passed to the labeler as columns. ``scorer(prompts, responses, columns) -> [n]`` (:func:`load_scorer`):
    each response's score without the labeler's noise, added as ``"true_scores"`` (in the order of
    ``responses``) for ``mindrlhf eval rm --against-labeler``; it draws nothing from ``rng``.
    """
    if len(prompts) != len(responses_per_prompt):
        raise ValueError(f"make_rankings: {len(prompts)} prompts but {len(responses_per_prompt)} response lists")
    metas = list(metas) if metas is not None else [{} for _ in prompts]
    keep, kept = [], []
    for i, responses in enumerate(responses_per_prompt):
        answers = [r for r in responses if r.strip()]
        if len(set(answers)) >= 2:
            keep.append(i)
            kept.append(answers)
    if not keep:
        return []
    chosen = [prompts[i] for i in keep]
    rankings = call_rankings(labeler, spec, chosen, kept, rng, noise, prompt_columns([metas[i] for i in keep]))
    records = [{"prompt": p, "responses": r, "ranking": order} for p, r, order in zip(chosen, kept, rankings)]
    if scorer is not None:
        rows = [(p, y, metas[i]) for i, p, r in zip(keep, chosen, kept) for y in r]
        scores = scorer([p for p, _, _ in rows], [y for _, y, _ in rows], prompt_columns([m for _, _, m in rows]))
        ends = np.cumsum([len(r) for r in kept])
        for record, part in zip(records, np.split(np.asarray(scores, np.float64), ends[:-1])):
            record["true_scores"] = [float(s) for s in part]
    return records
