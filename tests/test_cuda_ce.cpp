// The CUDA fused output head + cross-entropy (kernels/cuda/cross_entropy.cu) against its CPU twin:
// vocabulary chunks that do not divide V (a partial last chunk), a chunk larger than V, chunk 1,
// ignored targets (-1 and -100), targets 0 and V-1, FP32 and BF16 logits GEMMs, float and double.
// Forward: lse (written over NaN) and loss_sum; backward: dh (written over NaN) and dW
// (accumulated onto random contents). Skipped without a GPU.
//
// Tolerances: float FP32 1e-5, double 1e-12 (only summation orders differ). Float BF16: the
// forward 1e-5 (both sides round the same inputs to bf16); the backward 1e-2, because the dlogits
// are rounded to bf16 inside the dh/dW GEMMs (as on the CPU) and a dlogit that the two sides
// compute one fp32 ulp apart can round to neighbouring bf16 values (one bf16 ulp, 2^-8 relative,
// of one term); an indexing or semantics bug still shows as an O(1) error.
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

std::vector<int32_t> ce_targets(int64_t N, int64_t V) {
  std::vector<int32_t> t(N);
  for (int64_t n = 0; n < N; ++n) t[n] = static_cast<int32_t>((n * 37 + 11) % V);
  if (N > 0) t[0] = 0;
  if (N > 1) t[1] = static_cast<int32_t>(V - 1);
  for (int64_t n = 2; n < N; n += 5) t[n] = -1;  // ignored
  if (N > 3) t[3] = -100;                        // ignored (PyTorch's ignore_index)
  return t;
}

template <class T>
void check_ce(int64_t N, int64_t D, int64_t V, int64_t chunk, GemmPrecision prec) {
  const bool f = std::is_same_v<T, float>;
  const std::string what = std::string(f ? "float " : "double ") +
                           (prec == GemmPrecision::BF16 ? "BF16" : "FP32") + " N " +
                           std::to_string(N) + " D " + std::to_string(D) + " V " +
                           std::to_string(V) + " chunk " + std::to_string(chunk);
  SCOPED_TRACE(what);
  const double rtol_fwd = f ? 1e-5 : 1e-12;
  // FP32 backward: p = exp(logit - lse) turns the logits' absolute rounding (an ulp of |logit|,
  // times the GEMM's summation-order spread) into a relative error of p; at D = 512 the logits
  // reach |40| (ulp 4e-6), so dh and dW move by up to ~1e-4 of their scale between two correct
  // fp32 implementations (first H200 run: 607 of 49152 dh elements past 1e-5). Index or
  // semantics errors are of order 1.
  const double rtol_fp32_bwd = D >= 256 ? 1e-4 : 1e-5;
  const double rtol_bwd = !f ? 1e-12 : prec == GemmPrecision::BF16 ? 1e-2 : rtol_fp32_bwd;
  const auto h = rand_vec<T>(N * D, 1000 + N, -1.5, 1.5), W = rand_vec<T>(V * D, 2000 + V);
  const auto t = ce_targets(N, V);
  int64_t valid = 0;
  for (int32_t x : t) valid += x >= 0;
  const T g = T(1) / T(std::max<int64_t>(valid, 1));

  // forward
  Buffer<T> dh_in = dev(h), dW_in = dev(W), dlse = dev_garbage<T>(N);
  Buffer<int32_t> dt = dev(t);
  Buffer<double> dloss = dev_garbage<double>(1);
  kernels::lm_head_ce_forward<T>(gpu_exec(), dh_in.data(), dW_in.data(), dt.data(), N, D, V, chunk,
                                 dlse.data(), prec, dloss.data());
  std::vector<T> lse(N);
  double loss = 0;
  cpu::lm_head_ce_forward<T>(h.data(), W.data(), t.data(), N, D, V, chunk, lse.data(), prec, &loss);
  expect_near_rel(host(dlse, N), lse, rtol_fwd, what + ": lse");
  expect_near_rel(host(dloss, 1), std::vector<double>{loss}, rtol_fwd, what + ": loss_sum");
  ASSERT_TRUE(std::isfinite(loss)) << what;

  // backward, from the CPU's lse (both sides see the same saved statistics)
  const auto dW0 = rand_vec<T>(V * D, 3000 + V, -0.01, 0.01);
  Buffer<T> dlse_cpu = dev(lse), ddh = dev_garbage<T>(N * D), ddW = dev(dW0);
  kernels::lm_head_ce_backward<T>(gpu_exec(), dh_in.data(), dW_in.data(), dt.data(),
                                  dlse_cpu.data(), g, N, D, V, chunk, ddh.data(), ddW.data(), prec);
  std::vector<T> dh(N * D, T(7)), dW = dW0;
  cpu::lm_head_ce_backward<T>(h.data(), W.data(), t.data(), lse.data(), g, N, D, V, chunk,
                              dh.data(), dW.data(), prec);
  expect_near_rel(host(ddh, N * D), dh, rtol_bwd, what + ": dh");
  // dW0 is of the order of the gradient itself (|dW| <= g max|h| ~ 0.05), so a dW written
  // instead of accumulated fails even at the BF16 tolerance.
  expect_near_rel(host(ddW, V * D), dW, rtol_bwd, what + ": dW");
}

