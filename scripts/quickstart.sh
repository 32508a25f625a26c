#!/usr/bin/env bash
# Quick start: set up the environment, generate the synthetic shapes dataset, train a small
# InternImage Mask R-CNN on it, evaluate box and mask mAP, draw one prediction beside its ground
# truth and plot the training. About 5 to 8 minutes of training on two quiet CPU cores (the
# VMs measured differ), plus a first setup (24 minutes in all on a fresh 2-core machine, 16 of
# them setting up; see docs/benchmarks.md).
#
#   bash scripts/quickstart.sh [extra tools/train.py options, e.g. --cfg-options runner.max_epochs=2]
#
# Environment variables:
#   CONFIG     config to train (default configs/shapes/mask_rcnn_internimage_pico_fpn_shapes.py)
#   DATA_DIR   dataset folder, generated when absent (default data/shapes)
#   WORK_DIR   logs and checkpoints (default work_dirs/<config name>, or
#              work_dirs/<config name>_seed<SEED> for a SEED other than 0)
#   SEED       training seed (default 0)
#   NUM_TRAIN, NUM_VAL   images to generate (default 400 and 100)
# Rerunning continues an interrupted training from its last checkpoint (--auto-resume).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIG=${CONFIG:-configs/shapes/mask_rcnn_internimage_pico_fpn_shapes.py}
CONFIG_NAME="$(basename "$CONFIG" .py)"
DATA_DIR=${DATA_DIR:-data/shapes}
SEED=${SEED:-0}
# A run per seed: --auto-resume would go on from another seed's checkpoints (train.py refuses).
if [ "$SEED" = 0 ]; then
  WORK_DIR=${WORK_DIR:-work_dirs/$CONFIG_NAME}
else
  WORK_DIR=${WORK_DIR:-work_dirs/${CONFIG_NAME}_seed$SEED}
fi
NUM_TRAIN=${NUM_TRAIN:-400}
NUM_VAL=${NUM_VAL:-100}
DEMO_IMAGE="$DATA_DIR/val/000000.png"
DEMO_OUT="$WORK_DIR/demo.png"
PLOT_OUT="$WORK_DIR/training.png"
PY="$ROOT/.venv/bin/python"
step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
start=$(date +%s)
elapsed() { local s=$(( $2 - $1 )); printf '%d min %02d s' $(( s / 60 )) $(( s % 60 )); }

# The generator needs only numpy and OpenCV, so it runs by file path (not through the
# mmdet_custom package, which imports mmcv) while setup_env.sh is still building mmcv-full.
generate=("$PY" mmdet_custom/datasets/synthetic_shapes.py --out "$DATA_DIR"
          --num-train "$NUM_TRAIN" --num-val "$NUM_VAL" --size 256 --seed 0)
if [ -f "$DATA_DIR/annotations/instances_train.json" ] && [ -f "$DATA_DIR/annotations/instances_val.json" ]; then
  step "1/4 environment (scripts/setup_env.sh); dataset found in $DATA_DIR (delete it to regenerate)"
  bash scripts/setup_env.sh
  DATASET_NOTE="found, not regenerated"
else
  step "1/4 environment (scripts/setup_env.sh), generating the dataset in $DATA_DIR alongside"
  bash scripts/setup_env.sh --beside "${generate[@]}"
  DATASET_NOTE="generated"
fi
# The config's data_root is data/shapes/; the tools read the one here from MMDET_DATASETS (set
# even for data/shapes, over one the caller's environment may hold for another dataset).
export MMDET_DATASETS="${DATA_DIR%/}/"
train_start=$(date +%s)

step "2/4 training $CONFIG (log and checkpoints in $WORK_DIR; a line every few iterations with the ETA)"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" --seed "$SEED" --auto-resume --no-validate "$@"
train_done=$(date +%s)

CHECKPOINT="$WORK_DIR/latest.pth"
step "3/4 evaluating $CHECKPOINT on the val split (box and mask mAP, pycocotools)"
"$PY" tools/test.py "$CONFIG" "$CHECKPOINT" --eval bbox segm --work-dir "$WORK_DIR"

step "4/4 drawing the prediction for $DEMO_IMAGE and plotting the training"
"$PY" tools/image_demo.py "$DEMO_IMAGE" "$CONFIG" "$CHECKPOINT" --out-file "$DEMO_OUT"
"$PY" tools/plot_training.py "$WORK_DIR" --out "$PLOT_OUT" --title "$CONFIG_NAME"

end=$(date +%s)
newest() { ls -t "$@" 2>/dev/null | head -n1; }
METRICS_JSON="$(newest "$WORK_DIR"/eval_*.json)"
# The val images counted in the annotations evaluated (a dataset found may have another count).
MAPS="$("$PY" -c 'import json, sys; m = json.load(open(sys.argv[1]))["metric"]; n = len(json.load(open(sys.argv[2]))["images"]); print("box mAP %.3f, mask mAP %.3f on the %d val images" % (m["bbox_mAP"], m["segm_mAP"], n))' "$METRICS_JSON" "$DATA_DIR/annotations/instances_val.json")"
cat <<SUMMARY

Quick start finished in $(elapsed "$start" "$end"): setup and data $(elapsed "$start" "$train_start"), training $(elapsed "$train_start" "$train_done"), evaluation and pictures $(elapsed "$train_done" "$end").
Result: $MAPS.
Files:
  dataset:        $DATA_DIR/train/*.png, $DATA_DIR/val/*.png, $DATA_DIR/annotations/instances_{train,val}.json ($DATASET_NOTE)
  config used:    $WORK_DIR/$CONFIG_NAME.py
  checkpoints:    $(cd "$WORK_DIR" && ls epoch_*.pth | sort -V | tr '\n' ' ')(latest: $CHECKPOINT)
  training log:   $(newest "$WORK_DIR"/*.log)  (json lines: $(newest "$WORK_DIR"/*.log.json))
  metrics:        $METRICS_JSON
  demo picture:   $DEMO_OUT  (ground truth | prediction)
  training plot:  $PLOT_OUT  (losses, learning rate, final mAPs)
SUMMARY
