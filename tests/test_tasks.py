"""A task is data files plus a labeler and a judge named as functions: the config and its checks, the
built-in task going through exactly that interface (no special case left in the stages or the pipeline),
the labeler's contract, and the stage recipes the pipeline reads as its one source of tuned values."""
import ast
import dataclasses
import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mindrlhf.config import ConfigError, load_config
from mindrlhf.data.builtin import Labeler, load_world, write_builtin_task
from mindrlhf.data.builtin.functions import judge, rank
from mindrlhf.data.builtin.task import prompt_text, sample_prompts
from mindrlhf.pipeline_config import WIRED, PipelineConfig
from mindrlhf.plugins import PluginError
from mindrlhf.tasks import TASKS, TaskConfig, load_judge, load_labeler, make_rankings, resolve_task, write_corpus
from mindrlhf.trainers.dpo import DPOConfig
from mindrlhf.trainers.reward import RMConfig
from mindrlhf.trainers.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mindrlhf"
CONFIGS = ROOT / "configs"


# ------------------------------------------------------------------ the built-in task is one task among others

def _imports(path: Path) -> list:
    """Every module a file imports (relative imports resolved against its package), at any depth."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return found


STAGE_FILES = sorted((PACKAGE / "trainers").glob("*.py")) + [PACKAGE / "pipeline.py"]


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: p.name)
def test_no_builtin_special_case_in_the_stages_or_the_pipeline(path):
    """The stages and the pipeline reach the built-in task only through the task registry (mindrlhf.tasks):
    they import nothing of mindrlhf.data.builtin and name none of its files or its labeler."""
    builtin = [m for m in _imports(path) if m.startswith("mindrlhf.data.builtin")]
    assert not builtin, f"{path.name} imports {builtin}"
    text = path.read_text()
    for word in ("world.json", "labeler_world", "gold_reward", "Labeler", "load_world", "write_builtin_task",
                 "data.builtin"):
        assert word not in text, f"{path.name} mentions {word!r}"


def test_the_checker_sees_a_builtin_import(tmp_path):
    """The import check above can fail: relative and absolute imports of data.builtin are found."""
    stage = ROOT / "mindrlhf" / "trainers" / "probe_stage.py"
    try:
        stage.write_text("from ..data.builtin.labeler import Labeler\nimport mindrlhf.data.builtin.world\n")
        assert {"mindrlhf.data.builtin.labeler", "mindrlhf.data.builtin.world"} <= set(_imports(stage))
    finally:
        stage.unlink()


def test_the_registry_gives_the_builtin_task_its_files_and_functions(tmp_path):
    task = resolve_task(TaskConfig(), str(tmp_path))
    assert task.demonstrations == str(tmp_path / "demonstrations.jsonl")
    assert (task.prompts, task.heldout_prompts) == (str(tmp_path / "prompts.jsonl"),
                                                     str(tmp_path / "heldout_prompts.jsonl"))
    assert task.labeler_kwargs == task.judge_kwargs == {"world": str(tmp_path / "world.json")}
    assert not TASKS["builtin"].written(str(tmp_path))
    write_builtin_task(str(tmp_path), seed=2, n_train=20, n_prompts=10, n_heldout=5)
    assert TASKS["builtin"].written(str(tmp_path))
    labeler = Labeler(load_world(str(tmp_path / "world.json")))
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    answers = ["no idea", f"Try \"{labeler.world.movies[0].title}\"."] * 5
    np.testing.assert_array_equal(load_judge(task)(prompts, answers), [labeler.score(p, a) for p, a in
                                                                       zip(prompts, answers)])
    assert load_labeler(task).func is rank


# ------------------------------------------------------------------ the labeler's contract

def test_builtin_rankings_draw_the_labelers_noise_prompt_by_prompt_as_before(tmp_path):
    """make_rankings calls the built-in labeler once for all prompts, and its noise comes from the one rng in
    the same order as ranking each kept prompt with Labeler.rank: the main job's rankings stay the same."""
    world = load_world(write_builtin_task(str(tmp_path), seed=0, n_train=10, n_prompts=5, n_heldout=5)["world.json"])
    labeler, rng = Labeler(world), np.random.default_rng(3)
    prompts = [prompt_text(k) for k in sample_prompts(world, rng, 30, heldout=False)]
    titles = [m.title for m in world.movies]
    responses = [[f"Try \"{titles[int(i)]}\"." for i in rng.integers(len(titles), size=4)] for _ in prompts]
    responses[3] = ["same", "same", " "]  # no preference: skipped, and it draws nothing
    got = make_rankings(prompts, responses, functools.partial(rank, world=str(tmp_path / "world.json")), "rank",
                        np.random.default_rng([7, 1]), 0.5)
    before, rng = [], np.random.default_rng([7, 1])
    for p, rs in zip(prompts, responses):
        kept = [r for r in rs if r.strip()]
        if len(set(kept)) >= 2:
            before.append({"prompt": p, "responses": kept, "ranking": labeler.rank(p, kept, rng, 0.5)})
    assert got == before and len(got) == len(prompts) - 1


