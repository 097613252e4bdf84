"""A small demonstrations task (reverse three words) and its tokenizer, made once per session."""
import json
import random

import pytest

from mindrlhf.data.tokenizer import train_tokenizer

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
