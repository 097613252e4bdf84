"""Data for the msrun tests: a toy task (demonstrations, rankings of 3 responses, prompts of at most 16
tokens) with its tokenizer, a random one-layer policy and a reward-model folder (random head) — made once
per session."""
import json
import random
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.data.tokenizer import Tokenizer, train_tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.roles import RewardModel

from . import jobs

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    return Path(jobs.once(tmp_path_factory, "dist_task", make_task)["root"])


def make_task(root):
    rng = random.Random(0)
    demos, corpus = [], []
    for _ in range(240):
        words = rng.sample(WORDS, 3)
        prompt, response = "reverse: " + " ".join(words), " ".join(reversed(words))
        demos.append({"prompt": prompt, "response": response})
        corpus += [prompt, response]
    (root / "demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos))
    rankings = [{"prompt": d["prompt"], "responses": [d["response"], d["prompt"][len("reverse: "):],
                                                      " ".join(rng.sample(WORDS, 2))], "ranking": [0, 1, 2]}
                for d in demos[:96]]
    (root / "rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rankings))
    (root / "corpus.txt").write_text("\n".join(corpus) + "\n")
    train_tokenizer(str(root / "corpus.txt"), 300, str(root / "tok"))

    tok = Tokenizer.load(str(root / "tok"))
    prompts, np_rng = [], np.random.default_rng(0)
    while len(prompts) < 64:
        text = "reverse: " + " ".join(np_rng.choice(WORDS, int(np_rng.integers(1, 4)), replace=False))
        if len(tok.encode_prompt(text)) <= 16:
            prompts.append(text)
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))

    from mindrlhf.trainers.artifacts import export_reward_model, write_stats
    from mindrlhf.trainers.reward import RMConfig

    # one layer: compiling the rollout, scoring and train graphs is most of these tests' time
    config = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                     num_layers=1)
    ms.set_seed(0)
    CausalLM(config).save_pretrained(str(root / "policy"))
    tok.save(str(root / "policy"))
    reward_model = RewardModel(CausalLM(config))
    head = np.random.default_rng(1).normal(0.0, 1.0, (config.hidden_size, 1)).astype(np.float32)
    reward_model.head.weight.set_data(ms.Tensor(head))  # a fresh head is zero: every score would be 0
    export_reward_model(reward_model, tok, RMConfig(), str(root / "rm"))
    write_stats({"reward_mean": 0.0, "reward_std": 1.0}, str(root / "rm"))
    return {"root": str(root)}
