"""The pipeline's configuration: the task, one section per stage (each the stage's own config), which RL
algorithms run side by side on the shared SFT model, rankings and reward model, and the baselines.

A stage section may start from a stage recipe file (``recipes``); the keys the pipeline wires itself
(:data:`WIRED`: folders, the task's files, the reward model) are left out of a recipe.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List

from .config import field, load_config, read_yaml, require
from .evaluation import EvalConfig
from .roles import is_pretrained
from .runtime import RuntimeConfig
from .tasks import TASKS, BuiltinConfig, TaskConfig
from .trainers.dpo import DPOConfig, DPODataConfig
from .trainers.dpo_rounds import IterateConfig as DPOIterateConfig
from .trainers.grpo_config import GRPOConfig, GRPODataConfig, RewardConfig
from .trainers.ppo_config import PPOConfig, PPODataConfig
from .trainers.rankings import RankingsConfig
from .trainers.reward import RMConfig, RMDataConfig
from .trainers.sft import SFTConfig, SFTDataConfig

STAGE_CONFIGS = {"sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig, "grpo": GRPOConfig, "dpo": DPOConfig}
# The RL algorithms the pipeline can train on the shared SFT model, rankings and reward model.
ALGORITHMS = ("ppo", "grpo", "dpo")
# Keys of a stage recipe the pipeline sets itself (its folders, the task's files): a recipe's are left out.
# GRPO's reward is the pipeline's reward model: a recipe's reward functions (e.g. the labeler) are left out.
WIRED = {"sft": ("out_dir", "tokenizer", "data.train", "data.eval", "data.chat_template", "runtime"),
         "rm": ("model", "tokenizer", "out_dir", "data.train", "data.eval", "data.chat_template", "runtime"),
         "ppo": ("policy", "reference", "reward_model", "tokenizer", "out_dir", "data.prompts", "data.chat_template",
                 "judge", "judge_kwargs", "runtime"),
         "grpo": ("policy", "reference", "tokenizer", "out_dir", "data.prompts", "data.heldout", "data.chat_template",
                  "reward.functions", "reward.weights", "reward.kwargs", "reward.model", "judge", "judge_kwargs",
                  "runtime"),
         "dpo": ("model", "reference", "tokenizer", "out_dir", "data.train", "data.eval", "data.chat_template",
                 "iterate.prompts", "iterate.labeler", "iterate.labeler_kwargs", "runtime")}
# Iterated DPO's later rounds rank with the task's labeler unless the dpo section names a labeler or reward model.
TASK_LABELER = "{task.labeler}"


@dataclasses.dataclass
class IterateConfig:
    rounds: int = field(1, "RLHF rounds of PPO; each round after the first ranks samples of the last PPO policy, "
                           "trains a new reward model on all rankings so far and continues PPO from that policy")
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
    grpo: str = field("", "a `mindrlhf grpo` recipe the grpo section starts from (as sft; its reward is the "
                          "pipeline's reward model)")
    dpo: str = field("", "a `mindrlhf dpo` recipe the dpo section starts from (as sft)")


@dataclasses.dataclass
class BaselinesConfig:
    oracle: bool = field(False, "also train PPO (the ppo section) with the task's judge as its reward, in "
                                "out_dir/oracle: what the recipe could reach with a perfect reward model")
    best_of_n: List[int] = field([], "best-of-n rows: n answers per held-out prompt sampled from SFT, the one the "
                                     "(last) reward model scores highest kept, e.g. [4, 16]")

    def validate(self):
        for n in self.best_of_n:
            require(isinstance(n, int) and n >= 2, "best_of_n", f"{n!r}: each n must be an integer >= 2")


@dataclasses.dataclass
class PipelineConfig:
    out_dir: str = field("runs/pipeline", "run folder holding every stage's output and the report")
    task: TaskConfig = field(TaskConfig(), "the task: data files, labeler and judge (see mindrlhf/tasks.py)")
    builtin: BuiltinConfig = field(BuiltinConfig(), "the built-in task's data (task.name: builtin)")
    recipes: RecipesConfig = field(RecipesConfig(), "stage recipe files the stage sections start from")
    algorithms: List[str] = field(["ppo"], "the RL algorithms trained on the shared SFT model, rankings and reward "
                                           "model, each in out_dir/<name> and reported against SFT: ppo (with "
                                           "iterate.rounds), grpo (on the reward model), dpo (on the rankings); "
                                           "the first is the headline policy")
    sft: SFTConfig = field(SFTConfig(
        out_dir="{out_dir}/sft",
        data=SFTDataConfig(train="{task.demonstrations}", max_length=96)), "stage 1")
    rankings: RankingsConfig = field(RankingsConfig(), "comparison data for stage 2")
    rm: RMConfig = field(RMConfig(
        model="{out_dir}/sft/model", out_dir="{out_dir}/rm",
        data=RMDataConfig(train="{out_dir}/data/rankings.jsonl", max_length=96)), "stage 2")
    ppo: PPOConfig = field(PPOConfig(
        policy="{out_dir}/sft/model", reward_model="{out_dir}/rm/model", out_dir="{out_dir}/ppo",
        data=PPODataConfig(prompts="{task.prompts}")), "stage 3 with algorithms: [ppo]")
    grpo: GRPOConfig = field(GRPOConfig(
        policy="{out_dir}/sft/model", out_dir="{out_dir}/grpo", data=GRPODataConfig(prompts="{task.prompts}"),
        reward=RewardConfig(model="{out_dir}/rm/model")), "stage 3 with algorithms: [grpo]")
    dpo: DPOConfig = field(DPOConfig(
        model="{out_dir}/sft/model", out_dir="{out_dir}/dpo",
        data=DPODataConfig(train="{out_dir}/data/rankings.jsonl", max_length=96),
        iterate=DPOIterateConfig(prompts="{task.prompts}", labeler=TASK_LABELER)), "stage 3 with algorithms: [dpo] "
                                                                                   "(iterated with dpo.iterate.rounds)")
    iterate: IterateConfig = field(IterateConfig(), "further rounds of rankings → reward model → PPO")
    baselines: BaselinesConfig = field(BaselinesConfig(), "reference points reported beside the algorithms")
    eval: EvalConfig = field(EvalConfig(), "held-out comparison of SFT and the trained policies")
    compare_base: bool = field(False, "also evaluate the untouched sft.model as policy 'base' (pretrained models only)")
    runtime: RuntimeConfig = field(RuntimeConfig(), "device, mode, seed (used by every stage)")
    stage_processes: bool = field(True, "run each stage in its own child process, so its compiled graphs and "
                                        "their memory are gone before the next stage starts (off under msrun)")

    def validate(self):
        require(bool(self.algorithms), "algorithms", f"name at least one of {', '.join(ALGORITHMS)}")
        for name in self.algorithms:
            require(name in ALGORITHMS, "algorithms", f"{name!r}: expected some of {', '.join(ALGORITHMS)}")
        require(len(set(self.algorithms)) == len(self.algorithms), "algorithms", "names an algorithm twice")
        require(not self.compare_base or is_pretrained(self.sft.model), "compare_base",
                f"sft.model={self.sft.model!r} is a randomly initialised preset; only a pretrained model "
                "(HuggingFace folder or GGUF) is worth comparing")
        require(self.iterate.rounds == 1 or bool(self.task.labeler) or self.task.name in TASKS, "iterate.rounds",
                f"{self.iterate.rounds} rounds: the rounds after the first rank the policy's samples, so set "
                "task.labeler")
        require(self.dpo.iterate.rounds == 1 or self.dpo.iterate.labeler != TASK_LABELER or bool(self.task.labeler)
                or self.task.name in TASKS, "dpo.iterate.rounds", f"{self.dpo.iterate.rounds} rounds: the rounds after "
                "the first rank the policy's answers, so set task.labeler (or dpo.iterate.reward_model)")
        require(not self.baselines.oracle or bool(self.task.judge) or self.task.name in TASKS, "baselines.oracle",
                "the oracle is trained on the task's judge: set task.judge")
        for key in ("sft", "rm", "ppo", "grpo", "dpo"):
            require(getattr(self, key).data.chat_template or not self.task.chat_template, f"{key}.data.chat_template",
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
