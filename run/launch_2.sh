#!/usr/bin/env bash
# One stage on 2 data-parallel workers of this machine (msrun, through `mindrlhf launch`).
#   run/launch_2.sh sft configs/sft_builtin.yaml [KEY=VALUE ...]
# The global batch sizes must divide by 2; the launcher checks that before it starts anything.
# PYTHON picks the interpreter (default: python on PATH); MASTER_PORT the scheduler's port (default 8118);
# worker logs go to OUT_DIR/logs unless LOG_DIR is set.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 STAGE CONFIG [KEY=VALUE ...]   (STAGE: sft, rm or ppo)" >&2
  exit 2
fi
stage=$1 config=$2
shift 2
exec "${PYTHON:-python}" -m mindrlhf.cli launch -n 2 --master-port "${MASTER_PORT:-8118}" \
  ${LOG_DIR:+--log-dir "$LOG_DIR"} "$stage" --config "$config" "$@"
