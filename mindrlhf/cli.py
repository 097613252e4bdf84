"""`mindrlhf`: one command per stage and tool.

Stage commands take a YAML recipe and dotted overrides::

    mindrlhf sft --config configs/sft_builtin.yaml train.max_steps=50 optim.lr=1e-3
    mindrlhf sft --config configs/sft_builtin.yaml --resume runs/sft     # continue a killed run
    mindrlhf sft --help-config                                           # every key with its help
    mindrlhf launch -n 2 sft --config configs/sft_builtin.yaml           # 2 data-parallel workers (msrun)

``mindrlhf data rankings``, ``mindrlhf generate`` and ``mindrlhf score`` take their options from a config dataclass
(``--k 4``, ``--max-new-tokens 64``, or ``--config FILE`` and KEY=VALUE overrides); ``--help-config``
lists them with their defaults.

Exit status: 2 for an error in what the user gave (config, data, files, unreadable or corrupt files),
printed as one line naming the file (and line) where there is one; 1 for a run that diverged (a loss or
gradient norm stopped being finite: the message names the step); 130/143 for a run stopped by SIGINT/SIGTERM
after saving a checkpoint. MINDRLHF_DEBUG=1 keeps the traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import sys
import typing

import yaml

from .config import describe, load_config, load_run_config
from .data.builtin.arithmetic import DIFFICULTIES, write_arithmetic_task
from .data.builtin.task import write_builtin_task
from .data.formats import export_mindrecord
from .data.tokenizer import train_tokenizer
from .generation import GenerateConfig, generate_file
from .launch import LaunchPlan, launch
from .nn import CausalLM
from .nn.gguf import gguf_to_hf_folder
from .runtime import RuntimeConfig
from .scoring import ScoreConfig, score_file
from .trainers.loop import DivergedError, Interrupted
from .trainers.rankings import RankingsCommandConfig, sample_rankings
from .trainers.reward import evaluate_rm

# stage name → (module, config class, run function, one-line help)
STAGES = {
    "sft": ("mindrlhf.trainers.sft", "SFTConfig", "train_sft", "stage 1: supervised fine-tuning on demonstrations"),
    "rm": ("mindrlhf.trainers.reward", "RMConfig", "train_rm", "stage 2: reward model from K-way rankings"),
    "ppo": ("mindrlhf.trainers.ppo", "PPOConfig", "train_ppo", "stage 3: PPO against the reward model, KL-tied to the reference"),
    "dpo": ("mindrlhf.trainers.dpo", "DPOConfig", "train_dpo", "DPO (or IPO, hinge, SimPO) on preference pairs from rankings"),
    "grpo": ("mindrlhf.trainers.grpo", "GRPOConfig", "train_grpo",
             "critic-free RL (GRPO, Dr. GRPO, RLOO, REINFORCE++, DAPO, GSPO) on reward functions and/or a reward model"),
    "pipeline": ("mindrlhf.pipeline", "PipelineConfig", "run_pipeline",
                 "the whole recipe on a task (the built-in one, or yours): data → SFT → rankings → RM → PPO → report"),
}


def _stage_parser(sub, name: str, help_text: str):
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--config", help="YAML recipe (see configs/); keys not set keep their defaults")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue from the newest checkpoint in RUN_DIR (its "
                                                       "config.yaml is the config; overrides apply on top)")
    p.add_argument("--overwrite", action="store_true", help="start over in an out_dir that holds an earlier run "
                                                            "(its checkpoints, metrics and model are removed)")
    p.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=_run_stage, stage=name)


def _stage(name: str):
    """(config class, run function) of a stage; its module is imported only when the stage runs."""
    module_name, cls_name, fn_name, _ = STAGES[name]
    module = importlib.import_module(module_name)
    return getattr(module, cls_name), getattr(module, fn_name)


def stage_config(stage: str, stage_args: list):
    """The config that ``mindrlhf <stage> <stage_args...>`` runs with; `launch` checks it before spawning."""
    args = parse_args([stage, *stage_args])
    return load_run_config(_stage(stage)[0], args.config, args.overrides, args.resume)


def _run_stage(args) -> int:
    cls, run = _stage(args.stage)
    if args.help_config:
        print("\n".join(describe(cls)))
        return 0
    cfg = load_run_config(cls, args.config, args.overrides, args.resume)
    result = run(cfg, resume=args.resume, overwrite=args.overwrite)
    if isinstance(result, dict) and result:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, float))
        print(f"[{args.stage}] done: {shown}")
    return 0


def _launch(args) -> int:
    return launch(LaunchPlan(args.stage, args.stage_args, workers=args.n, nodes=args.nodes, node_rank=args.node_rank,
                             master_addr=args.master_addr, master_port=args.master_port, log_dir=args.log_dir,
                             cluster_timeout=args.cluster_timeout), stage_config)


def _tokenizer_train(args) -> int:
    tok = train_tokenizer(args.input, args.vocab_size, args.out)
    print(f"[tokenizer] {tok.vocab_size} pieces → {args.out}")
    return 0


def _data_builtin(args) -> int:
    if args.task == "arithmetic":
        paths = write_arithmetic_task(args.out, seed=args.seed, difficulty=args.difficulty)
    else:
        paths = write_builtin_task(args.out, seed=args.seed, shelf=args.shelf)
    tok = train_tokenizer(os.path.join(args.out, "corpus.txt"), args.vocab_size, os.path.join(args.out, "tokenizer"))
    names = ", ".join(sorted(map(os.path.basename, paths)))
    print(f"[data] built-in {args.task} task (seed {args.seed}) → {args.out}: {names}; tokenizer with {tok.vocab_size} pieces")
    return 0


def _tool_parser(sub, name: str, cls, func, help_text: str):
    """A command whose options are the fields of the dataclass ``cls``: ``--field-name VALUE`` (a bool field
    that defaults to true: ``--no-field-name``), or ``--config FILE`` and KEY=VALUE overrides, as the stages.
    Defaults and help come from ``cls``; ``--help-config`` lists them."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    defaults, hints = cls(), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default, flag, tp = getattr(defaults, f.name), f.name.replace("_", "-"), hints[f.name]
        text = f.metadata.get("help", "").replace("%", "%%")
        if tp is bool:
            p.add_argument(f"--{'no-' if default else ''}{flag}", dest=f.name, action="store_const",
                           const=not default, help=f"{f.name} = {str(not default).lower()} ({text})")
        elif typing.get_origin(tp) in (dict, list) or tp in (dict, list):  # given as YAML: '{world: w.json}'
            p.add_argument(f"--{flag}", dest=f.name, type=yaml.safe_load, metavar="YAML",
                           help=f"{text} (default {default!r})")
        else:
            p.add_argument(f"--{flag}", dest=f.name, type=tp, metavar=f.name.upper(),
                           help=f"{text} (default {default!r})" if default != "" else text)
    p.add_argument("--config", help="YAML file of these keys; flags and overrides apply on top")
    p.add_argument("--help-config", action="store_true", help="list every key with its default and help")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. max_new_tokens=32")
    p.set_defaults(func=func, tool_config=cls)


