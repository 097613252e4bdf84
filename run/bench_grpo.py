"""Benchmark: one GRPO iteration of mindrlhf against TRL's GRPOTrainer (torch CPU), same work and weights.

    python run/bench_grpo.py --sizes tiny,gpt2 --batch 4 --group 8 --prompt-len 32 --new-tokens 32 --mini-batch 16

One iteration = B random prompts (P tokens) answered G times each with N sampled tokens, the reward function
on the decoded answers, the reference's log-probs (β = 0.04, KL k3 in the loss), group advantages
(mean/std), and B·G/M optimizer steps of M answers (one pass: TRL's num_iterations = 1, steps_per_generation
= B·G/M). Loss on both sides: the clipped ratio (ε = 0.2) with token-mean aggregation (TRL's loss_type
"dapo"). Both load the same random HuggingFace folder, sample at temperature 1 without top-k/top-p, and
generate all N tokens (ours: no EOS; TRL: min_new_tokens = N). Each side runs in its own process
(``--side ours`` here, ``--side trl`` in the benchmark venv), one warm-up iteration (compilation included,
``first_s``) and then ``--iters`` timed ones; reported: seconds per iteration, per phase, tokens/s, peak RSS.
"""
import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from run import bench_common as bc  # noqa: E402
from run.bench_ppo import Timed  # noqa: E402

NOTES = [
    "GRPO: mindrlhf takes log π_old from its sampler; TRL recomputes it with a forward of the policy over the "
    "generation batch (its answers are reused for steps_per_generation > 1 optimizer steps). Both run the "
    "reference forward (β = 0.04). mindrlhf's LM head runs on the N answer positions only, TRL's on P+N.",
    "GRPO: same reward function (characters of the answer / 40) on both sides; fp32, temperature 1.",
    "GRPO tokens/s = B·G·N generated tokens / seconds per whole iteration.",
]


def length_reward(prompts, completions, **kwargs):
    """The benchmark's reward, the same callable on both sides (TRL's convention is ours)."""
    return [len(c) / 40 for c in completions]


def prompt_texts(args, vocab_size: int) -> list:
    """B prompts of P word-level tokens ("t17" is id 17), random ids past the special tokens."""
    rng = np.random.default_rng(args.seed)
    ids = rng.integers(len(bc.SPECIALS), vocab_size, (args.batch, args.prompt_len))
    return [" ".join(f"t{i}" for i in row) for row in ids], ids


def summarize(iterations: list, args) -> dict:
    first, timed = iterations[0], iterations[1:]
    mean = {k: float(np.mean([it[k] for it in timed])) for k in timed[0]}
    tokens = args.batch * args.group * args.new_tokens
    out = {"first_s": first["total"], "step_s": mean["total"], "compile_s": first["total"] - mean["total"],
           "iterations": iterations, "cpu_step_s": mean.get("cpu", float("nan")), "tokens_per_s": tokens / mean["total"],
           "gen_tokens_per_s": tokens / mean["generate"]}
    for k in ("generate", "score", "train"):
        out[f"time_{k}"], out[f"first_{k}"] = mean[k], first[k]
    out["time_other"] = mean["total"] - mean["generate"] - mean["score"] - mean["train"]
    out["profile"] = {k: mean[k] for k in mean if k not in ("total", "generate", "score", "train", "cpu")}
    return out


# ------------------------------------------------------------------------------------ sides
def side_prepare(args) -> dict:
    config = bc.write_lm(args.size, os.path.join(args.dir, "policy"), args.prompt_len + args.new_tokens, seed=1)
    with open(os.path.join(args.dir, "prompts.jsonl"), "w", encoding="utf-8") as f:
        for _ in range(args.batch):  # the trainer wants a prompts file (>= one batch); rows come from ids
            f.write(json.dumps({"prompt": "t4 t5 t6"}) + "\n")
    return {"vocab_size": config["vocab_size"]}


