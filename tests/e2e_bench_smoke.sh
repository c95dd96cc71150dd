#!/usr/bin/env bash
# Every benchmark still runs: each bench/ script and bench binary at its smallest size (a few
# steps, tiny GEMM sets, a few documents), outputs under BUILD_DIR/bench_smoke, so that none rots
# between the sessions that measure with them (docs/performance.md gives each full command).
# Timing figures printed here mean nothing (CI shares its cores); the test checks that each one
# runs to its table. Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; BUILD=$2; OUT=$BUILD/bench_smoke
rm -rf "$OUT"; mkdir -p "$OUT/raw"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
SMALL=$(printf '%s ' "${SMALL_MODEL[@]}" | sed 's/--set //g')  # key=value ...
cp data/cache/sotu/raw/179[0-3]_*.txt "$OUT/raw/"
run() {  # name, command...: runs it, keeps its output, fails naming it
  local name=$1; shift
  echo "== $name: $*"; local t0=$SECONDS
  if ! "$@" > "$OUT/$name.log" 2>&1; then
    tail -20 "$OUT/$name.log"; echo "e2e_bench_smoke: $name failed"; exit 1
  fi
  tail -4 "$OUT/$name.log"; echo "-- $name: $((SECONDS - t0)) s"
}
run bench_gemm "$BUILD/bench_gemm" --threads 1 --set tiny --min-time 0.001
run bench_fp8 "$BUILD/bench_fp8" --threads 1 --min-time 0.001 --gemm fprop
run bench_schedules "$BUILD/bench_schedules"
run bench_loader "$BUILD/bench_loader" --raw "$OUT/raw" --shard-tokens 20000 --steps 3 \
  --seq-lens 128
run bench_tokenizer "$BUILD/bench_tokenizer" --vocab 512 "$OUT/raw"
run train_vs_torch bench/train_vs_torch.sh 3 1 1
run layouts env SHAPES="2 2 2" SET="$SMALL" bench/layouts.sh 3
run core_compare env RSS_CONFIGS=tiny OLD_SET="$SMALL" NEW_SET="$SMALL activations.storage=bf16" \
  bench/core_compare.sh "$BIN" "$BIN" 1 3 fp32
run fp8_accuracy env OUT="$OUT/fp8_accuracy" PLOT="$OUT/fp8_loss.png" VARIANTS="bf16 fp8" \
  JOBS=2 bench/fp8_accuracy.sh "$BIN" 4 configs/tiny.yaml 1
run fp8_grad_error env OUT="$OUT/fp8_grad_error" POINTS=1 bench/fp8_grad_error.sh "$BIN" 4 \
  configs/tiny.yaml 1
echo "e2e_bench_smoke: every benchmark ran"
