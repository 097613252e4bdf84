"""DPO stage: the loss Cell and the reference pass against per-example PyNative forwards, micro-batches adding
up to the full batch's gradient, the stored reference log-probs, resume, LoRA, and learning on the toy task."""
import os

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.config import load_config
from mindrlhf.data.encoding import EncodedRanking, EncodedSequence
from mindrlhf.data.pairs import rankings_to_pairs
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.nn import CausalLM, ModelConfig
from mindrlhf.trainers.dpo import DPOAlgoConfig, DPOConfig, DPOLoss, batch_tensors, describe, train_dpo
from mindrlhf.trainers.dpo_reference import REFERENCE_FILE, reference_pass, stored_reference
from mindrlhf.trainers.metrics import read_metrics

from .test_kill_resume import SAVE_EVERY, STEPS, kill_after_a_checkpoint, run, same_run

PAD_MULTIPLE, MAX_LEN = 16, 48
TRL_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
             "logps/rejected")


def encoded(tok, prompt, responses):
    return EncodedRanking(tuple(EncodedSequence(*tok.encode_prompt_response(prompt, r)) for r in responses))


@pytest.fixture(scope="module")
def setup(toy_task):
    tok = Tokenizer.load(str(toy_task / "tok"))
    ms.set_seed(0)
    lm = CausalLM(ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, num_layers=1))
    # weights of a trained model's scale, so log-probs differ between answers and gradients are not tiny
    rng = np.random.default_rng(0)
    lm.assign_weights({n: rng.normal(0, 0.2, p.shape).astype(np.float32) if len(p.shape) == 2 else p.asnumpy()
                       for n, p in lm.named_weights()})
    rankings = [encoded(tok, "reverse: red cat sun", ["sun cat red", "red cat sun", "sun"]),
                encoded(tok, "reverse: moon tree", ["tree moon", "moon tree moon tree"]),
                encoded(tok, "reverse: blue dog green", ["green dog blue", "green blue dog", "dog"])]
    sequences, pairs, _ = rankings_to_pairs(rankings, "all")
    assert len(pairs) == 7
    pairs = pairs + pairs[:1]  # 8 pairs: halves of 4 for the micro-batch test
    ref = np.random.default_rng(1).normal(-20.0, 3.0, len(sequences)).astype(np.float32)
    return tok, lm, sequences, pairs, ref


