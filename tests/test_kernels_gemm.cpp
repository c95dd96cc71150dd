// GEMM tests: every transpose combination on odd shapes, alpha/beta, empty dimensions, the BF16
// precision mode against a double reference on bf16-rounded inputs, and concurrent callers (the
// oneDNN primitive cache is shared between threads).
#include <limits>
#include <sstream>
#include <thread>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/ops.h"
#include "kernels/scalar.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

// C[M,N] = alpha op(A) op(B) + beta C in double; A [M,K] or [K,M], B [K,N] or [N,K].
std::vector<double> ref_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                             const std::vector<double>& A, const std::vector<double>& B,
                             double beta, const std::vector<double>& C) {
  std::vector<double> out(M * N);
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta ? A[k * M + i] : A[i * K + k];
        const double b = tb ? B[j * K + k] : B[k * N + j];
        s += a * b;
      }
      out[i * N + j] = alpha * s + (beta == 0 ? 0.0 : beta * C[i * N + j]);
    }
  }
  return out;
}

std::vector<double> bf16_rounded(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = round_bf16(static_cast<float>(v[i]));
  return r;
}

template <class T>
class GemmTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(GemmTest, Types);

struct Case {
  int64_t M, N, K;
  double alpha, beta;
};
const Case kCases[] = {{37, 29, 53, 1.0, 0.0},  {37, 29, 53, 0.7, 0.3}, {1, 17, 5, 1.0, 1.0},
                       {13, 1, 130, -2.0, 0.0}, {5, 7, 1, 1.0, 0.5},    {131, 97, 67, 1.0, 1.0}};

TYPED_TEST(GemmTest, AllTransposesMatchReference) {
  using T = TypeParam;
  uint64_t seed = 1;
  for (const Case& c : kCases) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const auto A = to_double(cast<T>(rand_vec(c.M * c.K, seed++)));
      const auto B = to_double(cast<T>(rand_vec(c.K * c.N, seed++)));
      const auto C0 = to_double(cast<T>(rand_vec(c.M * c.N, seed++)));
      auto C = cast<T>(C0);
      gemm<T>(ta, tb, c.M, c.N, c.K, T(c.alpha), cast<T>(A).data(), cast<T>(B).data(), T(c.beta),
              C.data());
      const auto ref = ref_gemm(ta, tb, c.M, c.N, c.K, c.alpha, A, B, c.beta, C0);
      std::ostringstream os;
      os << "gemm " << c.M << "x" << c.N << "x" << c.K << " ta=" << ta << " tb=" << tb;
      expect_close(C, ref, kTol<T>, os.str());
    }
  }
}

TYPED_TEST(GemmTest, BetaZeroIgnoresGarbageInC) {
  using T = TypeParam;
  const int64_t M = 9, N = 11, K = 7;
  const auto A = to_double(cast<T>(rand_vec(M * K, 3)));
  const auto B = to_double(cast<T>(rand_vec(K * N, 4)));
  for (auto prec : {GemmPrecision::FP32, GemmPrecision::BF16}) {
    std::vector<T> C(M * N, std::numeric_limits<T>::quiet_NaN());
    gemm<T>(false, false, M, N, K, T(1), cast<T>(A).data(), cast<T>(B).data(), T(0), C.data(),
            prec);
    for (T x : C) ASSERT_TRUE(std::isfinite(x));
  }
}

