"""Benchmark and equivalence: mindrlhf's DPO stage against TRL's DPOTrainer, same model, pairs and settings.

    python run/bench_dpo.py --sizes tiny,gpt2 --batch 8 --steps 10

Both sides load the same HuggingFace folder (random weights, written by bench_common) and train on the
same preference pairs: random token ids, encoded once by the project's tokenizer (chat template, response,
EOS; loss on the response and its EOS only) and handed to TRL as text whose tokenization is checked to give
the same ids. mindrlhf runs its stage, ``train_dpo`` (what ``mindrlhf dpo`` runs); TRL runs ``DPOTrainer``
with sequential sampling over the pairs in the order mindrlhf's seeded sampler draws them. Matched
settings: sigmoid loss, β, learning rate with a constant schedule and no warm-up, AdamW (0.9, 0.999, 1e-8,
no weight decay), clipping at global norm 1.0, fp32, dropout off, and the reference = the starting policy,
its log-probs computed once before training (TRL: ``precompute_ref_log_probs``), so a step is one forward
and backward of the policy over B pairs on both sides.

Per step both report the loss and TRL's metrics (rewards/*, logps/*) of the batch before the update; the
printout lists them side by side with the largest differences over the steps, seconds per step (the
first, compilation included, reported apart), the reference pass, and each side's peak RSS.
"""
import argparse
import importlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from run import bench_common as bc  # noqa: E402

COMPARED = ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
            "logps/chosen", "logps/rejected")
NOTES = [
    "DPO: one optimizer step over B pairs (one forward and backward of the policy over their 2B sequences); "
    "both sides compute the reference log-probs once before training (not in the step). tokens/s = real "
    "(unpadded) prompt+response tokens of the step's 2B sequences / seconds per step. mindrlhf pads every "
    "batch to data.max_length (one compiled shape), TRL to the longest sequence of the batch.",
    "DPO peak RSS: mindrlhf's is its stage's whole run, the held-out evaluation (a compiled forward of its own) and "
    "the export after training included; TRL's run has no evaluation and saves nothing.",
]


# ------------------------------------------------------------------------------------ the pairs
def piece(token_id: int) -> str:
    """The word of ``token_id`` in bench_common's word-level tokenizer ("t17" is 17)."""
    return bc.SPECIALS[token_id] if token_id < len(bc.SPECIALS) else f"t{token_id}"


