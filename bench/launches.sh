#!/usr/bin/env bash
# Kernel launches per training step on the GPU: the host launches each of moetron's kernels
# (microseconds each), and a routed expert's GEMM is microseconds of GPU time, so with many small
# experts the launches can bound the step. Trains configs/tiny.yaml narrowed (tests/small_model.sh,
# 2 layers) with run.device: cuda for 3 and for 5 steps and prints the difference over 2: the
# launches of a steady step (initialisation cancels), from the line "kernels launched by rank 0"
# that a GPU run ends with (moetron's own kernels; cuBLASLt's, CUB's and NCCL's are not counted),
# and the FP8 GEMMs per step. Runs on a GPU or on the CUDA emulator (a build with
# MOETRON_CUDA=EMU: the counts are the same, the emulator runs every FP8 GEMM on the fallback
# kernel).
# Usage: bench/launches.sh MOETRON_BINARY [--set key=value ...]   (RECIPE=fp8 by default)
#   bench/launches.sh build-emu/moetron --set model.n_routed_experts=64 --set model.n_group=8 \
#     --set model.topk_group=4 --set model.num_experts_per_tok=8 --set data.seq_len=128
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 && -x "$1" ]] || { echo "usage: $0 MOETRON_BINARY [--set key=value ...]" >&2; exit 2; }
BIN=$1; shift
source tests/small_model.sh
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
SMALL=("${SMALL_MODEL[@]}" --set model.num_hidden_layers=2 --set data.micro_batch_size=2
       --set data.global_batch_size=2 --set run.eval_interval=0 --set run.sample_interval=0
       --set run.save_interval=0)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
count() {  # log pattern -> the number after it (0 without the line)
  local n
  n=$(sed -n "s/.*$2\([0-9]*\).*/\1/p" "$1" | head -1)
  echo "${n:-0}"
}
declare -A launches gemms
for steps in 3 5; do
  "$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.steps=$steps --set run.dir="$OUT/s$steps" \
    --set run.device=cuda --set precision.recipe="${RECIPE:-fp8}" "$@" > "$OUT/s$steps.log" 2>&1 ||
    { echo "launches: the $steps-step run failed:" >&2; tail -5 "$OUT/s$steps.log" >&2; exit 1; }
  launches[$steps]=$(count "$OUT/s$steps.log" "kernels launched by rank 0: ")
  gemms[$steps]=$(count "$OUT/s$steps.log" "cuBLASLt, ")
  gemms[$steps]=$((gemms[$steps] + $(count "$OUT/s$steps.log" "FP8 GEMMs of rank 0: ")))
done
per_step=$(((launches[5] - launches[3]) / 2))
per_gemm=$(((gemms[5] - gemms[3]) / 2))
echo "launches per step: $per_step (3 steps ${launches[3]}, 5 steps ${launches[5]}); FP8 GEMMs per step: $per_gemm"
# by kernel: the difference of the two runs' "launches by kernel" lines over 2, most first
python3 - "$OUT/s3.log" "$OUT/s5.log" <<'PY'
import sys
def tally(path):
    line = next((l for l in open(path) if "launches by kernel:" in l), "")
    out = {}
    for item in line.split("launches by kernel:", 1)[-1].split(";"):
        name, _, n = item.strip().rpartition(" ")
        if name: out[name] = int(n)
    return out
a, b = tally(sys.argv[1]), tally(sys.argv[2])
per = sorted(((b[k] - a.get(k, 0)) // 2, k) for k in b)
for n, k in reversed(per):
    if n > 0: print(f"  {n:6d}  {k}")
PY
