"""Benchmark: SFT train-step tokens/s of mindrlhf (SFTLoss + Updater, graph mode) against a plain torch loop.

    python run/bench_train.py --sizes tiny,gpt2 --batch 8 --seq-len 64 --steps 5

Both sides load the same HuggingFace folder (random weights; SmolLM2-135M-Instruct's for ``smollm2``;
ours through ``CausalLM.from_pretrained``, theirs through transformers) and take optimizer steps on the
same random batch: masked next-token NLL over the second half of each row (the "response"), global-norm
clipping at 1.0, AdamW (betas 0.9/0.95).
Each side runs in its own process; the first step (compilation for ours) is reported as ``first_s``,
the rest are timed. The first-step losses of both sides are reported too: equal losses show that both
ran the same model on the same batch.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from run import bench_common as bc  # noqa: E402

NOTES = ["train: tokens/s = B·T tokens per optimizer step (forward, backward, clipping, AdamW) / seconds per step."]


def batch(args, vocab_size: int):
    """(input_ids [B, T] int32, loss_mask [B, T] float32, normalizer = Σ loss_mask[:, 1:])."""
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(len(bc.SPECIALS), vocab_size, (args.batch, args.seq_len)).astype(np.int32)
    loss_mask = np.zeros((args.batch, args.seq_len), np.float32)
    loss_mask[:, args.seq_len // 2:] = 1.0
    return ids, loss_mask, float(loss_mask[:, 1:].sum())


def summarize(times: list, cpu: list, losses: list, args) -> dict:
    """``cpu``: process CPU seconds per step (all threads); on a busy machine it moves less than wall time."""
    step_s = float(np.mean(times[1:]))
    return {"first_s": times[0], "step_s": step_s, "compile_s": times[0] - step_s, "times": times,
            "cpu_step_s": float(np.mean(cpu[1:])),
            "tokens_per_s": args.batch * args.seq_len / step_s, "first_loss": losses[0], "last_loss": losses[-1]}


def side_prepare(args) -> dict:
    config = bc.write_lm(args.size, os.path.join(args.dir, "model"), args.seq_len, seed=3)
    return {"vocab_size": config["vocab_size"]}


def side_ours(args) -> dict:
    import mindspore as ms

    from mindrlhf import runtime
    from mindrlhf.nn import CausalLM
    from mindrlhf.trainers.sft import SFTLoss
    from mindrlhf.trainers.step import OptimConfig, Updater

    runtime.setup(bc.runtime_config(args, args.seed))
    model = CausalLM.from_pretrained(os.path.join(args.dir, "model"))
    cfg = OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant", max_grad_norm=1.0)
    updater = Updater(SFTLoss(model), model.trainable_params(), cfg, total_steps=args.steps + 1)
    ids, loss_mask, normalizer = batch(args, model.config.vocab_size)
    inputs = (ms.Tensor(ids), ms.Tensor(np.ones_like(ids)), ms.Tensor(loss_mask), ms.Tensor(normalizer, ms.float32))
    times, cpu, losses = [], [], []
    for step in range(args.steps + 1):
        bc.PHASE["now"] = f"step {step}"
        t0, c0 = time.perf_counter(), time.process_time()
        loss, _, _ = updater.step([inputs])  # returns numpy values: the step has finished
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(loss)
        print(f"[ours {args.size}] step {step}: {times[-1]:.3f} s, loss {loss:.5f}", flush=True)
    out = summarize(times, cpu, losses, args)
    out.update(bc.runtime_fields(args), versions=bc.versions("mindspore"))
    return out


def side_torch(args) -> dict:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(args.dir, "model"))
    model.eval()  # dropout off (GPT-2's config has 0.1; mindrlhf has none): eval() changes nothing else here
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    ids, loss_mask, normalizer = batch(args, model.config.vocab_size)
    ids, loss_mask = torch.from_numpy(ids).long(), torch.from_numpy(loss_mask)
    times, cpu, losses = [], [], []
    for step in range(args.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
        logprobs = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = -(logprobs * loss_mask[:, 1:]).sum() / normalizer
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(value)
        print(f"[torch {args.size}] step {step}: {times[-1]:.3f} s, loss {value:.5f}", flush=True)
    out = summarize(times, cpu, losses, args)
    out.update(versions=bc.versions("torch", "transformers"))
    return out


def child_args(args, side: str, size: str, folder: str) -> list:
    out = ["--side", side, "--size", size, "--dir", folder, "--max-rss-gb", args.max_rss_gb, "--batch", args.batch,
           "--seq-len", args.seq_len, "--steps", args.steps, "--seed", args.seed, "--threads", args.threads]
    return out + bc.runtime_flags(args)


def describe(d: dict) -> str:
    return (f"{d['step_s']:.3f} s/step ({d['tokens_per_s']:.0f} tok/s, CPU {d['cpu_step_s']:.3f} s/step), first "
            f"{d['first_s']:.1f} s, first loss {d['first_loss']:.5f}, peak RSS {d['peak_rss_mb']:.0f} MB")


def orchestrate(args) -> dict:
    return bc.orchestrate(os.path.abspath(__file__), args, "train", "torch", args.torch_python, child_args,
                          ("batch", "seq_len", "steps") + bc.RUNTIME_SETTINGS,
                          NOTES, lambda v: "torch " + v.get("torch", "?") + " loop", describe)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,gpt2", help="model presets, comma-separated")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    bc.add_runtime_flags(parser)
    bc.add_process_flags(parser, "torch", "interpreter for the torch loop", timeout=1200)
    args = parser.parse_args()
    bc.run_main(args, {"prepare": side_prepare, "ours": side_ours, "torch": side_torch}, orchestrate)


if __name__ == "__main__":
    main()
