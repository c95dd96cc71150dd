// kernels/scalar_check.h's scalar_results as a kernel: every function of kernels/scalar.h compiled
// for the device in every CUDA build (with or without a GPU), and run on a GPU by
// tests/test_cuda_scalar.cpp against the host's results.
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/scalar_check.h"
#include "kernels/scalar_check.h"

namespace moetron::kernels::gpu {

namespace {

__global__ void scalar_results_kernel(const float* x, const uint8_t* code, int64_t n,
                                      ScalarResults* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    scalar_results(x[i], code[i], out[i]);
}

// A device copy of n T, freed at scope exit.
template <class T>
struct DeviceArray {
  T* p = nullptr;
  explicit DeviceArray(int64_t n) {
    MOETRON_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), sizeof(T) * (n > 0 ? n : 1)));
  }
  ~DeviceArray() { cudaFree(p); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

}  // namespace

void scalar_results_on_gpu(const float* x, const uint8_t* code, int64_t n, ScalarResults* out) {
  if (n <= 0) return;
  DeviceArray<float> dx(n);
  DeviceArray<uint8_t> dc(n);
  DeviceArray<ScalarResults> dr(n);
  MOETRON_CUDA_CHECK(cudaMemcpy(dx.p, x, sizeof(float) * n, cudaMemcpyHostToDevice));
  MOETRON_CUDA_CHECK(cudaMemcpy(dc.p, code, n, cudaMemcpyHostToDevice));
  scalar_results_kernel<<<blocks_for(n), kThreads>>>(dx.p, dc.p, n, dr.p);
  MOETRON_CUDA_LAUNCHED("scalar_results");
  MOETRON_CUDA_CHECK(cudaMemcpy(out, dr.p, sizeof(ScalarResults) * n, cudaMemcpyDeviceToHost));
}

}  // namespace moetron::kernels::gpu