def eager_logps(lm, seq) -> float:
    """Σ over response tokens of log π(y_t | y_<t), from a PyNative forward of the sequence alone (no padding)."""
    ids = ms.Tensor(np.asarray([seq.input_ids], np.int32))
    logits = lm(ids, ms.Tensor(np.ones_like(ids.asnumpy()))).asnumpy()[0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(sum(logp[t - 1, seq.input_ids[t]] for t in range(1, len(seq.input_ids)) if seq.loss_mask[t]))


def softplus(x):
    return np.logaddexp(0.0, x)


def test_loss_cell_against_numpy(setup):
    tok, lm, _, pairs, ref = setup
    cfg = DPOAlgoConfig(beta=0.5, sft_coef=0.3)
    batch = batch_tensors(pairs, ref, tok.pad_id, PAD_MULTIPLE, MAX_LEN, 6.0, real=7)  # the 8th pair only fills
    loss, aux = DPOLoss(lm, cfg)(*batch)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    eager_loss, eager_aux = DPOLoss(lm, cfg)(*batch)
    rows = []
    for p in pairs[:7]:
        lw, ll = eager_logps(lm, p.chosen), eager_logps(lm, p.rejected)
        n_w = sum(p.chosen.loss_mask[1:])
        rw, rl = 0.5 * (lw - ref[p.chosen_id]), 0.5 * (ll - ref[p.rejected_id])
        ell = softplus(-(rw - rl)) + 0.3 * (-lw / n_w)
        rows.append([rw, rl, float(rw > rl), lw, ll, -lw / n_w, ell])
    ms.set_context(mode=ms.GRAPH_MODE)
    expected = np.sum(rows, axis=0)
    np.testing.assert_allclose(float(loss.asnumpy()), expected[6] / 6.0, rtol=1e-4)
    np.testing.assert_allclose(aux.asnumpy(), np.append(expected, 7.0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(eager_aux.asnumpy(), aux.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(eager_loss.asnumpy(), loss.asnumpy(), rtol=1e-5)
    assert 0 < expected[2] < 7, "the case should have pairs won and lost"
    metrics = describe([0.25 * aux.asnumpy(), 0.75 * aux.asnumpy()], prefix="eval_", nll=True)  # micro-batch sums
    mean = expected / 7
    np.testing.assert_allclose([metrics[f"eval_{k}"] for k in TRL_NAMES],
                               [mean[0], mean[1], mean[0] - mean[1], mean[2], mean[3], mean[4]], rtol=1e-4)
    np.testing.assert_allclose([metrics["eval_nll_loss"], metrics["eval_loss"]], mean[5:7], rtol=1e-4)


def test_reference_pass_matches_per_example_pynative_forwards(setup):
    tok, lm, sequences, _, _ = setup
    logps = reference_pass(lm, sequences, tok.pad_id, 4, PAD_MULTIPLE, MAX_LEN)  # 8 sequences: 2 batches of 4
    ms.set_context(mode=ms.PYNATIVE_MODE)
    expected = [eager_logps(lm, s) for s in sequences]
    ms.set_context(mode=ms.GRAPH_MODE)
    assert logps.shape == (len(sequences),) and len(set(np.round(expected, 3))) == len(sequences)
    np.testing.assert_allclose(logps, expected, rtol=1e-4)


def test_micro_batches_add_up_to_the_full_batch_gradient(setup):
    tok, lm, _, pairs, ref = setup
    cell = DPOLoss(lm, DPOAlgoConfig(beta=0.5))
    params = lm.trainable_params()
    grad_fn = ms.value_and_grad(cell, None, params, has_aux=True)

    def run(chunks):
        loss, grads, aux = 0.0, None, 0.0
        for chunk in chunks:
            (value, a), g = grad_fn(*batch_tensors(chunk, ref, tok.pad_id, PAD_MULTIPLE, MAX_LEN, 8.0))
            loss, aux = loss + float(value.asnumpy()), aux + a.asnumpy()
            g = [x.asnumpy() for x in g]
            grads = g if grads is None else [x + y for x, y in zip(grads, g)]
        return loss, grads, aux

    full_loss, full, full_aux = run([pairs])
    micro_loss, micro, micro_aux = run([pairs[:4], pairs[4:]])
    assert max(float(np.abs(g).max()) for g in full) > 1e-4
    np.testing.assert_allclose(micro_loss, full_loss, rtol=1e-5)
    np.testing.assert_allclose(micro_aux, full_aux, rtol=1e-4, atol=1e-4)
    for p, a, b in zip(params, full, micro):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6, err_msg=p.name)


def test_stored_reference_is_reused_on_resume_and_checked(tmp_path):
    seqs = [EncodedSequence([1, 2, 3], [0, 1, 1]), EncodedSequence([1, 4], [0, 1])]
    calls = []

    def compute():
        calls.append(1)
        return np.asarray([-1.5, -2.5], np.float32)

    path = str(tmp_path / REFERENCE_FILE)
    first = stored_reference(path, seqs, compute, resume=False)
    again = stored_reference(path, seqs, lambda: pytest.fail("recomputed on resume"), resume=True)
    np.testing.assert_array_equal(again, first)
    assert calls == [1] and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    stored_reference(path, seqs, compute, resume=False)  # a fresh run computes its own
    assert calls == [1, 1]
    for other in (seqs[:1], [seqs[0], EncodedSequence([1, 5], [0, 1])]):
        with pytest.raises(ValueError, match="reference log-probs of 2 sequences of other data"):
            stored_reference(path, other, compute, resume=True)


# ------------------------------------------------------------------------------------ runs of the stage


def dpo_config(toy, out, *extra):
    return load_config(DPOConfig, None, [
        f"model={toy / 'sft' / 'model'}", f"data.train={toy / 'rankings.jsonl'}", f"out_dir={out}",
        "data.max_length=48", "data.eval_fraction=0.1", "train.batch_size=8", "train.log_every=1",
        "train.progress=false", "optim.warmup_steps=0", "optim.schedule=constant", "optim.lr=2e-3", *extra])


def test_train_resume_and_run_folder(dpo_toy, tmp_path, capsys):
    whole = dpo_config(dpo_toy, tmp_path / "whole", "train.max_steps=4", "train.save_every=2", "train.eval_every=2",
                       "train.micro_batch_size=4")
    train_dpo(whole)
    rows = read_metrics(str(tmp_path / "whole" / "metrics.jsonl"))
    # step 1's metrics come from the forward before the first update: the policy is its reference
    first = rows[0]
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/rejected"]) < 1e-5
    np.testing.assert_allclose(first["loss"], np.log(2.0), rtol=1e-5)
    assert first["logps/chosen"] < 0 and first["logps/rejected"] < 0
    assert abs(rows[-1]["rewards/margins"]) > 1e-4 and all(f"eval_{k}" in rows[-1] for k in TRL_NAMES + ("loss",))
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4]
    run = tmp_path / "whole"
    assert (run / REFERENCE_FILE).is_file() and (run / "model" / "model.safetensors").is_file()
    out = capsys.readouterr().out
    assert "[dpo] reference log-probs of 720 sequences" in out  # 240 rankings × K=3
    assert "[dpo] step 4/4 loss=" in out and "[train]" not in out  # the loop's lines carry the stage's name

    half = dpo_config(dpo_toy, tmp_path / "half", "train.max_steps=2", "train.save_every=2", "train.eval_every=2",
                      "train.micro_batch_size=4")
    train_dpo(half)
    capsys.readouterr()
    resumed = dpo_config(dpo_toy, tmp_path / "half", "train.max_steps=4", "train.save_every=2", "train.eval_every=2",
                         "train.micro_batch_size=4")
    train_dpo(resumed, resume=str(tmp_path / "half"))
    assert "reference log-probs" not in capsys.readouterr().out  # read from reference_logps.npz
    a, b = CausalLM.from_pretrained(str(run / "model")), CausalLM.from_pretrained(str(tmp_path / "half" / "model"))
    for (name, x), (_, y) in zip(a.named_weights(), b.named_weights()):
        np.testing.assert_allclose(y.asnumpy(), x.asnumpy(), rtol=1e-6, atol=1e-7, err_msg=name)
    again = read_metrics(str(tmp_path / "half" / "metrics.jsonl"))
    np.testing.assert_allclose([r["loss"] for r in again], [r["loss"] for r in rows], rtol=1e-5)


def test_lora_reference_is_the_base_with_adapters_off(dpo_toy, tmp_path):
    cfg = dpo_config(dpo_toy, tmp_path / "lora", "train.max_steps=2", "train.eval_every=0", "train.save_every=0",
                     "lora.enabled=true", "lora.rank=4", "optim.lr=1e-2", "data.pairs=best")
    train_dpo(cfg)
    rows = read_metrics(str(tmp_path / "lora" / "metrics.jsonl"))
    assert abs(rows[0]["rewards/chosen"]) < 1e-5 and abs(rows[0]["rewards/rejected"]) < 1e-5  # base = policy at B = 0
    assert abs(rows[1]["rewards/chosen"]) > 1e-4  # the adapters moved the policy away from its base
    assert (tmp_path / "lora" / "model" / "lora_adapters.safetensors").is_file()
    with np.load(tmp_path / "lora" / REFERENCE_FILE) as stored:
        assert stored["logps"].shape == (720,)


def test_simpo_needs_no_reference_pass(dpo_toy, tmp_path, capsys):
    cfg = dpo_config(dpo_toy, tmp_path / "simpo", "train.max_steps=1", "train.eval_every=0", "train.save_every=0",
                     "algo.loss_type=simpo", "algo.beta=2.0", "algo.simpo_gamma=0.5")
    train_dpo(cfg)
    assert "reference log-probs" not in capsys.readouterr().out
    row = read_metrics(str(tmp_path / "simpo" / "metrics.jsonl"))[0]
    # rewards are β · log π(y)/|y|, no reference: negative from the first step (a DPO run's are 0 there)
    assert row["rewards/chosen"] < 0 and row["rewards/rejected"] < 0
    assert row["loss"] > 0 and np.isfinite(row["loss"])


def test_orpo_needs_no_reference_pass_and_logs_its_nll(dpo_toy, tmp_path, capsys):
    cfg = dpo_config(dpo_toy, tmp_path / "orpo", "train.max_steps=1", "train.eval_every=0", "train.save_every=0",
                     "algo.loss_type=orpo", "algo.beta=0.1")
    train_dpo(cfg)
    assert "reference log-probs" not in capsys.readouterr().out
    row = read_metrics(str(tmp_path / "orpo" / "metrics.jsonl"))[0]
    # per pair: loss = NLL per chosen token + β · softplus(−h) > NLL; the chosen reward is β · log π(y_w)/|y_w|
    assert 0 < row["nll_loss"] < row["loss"]
    assert row["rewards/chosen"] == pytest.approx(-0.1 * row["nll_loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["sigmoid", "orpo"])
def test_dpo_learns_the_preference_on_held_out_pairs(dpo_toy, tmp_path, loss_type):
    cfg = dpo_config(dpo_toy, tmp_path / "learn", "train.max_steps=60", "train.eval_every=20", "train.save_every=0",
                     "train.batch_size=16", "data.eval_fraction=0.2", "optim.lr=1e-3", f"algo.loss_type={loss_type}")
    train_dpo(cfg)
    evals = [r for r in read_metrics(str(tmp_path / "learn" / "metrics.jsonl")) if "eval_loss" in r]
    accuracies = [r["eval_rewards/accuracies"] for r in evals]
    assert accuracies[-1] > 0.6 and accuracies[-1] > accuracies[0], accuracies
    assert evals[-1]["eval_rewards/margins"] > evals[0]["eval_rewards/margins"]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights_and_metrics(dpo_toy, tmp_path):
    args = ["dpo", f"model={dpo_toy / 'sft' / 'model'}", f"data.train={dpo_toy / 'rankings.jsonl'}",
            "data.max_length=48", "train.batch_size=8", f"train.max_steps={STEPS}", "train.eval_every=4",
            f"train.save_every={SAVE_EVERY}", "train.log_every=1", "train.progress=false", "optim.warmup_steps=2",
            "optim.lr=1e-3"]
    run(args, tmp_path / "whole")
    step = kill_after_a_checkpoint(args, tmp_path / "killed")
    assert SAVE_EVERY <= step < STEPS, f"the run was not killed mid-way (latest checkpoint {step})"
    stored = (tmp_path / "killed" / REFERENCE_FILE).stat().st_mtime_ns
    run(["dpo", f"--resume={tmp_path / 'killed'}", *args[1:]], tmp_path / "killed")
    assert (tmp_path / "killed" / REFERENCE_FILE).stat().st_mtime_ns == stored  # read back, not recomputed
    same_run(tmp_path / "whole", tmp_path / "killed")