TYPED_TEST(GemmTest, EmptyDimensions) {
  using T = TypeParam;
  std::vector<T> A(12, T(1)), B(12, T(1));
  std::vector<T> C = {T(1), T(2), T(3), T(4), T(5), T(6)};
  // K == 0: the product is empty, C = beta C.
  gemm<T>(false, false, 2, 3, 0, T(1), A.data(), B.data(), T(0.5), C.data());
  EXPECT_EQ(C, (std::vector<T>{T(0.5), T(1), T(1.5), T(2), T(2.5), T(3)}));
  gemm<T>(true, true, 2, 3, 0, T(1), A.data(), B.data(), T(0), C.data(), GemmPrecision::BF16);
  EXPECT_EQ(C, std::vector<T>(6, T(0)));
  // M == 0 or N == 0: nothing to write.
  C.assign(6, T(7));
  gemm<T>(false, false, 0, 3, 4, T(1), A.data(), B.data(), T(0), C.data());
  gemm<T>(false, true, 2, 0, 4, T(1), A.data(), B.data(), T(0), C.data());
  EXPECT_EQ(C, std::vector<T>(6, T(7)));
}

TYPED_TEST(GemmTest, Bf16RoundsBothInputs) {
  using T = TypeParam;
  uint64_t seed = 100;
  for (const Case& c : kCases) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const auto A = to_double(cast<T>(rand_vec(c.M * c.K, seed++)));
      const auto B = to_double(cast<T>(rand_vec(c.K * c.N, seed++)));
      const auto C0 = to_double(cast<T>(rand_vec(c.M * c.N, seed++)));
      auto C = cast<T>(C0);
      gemm<T>(ta, tb, c.M, c.N, c.K, T(c.alpha), cast<T>(A).data(), cast<T>(B).data(), T(c.beta),
              C.data(), GemmPrecision::BF16);
      const auto ref =
          ref_gemm(ta, tb, c.M, c.N, c.K, c.alpha, bf16_rounded(A), bf16_rounded(B), c.beta, C0);
      std::ostringstream os;
      os << "bf16 gemm " << c.M << "x" << c.N << "x" << c.K << " ta=" << ta << " tb=" << tb;
      expect_close(C, ref, kTol<T>, os.str());
    }
  }
}

// A weight given already in bf16 (a Linear's cached copy) gives the bits of gemm at BF16 on the
// fp32 weight: the same rounding of both operands, the same primitive. Every transpose, alpha,
// beta, and the grouped form with empty and uneven groups (runtime-shape primitives there).
TEST(GemmBf16Weight, EqualsGemmAtBf16BitForBit) {
  uint64_t seed = 300;
  auto narrow = [](const std::vector<float>& w) {
    std::vector<uint16_t> r(w.size());
    for (size_t i = 0; i < w.size(); ++i) r[i] = f32_to_bf16(w[i]);
    return r;
  };
  for (const Case& c : kCases) {
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const auto A = cast<float>(rand_vec(c.M * c.K, seed++));
      const auto B = cast<float>(rand_vec(c.K * c.N, seed++));
      auto want = cast<float>(rand_vec(c.M * c.N, seed++)), got = want;
      gemm<float>(ta, tb, c.M, c.N, c.K, float(c.alpha), A.data(), B.data(), float(c.beta),
                  want.data(), GemmPrecision::BF16);
      gemm_bf16_weight(ta, tb, c.M, c.N, c.K, float(c.alpha), A.data(), narrow(B).data(),
                       float(c.beta), got.data());
      EXPECT_EQ(got, want) << c.M << "x" << c.N << "x" << c.K << " ta=" << ta << " tb=" << tb;
    }
  }
  const std::vector<int64_t> off = {0, 0, 3, 20, 20, 61, 61};
  const int64_t G = 6, R = 61, N = 24, K = 33;
  for (bool transW : {false, true}) {
    const auto A = cast<float>(rand_vec(R * K, seed++)), W = cast<float>(rand_vec(G * N * K, 9));
    std::vector<float> want(R * N, 0.f), got(R * N, 0.f);
    grouped_gemm<float>(off.data(), G, transW, N, K, A.data(), W.data(), want.data(),
                        GemmPrecision::BF16);
    grouped_gemm_bf16_weight(off.data(), G, transW, N, K, A.data(), narrow(W).data(), got.data());
    EXPECT_EQ(got, want) << "grouped, transW=" << transW;
  }
}

