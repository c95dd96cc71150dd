#!/usr/bin/env bash
# FP8 accuracy experiment (docs/fp8.md): the same model, seed and data trained in bf16, in fp8
# (SPEC-deepseek-v3 §3: 1x128 activation/gradient tiles, 128x128 weight blocks) and in fp8 with
# 128x128 tiles for the activation gradients of Dgrad (the variant the V3 report found to
# diverge, App. B.2), and a control: bf16 again with AdamW's eps x1.0001, a perturbation far
# below any precision effect, whose gap to bf16 is the noise floor of the measure (same-seed
# runs drift apart chaotically once any bit differs). Each seed (run.seed: the initial weights
# and the data order) trains every variant; gaps are paired by seed and averaged over seeds.
# Metrics go to runs/fp8_accuracy/<config>/s<seed>/<variant>/metrics.jsonl; bench/plot_loss.py
# then draws docs/fp8_loss_<config>.png and prints the relative gap of the smoothed loss over
# the last 20% of the steps, per seed and its mean (target <= 0.25%).
#
# usage: [SEEDS="1234 1 2"] [JOBS=4] [VARIANTS="bf16 fp8 ..."] \
#          bench/fp8_accuracy.sh [moetron binary] [steps] [config] [threads per run]
#   defaults: build/moetron, 1000, configs/tiny.yaml, 1; SEEDS=1234, JOBS=4, all four variants;
#   OUT (runs/fp8_accuracy/<config>) and PLOT (docs/fp8_loss_<config>.png) move the outputs.
#   Runs go JOBS at a time (one thread each), niced. A run whose metrics already reach the last
#   step is kept, so adding seeds reruns nothing. Sequences of 64 tokens, 8 per step (512
#   tokens/step): 1000 steps of the tiny model take ~9 minutes per run, four side by side on
#   this 2-core machine; LR: 50 warm-up steps, peak until half-way, cosine to min_lr at the end.
set -euo pipefail
BIN=${1:-build/moetron}
STEPS=${2:-1000}
CFG=${3:-configs/tiny.yaml}
THREADS=${4:-1}
SEEDS=${SEEDS:-1234}
JOBS=${JOBS:-4}
VARIANTS=${VARIANTS:-bf16 fp8 fp8_dgrad128 bf16_eps}
NAME=$(basename "$CFG" .yaml)
OUT=${OUT:-runs/fp8_accuracy/$NAME}
# shellcheck source=bench/fp8_experiment.sh
source "$(dirname "$0")/fp8_experiment.sh"
fp8_common "$STEPS" "$THREADS"
done_steps() {  # the last step a metrics.jsonl reached (0 if none)
  [ -f "$1" ] || { echo 0; return; }
  tail -n 1 "$1" | sed -n 's/.*"step": *\([0-9]*\).*/\1/p' | grep . || echo 0
}
failed=0
running=0
for s in $SEEDS; do
  for v in $VARIANTS; do
    [ -n "${variant[$v]:-}" ] || { echo "fp8_accuracy: unknown variant $v" >&2; exit 2; }
    dir=$OUT/s$s/$v
    [ "$(done_steps "$dir/metrics.jsonl")" -ge "$STEPS" ] && continue
    if [ "$running" -ge "$JOBS" ]; then wait -n || failed=1; running=$((running - 1)); fi
    rm -rf "$dir" && mkdir -p "$dir"
    echo "fp8_accuracy: seed $s $v -> $dir"
    # shellcheck disable=SC2086
    nice "$BIN" train "$CFG" "${common[@]}" --set "run.seed=$s" ${variant[$v]} \
      --set "run.dir=$dir" > "$dir/train.log" 2>&1 &
    running=$((running + 1))
  done
done
while [ "$running" -gt 0 ]; do wait -n || failed=1; running=$((running - 1)); done
[ "$failed" = 0 ] || { echo "fp8_accuracy: a run failed, see $OUT/s*/*/train.log" >&2; exit 1; }
runs=()
for v in $VARIANTS; do
  paths=()
  for s in $SEEDS; do paths+=("$OUT/s$s/$v/metrics.jsonl"); done
  runs+=("${label[$v]}=$(IFS=,; echo "${paths[*]}")")
done
/usr/bin/python3 bench/plot_loss.py --out "${PLOT:-docs/fp8_loss_$NAME.png}" \
  --title "$NAME, $STEPS steps, seeds: $SEEDS" "${runs[@]}"
