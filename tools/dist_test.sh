#!/usr/bin/env bash
# Distributed testing with torchrun (GPUs with NCCL, or CPU processes with gloo).
#   bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES [tools/test.py options]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT NUM_PROCESSES [test.py options]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
torchrun_tool "$3" test.py "$1" "$2" --launcher pytorch "${@:4}"