// The grouped ops' row offsets are host memory on every device, checked once by the dispatcher
// for every backend: a negative first offset or a decrease is refused, naming the op and group.
TEST(GroupedOffsets, CheckedByTheDispatcherOnEveryDevice) {
  const int64_t G = 3, N = 4, K = 5;
  std::vector<float> A(20 * K, 1.f), W(G * N * K, 1.f), C(20 * N, 0.f);
  auto message = [&](const Exec& ex, const std::vector<int64_t>& off) -> std::string {
    try {
      kernels::grouped_gemm<float>(ex, off.data(), G, true, N, K, A.data(), W.data(), C.data(),
                                   GemmPrecision::FP32);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "accepted";
  };
  for (const Exec& ex : {Exec::on(Device::CPU), Exec::on(Device::Guard)}) {
    EXPECT_EQ(message(ex, {0, 5, 3, 9}), "grouped_gemm: row offsets decrease at group 1");
    EXPECT_EQ(message(ex, {-1, 5, 6, 9}), "grouped_gemm: negative row offset");
  }
  EXPECT_EQ(message(Exec::on(Device::CPU), {0, 5, 5, 9}), "accepted");  // an empty group is fine
  std::vector<float> dW(G * N * K, 0.f);
  const std::vector<int64_t> bad = {0, 2, 1, 3};
  EXPECT_THROW(
      kernels::grouped_gemm_wgrad<float>(Exec::on(Device::CPU), bad.data(), G, N, K, C.data(),
                                         A.data(), dW.data(), GemmPrecision::FP32),
      std::invalid_argument);
}

// The BF16 mode really rounds: on inputs that are not bf16 values it must differ from the exact
// product by far more than the fp32 tolerance (guards against a silent fall-back to FP32).
TYPED_TEST(GemmTest, Bf16DiffersFromExactProduct) {
  using T = TypeParam;
  const int64_t M = 31, N = 23, K = 41;
  const auto A = to_double(cast<T>(rand_vec(M * K, 7)));
  const auto B = to_double(cast<T>(rand_vec(K * N, 8)));
  std::vector<T> C(M * N);
  gemm<T>(false, true, M, N, K, T(1), cast<T>(A).data(), cast<T>(B).data(), T(0), C.data(),
          GemmPrecision::BF16);
  const auto exact = ref_gemm(false, true, M, N, K, 1.0, A, B, 0.0, {});
  double maxdiff = 0;
  for (size_t i = 0; i < C.size(); ++i) maxdiff = std::max(maxdiff, std::fabs(C[i] - exact[i]));
  EXPECT_GT(maxdiff, 1e-3);
}

TEST(Gemm, ConcurrentCallersShareThePrimitiveCache) {
  const int64_t M = 45, N = 33, K = 27;
  const auto A = rand_vec(M * K, 11), B = rand_vec(K * N, 12);
  const auto Af = cast<float>(A), Bf = cast<float>(B);
  const auto ref32 = ref_gemm(false, false, M, N, K, 1, to_double(Af), to_double(Bf), 0, {});
  const auto ref16 = ref_gemm(true, false, K, N, M, 1, bf16_rounded(to_double(Af)),
                              bf16_rounded(to_double(cast<float>(rand_vec(M * N, 13)))), 0, {});
  const auto Cb = cast<float>(rand_vec(M * N, 13));
  bool ok[4] = {true, true, true, true};
  auto worker = [&](int id) {
    for (int it = 0; it < 30; ++it) {
      if (id % 2 == 0) {
        std::vector<float> C(M * N);
        gemm<float>(false, false, M, N, K, 1.f, Af.data(), Bf.data(), 0.f, C.data());
        for (size_t i = 0; i < C.size(); ++i)
          if (std::fabs(C[i] - ref32[i]) > 1e-4) ok[id] = false;
      } else {
        std::vector<float> C(K * N);  // [K,M]^T [M,N]
        gemm<float>(true, false, K, N, M, 1.f, Af.data(), Cb.data(), 0.f, C.data(),
                    GemmPrecision::BF16);
        for (size_t i = 0; i < C.size(); ++i)
          if (std::fabs(C[i] - ref16[i]) > 1e-4) ok[id] = false;
      }
    }
  };
  std::vector<std::thread> th;
  for (int id = 0; id < 4; ++id) th.emplace_back(worker, id);
  for (auto& t : th) t.join();
  for (int id = 0; id < 4; ++id) EXPECT_TRUE(ok[id]) << "thread " << id;
}

TEST(Threads, SetAndQuery) {
  const int before = num_threads();
  set_num_threads(1);
  EXPECT_EQ(num_threads(), 1);
  set_num_threads(0);  // clamped to 1
  EXPECT_EQ(num_threads(), 1);
  set_num_threads(before);
  EXPECT_EQ(num_threads(), before);
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing

// The MoE runs one expert per thread, so the same cached GEMM primitive executes in several
// threads at once: results must equal the one-at-a-time results exactly (this failed while the
// oneDNN scratchpad was the library's shared one).
TEST(GemmConcurrency, SameShapeInParallelThreadsMatchesSequential) {
  const int64_t M = 96, N = 80, K = 112, J = 8;
  std::vector<std::vector<float>> A(J), B(J), seq(J), par(J);
  for (int64_t j = 0; j < J; ++j) {
    A[j].resize(M * K), B[j].resize(N * K), seq[j].assign(M * N, 0.f), par[j].assign(M * N, 0.f);
    for (int64_t i = 0; i < M * K; ++i) A[j][i] = static_cast<float>((i * 7 + j) % 13) - 6.f;
    for (int64_t i = 0; i < N * K; ++i) B[j][i] = static_cast<float>((i * 5 + j) % 11) * 0.25f;
  }
  for (int64_t j = 0; j < J; ++j)
    moetron::kernels::cpu::gemm<float>(false, true, M, N, K, 1.f, A[j].data(), B[j].data(), 0.f,
                                       seq[j].data());
  for (int rep = 0; rep < 5; ++rep) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(4)
    for (int64_t j = 0; j < J; ++j)
      moetron::kernels::cpu::gemm<float>(false, true, M, N, K, 1.f, A[j].data(), B[j].data(), 0.f,
                                         par[j].data());
    for (int64_t j = 0; j < J; ++j) ASSERT_EQ(par[j], seq[j]) << "matrix " << j << " rep " << rep;
  }
}

// dynamic = true (one runtime-shape primitive for every size, used by the routed experts) gives
// the same products as the per-shape path, in every layout, for sizes that change call to call.
TEST(GemmDynamic, RuntimeShapesMatchPerShapeKernels) {
  for (int64_t M : {1, 7, 37, 130})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        const int64_t N = 48, K = 29;
        std::vector<float> A(M * K), B(K * N), c1(M * N, 0.5f), c2(M * N, 0.5f);
        for (size_t i = 0; i < A.size(); ++i) A[i] = std::sin(0.37 * static_cast<double>(i));
        for (size_t i = 0; i < B.size(); ++i) B[i] = std::cos(0.11 * static_cast<double>(i));
        moetron::kernels::cpu::gemm<float>(ta, tb, M, N, K, 1.f, A.data(), B.data(), 1.f,
                                           c1.data());
        moetron::kernels::cpu::gemm<float>(ta, tb, M, N, K, 1.f, A.data(), B.data(), 1.f, c2.data(),
                                           moetron::kernels::GemmPrecision::FP32, /*dynamic=*/true);
        for (size_t i = 0; i < c1.size(); ++i)
          ASSERT_NEAR(c2[i], c1[i], 1e-5f * (1.f + std::abs(c1[i]))) << M << ta << tb << i;
      }
}
