#!/usr/bin/env bash
# The whole test suite: set up, fetch the corpus, build, run every test (unit, end-to-end, the
# PyTorch parity test), then the CPU unit tests again under ASan+UBSan, then the GPU tests on the
# emulator under ThreadSanitizer (the race detector).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/prepare_data.sh build/moetron
ctest --test-dir build --output-on-failure -j2

echo "== ASan+UBSan build of the unit tests, the CUDA backend's on the emulator"
# (nvcc compiles the CUDA backend in the Release build; here the host compiler builds it against
# the CUDA emulator, tests/cuda_emu/, so that its kernels run against their CPU twins under the
# sanitizers). Only the unit-test binaries, at -O1 with line tables (-g1): half the compile time of
# -O2 -g, and the sanitizers' reports still name file and line.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOETRON_SANITIZE=ON \
  -DMOETRON_CUDA=EMU "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" >/dev/null
cmake --build build-asan -j2 --target unit_tests
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j2 -L unit

echo "== ThreadSanitizer build of the GPU tests on the emulator: the race detector"
# (each emulated GPU thread a TSan fiber, ordered with the others only by what orders threads on
# a GPU, so a race inside a barrier interval is reported: tests/cuda_emu/runtime.cpp). Only the
# GPU tests, in the shuffled order, and the emulator's own; grid-stride loops launched with at most
# two blocks (kernels/cuda/launch.cuh), so that each block runs several rounds of its loop.
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOETRON_TSAN=ON \
  -DMOETRON_CUDA=EMU "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" >/dev/null
cmake --build build-tsan -j2 --target cuda_tests cuda_emu_tests
MOETRON_GPU_MAX_BLOCKS=2 ctest --test-dir build-tsan --output-on-failure -j2 -L race
