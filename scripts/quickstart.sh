#!/usr/bin/env bash
# Quick start: set up the environment, generate the synthetic shapes dataset, train a small
# InternImage Mask R-CNN on it, evaluate box and mask mAP, and draw one prediction.
# About 10 minutes on two CPU cores after setup (see docs/benchmarks.md).
#
#   bash scripts/quickstart.sh [extra tools/train.py options, e.g. --cfg-options runner.max_epochs=2]
#
# Environment variables:
#   CONFIG     config to train (default configs/shapes/mask_rcnn_internimage_pico_fpn_shapes.py)
#   DATA_DIR   dataset folder, generated when absent (default data/shapes)
#   WORK_DIR   logs and checkpoints (default work_dirs/<config name>)
#   SEED       training seed (default 0)
#   NUM_TRAIN, NUM_VAL   images to generate (default 400 and 100)
# Rerunning continues an interrupted training from its last checkpoint (--auto-resume).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIG=${CONFIG:-configs/shapes/mask_rcnn_internimage_pico_fpn_shapes.py}
CONFIG_NAME="$(basename "$CONFIG" .py)"
DATA_DIR=${DATA_DIR:-data/shapes}
WORK_DIR=${WORK_DIR:-work_dirs/$CONFIG_NAME}
SEED=${SEED:-0}
NUM_TRAIN=${NUM_TRAIN:-400}
NUM_VAL=${NUM_VAL:-100}
DEMO_IMAGE="$DATA_DIR/val/000000.png"
DEMO_OUT="$WORK_DIR/demo.png"
PY="$ROOT/.venv/bin/python"
step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$(date +%s)
elapsed() { local s=$(( $2 - $1 )); printf '%d min %02d s' $(( s / 60 )) $(( s % 60 )); }

step "1/5 environment (scripts/setup_env.sh)"
bash scripts/setup_env.sh

step "2/5 dataset in $DATA_DIR"
if [ -f "$DATA_DIR/annotations/instances_train.json" ] && [ -f "$DATA_DIR/annotations/instances_val.json" ]; then
  echo "found; delete $DATA_DIR to regenerate"
else
  "$PY" -m mmdet_custom.datasets.synthetic_shapes --out "$DATA_DIR" \
    --num-train "$NUM_TRAIN" --num-val "$NUM_VAL" --size 256 --seed 0
fi
# The config's data_root is data/shapes/; tools/train.py and tools/test.py honour MMDET_DATASETS.
export MMDET_DATASETS="${DATA_DIR%/}/"
train_start=$(date +%s)

step "3/5 training $CONFIG (log and checkpoints in $WORK_DIR)"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" --seed "$SEED" --auto-resume --no-validate "$@"
train_done=$(date +%s)

CHECKPOINT="$WORK_DIR/latest.pth"
step "4/5 evaluating $CHECKPOINT on the val split (box and mask mAP)"
"$PY" tools/test.py "$CONFIG" "$CHECKPOINT" --eval bbox segm --work-dir "$WORK_DIR"

step "5/5 drawing the predictions for $DEMO_IMAGE"
"$PY" tools/image_demo.py "$DEMO_IMAGE" "$CONFIG" "$CHECKPOINT" --out-file "$DEMO_OUT"

end=$(date +%s)
cat <<SUMMARY

Quick start finished in $(elapsed "$start" "$end"): setup and data $(elapsed "$start" "$train_start"), training $(elapsed "$train_start" "$train_done"), evaluation and demo $(elapsed "$train_done" "$end").
  dataset:      $DATA_DIR  (COCO json in $DATA_DIR/annotations)
  checkpoints:  $WORK_DIR/epoch_*.pth  (latest: $CHECKPOINT)
  train log:    $(ls -t "$WORK_DIR"/*.log 2>/dev/null | head -n1)
  metrics:      $(ls -t "$WORK_DIR"/eval_*.json 2>/dev/null | head -n1)
  demo image:   $DEMO_OUT
SUMMARY
