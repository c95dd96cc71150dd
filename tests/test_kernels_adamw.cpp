// AdamW tests: several steps against a scalar double reference with fp32 moments; bf16 moments
// stored as the nearest bf16 of the exact new moment (round to nearest even, not truncation);
// decoupled weight decay.
#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

struct Ref {
  double p, m, v;
};

Ref ref_step(Ref s, double g, const AdamWParams& a) {
  s.p -= a.lr * a.weight_decay * s.p;
  s.m = a.beta1 * s.m + (1 - a.beta1) * g;
  s.v = a.beta2 * s.v + (1 - a.beta2) * g * g;
  const double mh = s.m / (1 - std::pow(a.beta1, a.step));
  const double vh = s.v / (1 - std::pow(a.beta2, a.step));
  s.p -= a.lr * mh / (std::sqrt(vh) + a.eps);
  return s;
}

TEST(AdamW, Fp32MomentsMatchScalarReferenceOverSteps) {
  const int64_t n = 1001;
  auto p = cast<float>(rand_vec(n, 1));
  std::vector<float> m(n, 0.f), v(n, 0.f);
  std::vector<Ref> ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = {p[i], 0, 0};
  AdamWParams a;
  a.lr = 1e-2;
  a.weight_decay = 0.1;
  for (int64_t step = 1; step <= 6; ++step) {
    a.step = step;
    const auto g = cast<float>(rand_vec(n, 100 + step, -0.5, 0.5));
    adamw_update<float>(p.data(), g.data(), m.data(), v.data(), n, a);
    for (int64_t i = 0; i < n; ++i) ref[i] = ref_step(ref[i], g[i], a);
  }
  std::vector<double> rp(n), rm(n), rv(n);
  for (int64_t i = 0; i < n; ++i) {
    rp[i] = ref[i].p;
    rm[i] = ref[i].m;
    rv[i] = ref[i].v;
  }
  expect_close(p, rp, 1e-5, "param");
  expect_close(m, rm, 1e-5, "m");
  expect_close(v, rv, 1e-5, "v");
}

// Half a bf16 ulp of x (the largest error of round-to-nearest), for normal x.
double half_ulp_bf16(double x) {
  int e = 0;
  std::frexp(x, &e);  // |x| in [2^(e-1), 2^e)
  return std::ldexp(1.0, e - 1 - 7) / 2;
}

TEST(AdamW, Bf16MomentsAreRoundedToNearest) {
  const int64_t n = 2000;
  auto p = cast<float>(rand_vec(n, 2));
  std::vector<uint16_t> m(n, 0), v(n, 0);
  AdamWParams a;
  a.lr = 3e-3;
  a.weight_decay = 0.01;
  int64_t truncation_would_fail = 0;
  for (int64_t step = 1; step <= 4; ++step) {
    a.step = step;
    const auto g = cast<float>(rand_vec(n, 200 + step, -1, 1));
    std::vector<Ref> before(n);
    for (int64_t i = 0; i < n; ++i) before[i] = {p[i], bf16_to_f32(m[i]), bf16_to_f32(v[i])};
    adamw_update<uint16_t>(p.data(), g.data(), m.data(), v.data(), n, a);
    std::vector<double> rp(n);
    for (int64_t i = 0; i < n; ++i) {
      const Ref r = ref_step(before[i], g[i], a);  // the update uses the unrounded moments
      rp[i] = r.p;
      for (auto [stored, exact] : {std::pair{m[i], r.m}, std::pair{v[i], r.v}}) {
        const double got = bf16_to_f32(stored);
        const double tol = half_ulp_bf16(exact) * (1 + 1e-4);
        ASSERT_LE(std::fabs(got - exact), tol) << "step " << step << " i " << i;
        const double truncated = bits_f32(f32_bits(static_cast<float>(exact)) & 0xffff0000u);
        if (std::fabs(truncated - exact) > tol) ++truncation_would_fail;
      }
    }
    expect_close(p, rp, 1e-5, "param step " + std::to_string(step));
  }
  EXPECT_GT(truncation_would_fail, 100);  // the check above can tell rounding from truncation
}

TEST(AdamW, WeightDecayIsDecoupled) {
  // Zero gradient and zero moments: the Adam term is 0 / (0 + eps) = 0, only the decay acts.
  std::vector<float> p = {1.f, -2.f, 0.5f}, g(3, 0.f), m(3, 0.f), v(3, 0.f);
  AdamWParams a;
  a.lr = 0.1;
  a.weight_decay = 0.5;
  adamw_update<float>(p.data(), g.data(), m.data(), v.data(), 3, a);
  EXPECT_FLOAT_EQ(p[0], 0.95f);
  EXPECT_FLOAT_EQ(p[1], -1.9f);
  EXPECT_FLOAT_EQ(p[2], 0.475f);
  a.step = 0;
  EXPECT_THROW(adamw_update<float>(p.data(), g.data(), m.data(), v.data(), 3, a),
               std::invalid_argument);
}

TEST(AdamW, SegmentsDecayOnlyWhereTheySaySo) {
  // Zero gradients again: a segment with decay shrinks by 1 - lr wd, one without stays.
  std::vector<float> p = {1.f, -2.f, 0.5f, 4.f}, g(4, 0.f), m(4, 0.f), v(4, 0.f);
  AdamWParams a;
  a.lr = 0.1;
  a.weight_decay = 0.5;
  const AdamWSegment<float> segs[] = {
      {p.data(), g.data(), m.data(), v.data(), 2, true},
      {p.data() + 2, g.data(), m.data() + 2, v.data() + 2, 1, false},
      {p.data() + 3, g.data(), m.data() + 3, v.data() + 3, 0, true}};
  adamw_update_segments<float>(segs, 3, a);
  EXPECT_FLOAT_EQ(p[0], 0.95f);
  EXPECT_FLOAT_EQ(p[1], -1.9f);
  EXPECT_EQ(p[2], 0.5f);
  EXPECT_EQ(p[3], 4.f);  // an empty segment touches nothing
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