template <class T>
void check_ce_shapes(GemmPrecision prec) {
  check_ce<T>(37, 29, 101, 16, prec);    // 7 chunks, the last one 5 wide
  check_ce<T>(37, 29, 101, 1000, prec);  // one chunk, wider than V
  check_ce<T>(8, 16, 50, 1, prec);       // chunk 1
  check_ce<T>(5, 3, 7, 3, prec);         // tiny
}

TEST(CudaLmHeadCe, FloatFp32MatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  check_ce_shapes<float>(GemmPrecision::FP32);
}
TEST(CudaLmHeadCe, FloatBf16MatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  check_ce_shapes<float>(GemmPrecision::BF16);
}
// The head weight's bf16 copy: the GPU op reading it against the CPU op reading it.
TEST(CudaLmHeadCe, Bf16WeightCopyMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  const int64_t N = 37, D = 29, V = 101, chunk = 16;
  const auto h = rand_vec<float>(N * D, 71, -1.5, 1.5), W = rand_vec<float>(V * D, 72);
  std::vector<uint16_t> W16(W.size());
  for (size_t i = 0; i < W.size(); ++i) W16[i] = f32_to_bf16(W[i]);
  const auto t = ce_targets(N, V);
  const GemmPrecision bf = GemmPrecision::BF16;
  Buffer<float> dh_in = dev(h), dW_in = dev(W), dlse = dev_garbage<float>(N);
  Buffer<uint16_t> dW16 = dev(W16);
  Buffer<int32_t> dt = dev(t);
  Buffer<double> dloss = dev_garbage<double>(1);
  kernels::lm_head_ce_forward<float>(gpu_exec(), dh_in.data(), dW_in.data(), dt.data(), N, D, V,
                                     chunk, dlse.data(), bf, dloss.data(), dW16.data());
  std::vector<float> lse(N);
  double loss = 0;
  cpu::lm_head_ce_forward<float>(h.data(), W.data(), t.data(), N, D, V, chunk, lse.data(), bf,
                                 &loss, W16.data());
  expect_near_rel(host(dlse, N), lse, 1e-5, "lse (bf16 weight copy)");
  expect_near_rel(host(dloss, 1), std::vector<double>{loss}, 1e-5, "loss (bf16 weight copy)");
  Buffer<float> ddh = dev_garbage<float>(N * D), ddW = dev(std::vector<float>(V * D, 0.f));
  Buffer<float> dlse_cpu = dev(lse);
  kernels::lm_head_ce_backward<float>(gpu_exec(), dh_in.data(), dW_in.data(), dt.data(),
                                      dlse_cpu.data(), 0.05f, N, D, V, chunk, ddh.data(),
                                      ddW.data(), bf, dW16.data());
  std::vector<float> dh(N * D), dW(V * D, 0.f);
  cpu::lm_head_ce_backward<float>(h.data(), W.data(), t.data(), lse.data(), 0.05f, N, D, V, chunk,
                                  dh.data(), dW.data(), bf, W16.data());
  expect_near_rel(host(ddh, N * D), dh, 1e-2, "dh (bf16 weight copy)");
  expect_near_rel(host(ddW, V * D), dW, 1e-2, "dW (bf16 weight copy)");
}

