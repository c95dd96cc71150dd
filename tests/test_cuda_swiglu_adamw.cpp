// SwiGLU (forward, backward, with and without the per-row scale) and AdamW (fp32 and bf16
// moments, three successive steps) on the GPU against their CPU twins (kernels/cpu/swiglu.cpp,
// adamw.cpp) on the same seeded inputs. Skipped without a GPU.
//
// Tolerances (expect_near_rel: |gpu - cpu| <= rtol (|cpu| + max|cpu|)):
//   SwiGLU out, dgu: float 1e-6 (the same scalar.h expressions; only fma contraction choices may
//   differ by an ulp); drow_scale: float 1e-5 (the CPU sums F terms in float, the GPU in double:
//   the difference is the CPU's rounding error, ~sqrt(F) ulp of the sum's terms); double 1e-12.
//   AdamW: bitwise for param, m and v (fp32 and bf16), since the kernel performs the CPU's
//   roundings in the CPU's order (adamw.cu's note); a near check (1e-6) runs first so that a
//   failure says whether the difference is an ulp or a bug.
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

template <class T>
void check_swiglu(int64_t N, int64_t F, bool scaled, uint64_t seed) {
  const std::string at = "N=" + std::to_string(N) + " F=" + std::to_string(F) +
                         (scaled ? " scaled" : " unscaled") +
                         (std::is_same_v<T, float> ? " float" : " double");
  const size_t nf = static_cast<size_t>(N * F);
  auto gu = rand_vec<T>(2 * nf, seed, -6.0, 6.0);
  // the sigmoid's saturated tails and fast_exp's clamps (|x| > 87)
  if (nf >= 4) gu[0] = T(-100), gu[1] = T(100), gu[2] = T(-88.5), gu[3] = T(0);
  const auto scale = rand_vec<T>(N, seed + 1, 0.1, 1.0);
  const auto dout = rand_vec<T>(nf, seed + 2);
  const bool is_float = std::is_same_v<T, float>;
  const double rtol = is_float ? 1e-6 : 1e-12, rtol_sum = is_float ? 1e-5 : 1e-12;
  const T* s_cpu = scaled ? scale.data() : nullptr;

  std::vector<T> out(nf);
  cpu::swiglu_forward<T>(gu.data(), N, F, s_cpu, out.data());
  Buffer<T> ggu = dev(gu), gs = dev(scale), gdout = dev(dout);
  const T* s_gpu = scaled ? gs.data() : nullptr;
  Buffer<T> gout = dev_garbage<T>(nf);
  kernels::swiglu_forward<T>(gpu_exec(), ggu.data(), N, F, s_gpu, gout.data());
  expect_near_rel(host(gout, nf), out, rtol, "swiglu_forward " + at);

  // backward; unscaled, drow_scale must be left alone (it holds 7s)
  std::vector<T> dgu(2 * nf), ds(N, T(7));
  cpu::swiglu_backward<T>(dout.data(), gu.data(), N, F, s_cpu, dgu.data(), ds.data());
  Buffer<T> gdgu = dev_garbage<T>(2 * nf);
  Buffer<T> gds = scaled ? dev_garbage<T>(N) : dev(std::vector<T>(N, T(7)));
  kernels::swiglu_backward<T>(gpu_exec(), gdout.data(), ggu.data(), N, F, s_gpu, gdgu.data(),
                              gds.data());
  expect_near_rel(host(gdgu, 2 * nf), dgu, rtol, "swiglu_backward dgu " + at);
  if (scaled)
    expect_near_rel(host(gds, N), ds, rtol_sum, "swiglu_backward drow_scale " + at);
  else
    expect_equal(host(gds, N), ds, "swiglu_backward drow_scale untouched " + at);

  // in place (dgu over gu, as the layers run it under FP8): the same bits as out of place
  Buffer<T> gin = dev(gu), gds2 = dev_garbage<T>(N);
  kernels::swiglu_backward<T>(gpu_exec(), gdout.data(), gin.data(), N, F, s_gpu, gin.data(),
                              scaled ? gds2.data() : nullptr);
  expect_equal(host(gin, 2 * nf), host(gdgu, 2 * nf), "swiglu_backward in place " + at);

  // scaled without a drow_scale output: dgu alone
  if (scaled) {
    Buffer<T> gdgu2 = dev_garbage<T>(2 * nf);
    kernels::swiglu_backward<T>(gpu_exec(), gdout.data(), ggu.data(), N, F, s_gpu, gdgu2.data(),
                                nullptr);
    expect_near_rel(host(gdgu2, 2 * nf), dgu, rtol, "swiglu_backward dgu, no drow_scale " + at);
  }
}

TEST(CudaSwiGLU, MatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  // N, F: odd sizes, DeepSeek-V3's expert (2048) and model (7168) widths
  const int64_t shapes[][2] = {{1, 1}, {3, 37}, {5, 161}, {64, 2048}, {3, 7168}};
  uint64_t seed = 1000;
  for (const auto& s : shapes)
    for (bool scaled : {false, true}) {
      check_swiglu<float>(s[0], s[1], scaled, seed += 10);
      check_swiglu<double>(s[0], s[1], scaled, seed += 10);
    }
}

template <class M>
std::vector<float> widen(const std::vector<M>& x) {
  if constexpr (std::is_same_v<M, float>) {
    return x;
  } else {
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = bf16_to_f32(x[i]);
    return y;
  }
}

