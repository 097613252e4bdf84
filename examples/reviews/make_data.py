"""Write the reviews task's data files (deterministic for a seed):

    python examples/reviews/make_data.py --out examples/reviews/data

- demonstrations.jsonl: reviews of mixed sentiment (about half positive), so SFT learns the form and RLHF
  has room to make them warmer;
- prompts.jsonl: prompts for the rankings and PPO; heldout_prompts.jsonl: prompts of product and colour
  pairs never seen in the other two files, for the report.

Prompts end with ":" and reviews start with a space: the task is plain continuation (task.chat_template:
false), so the space between them belongs to the data.
"""
import argparse
import json
import os

import numpy as np

from scoring import NEGATIVE, POSITIVE, PRODUCTS

COLOURS = ("red", "blue", "green", "black", "white", "grey")
PROMPTS = ("Review of the {colour} {product}:", "My review of the {colour} {product}:",
           "Customer review, {colour} {product}:", "What I think of the {colour} {product}:")
OPENINGS = {"positive": ("The {product} is {word}.", "This {product} is {word}."),
            "negative": ("The {product} is {word}.", "This {product} feels {word}."),
            "neutral": ("The {product} is okay.", "The {product} arrived on time.")}
SENTENCES = {"positive": ("It is {word}.", "I {verb} it.", "Really {word}."),
             "negative": ("It is {word}.", "Sadly it {verb}.", "Quite {word}."),
             "neutral": ("It does the job.", "Nothing special.", "The colour is fine.")}
POSITIVE_VERBS, NEGATIVE_VERBS = ("love", "recommend"), ("leaks", "broke")
HELDOUT_FRACTION = 0.2


def _sentiment(rng) -> str:
    return str(rng.choice(["positive", "negative", "neutral"], p=[0.45, 0.35, 0.2]))


def _word(rng, sentiment: str) -> str:
    adjectives = [w for w in (POSITIVE if sentiment == "positive" else NEGATIVE) if w not in ("love", "recommend",
                                                                                              "hate", "return", "leaks")]
    return str(rng.choice(adjectives))


def review(rng, product: str) -> str:
    """One to four sentences; the first names the product (or, now and then, another one, or none)."""
    n = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.35, 0.1]))
    named = rng.choice(["own", "other", "none"], p=[0.75, 0.1, 0.15])
    if named == "other":
        product = str(rng.choice([p for p in PRODUCTS if p != product]))
    sentences = []
    for i in range(n):
        kind = _sentiment(rng)
        verb = str(rng.choice(POSITIVE_VERBS if kind == "positive" else NEGATIVE_VERBS))
        templates = OPENINGS[kind] if i == 0 and named != "none" else SENTENCES[kind]
        sentences.append(str(rng.choice(templates)).format(product=product, word=_word(rng, kind), verb=verb))
    return " " + " ".join(sentences)


def write_data(out_dir: str, seed: int = 0, n_train: int = 1500, n_prompts: int = 600, n_heldout: int = 100) -> None:
    rng = np.random.default_rng(seed)
    pairs = [(p, c) for p in PRODUCTS for c in COLOURS]
    heldout = set(rng.permutation(len(pairs))[: int(len(pairs) * HELDOUT_FRACTION)].tolist())
    train_pairs = [pair for i, pair in enumerate(pairs) if i not in heldout]
    heldout_pairs = [pair for i, pair in enumerate(pairs) if i in heldout]

    def prompt(pool):
        product, colour = pool[int(rng.integers(len(pool)))]
        return str(rng.choice(PROMPTS)).format(colour=colour, product=product), product

    def lines(rows):
        return "".join(json.dumps(r) + "\n" for r in rows)

    demos = []
    for _ in range(n_train):
        text, product = prompt(train_pairs)
        demos.append({"prompt": text, "response": review(rng, product)})
    prompts = [dict(zip(("prompt", "product"), prompt(train_pairs))) for _ in range(n_prompts)]
    held = [dict(zip(("prompt", "product"), prompt(heldout_pairs))) for _ in range(n_heldout)]
    os.makedirs(out_dir, exist_ok=True)
    for name, rows in (("demonstrations.jsonl", demos), ("prompts.jsonl", prompts), ("heldout_prompts.jsonl", held)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as fh:
            fh.write(lines(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_data(args.out, args.seed)
    print(f"reviews task data (seed {args.seed}) → {args.out}")
