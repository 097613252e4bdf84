"""Reward-model ensembles: M heads on one trunk, each on its own bootstrap resample of the rankings, scored
mean − k·std; M = 1 is the single reward model."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.config import load_config
from mindrlhf.data.encoding import EncodedRanking, EncodedSequence
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.nn.lora import LoRAConfig
from mindrlhf.roles import RewardModel, ppo_roles
from mindrlhf.trainers.artifacts import ENSEMBLE_FILE, HEAD_FILE, load_reward_model, read_stats
from mindrlhf.trainers.reward import EnsembleRMLoss, RMConfig, RMLoss, ResampledRanking, batch_tensors
from mindrlhf.trainers.reward import bootstrap_counts, encode_rankings_file, ensemble_batch_tensors, score_rankings
from mindrlhf.trainers.reward import train_rm
from mindrlhf.trainers.supervised import split_heldout
from mindrlhf.io import read_safetensors

K, PAD, MAX_LEN = 3, 16, 32
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "river", "stone"]


def _records(tok):
    def encoded(prompt, responses):
        return EncodedRanking(tuple(EncodedSequence(*tok.encode_prompt_response(prompt, r)) for r in responses))

    return [encoded("reverse: red cat sun", ["sun cat red", "sun red cat", "dog"]),
            encoded("reverse: moon tree", ["tree moon", "moon tree", "tree"]),
            encoded("reverse: blue dog", ["dog blue", "blue"]),
            encoded("reverse: stone river green", ["green river stone", "green stone", "red red red"])]


def _numpy_prompt_losses(rewards, k_mask):
    out = []
    for r, m in zip(rewards, k_mask):
        r = r[m > 0]
        out.append(np.mean([np.logaddexp(0.0, -(r[i] - r[j])) for i in range(len(r)) for j in range(i + 1, len(r))]))
    return np.array(out)


def test_bootstrap_counts_are_seeded_resamples():
    counts = bootstrap_counts(50, 3, seed=7)
    assert counts.shape == (50, 3) and (counts.sum(0) == 50).all()
    assert not (counts[:, 0] == counts[:, 1]).all()  # each member its own resample
    np.testing.assert_array_equal(bootstrap_counts(50, 3, seed=7), counts)
    np.testing.assert_array_equal(bootstrap_counts(50, 2, seed=7), counts[:, :2])  # member m's draw is its own


def test_ensemble_loss_weights_each_members_prompt_losses(toy_task):
    tok = Tokenizer.load(str(toy_task / "tok"))
    ms.set_seed(0)
    single = RewardModel(CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size)))
    head = np.random.default_rng(0).normal(0, 0.3, (64, 3)).astype(np.float32)
    single.head.weight.set_data(ms.Tensor(head[:, :1]))
    ensemble = RewardModel(single.trunk, ensemble_size=3)
    records = _records(tok)
    weights = np.array([[1, 0, 2], [2, 1, 0], [0, 3, 1], [1, 0, 1]], np.float32)  # [P, M]
    items = [ResampledRanking(r.sequences, tuple(w)) for r, w in zip(records, weights)]
    batch = ensemble_batch_tensors(items, tok.pad_id, K, PAD, MAX_LEN, 4.0)
    # three equal heads and weights 1: the single model's loss and accuracy
    ensemble.head.weight.set_data(ms.Tensor(np.repeat(head[:, :1], 3, axis=1)))
    ones = batch[:4] + (ms.Tensor(np.ones((4, 3), np.float32)), batch[5])
    loss, aux = EnsembleRMLoss(ensemble)(*ones)
    plain_loss, plain_aux = RMLoss(single)(*batch_tensors(records, tok.pad_id, K, PAD, MAX_LEN, 4.0))
    np.testing.assert_allclose(float(loss.asnumpy()), float(plain_loss.asnumpy()), rtol=1e-5)
    np.testing.assert_allclose(aux.asnumpy(), plain_aux.asnumpy(), rtol=1e-5)
    # three heads: Σ_m Σ_p w_pm ℓ_pm / (M · N), by numpy from each member's scores
    ensemble.head.weight.set_data(ms.Tensor(head))
    loss, _ = EnsembleRMLoss(ensemble)(*batch)
    members = ensemble.member_scores(*batch[:3]).asnumpy().reshape(4, K, 3)
    k_mask = batch[3].asnumpy()
    expected = sum(weights[:, m] @ _numpy_prompt_losses(members[:, :, m], k_mask) for m in range(3)) / (3 * 4.0)
    np.testing.assert_allclose(float(loss.asnumpy()), expected, rtol=1e-5)


def _rankings_file(path, n=48):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(n):
        words = list(rng.choice(WORDS, 3, replace=False))
        right = " ".join(reversed(words))
        lines.append({"prompt": "reverse: " + " ".join(words),
                      "responses": [right, " ".join(words), words[0]], "ranking": [0, 1, 2]})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


def _train(toy_task, tmp_path, name, *overrides):
    cfg = load_config(RMConfig, None, [
        f"data.train={_rankings_file(tmp_path / 'rankings.jsonl')}", f"tokenizer={toy_task / 'tok'}", "model=tiny",
        f"out_dir={tmp_path / name}", "data.max_length=32", "data.eval_fraction=0.25", "train.batch_size=4",
        "train.max_steps=6", "train.progress=false", "train.save_every=0", "optim.lr=3e-3", *overrides])
    train_rm(cfg)
    return str(tmp_path / name / "model")


@pytest.fixture(scope="module")
def trained(toy_task, tmp_path_factory):
    root = tmp_path_factory.mktemp("ensemble")
    return root, _train(toy_task, root, "single"), _train(toy_task, root, "ensemble", "ensemble.size=3",
                                                          "ensemble.k=0.5")


def test_size_one_is_the_single_reward_model(trained):
    _, single, _ = trained
    assert not os.path.exists(os.path.join(single, ENSEMBLE_FILE))
    assert read_safetensors(os.path.join(single, HEAD_FILE))["weight"].shape == (64, 1)
    rm = load_reward_model(single)
    assert rm.ensemble_size == 1 and "ensemble" not in read_stats(single)


def test_an_ensemble_scores_mean_minus_k_std_of_its_members(trained, toy_task):
    _, _, folder = trained
    assert json.loads(open(os.path.join(folder, ENSEMBLE_FILE)).read()) == {"size": 3, "k": 0.5}
    tok = Tokenizer.load(folder)
    batch = batch_tensors(_records(tok), tok.pad_id, K, PAD, MAX_LEN, 4.0)[:3]
    for k in (None, 2.5):
        rm = load_reward_model(folder, k=k)
        members = rm.member_scores(*batch).asnumpy().astype(np.float64)  # [12, 3]
        expected = members.mean(1) - (0.5 if k is None else k) * members.std(1)
        np.testing.assert_allclose(rm(*batch).asnumpy(), expected, rtol=1e-5, atol=1e-6)
    # the members trained on different resamples: different heads, different scores
    heads = read_safetensors(os.path.join(folder, HEAD_FILE))["weight"]
    assert heads.shape == (64, 3) and min(np.abs(heads[:, i] - heads[:, j]).max() for i, j in ((0, 1), (0, 2), (1, 2))) > 1e-4
    assert members.std(1).min() > 0


def test_rm_stats_describe_the_conservative_score(trained):
    root, _, folder = trained
    stats = read_stats(folder)
    assert stats["ensemble"] == {"size": 3, "k": 0.5}
    rm, tok = load_reward_model(folder), Tokenizer.load(folder)
    # the held-out quarter of the rankings (split_heldout's seeded slice) is what the stats were measured on
    cfg = RMConfig()
    cfg.data.eval_fraction = 0.25
    records = encode_rankings_file(str(root / "rankings.jsonl"), tok, 32)
    _, heldout = split_heldout(records, cfg.data, 0, None)
    rewards, k_mask = score_rankings(rm, heldout, tok.pad_id, K, 4, 32, 32)
    real = rewards[k_mask > 0]
    np.testing.assert_allclose([stats["reward_mean"], stats["reward_std"]], [real.mean(), real.std()], rtol=1e-4,
                               atol=1e-6)


def test_the_critic_starts_from_the_members_mean_head(trained, toy_task):
    _, _, folder = trained
    rm = load_reward_model(folder)
    off = LoRAConfig(enabled=False)
    _, _, critic = ppo_roles(folder, Tokenizer.load(folder).vocab_size, rm, folder, off, off)
    np.testing.assert_allclose(critic.head.weight.asnumpy()[:, 0], rm.head.weight.asnumpy().mean(1), rtol=1e-6)
    np.testing.assert_allclose(critic.head.bias.asnumpy(), [rm.head.bias.asnumpy().mean()], rtol=1e-6)
