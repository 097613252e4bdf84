"""Best-of-n from a policy with the reward model as the selector, as a policy of the held-out comparison: its
answers are the reward model's favourite of n samples, it gets the same rows as any policy, and it is left out
of the reward model's agreement with the judge."""
import json
import math
import random

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.data.encoding import encode_prompts
from mindrlhf.data.formats import load_prompts
from mindrlhf.data.tokenizer import Tokenizer, train_tokenizer
from mindrlhf.evaluation import BestOfN, EvalConfig, Evaluator, compare
from mindrlhf.generation import generation_config
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.report import write_report
from mindrlhf.roles import RewardModel

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]
CFG = EvalConfig(max_prompts=6, max_new_tokens=6, batch_size=8, decodings=["greedy", "sample"])


def judge(prompts, responses, columns=None):
    """Any deterministic score of the text will do: its length in characters."""
    return np.array([len(r) for r in responses], np.float64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bon")
    rng = random.Random(0)
    lines = [" ".join(rng.sample(WORDS, 3)) for _ in range(200)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    train_tokenizer(str(root / "corpus.txt"), 300, str(root / "tok"))
    tok = Tokenizer.load(str(root / "tok"))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": "say " + x}) + "\n" for x in lines[:6]))
    config = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64)
    for seed, name in ((0, "sft"), (1, "other")):
        ms.set_seed(seed)
        CausalLM(config).save_pretrained(str(root / name))
        tok.save(str(root / name))
    ms.set_seed(2)
    reward_model = RewardModel(CausalLM(config))
    reward_model.head.weight.set_data(ms.Tensor(np.random.default_rng(2).normal(0, 1.0, (32, 1)).astype(np.float32)))
    prompts = encode_prompts(load_prompts(str(root / "prompts.jsonl")), tok, 32)
    return root, reward_model, prompts


def test_best_of_n_keeps_the_reward_models_favourite_of_n_samples(setup):
    root, reward_model, prompts = setup
    evaluator = Evaluator(str(root / "sft"), reward_model, CFG, judge)
    picked = evaluator.best_of_n(BestOfN(str(root / "sft"), 4), prompts, seed=3)
    # the 4 samples per prompt as best_of_n draws them: calls of 8 // 4 = 2 prompts
    config = generation_config(evaluator.tokenizer, CFG.max_new_tokens, do_sample=True, seed=3)
    texts, rm, kl = evaluator._generate(prompts, config, 2, 4)
    assert kl is None and len(texts) == 24
    rm = rm.reshape(6, 4)
    assert sum(len(set(texts[4 * p: 4 * p + 4])) > 1 for p in range(6)) >= 4  # sampled, not greedy
    best = rm.argmax(1)
    assert picked.texts == [texts[4 * p + b] for p, b in enumerate(best)]
    np.testing.assert_array_equal(picked.rm_scores, rm.max(1))
    np.testing.assert_array_equal(picked.judge_scores, judge(None, picked.texts))
    np.testing.assert_allclose(picked.kl_to_ref, math.log(4) - 3 / 4)
    assert picked.chosen_by_rm and picked.name == "best_of_4"


def test_compare_gives_best_of_n_the_rows_of_a_policy(setup):
    root, reward_model, prompts = setup
    folders = {"sft": str(root / "sft"), "other": str(root / "other")}
    summary, answers = compare({**folders, "best_of_4": BestOfN(folders["sft"], 4)}, folders["sft"], reward_model,
                               prompts, CFG, judge, baseline="sft")
    plain, plain_answers = compare(folders, folders["sft"], reward_model, prompts, CFG, judge, baseline="sft")
    for decoding in CFG.decodings:
        sft, other, bon = answers[decoding]
        assert [a.name for a in answers[decoding]] == ["sft", "other", "best_of_4"]
        # the folders' answers are the same with or without a best-of-n policy beside them
        for a, b in zip((sft, other), plain_answers[decoding]):
            assert a.texts == b.texts
            np.testing.assert_array_equal(a.rm_scores, b.rm_scores)
        row = summary[decoding]["best_of_4"]
        assert row["judge_gain_vs_sft"] == pytest.approx(np.mean(bon.judge_scores - sft.judge_scores))
        assert row["kl_to_ref"] == pytest.approx(math.log(4) - 3 / 4)
        assert {"win_rate_vs_sft", "win_rate_interval_vs_sft", "judge_gain_interval_vs_sft"} <= set(row)
        # the agreement with the judge is on the policies the reward model did not pick: sft and other
        agreement, without = summary["reward_model_vs_judge"][decoding], plain["reward_model_vs_judge"][decoding]
        np.testing.assert_equal(agreement, without)  # NaN where no pair differs (the greedy answers are all blank)
        assert agreement["pairs"] == int(np.sum(sft.judge_scores != other.judge_scores))
    assert summary["reward_model_vs_judge"]["sample"]["pairs"] > 0
    assert answers["greedy"][2] is answers["sample"][2]  # drawn once, shown in both tables
    # the report gives it a row of each table and a head-to-head line against the baseline
    text = open(write_report(str(root), summary, answers, 2, stages=())).read()
    assert text.count("| best_of_4 | ") == 2 and text.count("best_of_4 against sft: ") == 2
    assert "best_of_n rows: n sampled SFT answers" in text
