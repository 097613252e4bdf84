"""The whole InstructGPT recipe on a task, in one run folder:

    task data ─► tokenizer ─► SFT ─► rankings (K samples from SFT, ranked by the task's labeler, or
              rankings files people made) ─► reward model ─► PPO / GRPO / DPO ─► report (each against SFT
              on held-out prompts)

A task (:mod:`mindrlhf.tasks`, the ``task`` section) is data files plus a labeler and a judge, each an
optional ``module:function``; ``task.name: builtin`` is the movie world, written into ``out_dir/data``.
The report's judge-based rows (win rates with bootstrap intervals, the judge's score gain, the reward
model against the judge) appear when the task has a judge; the reward model's score, the KL to the
reference, the answer length and the answers side by side always.

``algorithms`` names the RL stages trained side by side on the same SFT model, rankings and reward model
(``ppo``; ``grpo`` on the reward model; ``dpo`` on the rankings), each in ``out_dir/<name>`` and each a row
of the report against SFT; ``baselines.oracle`` adds PPO trained on the task's judge itself.

With ``iterate.rounds`` > 1 the comparison data is collected again from the newest policy, as in the
iterated online RLHF of Bai et al. (2022): each further round ranks K samples of the last PPO policy with
the labeler, trains a new reward model on all rankings so far, and continues PPO from that policy, still
tied to SFT by the KL penalty. Round r >= 2 writes ``round{r}/rankings.jsonl``, ``round{r}/rm`` and
``round{r}/ppo``.

Each stage writes its product under ``out_dir`` and is skipped when that product is already there, so
a killed pipeline is resumed by running the same command again (a stage killed mid-way resumes from
its own newest checkpoint). Stage sections are the stages' own configs; ``recipes`` names stage recipe
files (``configs/sft_builtin.yaml``, ...) whose values a section starts from, so the pipeline file says
only what differs. Paths may use ``{out_dir}`` and ``{task.demonstrations}``, ``{task.prompts}``,
``{task.heldout_prompts}``, filled in at run time.

``sft.model`` a preset trains a sentencepiece tokenizer on the task's corpus (the model starts random);
a pretrained model (folder or GGUF) keeps its own tokenizer, and ``compare_base`` adds the untouched
model to the report as the policy ``base``.
"""
from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from typing import Optional

from . import runtime
from .config import save_config
from .data.encoding import encode_prompts
from .data.formats import load_prompts
from .data.tokenizer import Tokenizer, train_tokenizer
from .evaluation import BestOfN, compare
from .io import atomic_write_text
from .io.gguf import is_gguf
from .nn.gguf import gguf_to_hf_folder
from .pipeline_config import TASK_LABELER, PipelineConfig
from .report import write_report
from .roles import is_pretrained
from .tasks import data_written, load_judge, load_labeler, resolve_task, write_corpus, write_data
from .trainers.artifacts import load_reward_model
from .trainers.dpo import train_dpo
from .trainers.grpo import train_grpo
from .trainers.ppo import train_ppo
from .trainers.ppo_config import PPOConfig
from .trainers.rankings import sample_rankings
from .trainers.reward import RMConfig, train_rm
from .trainers.sft import train_sft