def max_length(args) -> int:
    """Longest sequence: <bos> <|user|> prompt <|assistant|> response <eos>, rounded up to a multiple of 16."""
    return -(-(args.prompt_len + args.response_len + 4) // 16) * 16


def random_text(rng, vocab_size: int, low: int, high: int) -> str:
    n = int(rng.integers(low, high + 1))
    return " ".join(piece(int(i)) for i in rng.integers(len(bc.SPECIALS), vocab_size, n))


def write_pairs(args, vocab_size: int) -> None:
    """B·steps training pairs (pairs.jsonl, read by mindrlhf) and one held-out pair (eval.jsonl: a given eval
    file keeps the stage from shuffling the rankings into a split); trl.jsonl holds the training pairs in the
    order mindrlhf's seeded sampler draws them, as the text TRL tokenizes and the ids it must get."""
    from mindrlhf.data.tokenizer import Tokenizer
    from mindrlhf.trainers.supervised import DataOrder

    rng = np.random.default_rng(args.seed)
    n = args.batch * args.steps
    pairs = []
    while len(pairs) < n + 1:
        prompt = random_text(rng, vocab_size, args.prompt_len // 2, args.prompt_len)
        chosen, rejected = (random_text(rng, vocab_size, args.response_len // 4, args.response_len) for _ in "cr")
        if chosen != rejected:
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    for name, rows in (("pairs.jsonl", pairs[:n]), ("eval.jsonl", pairs[n:])):
        with open(os.path.join(args.dir, name), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    tok = Tokenizer.load(os.path.join(args.dir, "model"))
    order = DataOrder(n, args.batch, args.seed)
    with open(os.path.join(args.dir, "trl.jsonl"), "w", encoding="utf-8") as f:
        for _ in range(args.steps):
            for i in order.next_batch():
                row = {}
                for key in ("chosen", "rejected"):
                    ids, mask = tok.encode_prompt_response(pairs[i]["prompt"], pairs[i][key])
                    start = mask.index(1)
                    row["prompt_input_ids"], row[f"{key}_input_ids"] = ids[:start], ids[start:]
                    row[key] = " ".join(piece(t) for t in ids[start:-1])  # TRL appends the EOS itself
                row["prompt"] = " ".join(piece(t) for t in row["prompt_input_ids"])
                f.write(json.dumps(row) + "\n")


def read_trl_pairs(folder: str) -> list:
    with open(os.path.join(folder, "trl.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def tokens_per_step(pairs: list, batch: int) -> list:
    """Real tokens of each step's 2B sequences (prompt + response, both answers)."""
    sizes = [2 * len(p["prompt_input_ids"]) + len(p["chosen_input_ids"]) + len(p["rejected_input_ids"]) for p in pairs]
    return [sum(sizes[i : i + batch]) for i in range(0, len(sizes), batch)]


def summarize(steps: list, times: list, args) -> dict:
    """Per-step metrics and times; rates over the steps after the first (compilation, warm-up)."""
    tokens = tokens_per_step(read_trl_pairs(args.dir), args.batch)
    step_s = float(np.mean(times[1:]))
    for row, t in zip(steps, times):
        row["time_s"] = t
    return {"steps": steps, "first_s": times[0], "step_s": step_s,
            "tokens_per_s": sum(tokens[1:]) / sum(times[1:]), "pairs_per_s": args.batch / step_s}


# ------------------------------------------------------------------------------------ sides
def side_prepare(args) -> dict:
    config = bc.write_lm(args.size, os.path.join(args.dir, "model"), max_length(args), seed=1)
    write_pairs(args, config["vocab_size"])
    return {"vocab_size": config["vocab_size"]}


def instrument_stage(dpo, Updater) -> dict:
    """Wrap the DPO stage's reference pass, compiled step and held-out evaluation: the returned dict fills
    with their times and the peak RSS after each (where the memory of a run comes from)."""
    sink = {"update_s": [], "update_cpu_s": [], "peak_rss_mb_after": {}}
    reference_pass, update, heldout_metrics = dpo.reference_pass, Updater.step, dpo.heldout_metrics

    def timed_reference(*a, **k):
        t0 = time.perf_counter()
        out = reference_pass(*a, **k)
        sink["reference_s"] = time.perf_counter() - t0
        sink["peak_rss_mb_after"]["reference pass"] = bc.peak_rss_mb()
        return out

    def timed_update(self, micro_batches):
        t0, c0 = time.perf_counter(), time.process_time()
        out = update(self, micro_batches)
        sink["update_s"].append(time.perf_counter() - t0)
        sink["update_cpu_s"].append(time.process_time() - c0)
        sink["peak_rss_mb_after"].setdefault("first step", bc.peak_rss_mb())
        sink["peak_rss_mb_after"]["last step"] = bc.peak_rss_mb()
        return out

    def marked_heldout(*a, **k):
        out = heldout_metrics(*a, **k)
        sink["peak_rss_mb_after"]["held-out evaluation"] = bc.peak_rss_mb()
        return out

    dpo.reference_pass, Updater.step, dpo.heldout_metrics = timed_reference, timed_update, marked_heldout
    return sink


def side_ours(args) -> dict:
    from mindrlhf.trainers import dpo
    from mindrlhf.trainers.metrics import read_metrics
    from mindrlhf.trainers.step import OptimConfig, Updater

    out_dir = os.path.join(args.dir, "ours_run")
    length = max_length(args)
    cfg = dpo.DPOConfig(
        model=os.path.join(args.dir, "model"), out_dir=out_dir,
        data=dpo.DPODataConfig(train=os.path.join(args.dir, "pairs.jsonl"), eval=os.path.join(args.dir, "eval.jsonl"),
                               max_length=length, pad_multiple=length),
        train=dpo.DPOLoopConfig(batch_size=args.batch, max_steps=args.steps, log_every=1, eval_every=0, save_every=0,
                                progress=False),
        algo=dpo.DPOAlgoConfig(loss_type="sigmoid", beta=args.beta),
        optim=OptimConfig(lr=args.lr, warmup_steps=0, schedule="constant", beta1=0.9, beta2=0.999, eps=1e-8,
                          weight_decay=0.0, max_grad_norm=1.0),
        runtime=bc.runtime_config(args, args.seed))

    sink = instrument_stage(dpo, Updater)
    bc.PHASE["now"] = "train_dpo"
    t0 = time.perf_counter()
    dpo.train_dpo(cfg, overwrite=True)
    run_s = time.perf_counter() - t0

    rows = [r for r in read_metrics(os.path.join(out_dir, "metrics.jsonl")) if "pair_per_s" in r]
    steps = [{k: r[k] for k in COMPARED} for r in rows]
    times = [args.batch / r["pair_per_s"] for r in rows]  # the loop's time between steps: the whole stage step
    out = summarize(steps, times, args)
    out.update(run_s=run_s, reference_s=sink.get("reference_s"), update_s=float(np.mean(sink["update_s"][1:])),
               cpu_step_s=float(np.mean(sink["update_cpu_s"][1:])),  # of the compiled step (most of a step)
               update_first_s=sink["update_s"][0], peak_rss_mb_after=sink["peak_rss_mb_after"],
               **bc.runtime_fields(args), versions=bc.versions("mindspore", "numpy"))
    return out


def side_trl(args) -> dict:
    import torch
    import transformers
    from datasets import Dataset

    # TRL 0.28's is_*_available() return transformers 5.24's (found, version) tuple, which is always true, so
    # importing DPOTrainer imports `weave` (absent): give them the bool they expect before that import.
    trl_imports = importlib.import_module("trl.import_utils")  # trl's lazy module hides it from attribute access
    found = trl_imports._is_package_available
    trl_imports._is_package_available = lambda name, return_version=False: (
        found(name, return_version) if return_version or isinstance(found(name), bool) else found(name)[0])
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    model_dir = os.path.join(args.dir, "model")
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(model_dir)  # pad/eos from tokenizer_config
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    pairs = read_trl_pairs(args.dir)
    dataset = Dataset.from_dict({k: [p[k] for p in pairs] for k in ("prompt", "chosen", "rejected")})
    config = DPOConfig(
        output_dir=os.path.join(args.dir, "trl_run"), report_to="none", save_strategy="no", disable_tqdm=True,
        logging_steps=1, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=args.seed,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, max_steps=args.steps,
        train_sampling_strategy="sequential", dataloader_num_workers=0,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0,
        loss_type=["sigmoid"], beta=args.beta, label_smoothing=0.0, precompute_ref_log_probs=True,
        disable_dropout=True, max_length=max_length(args))
    steps, marks, sink = [], [], {}

    class Recorded(DPOTrainer):
        """DPOTrainer that keeps each step's loss and metrics unrounded, and times its reference pass."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, metrics = super().compute_loss(model, inputs, return_outputs=True)
            steps.append({"loss": float(loss.detach()), **{k: float(metrics[k]) for k in COMPARED[1:]}})
            return (loss, metrics) if return_outputs else loss

        def get_train_dataloader(self):
            t0 = time.perf_counter()
            loader = super().get_train_dataloader()  # the first call computes the reference log-probs
            sink.setdefault("reference_s", time.perf_counter() - t0)
            return loader

    class StepTimes(transformers.TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *a, **k):
            marks.append((time.perf_counter(), time.process_time()))

    trainer = Recorded(model=model, args=config, processing_class=tokenizer, train_dataset=dataset,
                       callbacks=[StepTimes()])
    for key in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids"):  # TRL's tokens are ours
        got = list(trainer.train_dataset[key])
        if got != [p[key] for p in pairs]:
            bad = next(i for i, p in enumerate(pairs) if got[i] != p[key])
            raise RuntimeError(f"TRL tokenized pair {bad}'s {key} as {got[bad]}, mindrlhf as {pairs[bad][key]}")
    bc.PHASE["now"] = "train()"
    t0 = time.perf_counter()
    trainer.train()
    run_s = time.perf_counter() - t0
    times = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    out = summarize(steps, times, args)
    out.update(cpu_step_s=float(np.mean(cpu[1:])), run_s=run_s, reference_s=sink.get("reference_s"),
               versions=bc.versions("trl", "torch", "transformers", "accelerate"))
    return out


# ------------------------------------------------------------------------------------ orchestration
def child_args(args, side: str, size: str, folder: str) -> list:
    out = ["--side", side, "--size", size, "--dir", folder, "--max-rss-gb", args.max_rss_gb, "--batch", args.batch,
           "--steps", args.steps, "--prompt-len", args.prompt_len, "--response-len", args.response_len,
           "--beta", args.beta, "--lr", args.lr, "--seed", args.seed, "--threads", args.threads]
    return out + bc.runtime_flags(args)


def describe(d: dict) -> str:
    after = d.get("peak_rss_mb_after")
    extra = f", compiled step {d['update_s']:.3f} s" if "update_s" in d else ""
    return (f"{d['step_s']:.3f} s/step ({d['tokens_per_s']:.0f} tok/s, CPU {d['cpu_step_s']:.3f} s/step{extra}), "
            f"first {d['first_s']:.1f} s, "
            f"reference pass {d['reference_s']:.1f} s, whole run {d['run_s']:.1f} s, peak RSS "
            f"{d['peak_rss_mb']:.0f} MB" + (" (after the " + ", ".join(f"{k} {v:.0f}" for k, v in after.items()) + ")"
                                            if after else ""))


def compare(row: dict) -> dict:
    """Per-step table of both sides and the largest |ours − TRL| of each compared metric; printed."""
    ours, theirs = row["ours"].get("steps"), row["peer"].get("steps")
    if not ours or not theirs:
        return {}
    n = min(len(ours), len(theirs))
    print(f"[{row['size']}] step | loss ours / TRL | rewards/margins ours / TRL | s ours / TRL")
    for i in range(n):
        o, t = ours[i], theirs[i]
        print(f"[{row['size']}] {i + 1:4d} | {o['loss']:.6f} / {t['loss']:.6f} | {o['rewards/margins']:+.6f} / "
              f"{t['rewards/margins']:+.6f} | {o['time_s']:.3f} / {t['time_s']:.3f}")
    diff = {k: max(abs(ours[i][k] - theirs[i][k]) for i in range(n)) for k in COMPARED}
    print(f"[{row['size']}] max |ours - TRL| over {n} steps: "
          + ", ".join(f"{k} {v:.2e}" for k, v in diff.items()), flush=True)
    return {"steps": n, "max_abs_diff": diff}


def orchestrate(args) -> dict:
    report = bc.orchestrate(os.path.abspath(__file__), args, "dpo", "trl", args.trl_python, child_args,
                            ("batch", "steps", "prompt_len", "response_len", "beta", "lr") + bc.RUNTIME_SETTINGS,
                            NOTES, lambda v: "trl " + v.get("trl", "?"), describe)
    for row in report["rows"]:
        row["equivalence"] = same = compare(row)
        if same:
            d = same["max_abs_diff"]
            row["notes"].append(f"DPO {row['size']}: max |mindrlhf − TRL| over the first {same['steps']} steps: "
                                f"loss {d['loss']:.1e}, rewards/margins {d['rewards/margins']:.1e}.")
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,gpt2", help="model presets with random weights, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="B: pairs per optimizer step")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps (the first is the warm-up)")
    parser.add_argument("--prompt-len", type=int, default=24, help="longest prompt in random tokens (shortest: half)")
    parser.add_argument("--response-len", type=int, default=32, help="longest answer in tokens (shortest: a quarter)")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's β")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate, constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    bc.add_runtime_flags(parser)
    bc.add_process_flags(parser, "trl", "interpreter with TRL (run/.bench-venv)", timeout=1800)
    args = parser.parse_args()
    if any(size in bc.PRETRAINED for size in args.sizes.split(",")):
        parser.error("--sizes: the pairs are words of bench_common's word-level tokenizer, so only the random-weight "
                     f"presets work here, not {', '.join(bc.PRETRAINED)}")
    bc.run_main(args, {"prepare": side_prepare, "ours": side_ours, "trl": side_trl}, orchestrate)


if __name__ == "__main__":
    main()
