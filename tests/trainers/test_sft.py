"""SFT: the masked loss against numpy, learning on a toy task, the run folder, and resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.config import load_config
from mindrlhf.data.batching import sft_batch
from mindrlhf.data.tokenizer import Tokenizer
from mindrlhf.nn import CausalLM
from mindrlhf.trainers.metrics import read_metrics
from mindrlhf.trainers.sft import SFTConfig, SFTLoss, train_sft


def sft_config(toy, out, *extra):
    return load_config(SFTConfig, None, [
        f"data.train={toy / 'demos.jsonl'}", f"tokenizer={toy / 'tok'}", f"out_dir={out}",
        "train.batch_size=16", "train.log_every=5", "train.progress=false", "data.pad_multiple=32",
        "data.eval_fraction=0.1", *extra,
    ])


def test_loss_is_mean_nll_of_response_tokens_only(toy_task):
    tok = Tokenizer.load(str(toy_task / "tok"))
    model = CausalLM(__import__("mindrlhf.nn", fromlist=["ModelConfig"]).ModelConfig.from_preset(
        "tiny", vocab_size=tok.vocab_size))
    pairs = [tok.encode_prompt_response("reverse: cat dog sun", "sun dog cat"),
             tok.encode_prompt_response("reverse: red", "red")]
    b = sft_batch(pairs, tok.pad_id, 32)
    loss, nll = SFTLoss(model)(ms.Tensor(b["input_ids"]), ms.Tensor(b["attention_mask"]),
                               ms.Tensor(b["loss_mask"], ms.float32), ms.Tensor(5.0))
    logits = model(ms.Tensor(b["input_ids"]), ms.Tensor(b["attention_mask"])).asnumpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected = 0.0
    for row, (ids, mask) in enumerate(pairs):
        for t in range(1, len(ids)):
            if mask[t]:
                expected -= logp[row, t - 1, ids[t]]
    assert sum(m for _, mask in pairs for m in mask[1:]) == sum(len(tok.encode(r)) + 1 for r in ["sun dog cat", "red"])
    np.testing.assert_allclose(float(nll.asnumpy()), expected, rtol=1e-4)
    np.testing.assert_allclose(float(loss.asnumpy()), expected / 5.0, rtol=1e-4)


def test_sft_learns_and_writes_the_run_folder(toy_task, tmp_path):
    cfg = sft_config(toy_task, tmp_path / "run", "train.max_steps=60", "train.eval_every=20",
                     "train.save_every=30", "optim.lr=3e-3")
    train_sft(cfg)
    rows = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < 0.6 * evals[0], evals
    assert rows[-1]["step"] == 60 and rows[-1]["tok_per_s"] > 0
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 1000
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["latest", "step_00000030", "step_00000060"]
    # the product is a HuggingFace folder with its tokenizer, loadable on its own
    model = CausalLM.from_pretrained(str(tmp_path / "run" / "model"))
    assert Tokenizer.load(str(tmp_path / "run" / "model")).vocab_size == model.config.vocab_size


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(toy_task, tmp_path):
    common = ["train.max_steps=40", "train.save_every=10", "train.eval_every=0", "optim.warmup_steps=5"]
    full = train_sft(sft_config(toy_task, tmp_path / "full", *common))

    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "mindrlhf.cli", "sft", f"data.train={toy_task / 'demos.jsonl'}",
            f"tokenizer={toy_task / 'tok'}", f"out_dir={run_dir}", "train.batch_size=16", "train.log_every=5",
            "train.progress=false", "data.pad_multiple=32", "data.eval_fraction=0.1", *common]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text() >= "step_00000020":
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = int(latest.read_text().split("_")[1])
    assert 10 <= step < 40, f"the run was not killed mid-way (latest checkpoint {step})"

    resumed = train_sft(sft_config(toy_task, run_dir, *common), resume=str(run_dir))
    assert abs(resumed["loss"] - full["loss"]) <= 1e-5, (resumed["loss"], full["loss"])
    steps = [r["step"] for r in read_metrics(str(run_dir / "metrics.jsonl"))]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no step logged twice after the resume