LABELERS = '''
def by_length(prompts, responses_per_prompt, *, rng, noise, **columns):
    return [sorted(range(len(rs)), key=lambda i: -len(rs[i])) for rs in responses_per_prompt]

def with_column(prompts, responses_per_prompt, *, target, **columns):
    return [sorted(range(len(rs)), key=lambda i: rs[i] != t) for rs, t in zip(responses_per_prompt, target)]

def repeats(prompts, responses_per_prompt, **columns):
    return [[0, 0, 1] for _ in prompts]

def one_short(prompts, responses_per_prompt, **columns):
    return [[0, 1]]

def no_rng(prompts, responses_per_prompt):
    return [[0, 1] for _ in prompts]
'''


def test_a_labeler_in_a_file_gets_the_prompts_columns_and_its_rankings_are_checked(tmp_path):
    (tmp_path / "labels.py").write_text(LABELERS)
    spec = f"{tmp_path / 'labels.py'}:"
    task = TaskConfig(name="mine", demonstrations="d", prompts="p", heldout_prompts="h", labeler=spec + "by_length")
    records = make_rankings(["a", "b"], [["x", "xyz", "xy"], ["bb", "b"]], load_labeler(task), task.labeler,
                            np.random.default_rng(0))
    assert [r["ranking"] for r in records] == [[1, 2, 0], [0, 1]]
    fn = load_labeler(dataclasses.replace(task, labeler=spec + "with_column"))
    records = make_rankings(["a", "b"], [["x", "y"], ["x", "y"]], fn, "with_column", np.random.default_rng(0),
                            metas=[{"target": "y"}, {"target": "x"}])
    assert [r["ranking"] for r in records] == [[1, 0], [0, 1]]
    for name, words in (("repeats", "[0, 0, 1] for prompt 0; expected a permutation of 0..2"),
                        ("one_short", "returned 1 rankings for 2 prompts"),
                        ("no_rng", "cannot be called as fn(prompts, responses_per_prompt, rng=..., noise=...")):
        with pytest.raises(PluginError) as err:
            make_rankings(["a", "b"], [["x", "y", "z"], ["u", "v", "w"]], load_labeler(dataclasses.replace(
                task, labeler=spec + name)), name, np.random.default_rng(0))
        assert str(err.value).startswith(f"labeler {name}") and words in str(err.value) and "\n" not in str(err.value)


def test_the_corpus_of_a_task_is_its_demonstrations_and_prompts(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "Rate the mug:", "response": " Lovely."}\n'
                                      '{"messages": [{"role": "user", "content": "Hi"}, '
                                      '{"role": "assistant", "content": "Hello"}]}\n')
    (tmp_path / "p.jsonl").write_text('{"prompt": "Rate the lamp:", "product": "lamp"}\n')
    task = TaskConfig(name="mine", demonstrations=str(tmp_path / "d.jsonl"), prompts=str(tmp_path / "p.jsonl"))
    path = write_corpus(task, str(tmp_path / "corpus.txt"))
    assert open(path).read() == "Rate the mug:\n Lovely.\nHi\nHello\nRate the lamp:\n"
    assert write_corpus(dataclasses.replace(task, corpus="given.txt"), "unused") == "given.txt"


