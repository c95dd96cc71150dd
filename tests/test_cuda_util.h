// Shared helpers of the CUDA backend tests (tests/test_cuda_*.cpp): every test runs one op on the
// GPU (through the public op, Exec on Device::CUDA) and its CPU twin (kernels::cpu) on the same
// seeded inputs, and compares. Without a usable GPU each test is skipped with the reason (a skip,
// not a pass: ctest and gtest count it as skipped).
//
//   dev(host_vector)     a device Buffer holding a copy
//   host(buffer)         the buffer's contents back on the host (waits for the stream)
//   expect_near_rel      |gpu - cpu| <= rtol * (|cpu| + max(max|cpu|, min_scale)), the worst
//                        element reported
//   BusyStream           ~20 ms of fp32 GEMMs queued on the compute stream (on the emulator, small
//                        ones, pending until needed): an op called next that returns with the
//                        stream still busy (cudaStreamQuery) did not wait
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/buffer.h"
#include "kernels/cuda/runtime.h"
#include "kernels/ops.h"

namespace moetron::kernels::gpu::testing {

#define MOETRON_REQUIRE_GPU()                                                                     \
  do {                                                                                            \
    if (!::moetron::kernels::gpu::available())                                                    \
      GTEST_SKIP() << "no usable CUDA device: " << ::moetron::kernels::gpu::unavailable_reason(); \
  } while (0)

// Under the CUDA emulator (MOETRON_CUDA=EMU, tests/cuda_emu/device.h) every kernel runs on the
// CPU, each stream's work when the host first needs it (tests/cuda_emu/streams.cpp), with its own
// cuBLASLt that has no algorithm and its own NCCL over MPI (tests/cuda_emu/nccl.cpp). A test of
// what only a GPU has (timing, cuBLASLt's FP8 kernels) is skipped there with the reason; so are the
// full-size shapes of the others (DeepSeek-V3's 7168-wide GEMMs take minutes on one core under
// ASan), every odd shape still running.
#ifndef MOETRON_CUDA_EMULATED
#define MOETRON_CUDA_EMULATED 0
#endif
inline constexpr bool emulated() { return MOETRON_CUDA_EMULATED; }
#define MOETRON_REQUIRE_REAL_GPU(what)                                                \
  do {                                                                                \
    MOETRON_REQUIRE_GPU();                                                            \
    if (::moetron::kernels::gpu::testing::emulated())                                 \
      GTEST_SKIP() << "needs a real GPU (" << what << "); this is the CUDA emulator"; \
  } while (0)

inline Exec gpu_exec() { return Exec::on(Device::CUDA); }

template <class T>
Buffer<T> dev(const std::vector<T>& h) {
  Buffer<T> b(Device::CUDA);
  b.resize(std::max<size_t>(h.size(), 1));
  kernels::copy_from_host(gpu_exec(), b.data(), h.data(), h.size() * sizeof(T));
  return b;
}
// A device buffer of n elements, filled with a byte pattern (NaN for floats) so that an op that
// fails to write an element is caught.
template <class T>
Buffer<T> dev_garbage(size_t n) {
  std::vector<T> h(std::max<size_t>(n, 1));
  std::memset(static_cast<void*>(h.data()), 0xff, h.size() * sizeof(T));
  return dev(h);
}
template <class T>
std::vector<T> host(const Buffer<T>& b, size_t n) {
  std::vector<T> h(n);
  kernels::copy_to_host(gpu_exec(), h.data(), b.data(), n * sizeof(T));
  return h;
}

template <class T>
std::vector<T> rand_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(u(rng));
  return v;
}

template <class T>
void expect_near_rel(const std::vector<T>& gpu, const std::vector<T>& cpu, double rtol,
                     const std::string& what, double min_scale = 0) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  double scale = min_scale;  // an output that is zero in exact arithmetic is all round-off
  for (T c : cpu) scale = std::max(scale, std::fabs(static_cast<double>(c)));
  size_t bad = 0, worst = 0;
  double worst_ratio = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const double d = std::fabs(static_cast<double>(gpu[i]) - static_cast<double>(cpu[i]));
    const double ratio = d / (rtol * (std::fabs(static_cast<double>(cpu[i])) + scale) + 1e-300);
    if (!(ratio <= 1.0)) ++bad;
    if (!(ratio <= worst_ratio)) worst_ratio = ratio, worst = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << cpu.size() << " elements off; worst ["
                     << worst << "] gpu " << gpu[worst] << " cpu " << cpu[worst] << " (rtol "
                     << rtol << ", array scale " << scale << ", worst error " << worst_ratio
                     << " x the tolerance)";
}

// 8 fp32 GEMMs of n^3 (4096: 1.1 TFLOP, ~20 ms on an H200 without TF32; 64 on the emulator, whose
// streams keep work pending until the host needs it) queued on the compute stream at
// construction; busy() says whether the stream still has work.
struct BusyStream {
  static constexpr int64_t kN = emulated() ? 64 : 4096;
  Buffer<float> a{Device::CUDA}, c{Device::CUDA};
  explicit BusyStream(int64_t n = kN) {
    std::vector<float> h(n * n, 0.5f);
    kernels::copy_from_host(gpu_exec(), a.resize(n * n), h.data(), h.size() * sizeof(float));
    synchronize(gpu_exec());
    c.resize(n * n);
    for (int i = 0; i < 8; ++i)
      kernels::gemm<float>(gpu_exec(), false, false, n, n, n, 1.f, a.data(), a.data(), 0.f,
                           c.data());
  }
  // "not ready" is not an error, but the runtime keeps it as the thread's last error, where the
  // next launch check (cudaGetLastError) would report it: cleared here
  static bool busy() {
    const cudaError_t e = cudaStreamQuery(compute_stream());
    if (e == cudaErrorNotReady)
      (void)cudaGetLastError();
    else if (e != cudaSuccess)
      throw std::runtime_error(cudaGetErrorString(e));
    return e == cudaErrorNotReady;
  }
};

template <class T>
void expect_equal(const std::vector<T>& gpu, const std::vector<T>& cpu, const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < cpu.size(); ++i)
    if (std::memcmp(&gpu[i], &cpu[i], sizeof(T)) != 0 && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << cpu.size()
                     << " elements differ bitwise; first [" << first << "] gpu " << +gpu[first]
                     << " cpu " << +cpu[first];
}

}  // namespace moetron::kernels::gpu::testing
