"""The reviews task's two functions: a labeler that ranks K reviews (with noise, like people who disagree)
and a judge that scores one review, for evaluation only.

What a good continuation of "Review of the red kettle:" is, the rubric both use (``score``):

- +1 for each positive word, -1 for each negative word (the lexicon below);
- +1 when it names the product of the prompt, -1 for each other product it names;
- -0.5 for each sentence beyond three, and -2 for an empty review.

A pipeline config names them as ``examples/reviews/scoring.py:rank`` and ``examples/reviews/scoring.py:judge``.
"""
import re

import numpy as np

PRODUCTS = ("kettle", "lamp", "backpack", "blender", "umbrella", "toaster", "jacket", "speaker", "chair",
            "headphones", "mug", "bicycle")
POSITIVE = ("great", "excellent", "sturdy", "quiet", "handy", "lovely", "perfect", "reliable", "love", "recommend")
NEGATIVE = ("flimsy", "noisy", "awful", "broken", "useless", "disappointing", "terrible", "hate", "return", "leaks")
WORD = re.compile(r"[a-z]+")


def product_of(prompt: str) -> str:
    """The product a prompt asks about: the last product word in it ("" if none)."""
    found = [w for w in WORD.findall(prompt.lower()) if w in PRODUCTS]
    return found[-1] if found else ""


def score(prompt: str, review: str, product: str = "") -> float:
    """The rubric of the module docstring; ``product`` defaults to the one named in the prompt."""
    words = WORD.findall(review.lower())
    if not words:
        return -2.0
    total = float(sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words))
    own = product or product_of(prompt)
    total += 1.0 if own in words else 0.0
    total -= len({w for w in words if w in PRODUCTS} - {own})
    sentences = len([s for s in re.split(r"[.!?]+", review) if s.strip()])
    return total - 0.5 * max(0, sentences - 3)


def judge(prompts, responses, product=None, **columns):
    """The score of each review (the TRL reward convention: one float per response). ``product`` is the
    prompts file's column of that name, one entry per response."""
    product = product or [""] * len(prompts)
    return [score(p, r, own) for p, r, own in zip(prompts, responses, product)]


def rank(prompts, responses_per_prompt, *, rng, noise=0.0, product=None, **columns):
    """For each prompt, its reviews best first by ``score + noise * N(0, 1)``; ties keep the given order."""
    product = product or [""] * len(prompts)
    rankings = []
    for prompt, reviews, own in zip(prompts, responses_per_prompt, product):
        scores = np.array([score(prompt, r, own) for r in reviews]) + noise * rng.standard_normal(len(reviews))
        rankings.append([int(i) for i in np.argsort(-scores, kind="stable")])
    return rankings
