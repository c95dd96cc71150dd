// The CPU probe (see probe.h).
#include "trainer/probe.h"

#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/exec.h"
#include "kernels/ops.h"

namespace moetron {

namespace {

// Runs `f` until `seconds` have passed (after one warm-up call); returns calls per second.
template <class F>
double rate(double seconds, F&& f) {
  using clock = std::chrono::steady_clock;
  f();
  const auto t0 = clock::now();
  int n = 0;
  double dt = 0;
  do {
    f();
    ++n;
    dt = std::chrono::duration<double>(clock::now() - t0).count();
  } while (dt < seconds);
  return n / dt;
}

double gemm_tflops(kernels::GemmPrecision prec, int64_t n, double seconds) {
  std::vector<float> A(n * n), B(n * n), C(n * n);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (float& x : A) x = u(rng);
  for (float& x : B) x = u(rng);
  const double calls = rate(seconds, [&] {
    kernels::gemm<float>(Exec{}, false, true, n, n, n, 1.f, A.data(), B.data(), 0.f, C.data(),
                         prec);
  });
  return calls * 2.0 * n * n * n / 1e12;
}

// memcpy of 128 MiB: bytes read + written per second.
double copy_gbs(double seconds) {
  const size_t bytes = size_t(128) << 20;
  std::vector<char> a(bytes, 1), b(bytes, 0);
  const double calls = rate(seconds, [&] { std::memcpy(b.data(), a.data(), bytes); });
  return calls * 2.0 * static_cast<double>(bytes) / 1e9;
}

}  // namespace

ProbeResult probe_machine(double seconds) {
  ProbeResult r;
  r.threads = kernels::num_threads();
  r.fp32_tflops = gemm_tflops(kernels::GemmPrecision::FP32, 1024, seconds);
  r.bf16_tflops = gemm_tflops(kernels::GemmPrecision::BF16, 1024, seconds);
  r.copy_gbs = copy_gbs(seconds);
  return r;
}

void write_probe_profile(const ProbeResult& r, std::ostream& out) {
  out << "# This CPU host, measured by `moetron probe` (" << r.threads
      << " threads): GEMM peaks of 1024^3 products through the kernels'\n"
         "# gemm op, hbm_gbs the memcpy bandwidth (read + write), nvlink_gbs twice it (the "
         "estimator takes\n# half of nvlink_gbs as one direction). Efficiencies 1: what the "
         "probes reached; calibrate\n# gemm_efficiency on one measured run (moetron estimate "
         "--calibrate).\n";
  out << "name: cpu\nmemory_gib: 0\npeak_bf16_tflops: 0\npeak_fp8_tflops: 0\n"
      << "peak_fp32_tflops: " << r.fp32_tflops << "   # bf16 GEMMs measured: " << r.bf16_tflops
      << "\nhbm_gbs: " << r.copy_gbs << "\ndevices_per_node: 0\ncores_per_node: " << r.threads
      << "\nnvlink_gbs: " << 2 * r.copy_gbs
      << "\nib_gbs: 0\ngemm_efficiency: 1\ngemm_efficiency_fp8: 1\nmemory_efficiency: 1\n"
      << "comm_efficiency: 1\n";
}

}  // namespace moetron
