// The GPU side of kernels/scalar_check.h: scalar_results over n inputs, run on the current device
// (host arrays in and out; synchronous). For tests/test_cuda_scalar.cpp.
#pragma once

#include <cstdint>

namespace moetron {
struct ScalarResults;
}

namespace moetron::kernels::gpu {

void scalar_results_on_gpu(const float* x, const uint8_t* code, int64_t n, ScalarResults* out);

}  // namespace moetron::kernels::gpu
