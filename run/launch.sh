#!/usr/bin/env bash
# One stage on N data-parallel workers of this machine (msrun, through `mindrlhf launch`); N=1 runs it in
# a single process, the baseline the data-parallel runs must match.
#   run/launch.sh 2 sft configs/sft_builtin.yaml [KEY=VALUE ...]
# The global batch sizes must divide by N; the launcher checks that before it starts anything.
# PYTHON picks the interpreter (default: python on PATH); MASTER_PORT the scheduler's port (default 8118);
# worker logs go to OUT_DIR/logs unless LOG_DIR is set. Several nodes: run/launch_multinode.sh.
set -euo pipefail
if [ $# -lt 3 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N STAGE CONFIG [KEY=VALUE ...]   (N: workers; STAGE: sft, rm, ppo, ...)" >&2
  exit 2
fi
workers=$1 stage=$2 config=$3
shift 3
if [ "$workers" -eq 1 ]; then
  exec "${PYTHON:-python}" -m mindrlhf.cli "$stage" --config "$config" "$@"
fi
exec "${PYTHON:-python}" -m mindrlhf.cli launch -n "$workers" --master-port "${MASTER_PORT:-8118}" \
  ${LOG_DIR:+--log-dir "$LOG_DIR"} "$stage" --config "$config" "$@"
