"""The Ascend recipes (configs/ascend/) cannot run here; this checks what can be checked without a device:
each loads with its stage's config, its batch sizes divide over the ranks its launch line starts, and its
parallel degrees fill those ranks and split the model's heads and MLP width evenly."""
import glob
import os
import re

import pytest

from mindrlhf.config import load_config
from mindrlhf.launch import WORLD_CHECKS
from mindrlhf.nn import ModelConfig

from .jobs import REPO

RECIPES = sorted(glob.glob(os.path.join(REPO, "configs", "ascend", "*.yaml")))
CONFIG_CLASSES = {"sft": ("mindrlhf.trainers.sft", "SFTConfig"), "rm": ("mindrlhf.trainers.reward", "RMConfig"),
                  "ppo": ("mindrlhf.trainers.ppo", "PPOConfig")}


def header(path):
    """(stage, world size, dp, mp) from the recipe's `# launch:` and `# parallel:` comment lines."""
    text = open(path, encoding="utf-8").read()
    launch = re.search(r"^# launch: mindrlhf launch -n (\d+)(?: --nodes (\d+))?.*? (sft|rm|ppo) --config (\S+)",
                       text, re.M)
    parallel = re.search(r"^# parallel: dp=(\d+) mp=(\d+)", text, re.M)
    assert launch and parallel, f"{path}: needs '# launch: mindrlhf launch -n N ...' and '# parallel: dp=D mp=M'"
    assert os.path.join(REPO, launch.group(4)) == path, f"{path}: its launch line names {launch.group(4)}"
    world = int(launch.group(1)) * int(launch.group(2) or 1)
    return launch.group(3), world, int(parallel.group(1)), int(parallel.group(2))


def test_there_are_recipes_for_each_stage():
    assert {header(p)[0] for p in RECIPES} == {"sft", "rm", "ppo"}


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_loads_and_its_sizes_divide(path):
    import importlib

    stage, world, dp, mp = header(path)
    module, cls = CONFIG_CLASSES[stage]
    cfg = load_config(getattr(importlib.import_module(module), cls), path, [])
    assert cfg.runtime.device == "Ascend"
    assert dp * mp == world, f"dp {dp} × mp {mp} must fill the {world} ranks the launch line starts"
    WORLD_CHECKS[stage](cfg, world)  # the launcher's own check: a clear error if a batch does not divide
    model = ModelConfig.from_preset("llama-2-7b")  # the size these recipes are written for
    for name in ("num_heads", "num_kv_heads", "intermediate_size"):
        assert getattr(model, name) % mp == 0, f"{name}={getattr(model, name)} does not split over mp={mp}"