def _tool_config(args):
    """The tool's config from --config, its flags and the overrides; None after --help-config printed it."""
    cls = args.tool_config
    if args.help_config:
        print("\n".join(describe(cls)))
        return None
    flags = [f"{f.name}={json.dumps(getattr(args, f.name))}" for f in dataclasses.fields(cls)
             if getattr(args, f.name) is not None]
    return load_config(cls, args.config, flags + args.overrides)


def _data_rankings(args) -> int:
    cfg = _tool_config(args)
    if cfg is None:
        return 0
    s = sample_rankings(cfg.policy, cfg.prompts, cfg.out, cfg.labeler, cfg.labeler_kwargs, seed=cfg.seed,
                        chat_template=cfg.chat_template, runtime_cfg=RuntimeConfig(device=cfg.device, seed=cfg.seed),
                        scorer=cfg.scorer, scorer_kwargs=cfg.scorer_kwargs, **cfg.sampling())
    print(f"[data] {s['rankings']} rankings of K={cfg.k} → {cfg.out} ({s['dropped']} prompts dropped for fewer "
          f"than 2 distinct responses)")
    return 0


def _eval_rm(args) -> int:
    s = evaluate_rm(args.model, args.data, batch_size=args.batch_size, write=args.write_stats,
                    chat_template=not args.no_chat_template, runtime_cfg=RuntimeConfig(),
                    against_labeler=args.against_labeler, ensemble_k=args.ensemble_k)
    where = f" → {os.path.join(args.model, 'rm_stats.json')}" if args.write_stats else ""
    print(f"[eval rm] accuracy={s['accuracy']:.4f} mean_margin={s['mean_margin']:.4f} "
          f"reward_mean={s['reward_mean']:.4f} reward_std={s['reward_std']:.4f} "
          f"({s['pairs']} pairs over {s['prompts']} prompts){where}")
    if args.against_labeler:
        print(f"[eval rm] against the labeler's noise-free scores: labeler_accuracy={s['labeler_accuracy']:.4f} "
              f"(every pair, tied scores ½), labeler_accuracy_decisive={s['labeler_accuracy_decisive']:.4f} "
              f"({s['labeler_decisive_pairs']} pairs whose scores differ); the noisy ranking orders "
              f"{s['noisy_ranking_accuracy']:.4f} of those right")
    return 0


def _generate(args) -> int:
    cfg = _tool_config(args)
    if cfg is None:
        return 0
    s = generate_file(cfg.model, cfg.prompts, cfg.out, tokenizer=cfg.tokenizer, max_new_tokens=cfg.max_new_tokens,
                      temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                      batch_size=cfg.batch_size, chat_template=cfg.chat_template, progress=cfg.progress,
                      num_samples=cfg.num_samples, runtime_cfg=RuntimeConfig(device=cfg.device, seed=cfg.seed))
    print(f"[generate] {s['answers']} responses to {s['prompts']} prompts ({s['finished']} ended with EOS, {s['tokens']} tokens, "
          f"{s['tokens'] / max(s['seconds'], 1e-9):.1f} tokens/s) → {cfg.out}")
    return 0


