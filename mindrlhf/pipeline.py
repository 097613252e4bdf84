"""The whole InstructGPT recipe on a task, in one run folder:

    task data ─► tokenizer ─► SFT ─► rankings (K samples from SFT, ranked by the task's labeler, or
              rankings files people made) ─► reward model ─► PPO ─► report (SFT vs PPO on held-out prompts)

A task (:mod:`mindrlhf.tasks`, the ``task`` section) is data files plus a labeler and a judge, each an
optional ``module:function``; ``task.name: builtin`` is the movie world, written into ``out_dir/data``.
The report's judge-based rows (win rates with bootstrap intervals, the judge's score gain, the reward
model against the judge) appear when the task has a judge; the reward model's score, the KL to the
reference, the answer length and the answers side by side always.

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
from .config import field, load_config, read_yaml, require, save_config
from .data.encoding import encode_prompts
from .data.formats import load_prompts
from .data.tokenizer import Tokenizer, train_tokenizer
from .evaluation import compare, EvalConfig
from .io import atomic_write_text
from .io.gguf import is_gguf
from .nn.gguf import gguf_to_hf_folder
from .report import write_report
from .roles import is_pretrained
from .runtime import RuntimeConfig
from .tasks import TASKS, BuiltinConfig, TaskConfig, data_written, load_judge, load_labeler, resolve_task
from .tasks import write_corpus, write_data
from .trainers.artifacts import load_reward_model
from .trainers.ppo import train_ppo
from .trainers.ppo_config import PPOConfig, PPODataConfig
from .trainers.rankings import RankingsConfig, sample_rankings
from .trainers.reward import RMConfig, RMDataConfig, train_rm
from .trainers.sft import SFTConfig, SFTDataConfig, train_sft

STAGE_CONFIGS = {"sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig}
# Keys of a stage recipe the pipeline sets itself (its folders, the task's files): a recipe's are left out.
WIRED = {"sft": ("out_dir", "tokenizer", "data.train", "data.eval", "data.chat_template", "runtime"),
         "rm": ("model", "tokenizer", "out_dir", "data.train", "data.eval", "data.chat_template", "runtime"),
         "ppo": ("policy", "reference", "reward_model", "tokenizer", "out_dir", "data.prompts", "data.chat_template",
                 "judge", "judge_kwargs", "runtime")}


@dataclasses.dataclass
class IterateConfig:
    rounds: int = field(1, "RLHF rounds; each round after the first ranks samples of the last PPO policy, trains a "
                           "new reward model on all rankings so far and continues PPO from that policy")
    rm_epochs: float = field(3.0, "reward-model epochs over all rankings so far, in rounds >= 2")
    ppo_iterations: int = field(0, "PPO iterations of rounds >= 2; 0 = ppo.algo.iterations")

    def validate(self):
        require(self.rounds >= 1, "rounds", f"must be >= 1 (1 = the plain recipe), got {self.rounds}")
        require(self.rm_epochs > 0, "rm_epochs", f"must be > 0, got {self.rm_epochs}")
        require(self.ppo_iterations >= 0, "ppo_iterations", f"must be >= 0, got {self.ppo_iterations}")


@dataclasses.dataclass
class RecipesConfig:
    """Stage recipes the stage sections start from, read when the config is loaded (then cleared: the
    sections hold their values, so a run folder's config.yaml needs no recipe files)."""

    sft: str = field("", "a `mindrlhf sft` recipe (YAML) whose values the sft section starts from; relative to "
                         "the pipeline config's folder. Its folders and data files are the pipeline's own")
    rm: str = field("", "a `mindrlhf rm` recipe the rm section starts from (as sft)")
    ppo: str = field("", "a `mindrlhf ppo` recipe the ppo section starts from (as sft)")


@dataclasses.dataclass
class PipelineConfig:
    out_dir: str = field("runs/pipeline", "run folder holding every stage's output and the report")
    task: TaskConfig = field(TaskConfig(), "the task: data files, labeler and judge (see mindrlhf/tasks.py)")
    builtin: BuiltinConfig = field(BuiltinConfig(), "the built-in task's data (task.name: builtin)")
    recipes: RecipesConfig = field(RecipesConfig(), "stage recipe files the stage sections start from")
    sft: SFTConfig = field(SFTConfig(
        out_dir="{out_dir}/sft",
        data=SFTDataConfig(train="{task.demonstrations}", max_length=96)), "stage 1")
    rankings: RankingsConfig = field(RankingsConfig(), "comparison data for stage 2")
    rm: RMConfig = field(RMConfig(
        model="{out_dir}/sft/model", out_dir="{out_dir}/rm",
        data=RMDataConfig(train="{out_dir}/data/rankings.jsonl", max_length=96)), "stage 2")
    ppo: PPOConfig = field(PPOConfig(
        policy="{out_dir}/sft/model", reward_model="{out_dir}/rm/model", out_dir="{out_dir}/ppo",
        data=PPODataConfig(prompts="{task.prompts}")), "stage 3")
    iterate: IterateConfig = field(IterateConfig(), "further rounds of rankings → reward model → PPO")
    eval: EvalConfig = field(EvalConfig(), "held-out comparison of SFT and PPO")
    compare_base: bool = field(False, "also evaluate the untouched sft.model as policy 'base' (pretrained models only)")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, mode, seed (used by every stage)")
    stage_processes: bool = field(True, "run each stage in its own child process, so its compiled graphs and "
                                        "their memory are gone before the next stage starts (off under msrun)")

    def validate(self):
        require(not self.compare_base or is_pretrained(self.sft.model), "compare_base",
                f"sft.model={self.sft.model!r} is a randomly initialised preset; only a pretrained model "
                "(HuggingFace folder or GGUF) is worth comparing")
        require(self.iterate.rounds == 1 or bool(self.task.labeler) or self.task.name in TASKS, "iterate.rounds",
                f"{self.iterate.rounds} rounds: the rounds after the first rank the policy's samples, so set "
                "task.labeler")
        for key, data in (("sft.data", self.sft.data), ("rm.data", self.rm.data), ("ppo.data", self.ppo.data)):
            require(data.chat_template or not self.task.chat_template, f"{key}.chat_template",
                    "the task decides for every stage: set task.chat_template: false")

    @staticmethod
    def resolve_includes(data: dict, origin: str) -> dict:
        """Put each stage recipe named under ``recipes`` beneath its section of the raw config ``data`` (the
        pipeline's own keys win), less the keys the pipeline wires itself (:data:`WIRED`); a recipe is first
        checked as a config of its stage, so its errors name its own file and line."""
        recipes = data.get("recipes")
        if not isinstance(recipes, dict):
            return data
        folder = os.path.dirname(os.path.abspath(origin)) if origin else os.getcwd()
        for stage, path in recipes.items():
            if stage not in STAGE_CONFIGS or not isinstance(path, str) or not path:
                continue  # the config's own checks name a wrong key or type
            path = os.path.join(folder, path)
            load_config(STAGE_CONFIGS[stage], path)
            recipe, _ = read_yaml(path)
            for key in WIRED[stage]:
                *parents, leaf = key.split(".")
                node = recipe
                for part in parents:
                    node = node.get(part) if isinstance(node, dict) else None
                if isinstance(node, dict):
                    node.pop(leaf, None)
            section = data.get(stage)
            data[stage] = _beneath(recipe, section if isinstance(section, dict) else {})
        data["recipes"] = {}
        return data


def _beneath(base: dict, top: dict) -> dict:
    """``top`` (kept as the same mapping, so its line numbers stay known) with the keys of ``base`` it lacks."""
    for key, value in base.items():
        if key not in top:
            top[key] = value
        elif isinstance(value, dict) and isinstance(top[key], dict):
            _beneath(value, top[key])
    return top


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


PRODUCTS = ("data", "base", "sft", "rm", "ppo", "config.yaml", "report.md", "summary.json", "answers.jsonl")


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
    for stage in (cfg.sft, cfg.rm, cfg.ppo):
        stage.runtime, stage.data.chat_template = cfg.runtime, task.chat_template
    if not cfg.ppo.judge:  # PPO logs the judge's score of its rollouts (never trained on)
        cfg.ppo.judge, cfg.ppo.judge_kwargs = task.judge, dict(task.judge_kwargs)
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
                     seed=seed, chat_template=task.chat_template, runtime_cfg=cfg.runtime, **cfg.rankings.sampling())

    def train(name: str, rm_cfg: RMConfig, ppo_cfg: PPOConfig) -> None:

        if not _done(os.path.join(rm_cfg.out_dir, "model")):
            timed(f"rm{name}", lambda: _call(iso, train_rm, rm_cfg, resume=_resume_from(rm_cfg.out_dir), overwrite=True))
        if not _done(os.path.join(ppo_cfg.out_dir, "model")):
            timed(f"ppo{name}", lambda: _call(iso, train_ppo, ppo_cfg, resume=_resume_from(ppo_cfg.out_dir), overwrite=True))

    if not os.path.isfile(cfg.rm.data.train):
        if task.rankings:  # comparisons people made stand in for the labeler's
            _concatenate(task.rankings, cfg.rm.data.train)
        else:
            timed("rankings", lambda: rank(sft_model, cfg.rm.data.train, cfg.runtime.seed))
    train("", cfg.rm, cfg.ppo)
    rounds, rankings_files = [(cfg.rm, cfg.ppo)], [cfg.rm.data.train]
    for r in range(2, cfg.iterate.rounds + 1):
        folder = os.path.join(out, f"round{r}")
        rankings_files.append(os.path.join(folder, "rankings.jsonl"))
        if not os.path.isfile(rankings_files[-1]):
            last_policy = os.path.join(rounds[-1][1].out_dir, "model")
            timed(f"rankings{r}", lambda: rank(last_policy, rankings_files[-1], cfg.runtime.seed + r - 1))
        rounds.append(_next_round(cfg, rounds[-1][1], folder))
        _concatenate(rankings_files, rounds[-1][0].data.train)
        train(str(r), *rounds[-1])
    rm_dir = os.path.join(rounds[-1][0].out_dir, "model")

    def evaluate():

        runtime.setup(cfg.runtime)
        tok = Tokenizer.load(sft_model)
        prompts = encode_prompts(load_prompts(task.heldout_prompts), tok, cfg.ppo.data.max_prompt_length,
                                 skip_invalid=True, chat_template=task.chat_template)
        policies = {"sft": sft_model, **{f"ppo_round{i}": os.path.join(p.out_dir, "model")
                                         for i, (_, p) in enumerate(rounds[:-1], 1)},
                    "ppo": os.path.join(rounds[-1][1].out_dir, "model")}
        if cfg.compare_base:
            policies = {"base": _base_folder(cfg.sft.model, os.path.join(out, "base")), **policies}
        return compare(policies, sft_model, load_reward_model(rm_dir), prompts, cfg.eval, judge, baseline="sft")

    summary, answers = timed("eval", evaluate)

    summary["stage_seconds"] = times
    path = write_report(out, summary, answers, cfg.eval.samples_in_report,
                        [os.path.relpath(c.out_dir, out) for c in (cfg.sft, *(c for pair in rounds for c in pair))])
    atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=1))
    print(f"[pipeline] report: {path}")
    return summary


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
