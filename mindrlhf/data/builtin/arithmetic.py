"""A verifiable built-in task: integer arithmetic problems whose answers a reward function can check exactly.

``write_arithmetic_task(out_dir, seed, difficulty)`` writes, deterministically for a seed:

- ``prompts.jsonl``: problems for RL rollouts, each line with its ``answer`` (e.g. ``"19"``) for
  ``mindrlhf.rewards:exact_match``, and ``difficulty``, ``terms`` and ``form`` columns;
- ``heldout_prompts.jsonl``: problems never seen in the other files (in any wording), for evaluation;
- ``demonstrations.jsonl``: worked answers (``"12 + 7 = 19. The answer is 19."``) for an optional SFT start,
  a share of them (``wrong_fraction``) with an answer off by a little, so RL has room above SFT;
- ``corpus.txt``: text for training a tokenizer, covering every word and symbol of the task.

Difficulty (``DIFFICULTIES``): 1 = two single-digit terms with + and −, in digits; 2 = two or three terms up to
20 with + and −, a third of them in words ("What is seven plus twelve minus three?"); 3 = two or three terms up
to 50 with +, − and ×, half in words. × binds before + and − in both forms. Problems are split into training and
held-out ones by a seeded hash of the problem itself, so a held-out problem never appears in training files.
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

from mindrlhf.io import write_jsonl


@dataclasses.dataclass(frozen=True)
class Difficulty:
    terms: Tuple[int, ...]  # how many operands a problem may have
    max_operand: int  # operands are drawn from 0 … max_operand
    ops: str  # operators used: "+", "-", "*"
    words: float  # share of problems written in words


DIFFICULTIES = {1: Difficulty((2,), 9, "+-", 0.0), 2: Difficulty((2, 3), 20, "+-", 1 / 3),
                3: Difficulty((2, 3), 50, "+-*", 0.5)}
HELDOUT_FRACTION = 0.15  # share of the problem space reserved for held-out prompts
DIGIT_TEMPLATES = ("What is {expr}?", "Compute {expr}.", "Calculate {expr}.", "{expr} = ?")
WORD_TEMPLATES = ("What is {expr}?", "How much is {expr}?")
SUFFIX = " Give the final answer as a number."
SYMBOLS = {"+": "+", "-": "-", "*": "*"}
OP_WORDS = {"+": "plus", "-": "minus", "*": "times"}
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen").split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0 … 99 in English words: 7 → "seven", 42 → "forty-two"."""
    if not 0 <= n < 100:
        raise ValueError(f"number_words: {n} is outside 0 … 99")
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens - 2] + (f"-{ONES[ones]}" if ones else "")


def evaluate(operands: Sequence[int], ops: Sequence[str]) -> int:
    """The value of operands[0] ops[0] operands[1] …, × before + and −, left to right otherwise."""
    terms, signs = [operands[0]], [1]
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= x
        else:
            terms.append(x)
            signs.append(1 if op == "+" else -1)
    return int(sum(s * t for s, t in zip(signs, terms)))


def expression(operands: Sequence[int], ops: Sequence[str], words: bool = False) -> str:
    """"12 + 7 - 3" in digits, or "twelve plus seven minus three" in words."""
    parts = [number_words(operands[0]) if words else str(operands[0])]
    for op, x in zip(ops, operands[1:]):
        parts += [OP_WORDS[op] if words else SYMBOLS[op], number_words(x) if words else str(x)]
    return " ".join(parts)


def _is_heldout(seed: int, operands, ops) -> bool:
    key = f"{seed}:{','.join(map(str, operands))}:{''.join(ops)}".encode()
    return zlib.crc32(key) % 1000 < HELDOUT_FRACTION * 1000


def sample_problems(rng: np.random.Generator, n: int, level: Difficulty, seed: int, heldout: bool) -> List[dict]:
    """``n`` problems from the training or the held-out part of the problem space (with replacement)."""
    out = []
    while len(out) < n:
        k = int(rng.choice(level.terms))
        operands = [int(x) for x in rng.integers(0, level.max_operand + 1, k)]
        ops = [str(rng.choice(list(level.ops))) for _ in range(k - 1)]
        if _is_heldout(seed, operands, ops) != heldout:
            continue
        words = bool(rng.random() < level.words)
        templates = WORD_TEMPLATES if words else DIGIT_TEMPLATES
        prompt = templates[rng.integers(len(templates))].format(expr=expression(operands, ops, words)) + SUFFIX
        out.append({"prompt": prompt, "answer": str(evaluate(operands, ops)), "terms": k,
                    "form": "words" if words else "digits", "_problem": (operands, ops)})
    return out


def demonstration(problem: dict, rng: np.random.Generator, wrong_fraction: float) -> str:
    """A worked answer in digits; with probability ``wrong_fraction`` its result is off by 1 to 3."""
    operands, ops = problem["_problem"]
    value = evaluate(operands, ops)
    if rng.random() < wrong_fraction:
        value += int(rng.choice([-3, -2, -1, 1, 2, 3]))
    return f"{expression(operands, ops)} = {value}. The answer is {value}."


def write_arithmetic_task(out_dir: str, seed: int = 0, difficulty: int = 2, n_train: int = 2000,
                          n_prompts: int = 1000, n_heldout: int = 200, wrong_fraction: float = 0.1) -> Dict[str, str]:
    """Write the task files (module docstring) into ``out_dir``; return ``{name: path}``."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"arithmetic task: difficulty={difficulty}; expected one of {sorted(DIFFICULTIES)}")
    level = DIFFICULTIES[difficulty]
    rng = np.random.Generator(np.random.PCG64([seed, 11]))
    demos = [{"prompt": p["prompt"], "response": demonstration(p, rng, wrong_fraction)}
             for p in sample_problems(rng, n_train, level, seed, heldout=False)]
    prompts = sample_problems(rng, n_prompts, level, seed, heldout=False)
    heldout = sample_problems(rng, n_heldout, level, seed, heldout=True)
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, name) for name in
             ("demonstrations.jsonl", "prompts.jsonl", "heldout_prompts.jsonl", "corpus.txt")}
    public = lambda rows: [{k: v for k, v in r.items() if not k.startswith("_")} | {"difficulty": difficulty}  # noqa: E731
                           for r in rows]
    write_jsonl(paths["demonstrations.jsonl"], demos)
    write_jsonl(paths["prompts.jsonl"], public(prompts))
    write_jsonl(paths["heldout_prompts.jsonl"], public(heldout))
    vocabulary = [" ".join(ONES), " ".join(TENS), " ".join(number_words(n) for n in range(100)),
                  " ".join(OP_WORDS.values()) + " " + " ".join(SYMBOLS.values()) + " = ? . -",
                  *(t.format(expr="1 + 2") + SUFFIX for t in DIGIT_TEMPLATES + WORD_TEMPLATES)]
    with open(paths["corpus.txt"], "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary + [d["prompt"] + "\n" + d["response"] for d in demos]) + "\n")
    return paths
