#!/usr/bin/env bash
# One stage in a single process (no msrun): the baseline the data-parallel launches must match.
#   run/launch_1.sh sft configs/sft_builtin.yaml [KEY=VALUE ...]
# PYTHON picks the interpreter (default: python on PATH, e.g. the active virtual environment's).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 STAGE CONFIG [KEY=VALUE ...]   (STAGE: sft, rm or ppo)" >&2
  exit 2
fi
stage=$1 config=$2
shift 2
exec "${PYTHON:-python}" -m mindrlhf.cli "$stage" --config "$config" "$@"
