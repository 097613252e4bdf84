"""`mindrlhf`: one command per stage and tool.

Stage commands take a YAML recipe and dotted overrides::

    mindrlhf sft --config configs/sft_builtin.yaml train.max_steps=50 optim.lr=1e-3
    mindrlhf sft --config configs/sft_builtin.yaml --resume runs/sft     # continue a killed run
    mindrlhf sft --help-config                                           # every key with its help
    mindrlhf launch -n 2 sft --config configs/sft_builtin.yaml           # 2 data-parallel workers (msrun)

Errors in what the user gave (config, data, files) print one line and exit with status 2; set
MINDRLHF_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .data.builtin.arithmetic import DIFFICULTIES, write_arithmetic_task

# stage name → (module, config class, run function, one-line help)
STAGES = {
    "sft": ("mindrlhf.trainers.sft", "SFTConfig", "train_sft", "stage 1: supervised fine-tuning on demonstrations"),
    "rm": ("mindrlhf.trainers.reward", "RMConfig", "train_rm", "stage 2: reward model from K-way rankings"),
    "ppo": ("mindrlhf.trainers.ppo", "PPOConfig", "train_ppo", "stage 3: PPO against the reward model, KL-tied to the reference"),
    "grpo": ("mindrlhf.trainers.grpo", "GRPOConfig", "train_grpo",
             "critic-free RL (GRPO, Dr. GRPO, RLOO, REINFORCE++, DAPO, GSPO) on reward functions and/or a reward model"),
    "pipeline": ("mindrlhf.pipeline", "PipelineConfig", "run_pipeline",
                 "the whole recipe on the built-in task: data → SFT → rankings → RM → PPO → report"),
}


def _stage_parser(sub, name: str, help_text: str):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--config", help="YAML recipe (see configs/); keys not set keep their defaults")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue from the newest checkpoint in RUN_DIR")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=_run_stage, stage=name)


def _run_stage(args) -> int:
    from .config import describe, load_config

    module_name, cls_name, fn_name, _ = STAGES[args.stage]
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name)
    if args.help_config:
        print("\n".join(describe(cls)))
        return 0
    cfg = load_config(cls, args.config, args.overrides)
    if args.resume and hasattr(cfg, "out_dir") and os.path.abspath(args.resume) != os.path.abspath(cfg.out_dir):
        cfg.out_dir = args.resume  # a resumed run keeps writing where it was
    result = getattr(module, fn_name)(cfg, resume=args.resume)
    if isinstance(result, dict) and result:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))
        print(f"[{args.stage}] done: {shown}")
    return 0


def _launch(args) -> int:
    from .launch import LaunchPlan, launch

    return launch(LaunchPlan(args.stage, args.stage_args, workers=args.n, nodes=args.nodes, node_rank=args.node_rank,
                             master_addr=args.master_addr, master_port=args.master_port, log_dir=args.log_dir,
                             cluster_timeout=args.cluster_timeout))


def _tokenizer_train(args) -> int:
    from .data.tokenizer import train_tokenizer

    tok = train_tokenizer(args.input, args.vocab_size, args.out)
    print(f"[tokenizer] {tok.vocab_size} pieces → {args.out}")
    return 0


def _data_builtin(args) -> int:
    from .data.builtin.task import write_builtin_task
    from .data.tokenizer import train_tokenizer

    if args.task == "arithmetic":
        paths = write_arithmetic_task(args.out, seed=args.seed, difficulty=args.difficulty)
    else:
        paths = write_builtin_task(args.out, seed=args.seed, shelf=args.shelf)
    tok = train_tokenizer(os.path.join(args.out, "corpus.txt"), args.vocab_size, os.path.join(args.out, "tokenizer"))
    names = ", ".join(sorted(map(os.path.basename, paths)))
    print(f"[data] built-in {args.task} task (seed {args.seed}) → {args.out}: {names}; tokenizer with {tok.vocab_size} pieces")
    return 0


def _data_rankings(args) -> int:
    from .trainers.rankings import sample_rankings

    s = sample_rankings(args.policy, args.prompts, args.out, k=args.k, noise=args.noise, seed=args.seed,
                        world_file=args.world, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                        max_prompts=args.max_prompts, batch_prompts=args.batch_prompts,
                        prompt_bucket=args.prompt_bucket)
    print(f"[data] {s['rankings']} rankings of K={args.k} → {args.out} ({s['dropped']} prompts dropped for fewer "
          f"than 2 distinct responses; labeler's mean score of the samples {s['mean_score']:.3f})")
    return 0


def _eval_rm(args) -> int:
    from .trainers.reward import evaluate_rm
    from .runtime import RuntimeConfig

    s = evaluate_rm(args.model, args.data, batch_size=args.batch_size, save=not args.no_save,
                    runtime_cfg=RuntimeConfig())
    where = "" if args.no_save else f" → {os.path.join(args.model, 'rm_stats.json')}"
    print(f"[eval rm] accuracy={s['accuracy']:.4f} mean_margin={s['mean_margin']:.4f} "
          f"reward_mean={s['reward_mean']:.4f} reward_std={s['reward_std']:.4f} "
          f"({s['pairs']} pairs over {s['prompts']} prompts){where}")
    return 0


def _generate(args) -> int:
    from .generation import generate_file
    from .runtime import RuntimeConfig

    s = generate_file(args.model, args.prompts, args.out, tokenizer=args.tokenizer,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                      top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                      chat_template=not args.no_chat_template, progress=not args.no_progress,
                      runtime_cfg=RuntimeConfig(device=args.device, seed=args.seed))
    print(f"[generate] {s['prompts']} responses ({s['finished']} ended with EOS, {s['tokens']} tokens, "
          f"{s['tokens'] / max(s['seconds'], 1e-9):.1f} tokens/s) → {args.out}")
    return 0


def _data_export(args) -> int:
    from .data.mindrecord import export_mindrecord

    n = export_mindrecord(args.input, args.out, args.kind, skip_invalid=args.skip_invalid)
    print(f"[data] {n} {args.kind} records → {args.out}")
    return 0


def _convert(args) -> int:
    import shutil

    if args.from_gguf:
        from .nn.gguf import gguf_to_hf_folder

        gguf_to_hf_folder(args.from_gguf, args.out)
        print(f"[convert] {args.from_gguf} → {args.out} (HuggingFace folder with tokenizer and chat template)")
        return 0
    if not args.src:
        raise ValueError("convert: give a HuggingFace folder (SRC) or --from-gguf FILE")
    from .nn import CausalLM

    model = CausalLM.from_pretrained(args.src)
    model.save_pretrained(args.out)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(args.src, name)):
            shutil.copyfile(os.path.join(args.src, name), os.path.join(args.out, name))
    print(f"[convert] {args.src} → {args.out} ({model.num_parameters():,} parameters)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mindrlhf", description="RLHF on MindSpore: SFT → reward model → PPO.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (_, _, _, help_text) in STAGES.items():
        _stage_parser(sub, name, help_text)

    la = sub.add_parser("launch", help="run a stage on N data-parallel workers per node (msrun)",
                        description="run a stage on N data-parallel workers per node through msrun; the stage's "
                                    "arguments follow the stage name unchanged")
    la.add_argument("-n", type=int, required=True, help="workers on this node (devices, or CPU processes)")
    la.add_argument("--nodes", type=int, default=1, help="nodes in the job; the world size is n × nodes")
    la.add_argument("--node-rank", type=int, default=0, help="this node's index, 0 = the one running the scheduler")
    la.add_argument("--master-addr", default="127.0.0.1", help="address of node 0 (the scheduler)")
    la.add_argument("--master-port", type=int, default=8118, help="the scheduler's port on node 0")
    la.add_argument("--log-dir", default="", help="worker logs; default OUT_DIR/logs of the stage's config")
    la.add_argument("--cluster-timeout", type=int, default=600, help="seconds to wait for every worker to join")
    la.add_argument("stage", help="sft, rm or ppo")
    la.add_argument("stage_args", nargs=argparse.REMAINDER, help="the stage's own arguments (--config, overrides)")
    la.set_defaults(func=_launch)

    tok = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer")
    tok_sub = tok.add_subparsers(dest="action", metavar="ACTION")
    tok_sub.required = True
    t = tok_sub.add_parser("train", help="train on a text file; text round-trips exactly")
    t.add_argument("--input", required=True, help="training text file")
    t.add_argument("--vocab-size", type=int, default=1000)
    t.add_argument("--out", required=True, help="output folder (tokenizer.model)")
    t.set_defaults(func=_tokenizer_train)

    data = sub.add_parser("data", help="built-in task data, rankings, MindRecord export")
    data_sub = data.add_subparsers(dest="action", metavar="ACTION")
    data_sub.required = True
    b = data_sub.add_parser("builtin", help="write a built-in task (movie recommendations, or arithmetic with checkable "
                                            "answers) and its tokenizer")
    b.add_argument("--task", default="movies", choices=["movies", "arithmetic"])
    b.add_argument("--difficulty", type=int, default=2, choices=sorted(DIFFICULTIES),
                   help="arithmetic: 1 = a ± b in digits, 2 = two or three terms up to 20, some in words, 3 = with ×")
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0, help="world seed; another seed gives another world")
    b.add_argument("--vocab-size", type=int, default=1000)
    b.add_argument("--shelf", type=int, default=0, help="films listed with their facts in every prompt (0 = none)")
    b.set_defaults(func=_data_builtin)
    r = data_sub.add_parser("rankings", help="sample K responses per prompt from a policy; the built-in labeler ranks them")
    r.add_argument("--policy", required=True, help="SFT output folder (model + tokenizer)")
    r.add_argument("--prompts", required=True, help="prompts JSONL (world.json beside it is the labeler's truth)")
    r.add_argument("--k", type=int, default=4, help="responses sampled per prompt")
    r.add_argument("--out", required=True, help="rankings JSONL to write")
    r.add_argument("--noise", type=float, default=0.5, help="labeler noise: std of the Gaussian added to scores")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--world", default="", help="world.json; default: beside the prompts file")
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--max-new-tokens", type=int, default=48)
    r.add_argument("--max-prompts", type=int, default=0, help="use only the first N prompts; 0 = all")
    r.add_argument("--batch-prompts", type=int, default=16, help="prompts per generation batch (each brings K rows)")
    r.add_argument("--prompt-bucket", type=int, default=16,
                   help="prompts are left-padded to a multiple of this; each width compiles its own graph")
    r.set_defaults(func=_data_rankings)
    e = data_sub.add_parser("export", help="convert a JSONL file to MindRecord (read back by the same loaders)")
    e.add_argument("--input", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--kind", required=True, choices=["demonstrations", "rankings", "prompts"])
    e.add_argument("--skip-invalid", action="store_true")
    e.set_defaults(func=_data_export)

    ev = sub.add_parser("eval", help="evaluate a stage's product")
    ev_sub = ev.add_subparsers(dest="what", metavar="WHAT")
    ev_sub.required = True
    er = ev_sub.add_parser("rm", help="reward model: held-out pairwise accuracy, mean margin, reward mean/std")
    er.add_argument("--model", required=True, help="the model/ folder of a `mindrlhf rm` run")
    er.add_argument("--data", required=True, help="rankings JSONL to evaluate on")
    er.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    er.add_argument("--no-save", action="store_true", help="print only; do not write rm_stats.json")
    er.set_defaults(func=_eval_rm)

    g = sub.add_parser("generate", help="answer every prompt of a prompts JSONL file; one JSONL line per prompt")
    g.add_argument("--model", required=True, help="model folder with its tokenizer, a .gguf file/name, or a preset "
                                                  "(random weights; needs --tokenizer)")
    g.add_argument("--tokenizer", default="", help="tokenizer folder/file; default: the model's own")
    g.add_argument("--prompts", required=True, help="prompts JSONL ({\"prompt\": ...} per line)")
    g.add_argument("--out", required=True, help="JSONL to write: prompt, response, num_tokens, finished, sum_logprob")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; > 0 = sampling")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens; 0 = off")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus mass; 1 = off")
    g.add_argument("--seed", type=int, default=0, help="same seed and batch size → same samples")
    g.add_argument("--batch-size", type=int, default=16, help="prompts per generation call")
    g.add_argument("--no-chat-template", action="store_true", help="feed the prompt text as it is (base models)")
    g.add_argument("--device", default="CPU", choices=["CPU", "GPU", "Ascend"])
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate)

    c = sub.add_parser("convert", help="read a HuggingFace folder and write it back through our model")
    c.add_argument("src", nargs="?", help="HuggingFace folder (config.json + safetensors)")
    c.add_argument("--from-gguf", metavar="FILE", help="a Llama-family .gguf file (or smollm2-135m-instruct)")
    c.add_argument("--out", required=True)
    c.set_defaults(func=_convert)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ log: errors only
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        if os.environ.get("MINDRLHF_DEBUG"):
            raise
        print(f"mindrlhf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
