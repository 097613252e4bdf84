"""Reward-model stage: the loss Cell against numpy, accumulation = one big batch, export/load, bad data."""
import json

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.config import load_config
from mindrlhf.data.encoding import EncodedRanking, EncodedSequence
from mindrlhf.data.formats import DataError
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.roles import RewardModel
from mindrlhf.trainers.artifacts import export_reward_model, load_reward_model
from mindrlhf.trainers.reward import RMConfig, RMLoss, batch_tensors, ranking_stats, score_rankings, train_rm
from mindrlhf.trainers.step import OptimConfig, Updater

K, PAD_MULTIPLE, MAX_LEN = 3, 16, 32


def encoded(tok, prompt, responses):
    seqs = [EncodedSequence(*tok.encode_prompt_response(prompt, r)) for r in responses]
    return EncodedRanking(tuple(seqs))


@pytest.fixture(scope="module")
def setup(toy_task):
    tok = Tokenizer.load(str(toy_task / "tok"))
    ms.set_seed(0)
    trunk = CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size))
    rm = RewardModel(trunk)
    # a non-zero head, so the trunk receives gradients too (a fresh head is zero)
    rm.head.weight.set_data(ms.Tensor(np.random.default_rng(0).normal(0, 0.3, (64, 1)).astype(np.float32)))
    # four prompts; the third has only K=2 responses, so k_mask and slot padding are exercised
    records = [encoded(tok, "reverse: red cat sun", ["sun cat red", "sun red cat", "dog"]),
               encoded(tok, "reverse: moon tree", ["tree moon", "moon tree", "tree"]),
               encoded(tok, "reverse: blue dog", ["dog blue", "blue"]),
               encoded(tok, "reverse: stone river green", ["green river stone", "green stone", "red red red"])]
    return tok, rm, records


def gradients(loss_cell, params, batches):
    grad_fn = ms.value_and_grad(loss_cell, None, params, has_aux=True)
    total, grads = 0.0, None
    for batch in batches:
        (loss, _), g = grad_fn(*batch)
        total += float(loss.asnumpy())
        g = [x.asnumpy() for x in g]
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    return total, grads


def numpy_ranking_loss(rewards, k_mask, margin):
    per_prompt = []
    for r, m in zip(rewards, k_mask):
        r = r[m > 0]
        terms = [np.logaddexp(0.0, -(r[i] - r[j] - margin)) for i in range(len(r)) for j in range(i + 1, len(r))]
        per_prompt.append(np.mean(terms))
    return np.mean(per_prompt)


def test_loss_is_mean_over_prompts_of_mean_pair_loss(setup):
    tok, rm, records = setup
    batch = batch_tensors(records, tok.pad_id, K, PAD_MULTIPLE, MAX_LEN, 4.0)
    loss, aux = RMLoss(rm, margin=0.5)(*batch)
    rewards = rm(*batch[:3]).asnumpy().reshape(4, K)
    k_mask = batch[3].asnumpy()
    assert k_mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
    np.testing.assert_allclose(float(loss.asnumpy()), numpy_ranking_loss(rewards, k_mask, 0.5), rtol=1e-5)
    wins = [np.mean([r[i] > r[j] for i in range(int(m.sum())) for j in range(i + 1, int(m.sum()))])
            for r, m in zip(rewards, k_mask)]
    np.testing.assert_allclose(aux.asnumpy(), [np.sum(wins), 4.0], rtol=1e-5)
    stats = ranking_stats(rewards, k_mask, 0.5)
    np.testing.assert_allclose(stats["accuracy"], np.mean(wins), rtol=1e-6)
    np.testing.assert_allclose(stats["loss"], float(loss.asnumpy()), rtol=1e-5)
    real = rewards[k_mask > 0]
    np.testing.assert_allclose([stats["reward_mean"], stats["reward_std"]], [real.mean(), real.std()], rtol=1e-5)
    margins = [np.mean([r[i] - r[j] for i in range(int(m.sum())) for j in range(i + 1, int(m.sum()))])
               for r, m in zip(rewards, k_mask)]
    np.testing.assert_allclose(stats["mean_margin"], np.mean(margins), rtol=1e-5, atol=1e-7)
    assert stats["pairs"] == 3 + 3 + 1 + 3


def test_loss_cell_runs_the_same_in_pynative(setup):
    tok, rm, records = setup
    batch = batch_tensors(records, tok.pad_id, K, PAD_MULTIPLE, MAX_LEN, 4.0)
    graph_loss, graph_aux = RMLoss(rm)(*batch)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    eager_loss, eager_aux = RMLoss(rm)(*batch)
    np.testing.assert_allclose(eager_loss.asnumpy(), graph_loss.asnumpy(), rtol=1e-5)
    np.testing.assert_allclose(eager_aux.asnumpy(), graph_aux.asnumpy(), rtol=1e-5)


