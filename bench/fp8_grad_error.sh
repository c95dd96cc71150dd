#!/usr/bin/env bash
# How far each precision recipe's gradients are from fp32's on a trained model (docs/fp8.md):
# trains CONFIG in bf16 with the FP8 accuracy experiment's settings (bench/fp8_experiment.sh),
# saving a checkpoint every STEPS/POINTS steps; then, at each checkpoint, computes one micro-batch's
# gradients (32 sequences of 64 tokens, the first of the training order) under fp32, bf16, fp8
# and fp8 with 128x128 activation-gradient tiles in Dgrad (`moetron dump-grads --from`), and
# bench/fp8_grad_error.py prints each recipe's gradient error against fp32's; then
# bench/fp8_grad_outliers.py measures how spread out across tokens the last checkpoint's
# activation gradients are, and the per-token error of quantising them in 1x128 and 128x128 tiles.
#
# usage: bench/fp8_grad_error.sh [moetron binary] [steps] [config] [threads]
#   defaults: build/moetron, 1000, configs/tiny.yaml, 2. Output under runs/fp8_grad_error/<config>.
#   POINTS (environment): how many checkpoints to measure at, evenly spaced (default 4).
set -euo pipefail
BIN=${1:-build/moetron}
STEPS=${2:-1000}
CFG=${3:-configs/tiny.yaml}
THREADS=${4:-2}
NAME=$(basename "$CFG" .yaml)
OUT=${OUT:-runs/fp8_grad_error/$NAME}
# shellcheck source=bench/fp8_experiment.sh
source "$(dirname "$0")/fp8_experiment.sh"
fp8_common "$STEPS" "$THREADS"
POINTS=${POINTS:-4}
every=$((STEPS / POINTS))
if [ ! -f "$OUT/train/checkpoints/step_$STEPS/manifest.yaml" ]; then
  rm -rf "$OUT/train" && mkdir -p "$OUT/train"
  # shellcheck disable=SC2086
  nice "$BIN" train "$CFG" "${common[@]}" ${variant[bf16]} --set "run.dir=$OUT/train" \
    --set "run.save_interval=$every" --set run.keep_checkpoints="$POINTS" \
    > "$OUT/train/train.log" 2>&1 \
    || { echo "fp8_grad_error: training failed, see $OUT/train/train.log" >&2; exit 1; }
fi
args=()
for step in $(seq "$every" "$every" "$STEPS"); do
  files=()
  for v in fp32 bf16 fp8 fp8_dgrad128; do
    f=$OUT/step_$step.$v.h5
    # shellcheck disable=SC2086
    nice "$BIN" dump-grads "$CFG" --from "$OUT/train/checkpoints/step_$step" --out "$f" \
      --set data.seq_len=64 --set data.micro_batch_size=32 --set data.global_batch_size=32 \
      --set "run.threads=$THREADS" \
      ${variant[$v]} > /dev/null
    files+=("${label[$v]}=$f")
  done
  args+=("step $step" "${files[@]}")
done
/usr/bin/python3 bench/fp8_grad_error.py "${args[@]}"
# why 128x128 Dgrad tiles matter or not here: the token spread of the trained model's dY
/usr/bin/python3 bench/fp8_grad_outliers.py "$OUT/step_$STEPS.fp32.h5"
