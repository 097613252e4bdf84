#!/usr/bin/env bash
# One stage over several nodes: run this on every node with its own --node_rank (0 = the node whose
# address is --master_addr; the scheduler runs there).
#   run/launch_multinode.sh --node_rank 0 --master_addr 10.0.0.1 [--nodes 2] [--nproc 8] [--master_port 8118] \
#       ppo configs/ascend/ppo_llama2_7b_2x8dev.yaml [KEY=VALUE ...]
# World size = nproc × nodes; every global batch size must divide by it (checked before starting).
# PYTHON picks the interpreter (default: python on PATH); LOG_DIR the worker logs (default OUT_DIR/logs).
set -euo pipefail
usage() {
  echo "usage: $0 --node_rank R --master_addr ADDR [--nodes K] [--nproc N] [--master_port P] STAGE CONFIG [KEY=VALUE ...]" >&2
  exit 2
}
node_rank="" master_addr="" nodes=2 nproc=8 master_port=8118
while [ $# -gt 0 ]; do
  case "$1" in
    --node_rank) node_rank=${2:?}; shift 2 ;;
    --master_addr) master_addr=${2:?}; shift 2 ;;
    --nodes) nodes=${2:?}; shift 2 ;;
    --nproc) nproc=${2:?}; shift 2 ;;
    --master_port) master_port=${2:?}; shift 2 ;;
    --*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
if [ -z "$node_rank" ] || [ -z "$master_addr" ] || [ $# -lt 2 ]; then usage; fi
stage=$1 config=$2
shift 2
exec "${PYTHON:-python}" -m mindrlhf.cli launch -n "$nproc" --nodes "$nodes" --node-rank "$node_rank" \
  --master-addr "$master_addr" --master-port "$master_port" ${LOG_DIR:+--log-dir "$LOG_DIR"} \
  "$stage" --config "$config" "$@"
