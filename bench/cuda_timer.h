// What the GPU benchmarks (bench/bench_cuda_*.cpp) share: a CUDA error check that exits naming
// the call, and the mean time of calls on a stream, measured between two CUDA events.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>

namespace moetron::bench {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

class CudaTimer {
 public:
  explicit CudaTimer(cudaStream_t s) : s_(s) {
    check(cudaEventCreate(&t0_), "cudaEventCreate");
    check(cudaEventCreate(&t1_), "cudaEventCreate");
  }
  ~CudaTimer() {
    cudaEventDestroy(t0_);
    cudaEventDestroy(t1_);
  }
  CudaTimer(const CudaTimer&) = delete;
  CudaTimer& operator=(const CudaTimer&) = delete;

  // The mean time in ms of `runs` calls of f after `warmup` untimed calls.
  template <class F>
  double mean_ms(int warmup, int runs, F&& f) {
    for (int i = 0; i < warmup; ++i) f();
    check(cudaEventRecord(t0_, s_), "cudaEventRecord");
    for (int i = 0; i < runs; ++i) f();
    check(cudaEventRecord(t1_, s_), "cudaEventRecord");
    check(cudaEventSynchronize(t1_), "cudaEventSynchronize");
    float total = 0;
    check(cudaEventElapsedTime(&total, t0_, t1_), "cudaEventElapsedTime");
    return double(total) / runs;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t t0_ = nullptr, t1_ = nullptr;
};

}  // namespace moetron::bench
