// FP8 conversion and the fine-grained quantiser: all 256 codes of E4M3 and E5M2 against tables
// built here from the formats' definitions, round-to-nearest-even at every midpoint, saturation,
// power-of-two scales, tile quantisation of odd shapes by the one quantiser (kernels/fp8.h's
// quantize / dequantize), the SPEC App. B.2 caveat (128x128 tiles on a gradient with token
// outliers are far worse than 1x128), and the Dequant GEMM path against the literal blockwise
// recipe.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "kernels/scalar.h"

using namespace moetron;
using namespace moetron::kernels;
using namespace moetron::kernels::cpu;

namespace {

// value of a code from the definition: sign, exponent (bias), mantissa (mbits), subnormals
double fp8_value(int code, int mbits, int bias, bool e4m3) {
  const int s = code >> 7, e = (code >> mbits) & ((1 << (7 - mbits)) - 1);
  const int m = code & ((1 << mbits) - 1), emax = (1 << (7 - mbits)) - 1;
  if (e4m3 && e == emax && m == (1 << mbits) - 1) return std::numeric_limits<double>::quiet_NaN();
  if (!e4m3 && e == emax)
    return m ? std::numeric_limits<double>::quiet_NaN()
             : (s ? -1 : 1) * std::numeric_limits<double>::infinity();
  const double mag =
      e == 0 ? std::ldexp(m, 1 - bias - mbits) : std::ldexp(1.0 + m / double(1 << mbits), e - bias);
  return s ? -mag : mag;
}

struct Format {
  const char* name;
  int mbits, bias;
  bool e4m3;
  float (*decode)(uint8_t);
  uint8_t (*encode)(float);
  float max;
};
const Format kFormats[] = {{"e4m3", 3, 7, true, e4m3_to_f32, f32_to_e4m3, 448.f},
                           {"e5m2", 2, 15, false, e5m2_to_f32, f32_to_e5m2, 57344.f}};

}  // namespace

TEST(Fp8Convert, AllCodesDecodeAndRoundTrip) {
  for (const Format& f : kFormats)
    for (int c = 0; c < 256; ++c) {
      const double want = fp8_value(c, f.mbits, f.bias, f.e4m3);
      const float got = f.decode(static_cast<uint8_t>(c));
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(got)) << f.name << " code " << c;
        EXPECT_TRUE(std::isnan(f.decode(f.encode(got)))) << f.name << " code " << c;
        continue;
      }
      EXPECT_EQ(static_cast<double>(got), want) << f.name << " code " << c;
      if (std::isinf(want)) continue;  // e5m2 inf saturates on encode (below)
      EXPECT_EQ(f.encode(got), c) << f.name << " code " << c;
    }
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.f);
  EXPECT_EQ(e5m2_to_f32(0x7b), 57344.f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.f, -9));  // smallest subnormal
}

TEST(Fp8Convert, RoundsToNearestEvenAtEveryMidpoint) {
  for (const Format& f : kFormats)
    for (int c = 0; c < 0x7f; ++c) {  // positive finite neighbours c, c+1
      const float lo = f.decode(static_cast<uint8_t>(c)),
                  hi = f.decode(static_cast<uint8_t>(c + 1));
      if (!std::isfinite(hi)) continue;
      const float mid = (lo + hi) / 2;  // exact: both fit in few bits
      const int even = (c % 2 == 0) ? c : c + 1;
      EXPECT_EQ(f.encode(mid), even) << f.name << " midpoint " << mid;
      EXPECT_EQ(f.encode(std::nextafter(mid, 0.f)), c) << f.name << " below " << mid;
      EXPECT_EQ(f.encode(std::nextafter(mid, 1e9f)), c + 1) << f.name << " above " << mid;
      EXPECT_EQ(f.encode(-mid), even | 0x80) << f.name << " -midpoint";
    }
}

TEST(Fp8Convert, SaturatesAndKeepsNaN) {
  for (const Format& f : kFormats) {
    const uint8_t maxc = f.encode(f.max);
    EXPECT_EQ(f.decode(maxc), f.max);
    for (float v : {f.max * 1.01f, f.max * 1000.f, std::numeric_limits<float>::max(),
                    std::numeric_limits<float>::infinity()}) {
      EXPECT_EQ(f.encode(v), maxc) << f.name << " " << v;
      EXPECT_EQ(f.encode(-v), maxc | 0x80) << f.name << " " << -v;
    }
    EXPECT_TRUE(std::isnan(f.decode(f.encode(std::nanf("")))));
    EXPECT_EQ(f.encode(0.f), 0);
    EXPECT_EQ(f.encode(-0.f), 0x80);
    EXPECT_EQ(f.encode(1e-30f), 0);  // underflow to zero
  }
}

