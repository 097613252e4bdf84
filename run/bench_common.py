"""What the benchmarks in run/ share: the machine, random HuggingFace model folders, child processes.

Every benchmark measures each framework in its own child process (so its peak RSS is its own) and
returns rows of one shape::

    {"bench": "ppo" | "train" | "generate" | "dpo" | "grpo", "size": "tiny", "settings": {...},
     "ours": {...}, "peer_name": "trl 0.28.0", "peer": {...},
     "speed_metric": "tokens_per_s", "speedup": ours / peer  (> 1: mindrlhf is faster)}

which ``run/bench_report.py`` merges into the one Markdown table and JSON file of ``run/bench_all.sh``.

This module imports neither MindSpore nor torch at import time: the child processes import only
their own framework, so one framework's memory never shows up in the other's RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_VENV = os.path.join(ROOT, "run", ".bench-venv")
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]  # ids 0..3; prompts are drawn from ids >= 4


# ------------------------------------------------------------------------------------ the machine
def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_gb() -> float:
    with open("/proc/self/statm", encoding="utf-8") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


PHASE = {"now": "setup"}  # what a child is doing; a memory-guard error names it
PHASE_PEAK_GB: dict = {}  # phase -> the highest resident memory sampled during it (the memory guard's watcher)


def guard_memory(limit_gb: float, result_path: str) -> None:
    """End this process (exit code 3) once its resident memory passes ``limit_gb``, leaving an error
    result that names the phase: on a shared machine a runaway benchmark must not push others into OOM."""
    import threading

    def watch():
        while True:
            rss = current_rss_gb()
            phase = PHASE["now"]
            PHASE_PEAK_GB[phase] = max(PHASE_PEAK_GB.get(phase, 0.0), round(rss, 3))
            if rss > limit_gb:
                write_result(result_path, {"error": f"resident memory {rss:.1f} GB passed the {limit_gb:g} GB guard "
                                                    f"during {PHASE['now']}"})
                os._exit(3)
            time.sleep(0.2)

    if limit_gb > 0:
        threading.Thread(target=watch, daemon=True).start()


def default_memory_guard_gb() -> float:
    return round(0.7 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def load_average() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """CPU model, cores, memory, load average and the commit measured."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1), "python": platform.python_version(),
            "commit": commit + ("+dirty" if dirty else ""), "load_average": load_average(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def versions(*names) -> dict:
    """Installed versions of ``names`` in this interpreter (absent ones are left out)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# ------------------------------------------------------------------------------------ model folders
# --sizes names with real weights: a GGUF preset (mindrlhf.nn.gguf), converted once to a HuggingFace folder
# that both frameworks load (the benchmark venv has no `gguf` package). Other sizes are models/<size>.yaml
# presets with random weights.
PRETRAINED = {"smollm2": "smollm2-135m-instruct"}
CACHE = os.path.join(ROOT, "run", ".bench-cache")


def pretrained_folder(size: str) -> str:
    """The HuggingFace folder of ``PRETRAINED[size]`` under run/.bench-cache, converted on first use
    (``mindrlhf convert --from-gguf``'s conversion: fp32 weights, the model's tokenizer) and again when
    the GGUF file changes."""
    from mindrlhf.io.gguf import gguf_path
    from mindrlhf.nn.gguf import gguf_to_hf_folder

    source = os.path.abspath(gguf_path(PRETRAINED[size]))
    stat = os.stat(source)
    stamp = {"gguf": source, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    folder = os.path.join(CACHE, PRETRAINED[size])
    stamp_path = os.path.join(folder, "converted_from.json")
    if os.path.exists(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            if json.load(f) == stamp:
                return folder
    print(f"[bench] converting {source} -> {folder} (once)", flush=True)
    gguf_to_hf_folder(source, folder)
    with open(stamp_path, "w", encoding="utf-8") as f:  # written last: a half-done conversion has no stamp
        json.dump(stamp, f)
    return folder


def size_notes(size: str) -> list:
    """Report notes a row of ``size`` adds: where real weights came from."""
    if size not in PRETRAINED:
        return []
    return [f"{size}: the real weights of {PRETRAINED[size]} (its GGUF dequantized to fp32, one HuggingFace folder "
            "that both sides load); tiny and gpt2 are random-weight presets. Prompts are random token ids."]


def link_folder(source: str, folder: str) -> None:
    """``folder`` holding symlinks to the files of ``source`` (the 0.5 GB of SmolLM2 weights are not copied)."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(source):
        if name != "converted_from.json":
            os.symlink(os.path.join(source, name), os.path.join(folder, name))


def write_lm(size: str, folder: str, min_positions: int, seed: int) -> dict:
    """A HuggingFace LM folder of ``size`` with its tokenizer: the cached real weights for a ``PRETRAINED``
    size, else random weights from the preset; returns its config.json."""
    if size in PRETRAINED:
        link_folder(pretrained_folder(size), folder)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        if config.get("max_position_embeddings", min_positions) < min_positions:
            raise ValueError(f"{size}: {min_positions} positions asked for, the model has "
                             f"{config['max_position_embeddings']}; use a shorter prompt or fewer new tokens")
        return config
    config = hf_config(size, min_positions)
    write_random_lm(config, folder, seed)
    return config


def hf_config(size: str, min_positions: int) -> dict:
    """The HuggingFace config.json of a mindrlhf preset (``models/<size>.yaml``), positions >= min_positions."""
    from mindrlhf.nn import ModelConfig
    from mindrlhf.nn.hf import config_to_hf

    cfg = ModelConfig.from_preset(size)
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, min_positions)
    return config_to_hf(cfg)