// Three AdamW steps (t = 1, 2, 3) from zero moments with weight decay, GPU and CPU each from its
// own state, compared after every step.
template <class M>
void check_adamw(int64_t n, uint64_t seed) {
  const std::string at =
      "n=" + std::to_string(n) + (std::is_same_v<M, float> ? " fp32 moments" : " bf16 moments");
  std::vector<float> param = rand_vec<float>(n, seed, -1.0, 1.0);
  std::vector<M> m(n, M(0)), v(n, M(0));
  Buffer<float> gp = dev(param);
  Buffer<M> gm = dev(m), gv = dev(v);
  AdamWParams p;
  p.lr = 3e-3;
  p.beta1 = 0.9;
  p.beta2 = 0.95;
  p.eps = 1e-8;
  p.weight_decay = 0.1;
  for (int64_t step = 1; step <= 3; ++step) {
    p.step = step;
    // gradients over several magnitudes, some exactly zero
    std::vector<float> grad = rand_vec<float>(n, seed + 10 * step, -1.0, 1.0);
    for (int64_t i = 0; i < n; ++i) {
      if (i % 7 == 0) grad[i] *= 1e-4f;
      if (i % 11 == 0) grad[i] *= 30.f;
      if (i % 13 == 0) grad[i] = 0.f;
    }
    Buffer<float> gg = dev(grad);
    cpu::adamw_update<M>(param.data(), grad.data(), m.data(), v.data(), n, p);
    kernels::adamw_update<M>(gpu_exec(), gp.data(), gg.data(), gm.data(), gv.data(), n, p);
    const std::string st = at + " step " + std::to_string(step);
    const auto got_p = host(gp, n);
    const auto got_m = host(gm, n), got_v = host(gv, n);
    expect_near_rel(got_p, param, 1e-6, "adamw param (near) " + st);
    expect_near_rel(widen(got_m), widen(m), 1e-6, "adamw m (near) " + st);
    expect_near_rel(widen(got_v), widen(v), 1e-6, "adamw v (near) " + st);
    expect_equal(got_p, param, "adamw param (bitwise) " + st);
    expect_equal(got_m, m, "adamw m (bitwise) " + st);
    expect_equal(got_v, v, "adamw v (bitwise) " + st);
  }
}

TEST(CudaAdamW, ThreeStepsMatchTheCpuBitwise) {
  MOETRON_REQUIRE_GPU();
  for (int64_t n : {1, 37, 100003}) {
    check_adamw<float>(n, 2000 + n);
    check_adamw<uint16_t>(n, 3000 + n);
  }
}

// A multi-tensor step: segments of one buffer with gaps between them, of lengths around the
// kernel's block chunk (16384) and empty ones, decay on and off, two steps; against one CPU
// adamw_update per segment (weight decay 0 where off), bitwise over the whole buffers (the gaps
// untouched), in one launch per step.
template <class M>
void check_adamw_segments(uint64_t seed) {
  const std::vector<int64_t> lens = {5, 0, 16384, 1, 16385, 70001, 0, 255};
  std::vector<int64_t> at;  // each segment's start: a gap of 3 after every segment
  int64_t n = 0;
  for (int64_t len : lens) at.push_back(n), n += len + 3;
  std::vector<float> param = rand_vec<float>(n, seed, -1.0, 1.0);
  std::vector<M> m(n, M(0)), v(n, M(0));
  Buffer<float> gp = dev(param);
  Buffer<M> gm = dev(m), gv = dev(v);
  AdamWParams p;
  p.lr = 3e-3, p.weight_decay = 0.1;
  for (int64_t step = 1; step <= 2; ++step) {
    p.step = step;
    const std::vector<float> grad = rand_vec<float>(n, seed + step, -1.0, 1.0);
    Buffer<float> gg = dev(grad);
    std::vector<AdamWSegment<M>> segs;
    for (size_t s = 0; s < lens.size(); ++s) {
      const int64_t i = at[s];
      AdamWParams ps = p;
      if (s % 2) ps.weight_decay = 0.0;
      cpu::adamw_update<M>(param.data() + i, grad.data() + i, m.data() + i, v.data() + i, lens[s],
                           ps);
      segs.push_back(
          {gp.data() + i, gg.data() + i, gm.data() + i, gv.data() + i, lens[s], s % 2 == 0});
    }
    const int64_t k0 = kernel_launches();
    kernels::adamw_update_segments<M>(gpu_exec(), segs.data(), static_cast<int64_t>(segs.size()),
                                      p);
    EXPECT_EQ(kernel_launches() - k0, 1);
    const std::string st = std::string(std::is_same_v<M, float> ? "fp32" : "bf16") +
                           " moments, step " + std::to_string(step);
    expect_equal(host(gp, n), param, "adamw segments param " + st);
    expect_equal(host(gm, n), m, "adamw segments m " + st);
    expect_equal(host(gv, n), v, "adamw segments v " + st);
  }
}

TEST(CudaAdamW, ManySegmentsInOneLaunchMatchTheCpuBitwise) {
  MOETRON_REQUIRE_GPU();
  check_adamw_segments<float>(4000);
  check_adamw_segments<uint16_t>(5000);
}

TEST(CudaAdamW, RejectsStepZero) {
  MOETRON_REQUIRE_GPU();
  Buffer<float> p = dev(std::vector<float>{1.f}), g = dev(std::vector<float>{1.f});
  Buffer<float> m = dev(std::vector<float>{0.f}), v = dev(std::vector<float>{0.f});
  AdamWParams ap;
  ap.step = 0;
  EXPECT_THROW(
      kernels::adamw_update<float>(gpu_exec(), p.data(), g.data(), m.data(), v.data(), 1, ap),
      std::invalid_argument);
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
