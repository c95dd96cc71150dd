// The CUDA GEMMs (kernels/cuda/gemm.cu, grouped_gemm.cu) against their CPU twins: all four
// layouts, odd sizes, alpha/beta, FP32 (true fp32: TF32 would miss the 1e-5 tolerance by ~100x),
// BF16 (the same bf16-rounded inputs, fp32 accumulation: only the summation order differs, so
// 1e-5 too), double (1e-12, BF16 rounding included); K == 0 and empty shapes; operands that are not
// 256-byte aligned (cuBLASLt's default assumption); a DeepSeek-V3 projection shape. Grouped: groups
// of 0 rows (first, middle, last), uneven groups, the forward writing every row (NaN-filled C) and
// the weight gradient accumulating (and leaving empty groups' blocks bit for bit). Skipped without
// a GPU.
#include <cstdlib>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

template <class T>
double tol(GemmPrecision) {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

const char* pname(GemmPrecision p) { return p == GemmPrecision::BF16 ? "BF16" : "FP32"; }

// One GEMM on both backends. C starts as c0 on the CPU and as c0 (beta != 0) or NaN (beta == 0:
// every element must be written) on the GPU. Operands sit `pad` elements into their buffers.
template <class T>
void check_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, T beta,
                GemmPrecision prec, uint64_t seed, int64_t pad = 0) {
  const std::string what = std::string(sizeof(T) == 4 ? "float " : "double ") + pname(prec) + " " +
                           (ta ? "T" : "N") + (tb ? "T" : "N") + " " + std::to_string(M) + "x" +
                           std::to_string(N) + "x" + std::to_string(K) + " alpha " +
                           std::to_string(alpha) + " beta " + std::to_string(beta) + " pad " +
                           std::to_string(pad);
  SCOPED_TRACE(what);
  const auto A = rand_vec<T>(pad + M * K, seed), B = rand_vec<T>(pad + K * N, seed + 1);
  const auto c0 = rand_vec<T>(pad + M * N, seed + 2);
  Buffer<T> dA = dev(A), dB = dev(B);
  Buffer<T> dC = beta == T(0) ? dev_garbage<T>(pad + M * N) : dev(c0);
  kernels::gemm<T>(gpu_exec(), ta, tb, M, N, K, alpha, dA.data() + pad, dB.data() + pad, beta,
                   dC.data() + pad, prec);
  std::vector<T> want = c0;
  cpu::gemm<T>(ta, tb, M, N, K, alpha, A.data() + pad, B.data() + pad, beta, want.data() + pad,
               prec);
  std::vector<T> got = host(dC, pad + M * N);
  got.erase(got.begin(), got.begin() + pad);
  want.erase(want.begin(), want.begin() + pad);
  expect_near_rel(got, want, tol<T>(prec), what);
}

template <class T>
void check_all_layouts() {
  const int64_t shapes[][3] = {{37, 53, 71}, {1, 7, 3}, {5, 1, 130}, {128, 64, 256}};
  uint64_t seed = 100;
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16})
    for (const auto& s : shapes)
      for (int ta = 0; ta < 2; ++ta)
        for (int tb = 0; tb < 2; ++tb) {
          check_gemm<T>(ta, tb, s[0], s[1], s[2], T(1), T(0), prec, seed += 3);
          check_gemm<T>(ta, tb, s[0], s[1], s[2], T(0.75), T(-0.5), prec, seed += 3);
          check_gemm<T>(ta, tb, s[0], s[1], s[2], T(-1.25), T(1), prec, seed += 3);
        }
}

TEST(CudaGemm, FloatAllLayoutsMatchTheCpu) {
  MOETRON_REQUIRE_GPU();
  check_all_layouts<float>();
}

TEST(CudaGemm, DoubleAllLayoutsMatchTheCpu) {
  MOETRON_REQUIRE_GPU();
  check_all_layouts<double>();
}

TEST(CudaGemm, UnalignedOperands) {
  MOETRON_REQUIRE_GPU();
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16})
    for (int64_t pad : {1, 3}) {
      check_gemm<float>(false, true, 33, 17, 45, 1.f, 0.f, prec, 7 + pad, pad);
      check_gemm<float>(true, false, 33, 17, 45, 1.f, 1.f, prec, 9 + pad, pad);
      check_gemm<double>(false, false, 33, 17, 45, 0.5, -2.0, prec, 11 + pad, pad);
    }
}

