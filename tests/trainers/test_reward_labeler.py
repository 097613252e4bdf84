"""The reward model against the labeler's noise-free scores: rankings files keep them (``true_scores``), and
`mindrlhf eval rm --against-labeler` measures the model's pairwise accuracy on them."""
import json

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.cli import main
from mindrlhf.data.encoding import encode_rankings
from mindrlhf.data.formats import DataError, Ranking, load_rankings, to_json
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.roles import RewardModel
from mindrlhf.tasks import make_rankings
from mindrlhf.trainers.artifacts import export_reward_model
from mindrlhf.trainers.reward import RMConfig, evaluate_rm, labeler_agreement, score_rankings

WORDS = ["red cat", "blue dog", "green sun", "moon tree", "river stone", "sun red", "dog cat", "tree"]


def test_labeler_agreement_by_hand():
    rewards = np.array([[3.0, 1.0, 2.0], [0.0, 1.0, 9.0], [1.0, 2.0, 0.0]])
    true = np.array([[5.0, 5.0, 1.0], [2.0, 3.0, 0.0], [1.0, 1.0, 0.0]])
    k_mask = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 0]])
    s = labeler_agreement(rewards, true, k_mask)
    # row 0: (0,1) tied scores ½; (0,2) 5 > 1 and 3 > 2: 1; (1,2) 5 > 1 but 1 < 2: 0 → every ½, decisive ½,
    #        the noisy ranking has both decisive pairs right (1)
    # row 1: (0,1) 2 < 3 and 0 < 1: the model is right (1), the noisy ranking wrong (0); slot 2 is padding
    # row 2: (0,1) tied scores: ½; no decisive pair
    assert s["labeler_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert s["labeler_accuracy_decisive"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["noisy_ranking_accuracy"] == pytest.approx((1.0 + 0.0) / 2)
    assert s["labeler_decisive_pairs"] == 3


def test_a_reward_model_tie_on_a_decisive_pair_is_wrong():
    s = labeler_agreement(np.array([[1.0, 1.0]]), np.array([[2.0, 0.0]]), np.ones((1, 2)))
    assert s["labeler_accuracy"] == 0.0 and s["labeler_accuracy_decisive"] == 0.0


def test_true_scores_follow_the_ranking_and_are_checked(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1], "true_scores": [1, 0.5, 3]},
             {"prompt": "q", "chosen": "x", "rejected": "y", "true_scores": [2, -1]},
             {"prompt": "s", "responses": ["a", "b"], "ranking": [1, 0]}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    first, pair, plain = load_rankings(str(path))
    assert first.responses == ("c", "a", "b") and first.true_scores == (3.0, 1.0, 0.5)
    assert pair.true_scores == (2.0, -1.0) and plain.true_scores is None
    assert to_json(first)["true_scores"] == [3.0, 1.0, 0.5] and "true_scores" not in to_json(plain)
    for bad in ([1, 2], [1, "a", 2], [1, True, 2], [1, float("nan"), 2]):
        path.write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1, 2],
                                    "true_scores": bad}) + "\n")
        with pytest.raises(DataError, match=r"r.jsonl:1: field 'true_scores': .* is not a list of 3 finite numbers"):
            load_rankings(str(path))


def _noisy_rank(prompts, responses_per_prompt, *, rng, noise, **columns):
    return [list(np.argsort(-(np.array([len(r) for r in rs]) + noise * rng.standard_normal(len(rs)))))
            for rs in responses_per_prompt]


def _score(prompts, responses, **columns):
    return [float(len(r)) + (0.5 if tag == "x" else 0.0) for r, tag in zip(responses, columns["tag"])]