def write_tokenizer(folder: str, vocab_size: int) -> None:
    """A word-level tokenizer ("t17" -> 17) over the whole vocabulary, so both frameworks get a tokenizer
    object without any text processing mattering: the benchmarks feed random token ids directly."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)


def write_random_lm(config: dict, folder: str, seed: int, tokenizer: bool = True) -> None:
    """A randomly initialised transformers model saved as a HuggingFace folder (+ the word-level tokenizer)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    model.save_pretrained(folder)
    if tokenizer:
        write_tokenizer(folder, config["vocab_size"])


def write_reward_folder(size: str, folder: str, min_positions: int, seed: int) -> None:
    """A reward-model folder in mindrlhf's layout: trunk (``write_lm``: real weights for a ``PRETRAINED``
    size, else random) + reward_head.safetensors (weight [H, 1] random, bias [1] zero) + rm_stats.json.
    transformers reads the trunk into a ``*ForSequenceClassification`` and the head into its ``score``
    layer (bias 0: theirs has none)."""
    import numpy as np
    from safetensors.numpy import save_file

    config = write_lm(size, folder, min_positions, seed)
    hidden = config.get("n_embd") or config["hidden_size"]
    rng = np.random.default_rng(seed)
    save_file({"weight": (rng.standard_normal((hidden, 1)) * 0.02).astype(np.float32),
               "bias": np.zeros(1, np.float32)}, os.path.join(folder, "reward_head.safetensors"))
    with open(os.path.join(folder, "rm_stats.json"), "w", encoding="utf-8") as f:
        json.dump({"reward_mean": 0.0, "reward_std": 1.0}, f)


# ------------------------------------------------------------------------------------ child processes
def bench_python() -> str:
    """The interpreter of the benchmark venv (TRL), or this one when the venv is missing."""
    candidate = os.path.join(BENCH_VENV, "bin", "python")
    return candidate if os.path.exists(candidate) else sys.executable


def run_child(python: str, script: str, args: list, timeout: float) -> dict:
    """Run ``python script args --result F`` and return the JSON the child wrote to F.

    The child's output streams through (progress and errors stay visible). A child that fails or
    times out gives {"error": ...} so one failing side does not lose the other's numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [python, script, *map(str, args), "--result", result]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s: {' '.join(cmd)}"}
        if not os.path.exists(result):
            return {"error": f"exit code {proc.returncode}: {' '.join(cmd)}"}
        with open(result, encoding="utf-8") as f:
            out = json.load(f)
        out["process_wall_s"] = time.perf_counter() - t0
        return out


def write_result(path: str, result: dict) -> None:
    """What a child process hands back: its numbers plus its own peak RSS and versions."""
    result.setdefault("peak_rss_mb", peak_rss_mb())
    if PHASE_PEAK_GB:  # sampled every 0.2 s: a shorter peak inside a phase can be missed
        result.setdefault("peak_rss_gb_by_phase", dict(PHASE_PEAK_GB))
    result.setdefault("load_average_end", load_average())
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=float)


def speedup(ours: dict, peer: dict, metric: str):
    """ours[metric] / peer[metric] for a rate (tokens/s): > 1 means mindrlhf is faster."""
    a, b = ours.get(metric), peer.get(metric)
    return a / b if a and b else None


def orchestrate(script: str, args, bench: str, peer: str, peer_python: str, child_args, settings: tuple,
                notes: list, peer_name, describe) -> dict:
    """Every size in ``args.sizes``: prepare its model folders, then run mindrlhf and ``peer`` (side names
    for ``child_args(args, side, size, folder)``), each in its own child process; one report row a size.

    ``peer_name(versions)`` labels the peer's column, ``describe(result)`` is the line printed per side."""
    rows, vers = [], {}
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench_{bench}_{size}_") as folder:
            prep = run_child(sys.executable, script, child_args(args, "prepare", size, folder), args.timeout)
            if "error" in prep:
                raise RuntimeError(f"preparing the {size} model folders failed: {prep['error']}")
            ours = ({"error": f"skipped (--sides {peer})"} if args.sides == peer else
                    run_child(sys.executable, script, child_args(args, "ours", size, folder), args.timeout))
            theirs = ({"error": "skipped (--sides ours)"} if args.sides == "ours" else
                      run_child(peer_python, script, child_args(args, peer, size, folder), args.timeout))
        vers.update(ours.get("versions", {}), **theirs.get("versions", {}))
        rows.append({"bench": bench, "size": size, "settings": {k: getattr(args, k) for k in settings},
                     "ours": ours, "peer_name": peer_name(theirs.get("versions", {})), "peer": theirs,
                     "speed_metric": "tokens_per_s", "speedup": speedup(ours, theirs, "tokens_per_s"),
                     "notes": notes + size_notes(size)})
        for name, d in (("ours", ours), (peer, theirs)):
            print(f"[{size}] {name}: {d['error'] if 'error' in d else describe(d)}", flush=True)
        print(f"[{size}] speedup (ours/{peer} tokens/s): {rows[-1]['speedup']}", flush=True)
    return {"versions": vers, "rows": rows}


