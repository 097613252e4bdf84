"""`mindrlhf generate` end to end: a tiny llama saved with a sentencepiece tokenizer, prompts JSONL in,
one record per prompt out, in order; greedy equals the engine called directly; seeds reproduce samples;
a bad prompts line is an error naming file:line."""
import json

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.cli import main
from mindrlhf.data.encoding import encode_prompts
from mindrlhf.data.formats import load_prompts
from mindrlhf.data.tokenizer import Tokenizer, train_tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.generate import GenerationConfig, Generator

N = 8
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]
# 5 prompts in batches of 2: the last batch (1 prompt) is filled up to 2 rows, so one graph per run
PROMPTS = ["reverse: red cat sun", "reverse: moon", "reverse: tree river stone dog", "reverse: blue", "green"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A random tiny llama and its tokenizer: weights large enough that greedy does not repeat one token,
    and an EOS embedding (tied to the LM head) long enough that some answers end early and some do not."""
    root = tmp_path_factory.mktemp("gen_cli")
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(WORDS, 4)) for _ in range(200)]
    (root / "corpus.txt").write_text("\n".join(["reverse: " + x for x in lines] + lines) + "\n")
    tok = train_tokenizer(str(root / "corpus.txt"), 300, str(root / "model"))
    lm = CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size))
    weights = {n: (1.0 + 0.1 * rng.standard_normal(p.shape) if "norm" in n else 0.3 * rng.standard_normal(p.shape))
               for n, p in lm.named_weights()}
    weights["embed_tokens.weight"][tok.eos_id] *= 4
    lm.assign_weights(weights)
    lm.save_pretrained(str(root / "model"))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n"
                                                for i, p in enumerate(PROMPTS)))
    return root


def _run(folder, out, *options):
    argv = ["generate", "--model", str(folder / "model"), "--prompts", str(folder / "prompts.jsonl"),
            "--out", str(out), "--max-new-tokens", str(N), "--batch-size", "2", "--no-progress", *options]
    assert main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def greedy(folder):
    return _run(folder, folder / "greedy.jsonl")


def test_one_record_per_prompt_in_order(greedy):
    assert [r["prompt"] for r in greedy] == PROMPTS
    assert [r["meta"] for r in greedy] == [{"id": i} for i in range(len(PROMPTS))]
    for r in greedy:
        assert 1 <= r["num_tokens"] <= N
        assert r["finished"] or r["num_tokens"] == N  # only EOS ends a response early
        assert r["sum_logprob"] <= 0 and isinstance(r["response"], str)


def test_greedy_equals_the_engine_called_directly(folder, greedy):
    """The reference: the same saved model and tokenizer, all prompts in one call of the Generator (another
    batch shape than the command's batches of 2), in PyNative mode (no second compile)."""
    tok = Tokenizer.load(str(folder / "model"))
    lm = CausalLM.from_pretrained(str(folder / "model"))
    prompts = encode_prompts(load_prompts(str(folder / "prompts.jsonl")), tok, 64)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    gen = Generator(lm).generate([p.input_ids for p in prompts], GenerationConfig(
        max_new_tokens=N, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    ms.set_context(mode=ms.GRAPH_MODE)
    texts = [tok.decode(ids[m > 0]) for ids, m in zip(gen.response_ids, gen.response_mask)]
    assert len(set(texts)) > 1  # not a degenerate model that says the same thing to everyone
    assert 0 < sum(r["finished"] for r in greedy) < len(PROMPTS)  # both kinds of ending are compared
    assert [r["response"] for r in greedy] == texts
    assert [r["num_tokens"] for r in greedy] == gen.response_mask.sum(1).tolist()
    assert [r["finished"] for r in greedy] == [bool((ids == tok.eos_id).any()) for ids in gen.response_ids]
    np.testing.assert_allclose([r["sum_logprob"] for r in greedy], (gen.logprobs * gen.response_mask).sum(1),
                               atol=1e-4)


def test_same_seed_same_samples(folder, greedy):
    first = _run(folder, folder / "s1.jsonl", "--temperature", "1.5", "--seed", "3")
    again = _run(folder, folder / "s2.jsonl", "--temperature", "1.5", "--seed", "3")
    assert first == again
    assert [r["response"] for r in first] != [r["response"] for r in greedy]  # it did sample
    # sampled at T: sum_logprob is under softmax(logits / T), so it need not match greedy's
    assert all(r["sum_logprob"] < 0 for r in first)


def test_num_samples_gives_k_independent_answers_per_prompt_in_a_row(folder, greedy):
    """--num-samples 3: three lines per prompt, in order, numbered; the three are rows of one call, each drawing
    its own random numbers, so they differ; greedy's copies of a prompt are the greedy answer itself."""
    k = 3
    sampled = _run(folder, folder / "k3.jsonl", "--temperature", "1.5", "--seed", "3", "--num-samples", str(k))
    assert [r["prompt"] for r in sampled] == [p for p in PROMPTS for _ in range(k)]
    assert [r["sample"] for r in sampled] == list(range(k)) * len(PROMPTS)
    assert [r["meta"] for r in sampled[:k]] == [{"id": 0}] * k
    groups = [[r["response"] for r in sampled[i:i + k]] for i in range(0, len(sampled), k)]
    assert sum(len(set(g)) > 1 for g in groups) >= 4  # independent samples, not one answer copied k times
    twice = _run(folder, folder / "greedy2.jsonl", "--num-samples", "2")
    assert [r["response"] for r in twice] == [r["response"] for r in greedy for _ in range(2)]
    assert "sample" not in greedy[0]  # one answer per prompt keeps the one-line-per-prompt format


def test_bad_prompts_line_names_file_and_line(folder, capsys):
    bad = folder / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "reverse: cat"}) + "\n\n" + json.dumps({"text": "no prompt"}) + "\n")
    out = folder / "never.jsonl"
    argv = ["generate", "--model", str(folder / "model"), "--prompts", str(bad), "--out", str(out),
            "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3" in err and "'prompt'" in err
    assert not out.exists()


def test_plain_prompts_skip_the_template(folder):
    tok = Tokenizer.load(str(folder / "model"))
    records = load_prompts(str(folder / "prompts.jsonl"))
    plain = encode_prompts(records, tok, 64, chat_template=False)
    chat = encode_prompts(records, tok, 64)
    assert [p.input_ids for p in plain] == [[tok.bos_id] + tok.encode(t) for t in PROMPTS]
    assert [p.input_ids for p in chat] == [tok.encode_prompt(t) for t in PROMPTS] != [p.input_ids for p in plain]


@pytest.mark.parametrize("options, message", [
    (["--temperature", "-1"], "temperature: must be >= 0 (0 = greedy), got -1.0"),
    (["--max-new-tokens", "128"], "leaves no room for a prompt"),
    (["--model", "tiny"], "pass --tokenizer"),
    (["--out", "."], "is a folder; give the JSONL file to write"),
])
def test_bad_options_are_one_line_errors(folder, capsys, options, message):
    argv = ["generate", "--model", str(folder / "model"), "--prompts", str(folder / "prompts.jsonl"),
            "--out", str(folder / "never.jsonl"), "--no-progress", *options]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (folder / "never.jsonl").exists()


def test_an_overlong_prompt_is_skipped_and_the_others_are_answered(folder, tmp_path, capsys):
    """The tiny model has 128 positions; with 120 new tokens a prompt of more than 8 tokens has no room."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "blue"}) + "\n" + json.dumps({"prompt": " ".join(WORDS * 3)}) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", str(folder / "model"), "--prompts", str(prompts), "--out", str(out),
            "--max-new-tokens", "120", "--no-progress"]
    assert main(argv) == 0
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == ["blue"]
    printed = capsys.readouterr().out
    assert "skipped 1 prompts" in printed and f"{prompts}:2" in printed


def test_a_model_with_nan_weights_is_refused(folder, tmp_path, capsys):
    lm = CausalLM.from_pretrained(str(folder / "model"))
    weights = {n: p.asnumpy().copy() for n, p in lm.named_weights()}
    name = next(iter(weights))
    weights[name][0] = np.nan
    lm.assign_weights(weights)
    lm.save_pretrained(str(tmp_path / "diverged"))
    Tokenizer.load(str(folder / "model")).save(str(tmp_path / "diverged"))
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", str(tmp_path / "diverged"), "--prompts", str(folder / "prompts.jsonl"),
            "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    assert "NaN or infinite" in capsys.readouterr().err and not out.exists()