// q_a / wq_a of DeepSeek-V3 (hidden 7168 -> q_lora_rank 1536 would be slow on the CPU side; the
// kv_a width 576 keeps K = 7168) at 256 tokens, in the Y = X W^T layout, and its weight gradient.
TEST(CudaGemm, DeepSeekV3ProjectionShape) {
  MOETRON_REQUIRE_REAL_GPU("a full-size shape: minutes on the emulator");
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16}) {
    check_gemm<float>(false, true, 256, 576, 7168, 1.f, 0.f, prec, 21);
    check_gemm<float>(true, false, 576, 7168, 256, 1.f, 1.f, prec, 23);
  }
}

// The fallback kernel (used where cuBLASLt has no algorithm; forced here by its variable).
TEST(CudaGemm, FallbackKernelMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  struct Forced {  // set for this test only, whatever way it ends
    Forced() { setenv("MOETRON_CUDA_GEMM_FALLBACK", "1", 1); }
    ~Forced() { unsetenv("MOETRON_CUDA_GEMM_FALLBACK"); }
  } forced;
  uint64_t seed = 500;
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        check_gemm<float>(ta, tb, 37, 53, 71, 0.75f, -0.5f, prec, seed += 3);
        check_gemm<float>(ta, tb, 37, 53, 71, 1.f, 0.f, prec, seed += 3, 1);
        check_gemm<double>(ta, tb, 37, 53, 71, 0.75, -0.5, prec, seed += 3);
      }
}

// K == 0: C = beta C (beta == 0 writes zeros over NaN); M == 0 or N == 0: nothing is touched.
template <class T>
void check_empty() {
  const auto c0 = rand_vec<T>(12, 5);
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16}) {
    Buffer<T> dC = dev(c0);
    kernels::gemm<T>(gpu_exec(), false, false, 3, 4, 0, T(1), nullptr, nullptr, T(0.5), dC.data(),
                     prec);
    std::vector<T> want = c0;
    cpu::gemm<T>(false, false, 3, 4, 0, T(1), nullptr, nullptr, T(0.5), want.data(), prec);
    expect_equal(host(dC, 12), want, "K == 0, beta 0.5");

    Buffer<T> dZ = dev_garbage<T>(12);
    kernels::gemm<T>(gpu_exec(), true, true, 3, 4, 0, T(1), nullptr, nullptr, T(0), dZ.data(),
                     prec);
    expect_equal(host(dZ, 12), std::vector<T>(12, T(0)), "K == 0, beta 0");

    Buffer<T> dU = dev(c0);
    kernels::gemm<T>(gpu_exec(), false, false, 0, 4, 5, T(1), nullptr, nullptr, T(0), dU.data(),
                     prec);
    kernels::gemm<T>(gpu_exec(), false, false, 3, 0, 5, T(1), nullptr, nullptr, T(0), dU.data(),
                     prec);
    expect_equal(host(dU, 12), c0, "M == 0 / N == 0");
  }
}
TEST(CudaGemm, EmptyShapes) {
  MOETRON_REQUIRE_GPU();
  check_empty<float>();
  check_empty<double>();
}

// ---- grouped ---------------------------------------------------------------------------------

// Offsets of groups with rows {0, 3, 17, 0, 41, 0} (empty first, middle and last groups).
std::vector<int64_t> uneven_offsets() { return {0, 0, 3, 20, 20, 61, 61}; }

template <class T>
void check_grouped_forward(bool transW, GemmPrecision prec) {
  const std::string what = std::string("grouped_gemm ") + (sizeof(T) == 4 ? "float " : "double ") +
                           pname(prec) + (transW ? " transW" : "");
  SCOPED_TRACE(what);
  const std::vector<int64_t> off = uneven_offsets();
  const int64_t G = int64_t(off.size()) - 1, R = off.back(), N = 24, K = 33;
  const auto A = rand_vec<T>(R * K, 31), W = rand_vec<T>(G * N * K, 32);
  Buffer<T> dA = dev(A), dW = dev(W), dC = dev_garbage<T>(R * N);
  kernels::grouped_gemm<T>(gpu_exec(), off.data(), G, transW, N, K, dA.data(), dW.data(), dC.data(),
                           prec);
  std::vector<T> want(R * N, T(0));
  cpu::grouped_gemm<T>(off.data(), G, transW, N, K, A.data(), W.data(), want.data(), prec);
  expect_near_rel(host(dC, R * N), want, tol<T>(prec), what);
}