def side_ours(args) -> dict:
    import mindspore as ms

    from mindrlhf.config import load_config
    from mindrlhf.trainers.grpo import GRPOConfig, GRPOTrainer

    t0 = time.perf_counter()
    cfg = load_config(GRPOConfig, None, [
        f"policy={os.path.join(args.dir, 'policy')}", f"data.prompts={os.path.join(args.dir, 'prompts.jsonl')}",
        f"out_dir={os.path.join(args.dir, 'ours_run')}", "progress=false", "data.max_prompt_length=64",
        f"rollout.batch_size={args.batch}", f"rollout.group_size={args.group}", f"rollout.max_new_tokens={args.new_tokens}",
        f"rollout.prompt_bucket={args.prompt_len}", f"algo.iterations={args.iters + 1}", "algo.epochs=1",
        f"algo.mini_batch_size={args.mini_batch}", "algo.kl_coef=0.04", "algo.policy_loss=clip",
        "algo.loss_agg_mode=token-mean", "reward.functions=[run.bench_grpo:length_reward]", "optim.lr=1e-5"])
    cfg = dataclasses.replace(cfg, runtime=bc.runtime_config(args, args.seed))
    trainer = GRPOTrainer(cfg)
    trainer.gen_cfg = dataclasses.replace(trainer.gen_cfg, eos_token_id=None)  # all N tokens, as TRL's side
    texts, ids = prompt_texts(args, trainer.actor.lm.config.vocab_size)
    prompts = [argparse.Namespace(input_ids=row.tolist(), text=t, meta={}) for row, t in zip(ids, texts)]
    setup_s = time.perf_counter() - t0
    sink: dict = {}
    trainer.scoring = Timed(trainer.scoring, sink, "score_graph")
    trainer.advantage = Timed(trainer.advantage, sink, "advantage_graph")
    trainer.updater.step = Timed(trainer.updater.step, sink, "actor_steps")
    iterations = []
    for it in range(args.iters + 1):
        sink.clear()
        seed = args.seed * 100_003 + it * 1_009
        bc.PHASE["now"] = f"iteration {it}: rollout (generate, score, advantages)"
        t0, c0 = time.perf_counter(), time.process_time()
        batch, _, times = trainer.rollout(prompts, seed)
        _, advantages = (x.asnumpy() for x in trainer.advantage(*(ms.Tensor(x) for x in (
            batch.scores, batch.old_logprobs, batch.ref_logprobs, batch.response_mask))))
        batch.advantages = advantages
        t1 = time.perf_counter()
        bc.PHASE["now"] = f"iteration {it}: update"
        metrics = trainer.update(batch, seed)
        t2 = time.perf_counter()
        if batch.response_mask.sum() != args.batch * args.group * args.new_tokens:
            raise RuntimeError(f"ours generated {batch.response_mask.sum()} tokens, expected B·G·N")
        row = {"total": t2 - t0, "cpu": time.process_time() - c0, "generate": times["time_generate"],
               "score": t1 - t0 - times["time_generate"], "train": t2 - t1, **sink}
        iterations.append(row)
        print(f"[ours {args.size}] iteration {it}: {row['total']:.2f} s (gen {row['generate']:.2f}, "
              f"score {row['score']:.2f}, train {row['train']:.2f}); loss {metrics['loss']:.4f}", flush=True)
    out = summarize(iterations, args)
    out.update(bc.runtime_fields(args), setup_s=setup_s, versions=bc.versions("mindspore", "numpy"))
    return out