# ------------------------------------------------------------------------------------ our side's runtime
RUNTIME_SETTINGS = ("jit_level", "graph_kernel", "kernels", "recompute", "threads", "ms_threads")


def add_runtime_flags(parser) -> None:
    """The flags of our side's MindSpore runtime that every training benchmark takes."""
    parser.add_argument("--ms-threads", type=int, default=0, help="MindSpore CPU kernel threads; 0 = its default")
    parser.add_argument("--jit-level", default=None, choices=["O0", "O1", "O2"], help="MindSpore jit_level")
    parser.add_argument("--graph-kernel", action="store_true", help="MindSpore enable_graph_kernel=True")
    parser.add_argument("--kernels", default="auto", choices=["reference", "auto", "fused"],
                        help="runtime.kernels of our side (auto by default, as the library)")
    parser.add_argument("--recompute", action="store_true", help="runtime.recompute=true on our side")


def runtime_flags(args) -> list:
    """``add_runtime_flags``' values as the words of a child process's command line."""
    out = ["--kernels", args.kernels]
    if args.jit_level:
        out += ["--jit-level", args.jit_level]
    if args.ms_threads:
        out += ["--ms-threads", args.ms_threads]
    return out + (["--graph-kernel"] if args.graph_kernel else []) + (["--recompute"] if args.recompute else [])


def runtime_fields(args) -> dict:
    """``add_runtime_flags``' values, as our side's result records them."""
    return {k: getattr(args, k) for k in RUNTIME_SETTINGS if k != "threads"}


def runtime_config(args, seed: int):
    """Our side's ``RuntimeConfig`` from ``add_runtime_flags``' values (imports MindSpore: our child only)."""
    import mindspore as ms

    from mindrlhf.runtime import RuntimeConfig

    if args.ms_threads:
        ms.device_context.cpu.op_tuning.threads_num(args.ms_threads)
    return RuntimeConfig(seed=seed, jit_level=args.jit_level or "", graph_kernel=args.graph_kernel,
                         kernels=args.kernels, recompute=args.recompute)


# ------------------------------------------------------------------------------------ the two processes
def add_process_flags(parser, peer: str, peer_help: str, timeout: float) -> None:
    """Which sides run, the peer's interpreter, the limits, the rows' file, and the child process's own flags."""
    parser.add_argument("--sides", default="both", choices=["both", "ours", peer], help="run one side only")
    parser.add_argument(f"--{peer}-python", default=bench_python(), help=peer_help)
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per child process")
    parser.add_argument("--json", default=None, help="write the rows (bench_common's format) here")
    parser.add_argument("--max-rss-gb", type=float, default=default_memory_guard_gb(),
                        help="end a side whose resident memory passes this (default: 70%% of RAM); 0 = off")
    parser.add_argument("--side", default=None, choices=["prepare", "ours", peer], help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)


def run_main(args, sides: dict, orchestrate) -> None:
    """A child process runs its side (``sides[args.side](args)``) and writes its result; the parent runs
    ``orchestrate(args)`` over every size and writes the rows to ``--json``."""
    if args.side:
        guard_memory(args.max_rss_gb, args.result)
        write_result(args.result, sides[args.side](args))
        return
    report = orchestrate(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, default=float)