def test_micro_batches_add_up_to_the_full_batch_gradient(setup):
    tok, rm, records = setup
    cell = RMLoss(rm)
    params = rm.trainable_params()
    full_loss, full = gradients(cell, params, [batch_tensors(records, tok.pad_id, K, PAD_MULTIPLE, MAX_LEN, 4.0)])
    micro_loss, micro = gradients(cell, params, [batch_tensors(records[i:i + 2], tok.pad_id, K, PAD_MULTIPLE,
                                                               MAX_LEN, 4.0) for i in (0, 2)])
    assert np.isfinite(full_loss) and all(np.isfinite(g).all() for g in full)
    trunk_grad = sum(float(np.abs(g).sum()) for p, g in zip(params, full) if p.name.startswith("trunk."))
    assert trunk_grad > 0, "the trunk got no gradient"
    np.testing.assert_allclose(micro_loss, full_loss, rtol=1e-5)
    for p, a, b in zip(params, full, micro):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6, err_msg=p.name)


def test_one_step_with_accumulation_equals_one_without(setup):
    tok, rm, records = setup
    start = {p.name: p.asnumpy().copy() for p in rm.trainable_params()}
    cfg = OptimConfig(lr=1e-2, warmup_steps=0, schedule="constant", max_grad_norm=1.0)
    after = []
    for accum in (1, 2):
        for p in rm.trainable_params():
            p.set_data(ms.Tensor(start[p.name]))
        up = Updater(RMLoss(rm), rm.trainable_params(), cfg, total_steps=1, accum_steps=accum)
        size = len(records) // accum
        micro = [batch_tensors(records[i * size:(i + 1) * size], tok.pad_id, K, PAD_MULTIPLE, MAX_LEN, 4.0)
                 for i in range(accum)]
        loss, _, norm = up.step(micro)
        after.append(({p.name: p.asnumpy().copy() for p in rm.trainable_params()}, loss, norm))
    (one, loss1, norm1), (two, loss2, norm2) = after
    np.testing.assert_allclose([loss2, norm2], [loss1, norm1], rtol=1e-4)
    moved = max(float(np.abs(one[n] - start[n]).max()) for n in start)
    assert moved > 1e-3
    for name in start:
        np.testing.assert_allclose(two[name], one[name], atol=2e-5, err_msg=name)
    for p in rm.trainable_params():
        p.set_data(ms.Tensor(start[p.name]))


def test_export_and_load_give_the_same_rewards(setup, tmp_path):
    tok, rm, records = setup
    cfg = RMConfig()
    export_reward_model(rm, tok, cfg, str(tmp_path / "model"))
    again = load_reward_model(str(tmp_path / "model"))
    assert Tokenizer.load(str(tmp_path / "model")).vocab_size == tok.vocab_size
    a, mask = score_rankings(rm, records, tok.pad_id, K, 2, PAD_MULTIPLE, MAX_LEN)
    b, _ = score_rankings(again, records, tok.pad_id, K, 2, PAD_MULTIPLE, MAX_LEN)
    assert a.shape == (4, K) and mask[2].tolist() == [1, 1, 0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert np.std(a[mask > 0]) > 0  # the loaded head is the trained one, not a fresh zero head


def test_load_reward_model_rejects_a_plain_lm_folder(setup, tmp_path):
    _, rm, _ = setup
    rm.trunk.save_pretrained(str(tmp_path / "lm"))
    with pytest.raises(FileNotFoundError, match="reward_head.safetensors not found"):
        load_reward_model(str(tmp_path / "lm"))


@pytest.mark.parametrize("line, message", [
    ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 2, 2]}, "field 'ranking': [0, 2, 2] is not a permutation"),
    ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "a ranking needs K >= 2"),
    ({"prompt": "p", "responses": ["a", " "], "ranking": [1, 0]}, "field 'responses[1]': expected a non-empty string"),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, "field 'rejected' is empty"),
])
def test_bad_rankings_stop_training_with_file_and_line(toy_task, tmp_path, line, message):
    good = {"prompt": "reverse: red cat", "responses": ["cat red", "red cat"], "ranking": [0, 1]}
    path = tmp_path / "rankings.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in (good, good, line, good)) + "\n")
    cfg = load_config(RMConfig, None, [f"data.train={path}", f"tokenizer={toy_task / 'tok'}", "model=tiny",
                                       f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError) as err:
        train_rm(cfg)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)