template <class T>
void check_grouped_wgrad(GemmPrecision prec) {
  const std::string what =
      std::string("grouped_gemm_wgrad ") + (sizeof(T) == 4 ? "float " : "double ") + pname(prec);
  SCOPED_TRACE(what);
  const std::vector<int64_t> off = uneven_offsets();
  const int64_t G = int64_t(off.size()) - 1, R = off.back(), M = 19, N = 27;
  const auto A = rand_vec<T>(R * M, 41), B = rand_vec<T>(R * N, 42);
  const auto c0 = rand_vec<T>(G * M * N, 43);
  Buffer<T> dA = dev(A), dB = dev(B), dC = dev(c0);
  kernels::grouped_gemm_wgrad<T>(gpu_exec(), off.data(), G, M, N, dA.data(), dB.data(), dC.data(),
                                 prec);
  std::vector<T> want = c0;
  cpu::grouped_gemm_wgrad<T>(off.data(), G, M, N, A.data(), B.data(), want.data(), prec);
  const std::vector<T> got = host(dC, G * M * N);
  expect_near_rel(got, want, tol<T>(prec), what);
  for (int64_t g = 0; g < G; ++g) {
    if (off[g + 1] != off[g]) continue;
    const std::vector<T> blk(got.begin() + g * M * N, got.begin() + (g + 1) * M * N);
    const std::vector<T> init(c0.begin() + g * M * N, c0.begin() + (g + 1) * M * N);
    expect_equal(blk, init, what + ": empty group " + std::to_string(g) + " unchanged");
  }
}

TEST(CudaGroupedGemm, ForwardMatchesTheCpuWithEmptyAndUnevenGroups) {
  MOETRON_REQUIRE_GPU();
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16})
    for (bool transW : {false, true}) {
      check_grouped_forward<float>(transW, prec);
      check_grouped_forward<double>(transW, prec);
    }
}

// gemm_bf16_weight and grouped_gemm_bf16_weight (the weight given in bf16, a Linear's cached copy)
// against the CPU's, every layout, unaligned operands, empty and uneven groups.
TEST(CudaGemm, Bf16WeightMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  auto narrow = [](const std::vector<float>& w) {
    std::vector<uint16_t> r(w.size());
    for (size_t i = 0; i < w.size(); ++i) r[i] = f32_to_bf16(w[i]);
    return r;
  };
  uint64_t seed = 500;
  const int64_t shapes[][3] = {{37, 53, 71}, {1, 7, 3}, {128, 64, 256}};
  for (const auto& s : shapes)
    for (int t = 0; t < 4; ++t)
      for (int64_t pad : {0, 3}) {
        const bool ta = t & 1, tb = t & 2;
        const int64_t M = s[0], N = s[1], K = s[2];
        SCOPED_TRACE(std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) +
                     " ta " + std::to_string(ta) + " tb " + std::to_string(tb) + " pad " +
                     std::to_string(pad));
        const auto A = rand_vec<float>(pad + M * K, seed += 3);
        const auto W16 = narrow(rand_vec<float>(pad + K * N, seed + 1));
        const auto c0 = rand_vec<float>(M * N, seed + 2);
        Buffer<float> dA = dev(A), dC = dev(c0);
        Buffer<uint16_t> dW = dev(W16);
        kernels::gemm_bf16_weight(gpu_exec(), ta, tb, M, N, K, 0.75f, dA.data() + pad,
                                  dW.data() + pad, -0.5f, dC.data());
        std::vector<float> want = c0;
        cpu::gemm_bf16_weight(ta, tb, M, N, K, 0.75f, A.data() + pad, W16.data() + pad, -0.5f,
                              want.data());
        expect_near_rel(host(dC, M * N), want, 1e-5, "gemm_bf16_weight");
      }
  const std::vector<int64_t> off = uneven_offsets();
  const int64_t G = int64_t(off.size()) - 1, R = off.back(), N = 24, K = 33;
  for (bool transW : {false, true}) {
    const auto A = rand_vec<float>(R * K, 61);
    const auto W16 = narrow(rand_vec<float>(G * N * K, 62));
    Buffer<float> dA = dev(A), dC = dev_garbage<float>(R * N);
    Buffer<uint16_t> dW = dev(W16);
    kernels::grouped_gemm_bf16_weight(gpu_exec(), off.data(), G, transW, N, K, dA.data(), dW.data(),
                                      dC.data());
    std::vector<float> want(R * N, 0.f);
    cpu::grouped_gemm_bf16_weight(off.data(), G, transW, N, K, A.data(), W16.data(), want.data());
    expect_near_rel(host(dC, R * N), want, 1e-5, "grouped_gemm_bf16_weight");
  }
}

