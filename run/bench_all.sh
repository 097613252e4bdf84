#!/usr/bin/env bash
# All benchmarks of mindrlhf against its peers, one report:
#   PPO iteration vs TRL's PPOTrainer, SFT train step vs a plain torch loop, generation vs transformers.
#
#   bash run/bench_all.sh                 # tiny and GPT-2-small shapes, small batches (minutes on 2 cores)
#   SIZES=tiny bash run/bench_all.sh      # only the tiny preset
#   THREADS=1 bash run/bench_all.sh       # torch threads (1 is fairer on a busy machine: see the report)
#
# Writes run/bench_results.md (one Markdown table) and run/bench_results.json. TRL runs in its own venv,
# run/.bench-venv (made here on first use from run/requirements-bench.txt; keep it out of git).
# Run it on a quiet machine: `uptime` before and after goes into the report.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
VENV=run/.bench-venv
SIZES=${SIZES:-tiny,gpt2}
THREADS=${THREADS:-2}
EXTRA=${EXTRA:-}            # e.g. EXTRA="--jit-level O1" for the mindrlhf side of bench_ppo and bench_train
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV (TRL + torch CPU)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q -r run/requirements-bench.txt
fi

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== load average at start: $START_LOAD"

echo "== PPO iteration: mindrlhf vs TRL"
"$PY" run/bench_ppo.py --sizes "$SIZES" --batch 8 --prompt-len 32 --new-tokens 32 --epochs 1 --mini-batch 4 \
    --iters 2 --threads "$THREADS" --trl-python "$VENV/bin/python" --json "$OUT/ppo.json" $EXTRA

echo "== SFT train step: mindrlhf vs a torch loop"
"$PY" run/bench_train.py --sizes "$SIZES" --batch 8 --seq-len 64 --steps 5 --threads "$THREADS" \
    --torch-python "$VENV/bin/python" --json "$OUT/train.json" $EXTRA

echo "== generation: mindrlhf vs transformers generate"
"$PY" run/bench_generate.py --sizes "$SIZES" --batches 8,32 --prompt-len 64 --new-tokens 128 --repeats 2 \
    --threads "$THREADS" --json "$OUT/generate.json"

"$PY" run/bench_common.py report "$OUT/ppo.json" "$OUT/train.json" "$OUT/generate.json" \
    --md run/bench_results.md --json run/bench_results.json --start-load "$START_LOAD"
echo "== wrote run/bench_results.md and run/bench_results.json"