TEST(Fp8Quantize, Pow2ScalesArePowersOfTwoJustAboveAmax) {
  std::mt19937 g(3);
  std::uniform_real_distribution<float> u(-30.f, 30.f);
  for (int i = 0; i < 1000; ++i) {
    const float v = std::ldexp(1.f + std::fabs(u(g)) / 30.f, static_cast<int>(u(g)));
    const float s = pow2_ceil(v);
    int e;
    EXPECT_EQ(std::frexp(s, &e), 0.5f) << v;  // a power of two
    EXPECT_GE(s, v);
    EXPECT_LT(s, 2 * v);
  }
}

TEST(Fp8Quantize, TilesOfOddShapesWithinHalfAnUlp) {
  std::mt19937 g(7);
  std::normal_distribution<float> n(0.f, 1.f);
  for (Tile t : {kTile1x128, kTile128x128, kTile128x1})
    for (auto [R, C] : {std::pair<int64_t, int64_t>{37, 300}, {129, 257}})
      for (bool pow2 : {false, true}) {
        std::vector<float> x(R * C), y(R * C);
        for (size_t i = 0; i < x.size(); ++i) x[i] = n(g) * std::exp(n(g));  // wide range
        const int64_t TR = (R + t.rows - 1) / t.rows, TC = (C + t.cols - 1) / t.cols;
        std::vector<uint8_t> q(R * C);
        std::vector<float> s(TR * TC);
        quantize(x.data(), R, C, t, pow2, q.data(), s.data());
        dequantize(q.data(), s.data(), R, C, t, y.data());
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = 0; c < C; ++c) {
            const float sc = s[(r / t.rows) * TC + c / t.cols], v = x[r * C + c];
            // half an ulp: 2^-4 relative for normals, 2^-10 s absolute in the subnormal range
            const float bound = std::max(std::fabs(v) * 0.0625f, sc * 0.0009765625f) * 1.0001f;
            ASSERT_LE(std::fabs(y[r * C + c] - v), bound)
                << "tile " << t.rows << "x" << t.cols << " at " << r << "," << c;
          }
        // the tile maximum maps to (close to) 448 without overflow
        for (int64_t br = 0; br < TR; ++br)
          for (int64_t bc = 0; bc < TC; ++bc) EXPECT_GT(s[br * TC + bc], 0.f);
      }
}

TEST(Fp8Quantize, BlockTilesFailOnTokenOutliersWhereRowTilesDoNot) {
  // SPEC App. B.2: activation gradients have token-correlated outliers; a 128x128 tile shares one
  // scale with them and crushes the other tokens' values, 1x128 keeps each token's own scale.
  // E4M3 spans ~18 binades (2^-9 .. 448), so outliers 1e5 x the rest push ordinary values of a
  // shared tile into the subnormal/zero range.
  const int64_t R = 256, C = 256;
  std::mt19937 g(11);
  std::normal_distribution<float> n(0.f, 1e-3f);
  std::vector<float> x(R * C);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) x[r * C + c] = n(g) * (r % 64 == 5 ? 1e5f : 1.f);
  auto rel_err = [&](Tile t) {
    const int64_t TR = (R + t.rows - 1) / t.rows, TC = (C + t.cols - 1) / t.cols;
    std::vector<uint8_t> q(R * C);
    std::vector<float> s(TR * TC), y(R * C);
    quantize(x.data(), R, C, t, false, q.data(), s.data());
    dequantize(q.data(), s.data(), R, C, t, y.data());
    double num = 0, den = 0;  // over the ordinary (non-outlier) tokens
    for (int64_t r = 0; r < R; ++r)
      if (r % 64 != 5)
        for (int64_t c = 0; c < C; ++c)
          num += std::pow(y[r * C + c] - x[r * C + c], 2), den += std::pow(x[r * C + c], 2);
    return std::sqrt(num / den);
  };
  const double row = rel_err(kTile1x128), block = rel_err(kTile128x128);
  EXPECT_LT(row, 0.05);
  EXPECT_GT(block, 10 * row) << "1x128 " << row << " vs 128x128 " << block;
}

