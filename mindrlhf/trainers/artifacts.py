"""A stage's product on disk, written and read in one place: the model folder every stage hands the next.

A policy folder (SFT, PPO, ...) is a HuggingFace folder: ``config.json``, ``model.safetensors``, the
tokenizer, ``mindrlhf_config.yaml`` (the config that made it) and, for a LoRA run, the adapters alone in
``lora_adapters.safetensors``. A reward-model folder is the trunk as such a folder plus the scalar head
in ``reward_head.safetensors`` and ``rm_stats.json`` (held-out accuracy, mean margin, and the reward's
mean and std, which PPO normalises rewards with). An ensemble's head holds one column per member, and
``reward_ensemble.json`` the k of its score mean − k·std.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import mindspore as ms
import numpy as np

from ..config import save_config
from ..data.tokenizer import Tokenizer
from ..io import atomic_write_text, read_safetensors, write_safetensors
from ..nn import CausalLM
from ..nn.lora import ADAPTER_FILE, has_lora, save_adapters
from ..roles import RewardModel, is_pretrained

HEAD_FILE = "reward_head.safetensors"  # keys "weight" [hidden, 1] and "bias" [1]: r = h·weight + bias
STATS_FILE = "rm_stats.json"
ENSEMBLE_FILE = "reward_ensemble.json"  # {"size": M, "k": k}; only for M > 1 (its head: weight [hidden, M], bias [M])


def resolve_tokenizer(cfg_tokenizer: str, model: str) -> Tokenizer:
    """The tokenizer a stage uses: ``cfg_tokenizer`` when set, else the pretrained model's own."""
    source = cfg_tokenizer or (model if is_pretrained(model) else "")
    if not source:
        raise FileNotFoundError("no tokenizer: set tokenizer=DIR (train one with `mindrlhf tokenizer train`) "
                                "or start from a model folder that holds one")
    return Tokenizer.load(source)


def export_model(model, tokenizer, cfg, directory: str, base: str = "") -> None:
    """A policy as a HuggingFace folder with its tokenizer and the config that made it.

    A LoRA model is written merged (W + scale·BA: transformers and the next stage load it as a plain
    model) and its adapters alone go to ``lora_adapters.safetensors``, to reload on ``base`` with
    :func:`mindrlhf.nn.lora.load_adapters`."""
    if has_lora(model):
        save_adapters(model, os.path.join(directory, ADAPTER_FILE), base=base)
    model.save_pretrained(directory)  # merged when adapters are attached
    tokenizer.save(directory)
    save_config(cfg, os.path.join(directory, "mindrlhf_config.yaml"))


def export_reward_model(reward_model: RewardModel, tokenizer, cfg, directory: str) -> None:
    """Trunk as a HuggingFace folder + tokenizer + config (as :func:`export_model`), plus the scalar head (and
    an ensemble's size and k)."""
    export_model(reward_model.trunk, tokenizer, cfg, directory, base=cfg.model)
    head = {"weight": reward_model.head.weight.asnumpy(), "bias": reward_model.head.bias.asnumpy()}
    write_safetensors(os.path.join(directory, HEAD_FILE), head)
    if reward_model.ensemble_size > 1:
        ensemble = {"size": reward_model.ensemble_size, "k": reward_model.k}
        atomic_write_text(os.path.join(directory, ENSEMBLE_FILE), json.dumps(ensemble) + "\n")


def load_reward_model(directory: str, compute_dtype: str = "", k: Optional[float] = None) -> RewardModel:
    """Read back what :func:`export_reward_model` wrote. The tokenizer is ``Tokenizer.load(directory)``.
    An ensemble scores mean − k·std over its members with the k stored in the folder, or ``k`` when given
    (rm_stats.json's mean and std were measured with the stored k)."""
    head_path = os.path.join(directory, HEAD_FILE)
    if not os.path.isfile(head_path):
        raise FileNotFoundError(f"{head_path} not found: {directory} is not a reward model folder "
                                "(expected the model/ folder a `mindrlhf rm` run writes)")
    head = read_safetensors(head_path)
    ensemble = {"size": 1, "k": 1.0}
    if os.path.isfile(os.path.join(directory, ENSEMBLE_FILE)):
        with open(os.path.join(directory, ENSEMBLE_FILE), encoding="utf-8") as fh:
            ensemble.update(json.load(fh))
    trunk = CausalLM.from_pretrained(directory, compute_dtype=compute_dtype or None)
    reward_model = RewardModel(trunk, int(ensemble["size"]), float(ensemble["k"] if k is None else k))
    for name, param in (("weight", reward_model.head.weight), ("bias", reward_model.head.bias)):
        if name not in head or tuple(head[name].shape) != tuple(param.shape):
            got = tuple(head[name].shape) if name in head else "missing"
            raise ValueError(f"{head_path}: '{name}' is {got}, expected shape {tuple(param.shape)} "
                             f"for this trunk's hidden size and {reward_model.ensemble_size} member(s) "
                             f"(the size in {ENSEMBLE_FILE}; 1 without it)")
        param.set_data(ms.Tensor(np.asarray(head[name], np.float32)))
    return reward_model


def write_stats(stats: dict, directory: str) -> str:
    path = os.path.join(directory, STATS_FILE)
    atomic_write_text(path, json.dumps(stats, indent=1) + "\n")
    return path


def read_stats(directory: str) -> dict:
    """The ``rm_stats.json`` next to a reward model (accuracy, mean_margin, reward_mean, reward_std, ...)."""
    path = os.path.join(directory, STATS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; make it with "
                                f"`mindrlhf eval rm --model {directory} --data F --write-stats`")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