def _score(args) -> int:
    cfg = _tool_config(args)
    if cfg is None:
        return 0
    s = score_file(cfg)
    print(f"[score] {s['answers']} answers scored → {cfg.out}" + (f" ({s['skipped']} lines skipped)" if s["skipped"]
                                                                    else ""))
    return 0


def _data_export(args) -> int:
    n = export_mindrecord(args.input, args.out, args.kind, skip_invalid=args.skip_invalid)
    print(f"[data] {n} {args.kind} records → {args.out}")
    return 0


def _convert(args) -> int:
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"convert: --out {args.out} is a file; the output is a model folder")
    if args.from_gguf:
        gguf_to_hf_folder(args.from_gguf, args.out)
        print(f"[convert] {args.from_gguf} → {args.out} (HuggingFace folder with tokenizer and chat template)")
        return 0
    if not args.src:
        raise ValueError("convert: give a HuggingFace folder (SRC) or --from-gguf FILE")
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
    _tool_parser(data_sub, "rankings", RankingsCommandConfig, _data_rankings,
                 "sample K responses per prompt from a policy; a labeler (module:function) ranks them")
    e = data_sub.add_parser("export", help="convert a JSONL file to MindRecord (read back by the same loaders)")
    e.add_argument("--input", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--kind", required=True, choices=["demonstrations", "rankings", "prompts"])
    e.add_argument("--skip-invalid", action="store_true")
    e.set_defaults(func=_data_export)

    ev = sub.add_parser("eval", help="evaluate a stage's product")
    ev_sub = ev.add_subparsers(dest="what", metavar="WHAT")
    ev_sub.required = True
    er = ev_sub.add_parser("rm", help="reward model: held-out pairwise accuracy, mean margin, reward mean/std "
                            "(printed; --write-stats to store them in the model folder)")
    er.add_argument("--model", required=True, help="the model/ folder of a `mindrlhf rm` run")
    er.add_argument("--data", required=True, help="rankings JSONL to evaluate on")
    er.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    er.add_argument("--write-stats", action="store_true", help="also replace the model's rm_stats.json with these "
                    "stats (its reward mean and std normalise PPO's scores); without it the folder is left as it is")
    er.add_argument("--no-chat-template", action="store_true",
                    help="plain continuation, for a reward model trained with data.chat_template=false")
    er.add_argument("--against-labeler", action="store_true",
                    help="also the accuracy against the labeler's noise-free scores (the file's true_scores, "
                    "written by `data rankings --scorer`): every pair, and the pairs whose scores differ")
    er.add_argument("--ensemble-k", type=float, default=None, metavar="K",
                    help="a reward-model ensemble scored mean − K·std in place of its stored k (0 = the mean)")
    er.set_defaults(func=_eval_rm)

    _tool_parser(sub, "generate", GenerateConfig, _generate,
                 "answer every prompt of a prompts JSONL file; one JSONL line per answer")
    _tool_parser(sub, "score", ScoreConfig, _score,
                 "score prompt/answer lines: the reward model's score, log-probs under --policy and --reference, "
                 "their KL")

    c = sub.add_parser("convert", help="read a HuggingFace folder and write it back through our model")
    c.add_argument("src", nargs="?", help="HuggingFace folder (config.json + safetensors)")
    c.add_argument("--from-gguf", metavar="FILE", help="a Llama-family .gguf file (or smollm2-135m-instruct)")
    c.add_argument("--out", required=True)
    c.set_defaults(func=_convert)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides given after an option (`sft a=1 --resume DIR b=2`) are overrides all the same
        if not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ log: errors only
    try:
        return args.func(args)
    except Interrupted as err:  # SIGINT/SIGTERM: the loop saved a checkpoint and says how to resume
        print(f"mindrlhf: {err}", file=sys.stderr)
        return err.exit_code
    except DivergedError as err:
        return _fail(err, 1)
    except (ValueError, OSError, yaml.YAMLError) as err:  # ConfigError, data errors, decode errors included
        return _fail(err, 2)


def _fail(err: Exception, status: int) -> int:
    """Print ``err`` as one line (the traceback with MINDRLHF_DEBUG=1) and return the exit status."""
    if os.environ.get("MINDRLHF_DEBUG"):
        raise err
    print(f"mindrlhf: error: {describe_error(err)}", file=sys.stderr)
    return status


def describe_error(err: Exception) -> str:
    """One line for ``err``: the file (and line) it names, and what was wrong."""
    if isinstance(err, OSError) and err.filename is not None:
        where = f"{err.filename} → {err.filename2}" if err.filename2 is not None else str(err.filename)
        text = f"{where}: {err.strerror or err}"
    elif isinstance(err, UnicodeDecodeError):
        text = f"not UTF-8 text: byte {err.object[err.start]:#04x} at offset {err.start}"
    elif isinstance(err, json.JSONDecodeError):
        text = f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
    elif isinstance(err, yaml.YAMLError):
        mark = getattr(err, "problem_mark", None)
        name = f"{mark.name}:{mark.line + 1}: " if mark is not None else ""
        text = f"{name}not valid YAML: {getattr(err, 'problem', None) or err}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
