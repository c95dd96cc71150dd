#!/usr/bin/env bash
# The GPU check of the CUDA backend, meant for one H200/H100 in well under 10 minutes:
#   1. configure and build for sm_90a (build-gpu/), unless --prebuilt DIR names binaries built
#      elsewhere (cuda_tests, bench_cuda_gemm and, as libs.tar.xz, the shared libraries they need
#      that the GPU machine lacks);
#   2. every GPU test: each CUDA op against its CPU twin, and the whole model on the GPU against
#      the CPU (loss, gradients and three SGD steps per recipe; its loss table is printed);
#   3. the BF16 and FP32 GEMMs on DeepSeek-V3's shapes (TFLOP/s against the 989 TFLOP/s dense
#      BF16 peak);
#   and prints a summary. Exit status: non-zero when a test failed.
# Usage: scripts/gpu_check.sh [--prebuilt DIR] [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
prebuilt="" quick=""
while (($#)); do
  case $1 in
    --prebuilt) prebuilt=$2; shift 2 ;;
    --quick) quick=--quick; shift ;;
    *) echo "gpu_check: unknown argument $1 (expected --prebuilt DIR, --quick)" >&2; exit 2 ;;
  esac
done

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader ||
  echo "gpu_check: nvidia-smi failed"

if [[ -n $prebuilt ]]; then
  bin=$prebuilt
  if [[ -f $prebuilt/libs.tar.xz ]]; then
    mkdir -p /tmp/moetron_libs && tar xJf "$prebuilt/libs.tar.xz" -C /tmp/moetron_libs
    export LD_LIBRARY_PATH=/tmp/moetron_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  # cuBLASLt and NCCL from the machine's CUDA (the toolkit or the Python wheels)
  for lib in 'libcublasLt.so.13*' 'libnccl.so.2*'; do
    at=$(find /usr/local/cuda*/ /usr/lib /opt -name "$lib" 2>/dev/null | head -1)
    [[ -n $at ]] && export LD_LIBRARY_PATH=$(dirname "$at"):$LD_LIBRARY_PATH
  done
  ldd "$bin/cuda_tests" | grep "not found" && echo "gpu_check: missing libraries"
else
  t0=$SECONDS
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOETRON_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null || exit 1
  cmake --build build-gpu -j"$(nproc)" --target cuda_tests bench_cuda_gemm || exit 1
  echo "gpu_check: build took $((SECONDS - t0)) s"
  bin=build-gpu/tests
  cp build-gpu/bench_cuda_gemm build-gpu/tests/ 2>/dev/null
fi

status=0
echo "== GPU tests (cuda_tests)"
t0=$SECONDS
"$bin/cuda_tests" --gtest_color=no 2>&1 | tee /tmp/cuda_tests.log | grep -E "^\[  (FAILED|SKIPPED|PASSED) |^\[==|Failure|Expected|Which is|actual|off;|differ|CudaModel table|^  step" 
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
echo "gpu_check: tests took $((SECONDS - t0)) s"

echo "== GEMM throughput (bench_cuda_gemm $quick)"
"$bin/bench_cuda_gemm" $quick || status=1

echo "== summary"
passed=$(grep -c "^\[       OK \]" /tmp/cuda_tests.log)
failed=$(grep -c "^\[  FAILED  \].*(" /tmp/cuda_tests.log)
skipped=$(grep -c "^\[  SKIPPED \].*(" /tmp/cuda_tests.log)
printf "| GPU tests passed | %s |\n| failed | %s |\n| skipped | %s |\n" "$passed" "$failed" "$skipped"
grep "^\[  FAILED  \].*(" /tmp/cuda_tests.log
exit $status
