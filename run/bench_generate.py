"""Benchmark: our compiled KV-cache generation against transformers' `generate` (torch CPU), same weights.

    python run/bench_generate.py --sizes tiny,gpt2 --batches 8,32 --prompt-len 64 --new-tokens 128

Greedy, EOS disabled so every row generates all new tokens. Both sides get the same weights: random
ones for a models/ preset (the transformers model is saved and loaded into ours), SmolLM2-135M-Instruct's
for ``smollm2`` (the HuggingFace folder converted once from its GGUF into run/.bench-cache).
Reports tokens/s of each, their ratio, our compile time (first call minus a warm call) and the process's
peak RSS after our runs (both sides share this process, so the RSS is ours plus the transformers model;
bench_ppo and bench_train separate them).
``--json`` writes rows in the format of ``run/bench_common.py``, which ``run/bench_all.sh`` merges.
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402

from mindrlhf.nn import CausalLM, ModelConfig  # noqa: E402
from mindrlhf.nn.generate import GenerationConfig, Generator  # noqa: E402
from mindrlhf.nn.hf import config_to_hf  # noqa: E402
from run import bench_common as bc  # noqa: E402

peak_rss_mb = bc.peak_rss_mb


def build_pair(size, total_len, folder):
    """(transformers model, our CausalLM) with identical weights: real ones for a ``bc.PRETRAINED`` size (both
    load the cached HuggingFace folder), else random ones (saved by transformers into ``folder``)."""
    import torch
    import transformers
    if size in bc.PRETRAINED:
        bc.write_lm(size, folder, total_len, seed=0)  # validates the positions; links the cached folder
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
        theirs.generation_config.eos_token_id = None  # the model's config names one; EOS is off on both sides
        return theirs, CausalLM.from_pretrained(folder)
    cfg = ModelConfig.from_preset(size)
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, total_len)
    torch.manual_seed(0)
    hf_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config_to_hf(cfg).items() if k != "architectures"})
    theirs = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    theirs.save_pretrained(folder)
    return theirs, CausalLM.from_pretrained(folder)


def bench_ours(model, prompts, new_tokens, repeats):
    gen = Generator(model)
    config = GenerationConfig(max_new_tokens=new_tokens, eos_token_id=None)
    t0 = time.perf_counter()
    out = gen.generate(prompts, config)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = gen.generate(prompts, config)
        runs.append(time.perf_counter() - t0)
    run = min(runs)
    return out.response_ids, len(prompts) * new_tokens / run, first - run, run


def bench_theirs(model, prompts, new_tokens, repeats):
    import torch
    ids = torch.tensor(np.array(prompts), dtype=torch.long)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids[:, :8], **dict(kwargs, max_new_tokens=2, min_new_tokens=2))  # warm-up
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model.generate(ids, **kwargs)
            runs.append(time.perf_counter() - t0)
    return out[:, ids.shape[1]:].numpy(), len(prompts) * new_tokens / min(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,gpt2", help="model presets, comma-separated")
    parser.add_argument("--batches", default="8,32", help="batch sizes, comma-separated")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side (best is reported)")
    parser.add_argument("--jit-level", default=None, choices=["O0", "O1", "O2"], help="MindSpore jit_level")
    parser.add_argument("--graph-kernel", action="store_true", help="MindSpore enable_graph_kernel=True")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    if args.jit_level:
        ms.set_context(jit_config={"jit_level": args.jit_level})
    if args.graph_kernel:
        ms.set_context(enable_graph_kernel=True)
    rng = np.random.default_rng(0)
    results = []
    print(f"{'size':>6} {'batch':>5} {'ours tok/s':>10} {'hf tok/s':>9} {'ratio':>6} {'compile s':>9} "
          f"{'peak RSS MB':>11} {'same tokens':>11}")
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as folder:
            theirs, ours = build_pair(size, args.prompt_len + args.new_tokens, folder)
        for batch in map(int, args.batches.split(",")):
            prompts = rng.integers(1, ours.config.vocab_size, (batch, args.prompt_len)).tolist()
            our_ids, our_tps, compile_s, _ = bench_ours(ours, prompts, args.new_tokens, args.repeats)
            rss = peak_rss_mb()
            their_ids, their_tps = bench_theirs(theirs, prompts, args.new_tokens, args.repeats)
            row = dict(size=size, batch=batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                       ours_tokens_per_s=our_tps, hf_tokens_per_s=their_tps, ratio=our_tps / their_tps,
                       compile_s=compile_s, peak_rss_mb=rss, jit_level=args.jit_level,
                       same_tokens_fraction=float((our_ids == their_ids).mean()))
            results.append(common_row(row, compile_s, args))
            print(f"{size:>6} {batch:>5} {our_tps:>10.1f} {their_tps:>9.1f} {row['ratio']:>6.2f} {compile_s:>9.1f} "
                  f"{rss:>11.0f} {row['same_tokens_fraction']:>11.3f}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"versions": bc.versions("mindspore", "torch", "transformers"), "rows": results}, f, indent=2)


def common_row(row, compile_s, args):
    """One row in bench_common's report format (the flat fields stay in ``ours``/``peer`` as before)."""
    load = bc.load_average()
    tokens = row["batch"] * row["new_tokens"]
    ours = {"tokens_per_s": row["ours_tokens_per_s"], "step_s": tokens / row["ours_tokens_per_s"],
            "first_s": tokens / row["ours_tokens_per_s"] + compile_s, "compile_s": compile_s,
            "peak_rss_mb": row["peak_rss_mb"], "load_average_end": load,
            "same_tokens_fraction": row["same_tokens_fraction"]}
    peer = {"tokens_per_s": row["hf_tokens_per_s"], "step_s": tokens / row["hf_tokens_per_s"],
            "load_average_end": load}
    settings = {"batch": row["batch"], "prompt_len": row["prompt_len"], "new_tokens": row["new_tokens"],
                "jit_level": args.jit_level, "graph_kernel": args.graph_kernel, "threads": args.threads}
    return {"bench": "generate", "size": row["size"], "settings": settings, "ours": ours,
            "peer_name": "transformers generate", "peer": peer, "speed_metric": "tokens_per_s",
            "speedup": row["ratio"],
            "notes": ["generate: greedy, EOS off; tokens/s = B·N / seconds of one generate call (best of "
                      f"{args.repeats}); RSS is the shared process's (ours + the transformers model)."]
            + bc.size_notes(row["size"])}


if __name__ == "__main__":
    main()
