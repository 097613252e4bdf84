"""`mindrlhf score` against a direct per-answer computation (each answer alone, unpadded, in PyNative mode),
and `mindrlhf eval rm`, which leaves the model folder as it is unless asked (--write-stats)."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.cli import main
from mindrlhf.data.encoding import encode_pair
from mindrlhf.data.tokenizer import Tokenizer, train_tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.roles import RewardModel
from mindrlhf.trainers.artifacts import STATS_FILE, export_reward_model, load_reward_model, write_stats
from mindrlhf.trainers.reward import RMConfig

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]
# 5 answers in calls of 2: the last call is filled up with a copy; two padded widths (16 and 32 tokens)
ANSWERS = [("reverse: red cat", "cat red"), ("reverse: moon", "moon"), ("reverse: tree river stone dog sun",
           "sun dog stone river tree sun dog stone river tree"), ("reverse: blue", "blue blue"),
           ("reverse: green sun", "sun green")]


def _lm(tok, seed):
    ms.set_seed(seed)
    return CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tokenizer, two random tiny policies (policy, reference) and a reward model with a non-zero head."""
    root = tmp_path_factory.mktemp("score")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 3)) for _ in range(200)]
    (root / "corpus.txt").write_text("\n".join(["reverse: " + x for x in lines] + lines) + "\n")
    tok = train_tokenizer(str(root / "corpus.txt"), 300, str(root / "tok"))
    for name, seed in (("policy", 1), ("reference", 2)):
        _lm(tok, seed).save_pretrained(str(root / name))
        tok.save(str(root / name))
    rm = RewardModel(_lm(tok, 3))
    rm.head.weight.set_data(ms.Tensor(rng.normal(0, 0.3, (64, 1)).astype(np.float32)))
    export_reward_model(rm, tok, RMConfig(), str(root / "rm"))
    write_stats({"accuracy": 0.5, "reward_mean": 0.11, "reward_std": 3.89}, str(root / "rm"))
    (root / "answers.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r, "id": i}) + "\n"
                                                for i, (p, r) in enumerate(ANSWERS)))
    return root


def _direct(folder, tok, prompt, response, chat_template=True):
    """(Σ log π over the answer and its EOS, the reward model's score at the EOS) of one unpadded sequence."""
    ids, mask = encode_pair(tok, prompt, response, chat_template)
    x = ms.Tensor([ids], ms.int32)
    logits = CausalLM.from_pretrained(str(folder / "policy"))(x).asnumpy()[0].astype(np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    total = sum(logp[t - 1, ids[t]] for t in range(1, len(ids)) if mask[t])
    rm = load_reward_model(str(folder / "rm"))
    score = float(rm(x, ms.Tensor(np.ones((1, len(ids))), ms.int32), ms.Tensor([len(ids) - 1], ms.int32)).asnumpy()[0])
    return total, score, sum(mask)


def _score(folders, out, *options):
    argv = ["score", "--data", str(folders / "answers.jsonl"), "--out", str(out), "--batch-size", "2",
            "--pad-multiple", "16", *options]
    assert main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def scored(folders):
    return _score(folders, folders / "scores.jsonl", "--reward-model", str(folders / "rm"), "--policy",
                  str(folders / "policy"), "--reference", str(folders / "reference"))


def test_each_line_is_scored_as_if_alone(folders, scored):
    tok = Tokenizer.load(str(folders / "policy"))
    assert [(r["prompt"], r["response"]) for r in scored] == ANSWERS  # in order, the filler row dropped
    ms.set_context(mode=ms.PYNATIVE_MODE)
    direct = [_direct(folders, tok, p, r) for p, r in ANSWERS]
    ms.set_context(mode=ms.GRAPH_MODE)
    np.testing.assert_allclose([r["logprob_policy"] for r in scored], [d[0] for d in direct], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([r["rm_score"] for r in scored], [d[1] for d in direct], rtol=1e-4, atol=1e-4)
    assert [r["num_tokens"] for r in scored] == [d[2] for d in direct]
    assert len({round(r["rm_score"], 4) for r in scored}) == len(ANSWERS)  # a head that tells answers apart


def test_kl_is_the_log_ratio_of_policy_and_reference(scored):
    for r in scored:
        assert r["kl"] == pytest.approx(r["logprob_policy"] - r["logprob_reference"], abs=1e-9)
        assert r["logprob_policy"] < 0 and r["logprob_reference"] < 0
    assert any(abs(r["kl"]) > 0.1 for r in scored)  # two different models


def test_only_the_models_given_are_scored_and_plain_continuation_is_scored_as_plain(folders, scored):
    plain = _score(folders, folders / "plain.jsonl", "--policy", str(folders / "policy"), "--no-chat-template")
    assert set(plain[0]) == {"prompt", "response", "num_tokens", "logprob_policy"}
    tok = Tokenizer.load(str(folders / "policy"))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    want = _direct(folders, tok, *ANSWERS[0], chat_template=False)[0]
    ms.set_context(mode=ms.GRAPH_MODE)
    assert plain[0]["logprob_policy"] == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert plain[0]["logprob_policy"] != pytest.approx(scored[0]["logprob_policy"], abs=1e-3)


def test_a_bad_line_or_no_model_is_one_line_and_writes_nothing(folders, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "reverse: red", "response": "red"}\n{"prompt": "reverse: cat"}\n')
    assert main(["score", "--data", str(bad), "--out", str(tmp_path / "o.jsonl"), "--policy",
                 str(folders / "policy")]) == 2
    assert f"{bad}:2: field 'response' is missing" in capsys.readouterr().err
    assert main(["score", "--data", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "give at least one of --reward-model, --policy, --reference" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------ eval rm


def test_eval_rm_leaves_rm_stats_as_they_are_unless_asked(folders, tmp_path, capsys):
    rankings = tmp_path / "rankings.jsonl"
    rankings.write_text("".join(json.dumps({"prompt": p, "responses": [r, "stone"], "ranking": [0, 1]}) + "\n"
                                for p, r in ANSWERS))
    stats = folders / "rm" / STATS_FILE
    before, mtime = stats.read_bytes(), os.stat(stats).st_mtime_ns
    assert main(["eval", "rm", "--model", str(folders / "rm"), "--data", str(rankings)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy=" in printed and "rm_stats.json" not in printed
    assert stats.read_bytes() == before and os.stat(stats).st_mtime_ns == mtime
    assert main(["eval", "rm", "--model", str(folders / "rm"), "--data", str(rankings), "--write-stats"]) == 0
    assert f"→ {stats}" in capsys.readouterr().out
    written = json.loads(stats.read_text())
    assert written["reference"] == str(rankings) and written["reward_mean"] != 0.11 and written["pairs"] == 5