def _filled(value, values: dict):
    """``value`` with every ``{name}`` of ``values`` replaced in its strings (lists, mappings and dataclasses
    included; a dataclass is changed in place)."""
    if isinstance(value, str):
        for name, text in values.items():
            value = value.replace("{" + name + "}", text)
        return value
    if isinstance(value, list):
        return [_filled(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _filled(v, values) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            setattr(value, f.name, _filled(getattr(value, f.name), values))
    return value


def _base_folder(spec: str, directory: str) -> str:
    """The untouched starting model as a HuggingFace folder (the evaluator loads policies from folders)."""
    if is_gguf(spec) and not _done(directory):
        gguf_to_hf_folder(spec, directory)
    return directory if is_gguf(spec) else spec


PRODUCTS = ("data", "base", "sft", "rm", "ppo", "grpo", "dpo", "oracle", "config.yaml", "report.md", "summary.json",
            "answers.jsonl")


def _remove_products(out: str) -> None:
    if not os.path.isdir(out):
        return
    for name in os.listdir(out):
        path = os.path.join(out, name)
        if name in PRODUCTS or name.startswith(("round", "report_")):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _done(model_dir: str) -> bool:
    return os.path.isfile(os.path.join(model_dir, "model.safetensors"))


def _resume_from(stage_dir: str) -> Optional[str]:
    # A stage folder without a checkpoint is the pipeline's own unfinished start: it is overwritten.
    return stage_dir if os.path.isfile(os.path.join(stage_dir, "checkpoints", "latest")) else None


def _call(isolated: bool, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, in a spawned child process when ``isolated``.

    MindSpore keeps every compiled graph of a process, with the memory its CPU kernels hold, until the
    process ends: on SmolLM2 the PPO stage reached 24 GB resident after SFT and the reward model had run
    in the same process, against ~11 GB on its own. A child per stage returns all of it. Under msrun the
    stages stay in the worker that owns the communication group."""
    if not isolated or runtime.launched_by_msrun():
        return fn(*args, **kwargs)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def run_pipeline(cfg: PipelineConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Run every stage that has not finished yet, then write ``out_dir/report.md``; return the summary.
    ``overwrite`` first removes what an earlier pipeline run wrote into ``out_dir`` (and nothing else)."""
    out = os.path.abspath(resume or cfg.out_dir)
    if overwrite and not resume:
        _remove_products(out)
    cfg.out_dir = out
    _filled(cfg, {"out_dir": out})
    data_dir = os.path.join(out, "data")
    task = resolve_task(cfg.task, data_dir)
    load_labeler(task)  # a wrong function name stops the run here, before any training
    judge = load_judge(task)
    _filled(cfg, {f"task.{key}": getattr(task, key) for key in ("demonstrations", "prompts", "heldout_prompts")})
    for stage in (cfg.sft, cfg.rm, cfg.ppo, cfg.grpo, cfg.dpo):
        stage.runtime, stage.data.chat_template = cfg.runtime, task.chat_template
    if cfg.dpo.iterate.labeler == TASK_LABELER:  # iterated DPO ranks with the task's labeler
        cfg.dpo.iterate.labeler, cfg.dpo.iterate.labeler_kwargs = task.labeler, dict(task.labeler_kwargs)
    for stage in (cfg.ppo, cfg.grpo):  # PPO and GRPO log the judge's score of their rollouts (never trained on)
        if not stage.judge:
            stage.judge, stage.judge_kwargs = task.judge, dict(task.judge_kwargs)
    own_tokenizer = is_pretrained(cfg.sft.model)
    tokenizer_dir = os.path.join(data_dir, "tokenizer")
    if not cfg.sft.tokenizer and not own_tokenizer:
        cfg.sft.tokenizer = tokenizer_dir
    train_tokenizer_here = cfg.sft.tokenizer == tokenizer_dir
    os.makedirs(out, exist_ok=True)
    save_config(cfg, os.path.join(out, "config.yaml"))
    times: dict = {}
    iso = cfg.stage_processes

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        times[name] = time.perf_counter() - t0
        print(f"[pipeline] {name}: {times[name]:.0f} s", flush=True)
        return result

    tokenizer_done = not train_tokenizer_here or os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.model"))
    if not (data_written(cfg.task, data_dir) and tokenizer_done):

        def make_data():
            if not data_written(cfg.task, data_dir):
                write_data(cfg.task, getattr(cfg, cfg.task.name, None), data_dir)
            if train_tokenizer_here:
                train_tokenizer(write_corpus(task, os.path.join(data_dir, "corpus.txt")), task.vocab_size,
                                tokenizer_dir)

        timed("data", make_data)
    if not _done(os.path.join(cfg.sft.out_dir, "model")):

        timed("sft", lambda: _call(iso, train_sft, cfg.sft, resume=_resume_from(cfg.sft.out_dir), overwrite=True))
    sft_model = os.path.join(cfg.sft.out_dir, "model")

    def rank(policy_dir: str, out_file: str, seed: int):

        return _call(iso, sample_rankings, policy_dir, task.prompts, out_file, task.labeler, dict(task.labeler_kwargs),
                     seed=seed, chat_template=task.chat_template, runtime_cfg=cfg.runtime, scorer=task.judge,
                     scorer_kwargs=dict(task.judge_kwargs), **cfg.rankings.sampling())

    def train(name: str, rm_cfg: RMConfig, ppo_cfg: PPOConfig) -> None:  # round ``name`` of PPO

        if not _done(os.path.join(rm_cfg.out_dir, "model")):
            timed(f"rm{name}", lambda: _call(iso, train_rm, rm_cfg, resume=_resume_from(rm_cfg.out_dir), overwrite=True))
        if not _done(os.path.join(ppo_cfg.out_dir, "model")):
            timed(f"ppo{name}", lambda: _call(iso, train_ppo, ppo_cfg, resume=_resume_from(ppo_cfg.out_dir), overwrite=True))

    if not os.path.isfile(cfg.rm.data.train):
        if task.rankings:  # comparisons people made stand in for the labeler's
            _concatenate(task.rankings, cfg.rm.data.train)
        else:
            timed("rankings", lambda: rank(sft_model, cfg.rm.data.train, cfg.runtime.seed))
    others = {"grpo": (train_grpo, cfg.grpo), "dpo": (train_dpo, cfg.dpo)}
    if cfg.baselines.oracle:
        others["oracle"] = (train_ppo, _oracle(cfg, task, out))
    rounds, rankings_files = [], [cfg.rm.data.train]
    if not _done(os.path.join(cfg.rm.out_dir, "model")):
        timed("rm", lambda: _call(iso, train_rm, cfg.rm, resume=_resume_from(cfg.rm.out_dir), overwrite=True))
    for name in cfg.algorithms + (["oracle"] if cfg.baselines.oracle else []):
        if name != "ppo":
            fn, stage_cfg = others[name]
            if not _done(os.path.join(stage_cfg.out_dir, "model")):
                timed(name, lambda: _call(iso, fn, stage_cfg, resume=_resume_from(stage_cfg.out_dir), overwrite=True))
            continue
        rounds.append((cfg.rm, cfg.ppo))
        train("", cfg.rm, cfg.ppo)
        for r in range(2, cfg.iterate.rounds + 1):
            folder = os.path.join(out, f"round{r}")
            rankings_files.append(os.path.join(folder, "rankings.jsonl"))
            if not os.path.isfile(rankings_files[-1]):
                last_policy = os.path.join(rounds[-1][1].out_dir, "model")
                timed(f"rankings{r}", lambda: rank(last_policy, rankings_files[-1], cfg.runtime.seed + r - 1))
            rounds.append(_next_round(cfg, rounds[-1][1], folder))
            _concatenate(rankings_files, rounds[-1][0].data.train)
            train(str(r), *rounds[-1])
    rm_dir = os.path.join((rounds[-1][0] if rounds else cfg.rm).out_dir, "model")

    def evaluate():

        runtime.setup(cfg.runtime)
        tok = Tokenizer.load(sft_model)
        prompts = encode_prompts(load_prompts(task.heldout_prompts), tok, cfg.ppo.data.max_prompt_length,
                                 skip_invalid=True, chat_template=task.chat_template)
        trained = {name: os.path.join(others[name][1].out_dir, "model") for name in others}
        if rounds:
            trained.update({f"ppo_round{i}": os.path.join(p.out_dir, "model") for i, (_, p) in enumerate(rounds[:-1], 1)})
            trained["ppo"] = os.path.join(rounds[-1][1].out_dir, "model")
        order = [n for a in cfg.algorithms for n in ([f"ppo_round{i}" for i in range(1, len(rounds))] + [a]
                                                      if a == "ppo" else [a])] + ["oracle"]
        policies = {"sft": sft_model, **{n: trained[n] for n in order if n in trained},
                    **{f"best_of_{n}": BestOfN(sft_model, n) for n in cfg.baselines.best_of_n}}
        if cfg.compare_base:
            policies = {"base": _base_folder(cfg.sft.model, os.path.join(out, "base")), **policies}
        return compare(policies, sft_model, load_reward_model(rm_dir), prompts, cfg.eval, judge, baseline="sft")

    summary, answers = timed("eval", evaluate)
    stage_folders = [cfg.sft, *(c for pair in rounds for c in pair)] if rounds else [cfg.sft, cfg.rm]
    stage_folders += [c for name, (_, c) in others.items() if name in cfg.algorithms or name == "oracle"]

    summary["stage_seconds"], summary["headline"] = times, cfg.algorithms[0]
    path = write_report(out, summary, answers, cfg.eval.samples_in_report,
                        [os.path.relpath(c.out_dir, out) for c in stage_folders])
    atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1))
    print(f"[pipeline] report: {path}")
    return summary


def _oracle(cfg: PipelineConfig, task, out: str) -> PPOConfig:
    """The ppo section with the task's judge as its whole reward (the critic still starts from the reward model)."""
    oracle = copy.deepcopy(cfg.ppo)
    oracle.out_dir = os.path.join(out, "oracle")
    oracle.reward.functions, oracle.reward.weights = [task.judge], []
    oracle.reward.kwargs = {task.judge: dict(task.judge_kwargs)} if task.judge_kwargs else {}
    return oracle


def _next_round(cfg: PipelineConfig, last_ppo: PPOConfig, folder: str) -> tuple:
    """(reward-model config, PPO config) of the round in ``folder``, which follows the PPO run ``last_ppo``."""
    rm_cfg, ppo_cfg = copy.deepcopy(cfg.rm), copy.deepcopy(cfg.ppo)
    rm_cfg.out_dir, rm_cfg.data.train = os.path.join(folder, "rm"), os.path.join(folder, "rankings_all.jsonl")
    rm_cfg.train.epochs, rm_cfg.train.max_steps = cfg.iterate.rm_epochs, 0
    ppo_cfg.out_dir, ppo_cfg.reward_model = os.path.join(folder, "ppo"), os.path.join(rm_cfg.out_dir, "model")
    ppo_cfg.policy, ppo_cfg.reference = os.path.join(last_ppo.out_dir, "model"), cfg.ppo.reference or cfg.ppo.policy
    ppo_cfg.algo.iterations = cfg.iterate.ppo_iterations or cfg.ppo.algo.iterations
    return rm_cfg, ppo_cfg


def _concatenate(files: list, out_file: str) -> None:
    """All rankings so far in one file (the reward model of a round trains on every comparison collected)."""
    text = ""
    for path in files:
        with open(path, encoding="utf-8") as fh:
            text += fh.read().rstrip("\n") + "\n"
    atomic_write_text(out_file, text)