TEST(CudaGroupedGemm, WgradAccumulatesAndSkipsEmptyGroups) {
  MOETRON_REQUIRE_GPU();
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16}) {
    check_grouped_wgrad<float>(prec);
    check_grouped_wgrad<double>(prec);
  }
}

// Every group empty (and G == 0): nothing is written.
TEST(CudaGroupedGemm, AllGroupsEmpty) {
  MOETRON_REQUIRE_GPU();
  const std::vector<int64_t> off = {0, 0, 0};
  const auto c0 = rand_vec<float>(2 * 4 * 5, 51);
  Buffer<float> dA = dev_garbage<float>(1), dB = dev_garbage<float>(1), dC = dev(c0);
  kernels::grouped_gemm_wgrad<float>(gpu_exec(), off.data(), 2, 4, 5, dA.data(), dB.data(),
                                     dC.data(), GemmPrecision::BF16);
  kernels::grouped_gemm<float>(gpu_exec(), off.data(), 2, false, 4, 5, dA.data(), dB.data(),
                               dC.data(), GemmPrecision::FP32);
  kernels::grouped_gemm<float>(gpu_exec(), off.data(), 0, false, 4, 5, dA.data(), dB.data(),
                               dC.data(), GemmPrecision::FP32);
  expect_equal(host(dC, c0.size()), c0, "all groups empty");
}

// The offsets are host memory: a grouped GEMM enqueues its groups without waiting for the stream.
TEST(CudaGroupedGemm, HostOffsetsDoNotWaitForTheStream) {
  MOETRON_REQUIRE_GPU();
  const std::vector<int64_t> off = {0, 7, 7, 30};
  const int64_t G = 3, N = 24, K = 40;
  const auto A = rand_vec<float>(30 * K, 71), W = rand_vec<float>(G * N * K, 72);
  Buffer<float> dA = dev(A), dW = dev(W), dC = dev_garbage<float>(30 * N);
  auto run = [&] {
    kernels::grouped_gemm<float>(gpu_exec(), off.data(), G, true, N, K, dA.data(), dW.data(),
                                 dC.data(), GemmPrecision::BF16);
  };
  run();  // warm: cuBLASLt's handle, the workspace
  const BusyStream queued;
  run();
  EXPECT_TRUE(BusyStream::busy());
  std::vector<float> want(30 * N);
  cpu::grouped_gemm<float>(off.data(), G, true, N, K, A.data(), W.data(), want.data(),
                           GemmPrecision::BF16);
  expect_near_rel(host(dC, 30 * N), want, 1e-5, "grouped_gemm behind queued compute");
}

// Experts of DeepSeek-V3's shape class (hidden 7168 -> 2 x 2048 gate|up, [N,K] weights) with
// uneven row counts, few experts to keep the CPU side short.
TEST(CudaGroupedGemm, DeepSeekV3ExpertShape) {
  MOETRON_REQUIRE_REAL_GPU("a full-size shape: minutes on the emulator");
  const std::vector<int64_t> off = {0, 40, 40, 113, 128};
  const int64_t G = 4, R = 128, N = 512, K = 7168;
  const auto A = rand_vec<float>(R * K, 61), W = rand_vec<float>(G * N * K, 62);
  Buffer<float> dA = dev(A), dW = dev(W), dC = dev_garbage<float>(R * N);
  for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16}) {
    kernels::grouped_gemm<float>(gpu_exec(), off.data(), G, true, N, K, dA.data(), dW.data(),
                                 dC.data(), prec);
    std::vector<float> want(R * N);
    cpu::grouped_gemm<float>(off.data(), G, true, N, K, A.data(), W.data(), want.data(), prec);
    expect_near_rel(host(dC, R * N), want, 1e-5, std::string("expert shape ") + pname(prec));
  }
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
