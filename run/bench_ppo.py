"""Benchmark: one PPO iteration of mindrlhf against TRL's PPOTrainer (torch CPU), same work and weights.

    python run/bench_ppo.py --sizes tiny,gpt2 --batch 8 --prompt-len 32 --new-tokens 32 --epochs 1 --mini-batch 4

One iteration = rollout of B random prompts (P tokens) with N sampled tokens, scoring (log-probs of the
policy and the reference, values, reward-model score), advantages, E epochs of mini-batch updates of
the actor and the critic. Both sides load the same random HuggingFace folders (policy, and a reward
model that also starts the critic), sample with temperature 1 and no top-k/top-p, and generate all N
tokens (no EOS stop). Each side runs in its own process (``--side ours`` here, ``--side trl`` in the
benchmark venv), one warm-up iteration (compilation included, reported as ``first_s``) and then
``--iters`` timed ones; reported: seconds per iteration, per phase, tokens/s and peak RSS.

What each side computes, by design of each framework (noted in the report):
both take the rollout log-probs from generation (TRL from the logits it keeps, mindrlhf from its sampler's
log-probs: ``rollout.logprobs_from_generation``, temperature 1) and score with 3 forwards (reference, value,
reward); mindrlhf's policies apply the LM head to the N response positions only (scoring and actor step),
TRL's to all P+N; TRL updates policy and value with one optimizer over both, mindrlhf with one compiled
step over both (one backward, an AdamW per role).
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

NOTES = [
    "PPO: both take the rollout log-probs from generation (TRL: kept logits; mindrlhf: its sampler's log-probs) "
    "and score with 3 forwards (reference, value, reward); mindrlhf's LM head runs on the N response positions "
    "only (scoring and actor step), TRL's on all P+N.",
    "PPO: TRL steps one AdamW over policy+value per mini-batch; mindrlhf one compiled step over actor and critic "
    "(one backward, an AdamW per role). Both: fp32, no gradient checkpointing, temperature 1, EOS off.",
    "PPO tokens/s = B·N generated tokens / seconds per whole iteration.",
]


def prompts_for(args, vocab_size: int) -> np.ndarray:
    rng = np.random.default_rng(args.seed)
    return rng.integers(len(bc.SPECIALS), vocab_size, (args.batch, args.prompt_len)).astype(np.int32)


def summarize(iterations: list, args) -> dict:
    """Warm-up (the first) and the mean of the timed iterations; rates over the whole iteration."""
    first, timed = iterations[0], iterations[1:]
    mean = {k: float(np.mean([it[k] for it in timed])) for k in timed[0]}
    out = {"first_s": first["total"], "step_s": mean["total"], "compile_s": first["total"] - mean["total"],
           "iterations": iterations}
    for k in ("generate", "score", "train"):
        out[f"time_{k}"] = mean[k]
        out[f"first_{k}"] = first[k]
    out["time_other"] = mean["total"] - mean["generate"] - mean["score"] - mean["train"]
    out["cpu_step_s"] = mean.get("cpu", float("nan"))
    tokens = args.batch * args.new_tokens
    out["tokens_per_s"] = tokens / mean["total"]
    out["gen_tokens_per_s"] = tokens / mean["generate"]
    out["train_tokens_per_s"] = args.epochs * args.batch * (args.prompt_len + args.new_tokens) / mean["train"]
    out["profile"] = {k: mean[k] for k in mean if k not in ("total", "generate", "score", "train", "cpu")}
    return out


class Timed:
    """Wraps a callable (a compiled Cell, a function) and adds its wall time to ``sink[name]``; while it runs,
    the memory watcher counts the resident memory under the phase ``prefix + name`` (``peak_rss_gb_by_phase``)."""

    prefix = ""  # "first iteration: " while the graphs compile and first run

    def __init__(self, fn, sink: dict, name: str):
        self.fn, self.sink, self.name = fn, sink, name

    def __call__(self, *args, **kwargs):
        t0, outer = time.perf_counter(), bc.PHASE["now"]
        bc.PHASE["now"] = Timed.prefix + self.name
        try:
            out = self.fn(*args, **kwargs)
        finally:
            bc.PHASE["now"] = outer
        self.sink[self.name] = self.sink.get(self.name, 0.0) + time.perf_counter() - t0
        return out

    def __getattr__(self, name):
        return getattr(self.fn, name)


# ------------------------------------------------------------------------------------ sides
def side_prepare(args) -> dict:
    positions = args.prompt_len + args.new_tokens
    config = bc.write_lm(args.size, os.path.join(args.dir, "policy"), positions, seed=1)
    bc.write_reward_folder(args.size, os.path.join(args.dir, "reward"), positions, seed=2)
    with open(os.path.join(args.dir, "prompts.jsonl"), "w", encoding="utf-8") as f:
        for _ in range(args.batch):  # the trainer wants a prompts file (>= one batch); rows come from ids
            f.write(json.dumps({"prompt": "t4 t5 t6"}) + "\n")
    return {"vocab_size": config["vocab_size"]}


def side_ours(args) -> dict:
    from mindrlhf.trainers.ppo import PPOTrainer
    from mindrlhf.trainers.ppo_config import PPOAlgoConfig, PPOConfig, PPODataConfig, RolloutConfig

    t0 = time.perf_counter()
    cfg = PPOConfig(policy=os.path.join(args.dir, "policy"), reward_model=os.path.join(args.dir, "reward"),
                    out_dir=os.path.join(args.dir, "ours_run"), progress=False,
                    data=PPODataConfig(prompts=os.path.join(args.dir, "prompts.jsonl"), max_prompt_length=64),
                    rollout=RolloutConfig(batch_size=args.batch, max_new_tokens=args.new_tokens, temperature=1.0),
                    algo=PPOAlgoConfig(iterations=args.iters + 1, epochs=args.epochs, mini_batch_size=args.mini_batch),
                    runtime=bc.runtime_config(args, args.seed))
    trainer = PPOTrainer(cfg)
    trainer.gen_cfg = dataclasses.replace(trainer.gen_cfg, eos_token_id=None)  # all N tokens, as TRL's side
    ids = prompts_for(args, trainer.actor_lm.config.vocab_size)
    prompts = [argparse.Namespace(input_ids=row.tolist()) for row in ids]
    setup_s = time.perf_counter() - t0

    sink: dict = {}  # finer profile: the compiled passes and steps inside the phases
    trainer.scoring = Timed(trainer.scoring, sink, "score_graph")
    trainer.advantage = Timed(trainer.advantage, sink, "advantage_graph")
    trainer.updater.step = Timed(trainer.updater.step, sink, "update_steps")
    iterations = []
    for it in range(args.iters + 1):
        sink.clear()
        seed = args.seed * 100_003 + it * 1_009
        Timed.prefix = "first iteration: " if it == 0 else ""  # memory grows as each graph first runs
        bc.PHASE["now"] = Timed.prefix + "generate"  # the compiled passes in the rollout name their own (Timed)
        t0, c0 = time.perf_counter(), time.process_time()
        exp, times = trainer.rollout(prompts, seed)
        metrics = trainer.experience_stats(exp, prompts, times)
        t1 = time.perf_counter()
        bc.PHASE["now"] = Timed.prefix + "update, between the steps"
        metrics.update(trainer.update(exp, seed))
        t2 = time.perf_counter()
        trainer.kl_ctl.update(metrics["kl"], args.batch)
        if exp.response_mask.sum() != args.batch * args.new_tokens:
            raise RuntimeError(f"ours generated {exp.response_mask.sum()} tokens, expected B·N")
        row = {"total": time.perf_counter() - t0, "cpu": time.process_time() - c0, "generate": times["time_generate"],
               "score": t1 - t0 - times["time_generate"], "train": t2 - t1, **sink}
        iterations.append(row)
        print(f"[ours {args.size}] iteration {it}: {row['total']:.2f} s (gen {row['generate']:.2f}, "
              f"score {row['score']:.2f}, train {row['train']:.2f}); pg_loss {metrics['pg_loss']:.4f}", flush=True)
    out = summarize(iterations, args)
    out.update(bc.runtime_fields(args), setup_s=setup_s, versions=bc.versions("mindspore", "numpy"))
    return out


def side_trl(args) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from safetensors.numpy import load_file

    try:  # TRL 0.29+ keeps PPO only here; 0.2x also export it at the top level
        from trl.experimental.ppo import ppo_trainer as ppo_module
    except ImportError:
        from trl.trainer import ppo_trainer as ppo_module
    PPOConfig, PPOTrainer = ppo_module.PPOConfig, ppo_module.PPOTrainer

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    policy_dir, reward_dir = os.path.join(args.dir, "policy"), os.path.join(args.dir, "reward")
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(policy_dir)  # pad/eos from tokenizer_config
    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_dir)
    policy.generation_config.eos_token_id = None  # all N tokens, as ours (a real model's config names its EOS)
    ref = transformers.AutoModelForCausalLM.from_pretrained(policy_dir)
    head = load_file(os.path.join(reward_dir, "reward_head.safetensors"))

    def scalar_model():
        model = transformers.AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1)
        with torch.no_grad():
            model.score.weight.copy_(torch.from_numpy(head["weight"].T.copy()))
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    reward, value = scalar_model(), scalar_model()
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    ids = prompts_for(args, policy.config.vocab_size)
    n_iters = args.iters + 1
    dataset = Dataset.from_dict({"input_ids": [row.tolist() for row in ids] * n_iters})
    config = PPOConfig(
        output_dir=os.path.join(args.dir, "trl_run"), report_to="none", save_strategy="no", disable_tqdm=True,
        logging_steps=1000, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=args.seed,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        num_mini_batches=args.batch // args.mini_batch, num_ppo_epochs=args.epochs,
        total_episodes=args.batch * n_iters, local_rollout_forward_batch_size=args.batch,
        response_length=args.new_tokens, stop_token=None, temperature=1.0, num_sample_generations=0,
        learning_rate=2e-4, kl_coef=0.05, missing_eos_penalty=1.0, dataloader_num_workers=0)
    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                         value_model=value, train_dataset=dataset, eval_dataset=dataset)
    setup_s = time.perf_counter() - t0

    # Phase marks: generation is batch_generation; training starts at the first forward with grad on;
    # an iteration ends where the next one's generation starts (or train() returns).
    marks: list = []
    sink: dict = {}
    generate_fn, forward_fn, reward_fn = ppo_module.batch_generation, ppo_module.forward, ppo_module.get_reward

    def timed_generation(*a, **k):
        marks.append({"gen_start": time.perf_counter(), "cpu_start": time.process_time(), "sink": dict(sink)})
        out = generate_fn(*a, **k)
        marks[-1]["gen_end"] = time.perf_counter()
        if out[0].shape[1] - ids.shape[1] != args.new_tokens:
            raise RuntimeError(f"TRL generated {out[0].shape[1] - ids.shape[1]} tokens, expected {args.new_tokens}")
        return out

    def timed_forward(*a, **k):
        if torch.is_grad_enabled() and "train_start" not in marks[-1]:
            marks[-1]["train_start"] = time.perf_counter()
        name = "train_forward" if torch.is_grad_enabled() else "ref_forward"
        return Timed(forward_fn, sink, name)(*a, **k)

    ppo_module.batch_generation = timed_generation
    ppo_module.forward = timed_forward
    ppo_module.get_reward = Timed(reward_fn, sink, "value_reward_forward")
    trainer.accelerator.backward = Timed(trainer.accelerator.backward, sink, "backward")
    trainer.optimizer.step = Timed(trainer.optimizer.step, sink, "optimizer_step")
    bc.PHASE["now"] = "train()"
    import gc  # TRL collects garbage twice per iteration: visible in the profile

    ppo_module.gc = argparse.Namespace(collect=Timed(gc.collect, sink, "gc_collect"))
    trainer.train()
    end, cpu_end = time.perf_counter(), time.process_time()

    iterations = []
    for i, m in enumerate(marks):
        stop = marks[i + 1]["gen_start"] if i + 1 < len(marks) else end
        cpu_stop = marks[i + 1]["cpu_start"] if i + 1 < len(marks) else cpu_end
        after = marks[i + 1]["sink"] if i + 1 < len(marks) else sink
        row = {"total": stop - m["gen_start"], "cpu": cpu_stop - m["cpu_start"],
               "generate": m["gen_end"] - m["gen_start"],
               "score": m["train_start"] - m["gen_end"], "train": stop - m["train_start"]}
        row.update({k: after.get(k, 0.0) - m["sink"].get(k, 0.0) for k in after})
        iterations.append(row)
        print(f"[trl {args.size}] iteration {i}: {row['total']:.2f} s (gen {row['generate']:.2f}, "
              f"score {row['score']:.2f}, train {row['train']:.2f})", flush=True)
    out = summarize(iterations, args)
    out.update(setup_s=setup_s, versions=bc.versions("trl", "torch", "transformers", "accelerate"))
    return out


# ------------------------------------------------------------------------------------ orchestration
def child_args(args, side: str, size: str, folder: str) -> list:
    out = ["--side", side, "--size", size, "--dir", folder, "--max-rss-gb", args.max_rss_gb, "--batch", args.batch,
           "--prompt-len", args.prompt_len, "--new-tokens", args.new_tokens, "--epochs", args.epochs,
           "--mini-batch", args.mini_batch, "--iters", args.iters, "--seed", args.seed, "--threads", args.threads]
    return out + bc.runtime_flags(args)


def describe(d: dict) -> str:
    return (f"{d['step_s']:.2f} s/iteration ({d['tokens_per_s']:.1f} tok/s, CPU {d['cpu_step_s']:.2f} s/iteration), "
            f"first {d['first_s']:.1f} s, gen/score/train {d['time_generate']:.2f}/{d['time_score']:.2f}/"
            f"{d['time_train']:.2f} s, peak RSS {d['peak_rss_mb']:.0f} MB; profile "
            + ", ".join(f"{k} {v:.2f}" for k, v in d["profile"].items()))


def orchestrate(args) -> dict:
    return bc.orchestrate(os.path.abspath(__file__), args, "ppo", "trl", args.trl_python, child_args,
                          ("batch", "prompt_len", "new_tokens", "epochs", "mini_batch", "iters") + bc.RUNTIME_SETTINGS,
                          NOTES, lambda v: "trl " + v.get("trl", "?"), describe)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,gpt2", help="model presets, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="B: prompts per iteration")
    parser.add_argument("--prompt-len", type=int, default=32, help="P (a multiple of 16: no bucket padding)")
    parser.add_argument("--new-tokens", type=int, default=32, help="N: generated tokens per prompt")
    parser.add_argument("--epochs", type=int, default=1, help="E: PPO epochs per rollout")
    parser.add_argument("--mini-batch", type=int, default=4, help="rows per optimizer step")
    parser.add_argument("--iters", type=int, default=2, help="timed iterations after the warm-up one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    bc.add_runtime_flags(parser)
    bc.add_process_flags(parser, "trl", "interpreter with TRL (run/.bench-venv)", timeout=1800)
    args = parser.parse_args()
    if args.batch % args.mini_batch:
        parser.error(f"--mini-batch {args.mini_batch} must divide --batch {args.batch}")
    bc.run_main(args, {"prepare": side_prepare, "ours": side_ours, "trl": side_trl}, orchestrate)


if __name__ == "__main__":
    main()