namespace {
// DeepGEMM's criterion: 1 - 2 sum(xy) / sum(x^2 + y^2), in double
double calc_diff(const std::vector<float>& x, const std::vector<double>& y) {
  double xy = 0, xx = 0;
  for (size_t i = 0; i < x.size(); ++i) xy += x[i] * y[i], xx += double(x[i]) * x[i] + y[i] * y[i];
  return xx == 0 ? 0 : 1 - 2 * xy / xx;
}
}  // namespace

TEST(Fp8Gemm, PromotionRecipeBlockAndTileScaledOddSizes) {
  // Fprop-like (B 128x128 blocks) and Wgrad-like (B 1x128 tiles) operands; the fast path equals
  // the literal blockwise recipe and an exact double evaluation of the same recipe.
  std::mt19937 g(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (Tile tB : {kTile128x128, kTile1x128})
    for (auto [M, N, K] :
         {std::tuple<int64_t, int64_t, int64_t>{37, 130, 300}, {128, 64, 128}, {5, 257, 131}}) {
      std::vector<float> a(M * K), b(N * K);
      for (auto& v : a) v = nd(g);
      for (auto& v : b) v = nd(g) * 0.05f;
      const int64_t KB = (K + 127) / 128;
      std::vector<uint8_t> qa(M * K), qb(N * K);
      std::vector<float> sa(M * KB), sb(((N + tB.rows - 1) / tB.rows) * KB);
      quantize(a.data(), M, K, kTile1x128, true, qa.data(), sa.data());
      quantize(b.data(), N, K, tB, false, qb.data(), sb.data());
      std::vector<float> fast(M * N, 1.f), lit(M * N, 1.f);
      fp8_gemm_nt_path(Fp8Gemm::Dequant, qa.data(), sa.data(), qb.data(), sb.data(), tB, M, N, K,
                       fast.data(), true);
      fp8_gemm_nt_blockwise(qa.data(), sa.data(), qb.data(), sb.data(), tB, M, N, K, lit.data(),
                            true);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double exact = 1.0;  // the recipe in double: same decoded values, same scales
          for (int64_t kb = 0; kb < KB; ++kb) {
            double p = 0;
            for (int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k)
              p += double(e4m3_to_f32(qa[m * K + k])) * e4m3_to_f32(qb[n * K + k]);
            exact += p * sa[m * KB + kb] * sb[(n / tB.rows) * KB + kb];
          }
          const double tol = 1e-5 * (1 + std::fabs(exact));
          ASSERT_NEAR(fast[m * N + n], exact, tol) << M << "x" << N << "x" << K;
          ASSERT_NEAR(lit[m * N + n], exact, tol) << M << "x" << N << "x" << K;
        }
    }
}

TEST(Fp8Gemm, DeepGemmCriterionOnScaledDownV3Shapes) {
  // V3 projection shapes (SPEC §7) divided by 8 along N and K: calc_diff < 1e-3 against a
  // BF16-input reference (inputs rounded to bf16, accumulated in double).
  std::mt19937 g(9);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t M = 64;
  for (auto [N, K] : {std::pair<int64_t, int64_t>{264, 896},
                      {3072, 192},
                      {4096, 64},
                      {896, 2048},
                      {512, 896},
                      {896, 256}}) {
    std::vector<float> a(M * K), b(N * K);
    for (auto& v : a) v = nd(g);
    for (auto& v : b) v = nd(g);
    const int64_t KB = (K + 127) / 128;
    std::vector<uint8_t> qa(M * K), qb(N * K);
    std::vector<float> sa(M * KB), sb(((N + 127) / 128) * KB), out(M * N);
    quantize(a.data(), M, K, kTile1x128, false, qa.data(), sa.data());
    quantize(b.data(), N, K, kTile128x128, false, qb.data(), sb.data());
    fp8_gemm_nt_path(Fp8Gemm::Dequant, qa.data(), sa.data(), qb.data(), sb.data(), kTile128x128, M,
                     N, K, out.data(), false);
    std::vector<double> ref(M * N, 0.0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k)
          acc += double(round_bf16(a[m * K + k])) * round_bf16(b[n * K + k]);
        ref[m * N + n] = acc;
      }
    EXPECT_LT(calc_diff(out, ref), 1e-3) << "N=" << N << " K=" << K;
  }
}
