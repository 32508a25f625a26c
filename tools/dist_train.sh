#!/usr/bin/env bash
# Distributed training with torchrun: one process per GPU, or per CPU process where no GPU exists
# (gloo backend then).
#   bash tools/dist_train.sh CONFIG NUM_PROCESSES [tools/train.py options]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NUM_PROCESSES [train.py options]" >&2
  exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_torchrun.sh"
torchrun_tool "$2" train.py "$1" --launcher pytorch "${@:3}"
