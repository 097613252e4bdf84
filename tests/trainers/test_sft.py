"""SFT: the masked loss against numpy, learning on a toy task, and the run folder (resume after a kill:
tests/trainers/test_kill_resume.py)."""
import os

import mindspore as ms
import numpy as np

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