TEST(CudaLmHeadCe, DoubleMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  check_ce_shapes<double>(GemmPrecision::FP32);
  check_ce_shapes<double>(GemmPrecision::BF16);
}

// A larger head (D 512, V 8000 in chunks of 3000: the last one partial) at 96 tokens.
TEST(CudaLmHeadCe, LargerHead) {
  MOETRON_REQUIRE_REAL_GPU("a full-size shape: minutes on the emulator");
  check_ce<float>(96, 512, 8000, 3000, GemmPrecision::FP32);
  check_ce<float>(96, 512, 8000, 3000, GemmPrecision::BF16);
}

// No rows: loss_sum is written (0) and dW is left as it is.
TEST(CudaLmHeadCe, NoRows) {
  MOETRON_REQUIRE_GPU();
  const auto W = rand_vec<float>(10 * 4, 9);
  Buffer<float> dW_in = dev(W), dlse = dev_garbage<float>(1), dh = dev_garbage<float>(1);
  Buffer<float> ddW = dev(W);
  Buffer<int32_t> dt = dev_garbage<int32_t>(1);
  Buffer<double> dloss = dev_garbage<double>(1);
  kernels::lm_head_ce_forward<float>(gpu_exec(), dh.data(), dW_in.data(), dt.data(), 0, 4, 10, 3,
                                     dlse.data(), GemmPrecision::FP32, dloss.data());
  expect_equal(host(dloss, 1), std::vector<double>{0.0}, "loss_sum with no rows");
  kernels::lm_head_ce_backward<float>(gpu_exec(), dh.data(), dW_in.data(), dt.data(), dlse.data(),
                                      1.f, 0, 4, 10, 3, dh.data(), ddW.data(), GemmPrecision::FP32);
  expect_equal(host(ddW, W.size()), W, "dW with no rows");
}

// Every target ignored: loss 0, dh 0, dW unchanged (float, both precisions).
TEST(CudaLmHeadCe, AllTargetsIgnored) {
  MOETRON_REQUIRE_GPU();
  const int64_t N = 6, D = 8, V = 20;
  const auto h = rand_vec<float>(N * D, 3), W = rand_vec<float>(V * D, 4);
  const std::vector<int32_t> t(N, -1);
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16}) {
    Buffer<float> dh_in = dev(h), dW_in = dev(W), dlse = dev_garbage<float>(N);
    Buffer<float> ddh = dev_garbage<float>(N * D), ddW = dev(W);
    Buffer<int32_t> dt = dev(t);
    Buffer<double> dloss = dev_garbage<double>(1);
    kernels::lm_head_ce_forward<float>(gpu_exec(), dh_in.data(), dW_in.data(), dt.data(), N, D, V,
                                       7, dlse.data(), prec, dloss.data());
    expect_equal(host(dloss, 1), std::vector<double>{0.0}, "loss_sum, all ignored");
    std::vector<float> lse(N);
    double loss = 0;
    cpu::lm_head_ce_forward<float>(h.data(), W.data(), t.data(), N, D, V, 7, lse.data(), prec,
                                   &loss);
    expect_near_rel(host(dlse, N), lse, 1e-5, "lse, all ignored");
    kernels::lm_head_ce_backward<float>(gpu_exec(), dh_in.data(), dW_in.data(), dt.data(),
                                        dlse.data(), 0.5f, N, D, V, 7, ddh.data(), ddW.data(),
                                        prec);
    expect_equal(host(ddh, N * D), std::vector<float>(N * D, 0.f), "dh, all ignored");
    expect_equal(host(ddW, W.size()), W, "dW, all ignored");
  }
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