def side_trl(args) -> dict:
    import torch
    import transformers
    import trl.import_utils as trl_imports

    # TRL 0.28 reads transformers' _is_package_available as a bool; transformers 5.24+ returns (bool, version),
    # a tuple that is always true, so TRL would import weave, vllm, ... that are not installed.
    found = trl_imports._is_package_available
    trl_imports._is_package_available = lambda name, return_version=False: (
        found(name) if return_version else found(name)[0])
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    policy_dir = os.path.join(args.dir, "policy")
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(policy_dir)
    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir)
    texts, _ = prompt_texts(args, policy.config.vocab_size)
    n_iters = args.iters + 1
    rows = args.batch * args.group
    config = GRPOConfig(
        output_dir=os.path.join(args.dir, "trl_run"), report_to="none", save_strategy="no", disable_tqdm=True,
        logging_steps=1000, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=args.seed,
        per_device_train_batch_size=args.mini_batch, gradient_accumulation_steps=1,
        steps_per_generation=rows // args.mini_batch, num_generations=args.group, num_iterations=1,
        max_completion_length=args.new_tokens, temperature=1.0, beta=0.04, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", learning_rate=1e-5, max_steps=n_iters * rows // args.mini_batch,
        generation_kwargs={"min_new_tokens": args.new_tokens}, log_completions=False, dataloader_num_workers=0,
        shuffle_dataset=False)
    dataset = Dataset.from_dict({"prompt": texts * n_iters})
    trainer = GRPOTrainer(model=policy, reward_funcs=length_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    setup_s = time.perf_counter() - t0

    # Phase marks: an iteration starts with _generate_and_score_completions (generation, the reward, the
    # reference's and the old policy's forwards) and ends where the next one starts (or train() returns).
    marks: list = []
    sink: dict = {}
    score_fn, generate_fn = trainer._generate_and_score_completions, trainer._generate_single_turn

    def timed_score(*a, **k):
        marks.append({"start": time.perf_counter(), "cpu_start": time.process_time(), "sink": dict(sink)})
        out = score_fn(*a, **k)
        marks[-1]["score_end"] = time.perf_counter()
        return out

    def timed_generate(*a, **k):
        t = time.perf_counter()
        out = generate_fn(*a, **k)
        marks[-1]["generate"] = time.perf_counter() - t
        lengths = {len(c) for c in out[1]}
        if lengths != {args.new_tokens}:
            raise RuntimeError(f"TRL generated {sorted(lengths)} tokens per answer, expected {args.new_tokens}")
        return out

    trainer._generate_and_score_completions = timed_score
    trainer._generate_single_turn = timed_generate
    trainer.accelerator.backward = Timed(trainer.accelerator.backward, sink, "backward")
    bc.PHASE["now"] = "train()"
    trainer.train()
    end, cpu_end = time.perf_counter(), time.process_time()
    iterations = []
    for i, m in enumerate(marks):
        stop = marks[i + 1]["start"] if i + 1 < len(marks) else end
        cpu_stop = marks[i + 1]["cpu_start"] if i + 1 < len(marks) else cpu_end
        after = marks[i + 1]["sink"] if i + 1 < len(marks) else sink
        row = {"total": stop - m["start"], "cpu": cpu_stop - m["cpu_start"], "generate": m["generate"],
               "score": m["score_end"] - m["start"] - m["generate"], "train": stop - m["score_end"]}
        row.update({k: after.get(k, 0.0) - m["sink"].get(k, 0.0) for k in after})
        iterations.append(row)
        print(f"[trl {args.size}] iteration {i}: {row['total']:.2f} s (gen {row['generate']:.2f}, "
              f"score {row['score']:.2f}, train {row['train']:.2f})", flush=True)
    if len(iterations) != n_iters:
        raise RuntimeError(f"TRL ran {len(iterations)} generation rounds, expected {n_iters}")
    out = summarize(iterations, args)
    out.update(setup_s=setup_s, versions=bc.versions("trl", "torch", "transformers", "accelerate"))
    return out


# ------------------------------------------------------------------------------------ orchestration
def child_args(args, side: str, size: str, folder: str) -> list:
    return ["--side", side, "--size", size, "--dir", folder, "--max-rss-gb", args.max_rss_gb, "--batch", args.batch,
            "--group", args.group, "--prompt-len", args.prompt_len, "--new-tokens", args.new_tokens,
            "--mini-batch", args.mini_batch, "--iters", args.iters, "--seed", args.seed, "--threads", args.threads,
            *bc.runtime_flags(args)]


def describe(d: dict) -> str:
    return (f"{d['step_s']:.2f} s/iteration ({d['tokens_per_s']:.1f} tok/s), first {d['first_s']:.1f} s, "
            f"gen/score/train {d['time_generate']:.2f}/{d['time_score']:.2f}/{d['time_train']:.2f} s, peak RSS "
            f"{d['peak_rss_mb']:.0f} MB; profile " + ", ".join(f"{k} {v:.2f}" for k, v in d["profile"].items()))


def orchestrate(args) -> dict:
    return bc.orchestrate(os.path.abspath(__file__), args, "grpo", "trl", args.trl_python, child_args,
                          ("batch", "group", "prompt_len", "new_tokens", "mini_batch", "iters") + bc.RUNTIME_SETTINGS,
                          NOTES, lambda v: "trl " + v.get("trl", "?"), describe)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,gpt2", help="model presets, comma-separated")
    parser.add_argument("--batch", type=int, default=4, help="B: prompts per iteration")
    parser.add_argument("--group", type=int, default=8, help="G: answers per prompt")
    parser.add_argument("--prompt-len", type=int, default=32, help="P (a multiple of 16: no bucket padding)")
    parser.add_argument("--new-tokens", type=int, default=32, help="N: generated tokens per answer")
    parser.add_argument("--mini-batch", type=int, default=16, help="answers per optimizer step")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations after the warm-up one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    bc.add_runtime_flags(parser)
    bc.add_process_flags(parser, "trl", "interpreter with TRL (run/.bench-venv)", timeout=1800)
    args = parser.parse_args()
    if (args.batch * args.group) % args.mini_batch:
        parser.error(f"--mini-batch {args.mini_batch} must divide --batch × --group = {args.batch * args.group}")
    bc.run_main(args, {"prepare": side_prepare, "ours": side_ours, "trl": side_trl}, orchestrate)


if __name__ == "__main__":
    main()