def test_make_rankings_writes_true_scores_without_changing_the_rankings():
    prompts, responses = ["p", "q", "r"], [["aa", "b", "ccc"], ["x", "x", " "], ["dddd", "ee"]]
    metas = [{"tag": "x"}, {"tag": "y"}, {"tag": "z"}]
    scorer = lambda p, r, columns=None: np.asarray(_score(p, r, **columns))  # noqa: E731
    plain = make_rankings(prompts, responses, _noisy_rank, "rank", np.random.default_rng(3), 0.7, metas)
    scored = make_rankings(prompts, responses, _noisy_rank, "rank", np.random.default_rng(3), 0.7, metas, scorer)
    assert [r["prompt"] for r in scored] == ["p", "r"]  # q has one distinct non-blank answer
    assert [{k: v for k, v in r.items() if k != "true_scores"} for r in scored] == plain
    assert scored[0]["true_scores"] == [2.5, 1.5, 3.5] and scored[1]["true_scores"] == [4.0, 2.0]


@pytest.fixture(scope="module")
def reward_folder(toy_task, tmp_path_factory):
    tok = Tokenizer.load(str(toy_task / "tok"))
    ms.set_seed(0)
    rm = RewardModel(CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size)))
    rm.head.weight.set_data(ms.Tensor(np.random.default_rng(0).normal(0, 0.5, (64, 1)).astype(np.float32)))
    folder = str(tmp_path_factory.mktemp("rm") / "model")
    export_reward_model(rm, tok, RMConfig(), folder)
    return folder, tok, rm


def test_eval_rm_against_labeler_reads_the_scores_in_the_ranking_order(reward_folder, tmp_path, capsys):
    folder, tok, rm = reward_folder
    rng = np.random.default_rng(1)
    prompts = [f"reverse: {WORDS[i]}" for i in range(6)]
    responses = [[WORDS[j] for j in rng.choice(len(WORDS), 3, replace=False)] for _ in prompts]
    as_written = encode_rankings([Ranking(p, tuple(r)) for p, r in zip(prompts, responses)], tok, 64)
    rewards, _ = score_rankings(rm, as_written, tok.pad_id, 3, 16, 32, 64)  # [6, 3], in each line's order
    orders = [list(rng.permutation(3)) for _ in prompts]  # the "noisy" rankings, best first
    # the noisy ranking orders a pair right when its better slot has the higher true score
    noisy = np.mean([np.mean([rewards[p][o[i]] > rewards[p][o[j]] for i, j in ((0, 1), (0, 2), (1, 2))])
                     for p, o in enumerate(orders)])
    for sign, expected in ((1.0, 1.0), (-1.0, 0.0)):  # true scores = the model's own, then their negatives
        path = tmp_path / f"rankings{sign:+.0f}.jsonl"
        path.write_text("".join(json.dumps({"prompt": p, "responses": r, "ranking": [int(i) for i in o],
                                            "true_scores": [sign * float(x) for x in s]}) + "\n"
                                for p, r, o, s in zip(prompts, responses, orders, rewards)))
        stats = evaluate_rm(folder, str(path), against_labeler=True)
        assert stats["labeler_accuracy"] == pytest.approx(expected)
        assert stats["labeler_accuracy_decisive"] == pytest.approx(expected)
        assert stats["labeler_decisive_pairs"] == 18
        assert stats["noisy_ranking_accuracy"] == pytest.approx(noisy if sign > 0 else 1 - noisy)
        assert stats["accuracy"] == pytest.approx(noisy)  # against the noisy ranking: the same either way
    capsys.readouterr()
    assert main(["eval", "rm", "--model", folder, "--data", str(tmp_path / "rankings+1.jsonl"),
                 "--against-labeler"]) == 0
    out = capsys.readouterr().out
    assert "labeler_accuracy=1.0000" in out and "labeler_accuracy_decisive=1.0000 (18 pairs" in out


def test_eval_rm_against_labeler_without_true_scores_says_how_to_make_them(reward_folder, tmp_path, capsys):
    folder, _, _ = reward_folder
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"prompt": "reverse: red cat", "responses": ["cat red", "red"], "ranking": [0, 1]})
                    + "\n")
    assert main(["eval", "rm", "--model", folder, "--data", str(path), "--against-labeler"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: no 'true_scores'" in err and "data rankings --scorer" in err
