// The GEMM FLOP counter (kernels/flop_counter.h): every GEMM-type op counts 2 FLOPs per
// multiply-accumulate of its shape (grouped ops: the rows of all groups, from their host offsets,
// on the Guard device too), the head's chunked backward counts its recomputed logits as
// recompute, a RecomputeScope marks its thread only, and nothing is counted while counting is off
// or on the Meta device.
#include <gtest/gtest.h>

#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/buffer.h"
#include "kernels/flop_counter.h"
#include "kernels/ops.h"

namespace moetron {
namespace {

namespace fc = kernels::flop_counter;

// Counting on and zeroed for the test's duration; off again afterwards (the default).
struct Counting {
  Counting() {
    fc::reset();
    fc::set_counting(true);
  }
  ~Counting() {
    fc::set_counting(false);
    fc::reset();
  }
};

const Exec kCpu = Exec::on(Device::CPU);

TEST(FlopCounter, GemmCountsTwiceItsMultiplyAccumulates) {
  const Counting on;
  const int64_t M = 3, N = 5, K = 7;
  std::vector<float> A(M * K, 1.f), B(K * N, 1.f), C(M * N);
  kernels::gemm<float>(kCpu, false, false, M, N, K, 1.f, A.data(), B.data(), 0.f, C.data());
  EXPECT_EQ(fc::read().executed, 2 * M * N * K);
  EXPECT_EQ(fc::read().recompute, 0);
  fc::reset();
  EXPECT_EQ(fc::read().executed, 0);
}

TEST(FlopCounter, NothingWhileOffOrOnMeta) {
  fc::reset();
  std::vector<float> A(4, 1.f), B(4, 1.f), C(4);
  kernels::gemm<float>(kCpu, false, false, 2, 2, 2, 1.f, A.data(), B.data(), 0.f, C.data());
  EXPECT_EQ(fc::read().executed, 0);  // off by default
  const Counting on;
  EXPECT_THROW(kernels::gemm<float>(Exec::on(Device::Meta), false, false, 2, 2, 2, 1.f, nullptr,
                                    nullptr, 0.f, nullptr),
               std::logic_error);
  EXPECT_EQ(fc::read().executed, 0);
}

// The grouped GEMMs count the rows of all groups (empty groups included), on a device whose
// memory the host may not touch (the offsets are host memory: kernels/ops.h).
TEST(FlopCounter, GroupedGemmsCountTheRowsOfAllGroups) {
  const Counting on;
  const Exec ex = Exec::on(Device::Guard);
  const int64_t G = 3, N = 4, K = 6;
  const std::vector<int64_t> off = {0, 3, 3, 8};  // 8 rows, the middle group empty
  Buffer<float> A(Device::Guard), W(Device::Guard), C(Device::Guard), dW(Device::Guard);
  kernels::fill_zero(ex, A.resize(8 * K), A.bytes());
  kernels::fill_zero(ex, W.resize(G * N * K), W.bytes());
  kernels::fill_zero(ex, dW.resize(G * N * K), dW.bytes());
  kernels::fill_zero(ex, C.resize(8 * N), C.bytes());
  kernels::grouped_gemm<float>(ex, off.data(), G, true, N, K, A.data(), W.data(), C.data(),
                               kernels::GemmPrecision::FP32);
  EXPECT_EQ(fc::read().executed, 2 * 8 * N * K);
  kernels::grouped_gemm_wgrad<float>(ex, off.data(), G, N, K, C.data(), A.data(), dW.data(),
                                     kernels::GemmPrecision::FP32);
  EXPECT_EQ(fc::read().executed, 2 * (2 * 8 * N * K));
}

// FP8 operands: zero codes with unit scales (the values do not matter, the shapes do).
struct Fp8Operands {
  int64_t M, N, K;
  std::vector<uint8_t> qX, qW, qdY;
  std::vector<float> sX, sW, sdY, X, dY, Y, dX, dW;
  Fp8Operands(int64_t m, int64_t n, int64_t k)
      : M(m),
        N(n),
        K(k),
        qX(m * k),
        qW(n * k),
        qdY(n * m),
        sX(m * ((k + 127) / 128), 1.f),
        sW(((n + 127) / 128) * ((k + 127) / 128), 1.f),
        sdY(n * ((m + 127) / 128 + 1), 1.f),  // Wgrad's dY tiles, as one group or two
        X(m * k),
        dY(m * n),
        Y(m * n),
        dX(m * k),
        dW(n * k) {}
};

TEST(FlopCounter, Fp8LinearGemmsCountTheirShapes) {
  const Counting on;
  Fp8Operands o(130, 128, 256);
  const int64_t f = 2 * o.M * o.N * o.K;
  kernels::fp8_fprop(kCpu, o.qX.data(), o.sX.data(), o.qW.data(), o.sW.data(), o.M, o.N, o.K,
                     o.Y.data());
  EXPECT_EQ(fc::read().executed, f);
  kernels::fp8_linear_dgrad(kCpu, o.dY.data(), o.M, o.N, o.K, o.qW.data(), o.sW.data(), false,
                            false, o.dX.data(), false);
  EXPECT_EQ(fc::read().executed, 2 * f);
  const int64_t one[2] = {0, o.M};
  kernels::grouped_quantize_128x1_t(kCpu, one, 1, o.dY.data(), o.N, false, o.qdY.data(),
                                    o.sdY.data());
  EXPECT_EQ(fc::read().executed, 2 * f);  // a quantiser is no GEMM
  kernels::fp8_linear_wgrad(kCpu, o.qdY.data(), o.sdY.data(), o.qX.data(), o.sX.data(), o.M, o.N,
                            o.K, false, o.dW.data());
  EXPECT_EQ(fc::read().executed, 3 * f);
  kernels::fp8_linear_wgrad_f32(kCpu, o.qdY.data(), o.sdY.data(), o.X.data(), o.M, o.N, o.K, false,
                                o.dW.data());
  EXPECT_EQ(fc::read().executed, 4 * f);
  // the same shapes as two groups (one weight matrix each) of 60 and 70 rows
  std::vector<uint8_t> qW2(2 * o.N * o.K);
  std::vector<float> sW2(2 * o.sW.size(), 1.f), dW2(2 * o.N * o.K);
  const std::vector<int64_t> off = {0, 60, 130};
  fc::reset();
  kernels::grouped_fp8_fprop(kCpu, off.data(), 2, o.qX.data(), o.sX.data(), qW2.data(), sW2.data(),
                             o.N, o.K, o.Y.data());
  kernels::grouped_fp8_linear_dgrad(kCpu, off.data(), 2, o.dY.data(), o.N, o.K, qW2.data(),
                                    sW2.data(), false, false, o.dX.data());
  kernels::grouped_quantize_128x1_t(kCpu, off.data(), 2, o.dY.data(), o.N, false, o.qdY.data(),
                                    o.sdY.data());
  kernels::grouped_fp8_linear_wgrad(kCpu, off.data(), 2, o.qdY.data(), o.sdY.data(), o.qX.data(),
                                    o.sX.data(), o.N, o.K, false, dW2.data());
  kernels::grouped_fp8_linear_wgrad_f32(kCpu, off.data(), 2, o.qdY.data(), o.sdY.data(), o.X.data(),
                                        o.N, o.K, false, dW2.data());
  EXPECT_EQ(fc::read().executed, 4 * f);
  EXPECT_EQ(fc::read().recompute, 0);
}

// The fused head: 2 N D V for the logits; its backward 4 N D V (dh, dW) plus the logits again,
// chunk by chunk, which is recompute.
TEST(FlopCounter, HeadBackwardCountsItsRecomputedLogits) {
  const Counting on;
  const int64_t N = 6, D = 8, V = 50, chunk = 16;
  std::vector<float> h(N * D, 0.1f), W(V * D, 0.01f), lse(N), dh(N * D), dW(V * D);
  const std::vector<int32_t> target = {1, 7, 49, -1, 20, 0};
  double loss = 0;
  kernels::lm_head_ce_forward<float>(kCpu, h.data(), W.data(), target.data(), N, D, V, chunk,
                                     lse.data(), kernels::GemmPrecision::FP32, &loss);
  EXPECT_EQ(fc::read().executed, 2 * N * D * V);
  EXPECT_EQ(fc::read().recompute, 0);
  kernels::lm_head_ce_backward<float>(kCpu, h.data(), W.data(), target.data(), lse.data(), 1.f, N,
                                      D, V, chunk, dh.data(), dW.data(),
                                      kernels::GemmPrecision::FP32);
  EXPECT_EQ(fc::read().executed, 8 * N * D * V);
  EXPECT_EQ(fc::read().recompute, 2 * N * D * V);
  EXPECT_EQ(fc::read().model(), 6 * N * D * V);  // forward + 2 x forward
}

TEST(FlopCounter, RecomputeScopeMarksItsThreadOnly) {
  const Counting on;
  std::vector<float> A(16, 1.f), B(16, 1.f), C(16);
  auto gemm4 = [&] {  // 2 x 4^3 = 128 FLOPs
    kernels::gemm<float>(kCpu, false, false, 4, 4, 4, 1.f, A.data(), B.data(), 0.f, C.data());
  };
  {
    const fc::RecomputeScope outer;
    gemm4();
    {
      const fc::RecomputeScope inner;
      gemm4();
    }
    std::vector<float> A2(16, 1.f), B2(16, 1.f), C2(16);
    std::thread other([&] {  // not inside this thread's scope: model FLOPs
      kernels::gemm<float>(kCpu, false, false, 4, 4, 4, 1.f, A2.data(), B2.data(), 0.f, C2.data());
    });
    other.join();
  }
  gemm4();
  EXPECT_EQ(fc::read().executed, 4 * 128);
  EXPECT_EQ(fc::read().recompute, 2 * 128);
}

}  // namespace
}  // namespace moetron
