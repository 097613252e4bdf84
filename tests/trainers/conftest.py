"""A small demonstrations task (reverse three words) and its tokenizer, and a policy SFT-trained on it with
rankings for DPO, made once per session."""
import json
import random

import pytest

from mindrlhf.config import load_config
from mindrlhf.data.tokenizer import train_tokenizer
from mindrlhf.trainers.sft import SFTConfig, train_sft

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]


@pytest.fixture(scope="session")
def toy_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    rng = random.Random(0)
    demos, corpus = [], []
    for _ in range(240):
        words = rng.sample(WORDS, 3)
        prompt, response = "reverse: " + " ".join(words), " ".join(reversed(words))
        demos.append({"prompt": prompt, "response": response})
        corpus += [prompt, response]
    (root / "demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos))
    (root / "corpus.txt").write_text("\n".join(corpus) + "\n")
    train_tokenizer(str(root / "corpus.txt"), 300, str(root / "tok"))
    return root


@pytest.fixture(scope="session")
def dpo_toy(toy_task, tmp_path_factory):
    """A briefly SFT-trained policy on the toy task, and rankings: the reversal, then the words as given,
    then the reversal cut short."""
    root = tmp_path_factory.mktemp("dpo")
    demos = [json.loads(line) for line in (toy_task / "demos.jsonl").read_text().splitlines()]
    with open(root / "rankings.jsonl", "w") as fh:
        for d in demos:
            words = d["response"].split()
            responses = [" ".join(words[:2]), d["response"], " ".join(reversed(words))]
            fh.write(json.dumps({"prompt": d["prompt"], "responses": responses, "ranking": [1, 2, 0]}) + "\n")
    sft = load_config(SFTConfig, None, [f"data.train={toy_task / 'demos.jsonl'}", f"tokenizer={toy_task / 'tok'}",
                                        f"out_dir={root / 'sft'}", "train.batch_size=16", "train.max_steps=40",
                                        "train.progress=false", "train.eval_every=0", "train.save_every=0",
                                        "optim.lr=3e-3", "optim.warmup_steps=5", "data.max_length=48"])
    train_sft(sft)
    return root
