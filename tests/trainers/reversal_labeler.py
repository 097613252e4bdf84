"""A labeler for the toy task (reverse three words), named by its file in the iterated-DPO tests
(``iterate.labeler=tests/trainers/reversal_labeler.py:rank``): the contract of :mod:`mindrlhf.tasks`."""
import numpy as np


def score(prompt: str, response: str) -> int:
    """Words in the right reversed position, less one per word too many or too few."""
    target = prompt.split(":", 1)[1].split()[::-1]
    words = response.split()
    return sum(a == b for a, b in zip(words, target)) - abs(len(words) - len(target))


def rank(prompts, responses_per_prompt, *, rng, noise, **columns):
    """Each prompt's answers best first by score + noise · N(0, 1); ties keep the sampling order."""
    out = []
    for prompt, responses in zip(prompts, responses_per_prompt):
        scores = np.asarray([score(prompt, r) for r in responses], np.float64)
        scores += noise * rng.normal(size=len(responses))
        out.append([int(i) for i in np.argsort(-scores, kind="stable")])
    return out
