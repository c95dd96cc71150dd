#!/usr/bin/env bash
# FP8 accuracy experiment (docs/fp8.md): the same model, seed and data trained in bf16, in fp8
# (SPEC-deepseek-v3 §3: 1x128 activation/gradient tiles, 128x128 weight blocks) and in fp8 with
# 128x128 tiles for the activation gradients of Dgrad (the variant the V3 report found to
# diverge, App. B.2), and a control: bf16 again with AdamW's eps x1.0001, a perturbation far
# below any precision effect, whose gap to bf16 is the noise floor of the measure (same-seed
# runs drift apart chaotically once any bit differs). Metrics go to runs/fp8_accuracy/<variant>/metrics.jsonl; bench/plot_loss.py
# then draws docs/fp8_loss.png and prints the relative gap of the smoothed loss over the last 20%
# of the steps (target <= 0.25%).
#
# usage: bench/fp8_accuracy.sh [moetron binary] [steps] [config] [threads per run]
#   defaults: build/moetron, 1000, configs/tiny.yaml, 1. The four runs go side by side (one
#   thread each), niced. Sequences of 64 tokens, 8 per step (512 tokens/step) so that 1000 steps
#   of the tiny model take ~10 minutes per run on this 2-core machine; LR: 50 warm-up steps, peak
#   until half-way, cosine to min_lr at the end.
set -euo pipefail
BIN=${1:-build/moetron}
STEPS=${2:-1000}
CFG=${3:-configs/tiny.yaml}
THREADS=${4:-1}
NAME=$(basename "$CFG" .yaml)
OUT=${OUT:-runs/fp8_accuracy/$NAME}
common=(--set "run.steps=$STEPS" --set data.seq_len=64 --set data.micro_batch_size=8
        --set data.global_batch_size=8 --set schedule.lr.warmup_steps=50
        --set "schedule.lr.constant_until=$((STEPS / 2))" --set "schedule.lr.decay_until=$STEPS"
        --set run.eval_interval=0 --set run.save_interval=0 --set run.seed=1234
        --set run.log_interval=50 --set "run.threads=$THREADS")
declare -A variant=(
  [bf16]="--set precision.recipe=bf16"
  [fp8]="--set precision.recipe=fp8"
  [fp8_dgrad128]="--set precision.recipe=fp8 --set precision.fp8_dgrad_tile=128x128"
  [bf16_eps]="--set precision.recipe=bf16 --set optimizer.eps=1.0001e-8"
)
pids=()
for v in bf16 fp8 fp8_dgrad128 bf16_eps; do
  mkdir -p "$OUT/$v"
  # shellcheck disable=SC2086
  nice "$BIN" train "$CFG" "${common[@]}" ${variant[$v]} --set "run.dir=$OUT/$v" \
    > "$OUT/$v/train.log" 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ "$status" = 0 ] || { echo "fp8_accuracy: a run failed, see $OUT/*/train.log" >&2; exit 1; }
/usr/bin/python3 bench/plot_loss.py --out "docs/fp8_loss_$NAME.png" --title "$NAME, $STEPS steps" \
  "bf16=$OUT/bf16/metrics.jsonl" "fp8=$OUT/fp8/metrics.jsonl" \
  "fp8 dgrad 128x128=$OUT/fp8_dgrad128/metrics.jsonl"' \
  "bf16, eps x1.0001 (noise floor)=$OUT/bf16_eps/metrics.jsonl"
