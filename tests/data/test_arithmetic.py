"""The arithmetic task: right answers, held-out problems never seen in training files, difficulty knobs, the
demonstrations scored by exact_match, and `mindrlhf data builtin --task arithmetic`."""
import json
import os

import numpy as np
import pytest

from mindrlhf.cli import main
from mindrlhf.data.builtin.arithmetic import (
    DIFFICULTIES, evaluate, expression, number_words, sample_problems, write_arithmetic_task,
)
from mindrlhf.data.formats import load_demonstrations, load_prompts
from mindrlhf.rewards import exact_match


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_hand_numbers():
    assert [number_words(n) for n in (0, 7, 13, 20, 42, 99)] == [
        "zero", "seven", "thirteen", "twenty", "forty-two", "ninety-nine"]
    assert evaluate([12, 7], "+") == 19 and evaluate([3, 9], "-") == -6
    assert evaluate([2, 3, 4], "+*") == 14 and evaluate([2, 3, 4], "*-") == 2 and evaluate([9, 4, 8], "--") == -3
    assert expression([12, 7, 3], "+-") == "12 + 7 - 3"
    assert expression([12, 7, 3], "+*", words=True) == "twelve plus seven times three"


@pytest.mark.parametrize("difficulty", sorted(DIFFICULTIES))
def test_answers_follow_the_expressions(difficulty):
    level = DIFFICULTIES[difficulty]
    problems = sample_problems(np.random.default_rng(1), 300, level, seed=0, heldout=False)
    for p in problems:
        operands, ops = p["_problem"]
        assert int(p["answer"]) == eval(expression(operands, ops))  # Python's precedence: × before + and −
        assert len(operands) in level.terms and max(operands) <= level.max_operand and set(ops) <= set(level.ops)
        assert p["form"] == ("words" if any(w in p["prompt"] for w in ("plus", "minus", "times")) else "digits")
    words = np.mean([p["form"] == "words" for p in problems])
    assert abs(words - level.words) < 0.1
    assert {len(p["_problem"][0]) for p in problems} == set(level.terms)


def test_task_files_are_seeded_and_heldout_problems_are_unseen(tmp_path):
    paths = write_arithmetic_task(str(tmp_path / "a"), seed=3, difficulty=3, n_train=400, n_prompts=300,
                                  n_heldout=100, wrong_fraction=0.25)
    again = write_arithmetic_task(str(tmp_path / "b"), seed=3, difficulty=3, n_train=400, n_prompts=300,
                                  n_heldout=100, wrong_fraction=0.25)
    for name in ("demonstrations.jsonl", "prompts.jsonl", "heldout_prompts.jsonl", "corpus.txt"):
        with open(paths[name], encoding="utf-8") as f, open(again[name], encoding="utf-8") as g:
            assert f.read() == g.read(), name
    prompts, heldout = read(paths["prompts.jsonl"]), read(paths["heldout_prompts.jsonl"])
    assert len(prompts) == 300 and len(heldout) == 100
    assert set(prompts[0]) == {"prompt", "answer", "terms", "form", "difficulty"}

    def problem(prompt):  # the problem whatever its wording: the digits form of the expression
        text = prompt.split("?")[0].split(".")[0].replace("What is ", "").replace("How much is ", "")
        for verb in ("Compute ", "Calculate "):
            text = text.replace(verb, "")
        text = text.replace(" = ", "")
        for w, s in (("plus", "+"), ("minus", "-"), ("times", "*")):
            text = text.replace(w, s)
        words = {number_words(n): str(n) for n in range(100)}
        return " ".join(words.get(t, t) for t in text.split())

    train = {problem(r["prompt"]) for r in prompts} | {problem(r["prompt"]) for r in read(paths["demonstrations.jsonl"])}
    held = {problem(r["prompt"]) for r in heldout}
    assert held and not held & train
    assert all(eval(problem(r["prompt"])) == int(r["answer"]) for r in heldout)
    # the loaders read the files; exact_match scores the demonstrations about 1 − wrong_fraction
    demos, records = load_demonstrations(paths["demonstrations.jsonl"]), load_prompts(paths["prompts.jsonl"])
    assert records[0].meta["answer"] == prompts[0]["answer"]
    answers = [str(eval(problem(d.prompt))) for d in demos]
    accuracy = np.mean(exact_match([d.prompt for d in demos], [d.response for d in demos], answer=answers))
    assert 0.68 < accuracy < 0.82, accuracy


def test_the_command_writes_the_task_and_a_tokenizer(tmp_path, capsys):
    assert main(["data", "builtin", "--task", "arithmetic", "--difficulty", "1", "--out", str(tmp_path),
                 "--vocab-size", "400"]) == 0
    assert "built-in arithmetic task" in capsys.readouterr().out
    for name in ("demonstrations.jsonl", "prompts.jsonl", "heldout_prompts.jsonl", "tokenizer"):
        assert os.path.exists(tmp_path / name), name
    assert all(r["difficulty"] == 1 and r["terms"] == 2 for r in read(tmp_path / "prompts.jsonl"))