@pytest.mark.parametrize("overrides, message", [
    (["task.name=mine"], "task.demonstrations: required for task 'mine'"),
    (["task.name=mine", "task.demonstrations=d", "task.prompts=p", "task.heldout_prompts=h"],
     "task.labeler: set a labeler (module:function ranking K answers) or rankings files people made"),
    (["task.demonstrations=d"], "task.demonstrations: task 'builtin' brings its own"),
    (["task.judge_kwargs={world: w.json}"], "task.judge_kwargs: task 'builtin' brings its own"),
    (["task.name=mine", "task.demonstrations=d", "task.prompts=p", "task.heldout_prompts=h", "task.rankings=[r]",
      "iterate.rounds=2"], "iterate.rounds: 2 rounds: the rounds after the first rank the policy's samples"),
    (["task.name=mine", "task.demonstrations=d", "task.prompts=p", "task.heldout_prompts=h", "task.labeler=m:f",
      "task.judge_kwargs={a: 1}"], "task.judge_kwargs: given without a judge"),
    (["sft.data.chat_template=false"], "sft.data.chat_template: the task decides for every stage"),
])
def test_task_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, None, overrides)
    assert str(err.value).startswith(message), str(err.value)


def test_a_wrong_function_name_is_a_config_error_before_anything_runs(tmp_path):
    task = TaskConfig(name="mine", demonstrations="d", prompts="p", heldout_prompts="h", labeler="mindrlhf.tasks:nope",
                      judge=f"{tmp_path / 'missing.py'}:judge")
    with pytest.raises(ConfigError, match="task.labeler: 'mindrlhf.tasks:nope': 'mindrlhf.tasks' has no attribute"):
        load_labeler(task)
    with pytest.raises(ConfigError, match="task.judge: cannot import module .*missing.py.*no file .*relative to the wo"):
        load_judge(task)
    with pytest.raises(PluginError, match="judge .* returned 1 scores for 2 responses"):
        load_judge(TaskConfig(name="m", judge="mindrlhf.rewards:exact_match"))(["a"], ["1", "2"], {"answer": ["1"]})


# ------------------------------------------------------------------ stage recipes: one source of tuned values

# The main job's stages and their recipe files.
STAGES = {"sft": (SFTConfig, "sft_builtin.yaml"), "rm": (RMConfig, "rm_builtin.yaml"),
          "dpo": (DPOConfig, "dpo_iterated_builtin.yaml")}


def _leaves(cfg, prefix=""):
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        nested = dataclasses.is_dataclass(value)
        out.update(_leaves(value, f"{prefix}{f.name}.") if nested else {prefix + f.name: value})
    return out


def _wired(stage, key):
    return any(key == w or key.startswith(w + ".") for w in WIRED[stage])


@pytest.mark.parametrize("stage", STAGES)
def test_the_main_job_runs_each_stage_with_its_recipes_values(stage):
    """configs/pipeline_builtin.yaml names the stage recipes and repeats none of their keys; every key of a
    stage section but the ones the pipeline wires itself (folders, data files) is the recipe's value."""
    cls, recipe_file = STAGES[stage]
    text = (CONFIGS / "pipeline_builtin.yaml").read_text()
    assert f"\n{stage}:" not in text and f"  {stage}: {recipe_file}" in text
    pipeline = getattr(load_config(PipelineConfig, str(CONFIGS / "pipeline_builtin.yaml")), stage)
    recipe = load_config(cls, str(CONFIGS / recipe_file))
    ours, theirs = _leaves(pipeline), _leaves(recipe)
    differ = {k: (ours[k], theirs[k]) for k in ours if not _wired(stage, k) and ours[k] != theirs[k]}
    assert not differ


