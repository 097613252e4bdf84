"""The whole InstructGPT recipe on the built-in task, in one run folder:

    data ─► tokenizer ─► SFT ─► rankings (K samples from SFT, ranked by the hidden labeler)
         ─► reward model ─► PPO ─► evaluation report (SFT vs PPO on held-out prompts)

With ``iterate.rounds`` > 1 the comparison data is collected again from the newest policy, as in the
iterated online RLHF of Bai et al. (2022): each further round ranks K samples of the last PPO policy,
trains a new reward model on all rankings so far, and continues PPO from that policy, still tied to SFT
by the KL penalty. Round r >= 2 writes ``round{r}/rankings.jsonl``, ``round{r}/rm`` and ``round{r}/ppo``.

Each stage writes its product under ``out_dir`` and is skipped when that product is already there, so
a killed pipeline is resumed by running the same command again (a stage killed mid-way resumes from
its own newest checkpoint). Stage sections are the stages' own configs; paths in them may use
``{out_dir}``, filled in at run time.

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
from .config import field, require, save_config
from .data.builtin.labeler import Labeler
from .data.builtin.task import write_builtin_task
from .data.builtin.world import load_world
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
from .trainers.artifacts import load_reward_model
from .trainers.ppo import train_ppo
from .trainers.ppo_config import PPOConfig, PPODataConfig
from .trainers.rankings import RankingsConfig, sample_rankings
from .trainers.reward import RMConfig, RMDataConfig, train_rm
from .trainers.sft import SFTConfig, SFTDataConfig, train_sft


@dataclasses.dataclass
class BuiltinConfig:
    seed: int = field(0, "world seed: another seed gives another catalogue, prompts and labeler")
    n_train: int = field(2000, "demonstrations")
    n_prompts: int = field(1000, "prompts for rankings and PPO rollouts")
    n_heldout: int = field(200, "held-out prompts for the final evaluation")
    vocab_size: int = field(1000, "sentencepiece vocabulary size")
    shelf: int = field(0, "films listed with their facts in every prompt, one of them the right answer "
                          "(0 = none: the model must learn the catalogue; at least 3 otherwise)")

    def validate(self):
        for key in ("n_train", "n_prompts", "n_heldout", "vocab_size"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.shelf == 0 or self.shelf >= 3, "shelf",
                f"{self.shelf}: use 0 (no shelf) or at least 3 (the right film, the seen one, a wrong one)")


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
class PipelineConfig:
    out_dir: str = field("runs/pipeline", "run folder holding every stage's output and the report")
    builtin: BuiltinConfig = field(BuiltinConfig(), "the built-in task")
    sft: SFTConfig = field(SFTConfig(
        out_dir="{out_dir}/sft",
        data=SFTDataConfig(train="{out_dir}/data/demonstrations.jsonl", max_length=96)), "stage 1")
    rankings: RankingsConfig = field(RankingsConfig(), "comparison data for stage 2")
    rm: RMConfig = field(RMConfig(
        model="{out_dir}/sft/model", out_dir="{out_dir}/rm",
        data=RMDataConfig(train="{out_dir}/data/rankings.jsonl", max_length=96)), "stage 2")
    ppo: PPOConfig = field(PPOConfig(
        policy="{out_dir}/sft/model", reward_model="{out_dir}/rm/model", out_dir="{out_dir}/ppo",
        data=PPODataConfig(prompts="{out_dir}/data/prompts.jsonl", labeler_world="{out_dir}/data/world.json")),
        "stage 3")
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


def _fill(obj, out_dir: str):
    """Replace ``{out_dir}`` in every string field of a dataclass tree."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, str) and "{out_dir}" in value:
            setattr(obj, f.name, value.replace("{out_dir}", out_dir))
        elif dataclasses.is_dataclass(value):
            _fill(value, out_dir)


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
    _fill(cfg, out)
    for stage in (cfg.sft, cfg.rm, cfg.ppo):
        stage.runtime = cfg.runtime
    data_dir = os.path.join(out, "data")
    own_tokenizer = is_pretrained(cfg.sft.model)
    if not cfg.sft.tokenizer and not own_tokenizer:
        cfg.sft.tokenizer = os.path.join(data_dir, "tokenizer")
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

    # world.json is written last by write_builtin_task, tokenizer.model last of all when there is one.
    if not os.path.isfile(os.path.join(data_dir, "world.json" if own_tokenizer else "tokenizer/tokenizer.model")):
        b = cfg.builtin

        def make_data():
            write_builtin_task(data_dir, seed=b.seed, n_train=b.n_train, n_prompts=b.n_prompts, n_heldout=b.n_heldout,
                               shelf=b.shelf)
            if not own_tokenizer:
                train_tokenizer(os.path.join(data_dir, "corpus.txt"), b.vocab_size, os.path.join(data_dir, "tokenizer"))

        timed("data", make_data)
    if not _done(os.path.join(cfg.sft.out_dir, "model")):

        timed("sft", lambda: _call(iso, train_sft, cfg.sft, resume=_resume_from(cfg.sft.out_dir), overwrite=True))
    sft_model = os.path.join(cfg.sft.out_dir, "model")

    def rank(policy_dir: str, out_file: str, seed: int):

        return _call(iso, sample_rankings, policy_dir, os.path.join(data_dir, "prompts.jsonl"), out_file, seed=seed,
                     runtime_cfg=cfg.runtime, **cfg.rankings.sampling())

    def train(name: str, rm_cfg: RMConfig, ppo_cfg: PPOConfig) -> None:

        if not _done(os.path.join(rm_cfg.out_dir, "model")):
            timed(f"rm{name}", lambda: _call(iso, train_rm, rm_cfg, resume=_resume_from(rm_cfg.out_dir), overwrite=True))
        if not _done(os.path.join(ppo_cfg.out_dir, "model")):
            timed(f"ppo{name}", lambda: _call(iso, train_ppo, ppo_cfg, resume=_resume_from(ppo_cfg.out_dir), overwrite=True))

    if not os.path.isfile(cfg.rm.data.train):
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
        prompts = encode_prompts(load_prompts(os.path.join(data_dir, "heldout_prompts.jsonl")), tok,
                                 cfg.ppo.data.max_prompt_length, skip_invalid=True)
        policies = {"sft": sft_model, **{f"ppo_round{i}": os.path.join(p.out_dir, "model")
                                         for i, (_, p) in enumerate(rounds[:-1], 1)},
                    "ppo": os.path.join(rounds[-1][1].out_dir, "model")}
        if cfg.compare_base:
            policies = {"base": _base_folder(cfg.sft.model, os.path.join(out, "base")), **policies}
        return compare(policies, sft_model,
                       load_reward_model(rm_dir), prompts, cfg.eval,
                       Labeler(load_world(os.path.join(data_dir, "world.json"))), baseline="sft")

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
