#!/usr/bin/env bash
# The host's threads under ThreadSanitizer: every host source instrumented (MOETRON_TSAN_HOST,
# CMakeLists.txt), then the unit and multi-rank tests and the end-to-end runs whose processes
# start threads (the asynchronous checkpoint writer, the communication worker, the progress and
# watchdog threads, the loader's prefetch, the BPE pool), each failing on a data race or a
# lock-order inversion in moetron's code. The build computes on one thread (libgomp's barriers
# are invisible to TSan: kernels/cpu/threads.cpp) and reports inside OpenMPI, whose own
# synchronisation TSan cannot see, are suppressed (tests/tsan_host.supp). Not part of CI
# (scripts/test.sh): 15 minutes on 2 cores, 12 of them the tests; run it after touching any of
# those threads.
# The GPU kernels have their own race detector in CI (MOETRON_TSAN, tests/cuda_emu/runtime.cpp).
#   scripts/race_check_host.sh [build dir, default build-tsan-host]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build-tsan-host}
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOETRON_CUDA=OFF \
  -DMOETRON_TSAN_HOST=ON "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" >/dev/null
cmake --build "$B" -j2
[ -d data/cache/sotu ] || scripts/prepare_data.sh "$B/moetron"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMP_NUM_THREADS=1
export TSAN_OPTIONS="suppressions=$PWD/tests/tsan_host.supp second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
# the end-to-end runs that start threads; not the golden ones (their bits are -O3's), nor the
# long ones (e2e_checkpoint, e2e_train_tiny: over 15 minutes instrumented; e2e_resume,
# e2e_save_faults and e2e_soak drive the same writer and loop)
E2E="e2e_(data_pipeline|guard|hang|resume|save_faults|signals|soak)"
ctest --test-dir "$B" --output-on-failure -j2 -L "unit|mpi"
ctest --test-dir "$B" --output-on-failure -j2 -R "$E2E"