def test_the_main_jobs_tuned_values():
    """The values the main job's measured runs were made with (docs/results.md); a recipe edit that changes one
    changes the main job's numbers."""
    cfg = load_config(PipelineConfig, str(CONFIGS / "pipeline_builtin.yaml"))
    values = _leaves(cfg)
    want = {"sft.model": "tiny", "sft.data.max_length": 96, "sft.train.batch_size": 32, "sft.train.max_steps": 800,
            "sft.optim.lr": 3e-3, "sft.optim.warmup_steps": 40, "rankings.k": 8, "rankings.max_prompts": 1000,
            "rm.data.max_length": 128, "rm.data.eval_fraction": 0.05, "rm.train.batch_size": 16, "rm.train.epochs": 6.0,
            "rm.optim.lr": 2e-3, "rm.optim.warmup_steps": 10, "algorithms": ["dpo"], "dpo.data.max_length": 128,
            "dpo.data.pairs": "all", "dpo.train.batch_size": 32, "dpo.train.epochs": 1.0, "dpo.algo.beta": 0.5,
            "dpo.algo.loss_type": "sigmoid", "dpo.algo.sft_coef": 0.3, "dpo.optim.lr": 3e-4, "dpo.optim.warmup_steps": 20,
            "dpo.iterate.rounds": 2, "dpo.iterate.k": 8, "dpo.iterate.prompts_per_round": 1000,
            "dpo.iterate.noise": 0.5, "dpo.iterate.max_new_tokens": 48, "dpo.iterate.prompts": "{task.prompts}",
            "iterate.rounds": 1, "eval.max_prompts": 200, "task.name": "builtin", "task.vocab_size": 1000,
            "runtime.kernels": "auto"}
    assert {k: values[k] for k in want} == want
    assert values["dpo.iterate.labeler"] == "{task.labeler}"  # the task's labeler, set at run time


def test_a_recipe_is_checked_in_its_own_file_and_its_wired_keys_are_left_out(tmp_path):
    (tmp_path / "ppo.yaml").write_text("policy: elsewhere\nout_dir: runs/x\nalgo:\n  epochs: 3\n  clip_range: 0.1\n"
                                       "reward_model: r\ndata:\n  prompts: p.jsonl\n")
    (tmp_path / "pipe.yaml").write_text("recipes:\n  ppo: ppo.yaml\nppo:\n  algo:\n    epochs: 5\n")
    cfg = load_config(PipelineConfig, str(tmp_path / "pipe.yaml"))
    assert (cfg.ppo.algo.epochs, cfg.ppo.algo.clip_range) == (5, 0.1)  # the pipeline's key wins, the recipe fills in
    assert (cfg.ppo.policy, cfg.ppo.out_dir, cfg.ppo.data.prompts) == ("{out_dir}/sft/model", "{out_dir}/ppo",
                                                                       "{task.prompts}")
    assert cfg.recipes.ppo == ""  # read once: a run folder's config.yaml holds the values themselves
    (tmp_path / "ppo.yaml").write_text("policy: p\nreward_model: r\ndata:\n  prompts: p.jsonl\nalgo:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"ppo.yaml:6: unknown key 'algo.epochz'"):
        load_config(PipelineConfig, str(tmp_path / "pipe.yaml"))


def test_the_builtin_judge_and_labeler_read_a_rewritten_world(tmp_path):
    """A world file written again (another seed, same path) is read again: the functions cache by version."""
    prompt = "Any good comedies?"
    paths = write_builtin_task(str(tmp_path), seed=0, n_train=5, n_prompts=5, n_heldout=5)
    first = load_world(paths["world.json"]).movies[0].title
    before = judge([prompt], [f"Try \"{first}\"."], world=paths["world.json"])
    os.utime(paths["world.json"], ns=(1, 1))
    write_builtin_task(str(tmp_path), seed=1, n_train=5, n_prompts=5, n_heldout=5)
    assert load_world(paths["world.json"]).movies[0].title != first
    after = judge([prompt], [f"Try \"{first}\"."], world=paths["world.json"])
    assert after != before and after == [Labeler(load_world(paths["world.json"])).score(prompt, f"Try \"{first}\".")]
