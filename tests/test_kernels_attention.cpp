// Attention tests: the tiled online-softmax forward and the recomputing backward against a naive
// full-softmax reference in double (causal), on odd sizes, Dqk != Dv, and S = 130 so that query
// and key tiles end mid-way; the double backward also against finite differences.
#include <sstream>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

struct Dims {
  int64_t B, S, H, Dqk, Dv;
};

struct AttnRef {
  std::vector<double> o, lse, dq, dk, dv;
};

// Naive causal attention, forward and (if dout is given) backward, materialising the full
// per-head [S, S] probabilities.
AttnRef ref_attention(const Dims& d, const std::vector<double>& q, const std::vector<double>& k,
                      const std::vector<double>& v, double scale,
                      const std::vector<double>* dout = nullptr) {
  const int64_t B = d.B, S = d.S, H = d.H, Dq = d.Dqk, Dv = d.Dv;
  AttnRef r;
  r.o.assign(B * S * H * Dv, 0);
  r.lse.assign(B * H * S, 0);
  r.dq.assign(q.size(), 0);
  r.dk.assign(k.size(), 0);
  r.dv.assign(v.size(), 0);
  auto qi = [&](int64_t b, int64_t i, int64_t h) { return &q[((b * S + i) * H + h) * Dq]; };
  auto ki = [&](int64_t b, int64_t i, int64_t h) { return &k[((b * S + i) * H + h) * Dq]; };
  auto vi = [&](int64_t b, int64_t i, int64_t h) { return &v[((b * S + i) * H + h) * Dv]; };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> P(S * S, 0.0);
      for (int64_t i = 0; i < S; ++i) {
        double m = -1e300;
        std::vector<double> s(i + 1);
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t x = 0; x < Dq; ++x) dot += qi(b, i, h)[x] * ki(b, j, h)[x];
          s[j] = dot * scale;
          m = std::max(m, s[j]);
        }
        double l = 0;
        for (int64_t j = 0; j <= i; ++j) l += std::exp(s[j] - m);
        const double lse = m + std::log(l);
        r.lse[(b * H + h) * S + i] = lse;
        for (int64_t j = 0; j <= i; ++j) {
          P[i * S + j] = std::exp(s[j] - lse);
          for (int64_t x = 0; x < Dv; ++x)
            r.o[((b * S + i) * H + h) * Dv + x] += P[i * S + j] * vi(b, j, h)[x];
        }
      }
      if (!dout) continue;
      const double* g = dout->data();
      for (int64_t i = 0; i < S; ++i) {
        const double* gi = g + ((b * S + i) * H + h) * Dv;
        std::vector<double> dP(i + 1);
        double D = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dp = 0;
          for (int64_t x = 0; x < Dv; ++x) dp += gi[x] * vi(b, j, h)[x];
          dP[j] = dp;
          D += P[i * S + j] * dp;
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double p = P[i * S + j], dS = p * (dP[j] - D);
          for (int64_t x = 0; x < Dv; ++x) r.dv[((b * S + j) * H + h) * Dv + x] += p * gi[x];
          for (int64_t x = 0; x < Dq; ++x) {
            r.dq[((b * S + i) * H + h) * Dq + x] += scale * dS * ki(b, j, h)[x];
            r.dk[((b * S + j) * H + h) * Dq + x] += scale * dS * qi(b, i, h)[x];
          }
        }
      }
    }
  }
  return r;
}

const Dims kDims[] = {
    {2, 37, 3, 24, 16},    // odd S, Dqk != Dv, widths that are not whole vectors
    {1, 130, 2, 20, 12},   // query and key tiles both end mid-tile
    {1, 29, 2, 192, 128},  // MLA head dims
    {3, 1, 1, 5, 3},       // a single position
    {1, 70, 1, 16, 48},    // Dv > Dqk
};

template <class T>
class AttentionTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(AttentionTest, Types);

TYPED_TEST(AttentionTest, ForwardAndBackwardMatchNaive) {
  using T = TypeParam;
  uint64_t seed = 1;
  for (const Dims& d : kDims) {
    std::ostringstream os;
    os << "B" << d.B << " S" << d.S << " H" << d.H << " Dqk" << d.Dqk << " Dv" << d.Dv;
    const std::string tag = os.str();
    const int64_t nq = d.B * d.S * d.H * d.Dqk, nv = d.B * d.S * d.H * d.Dv;
    const auto q = to_double(cast<T>(rand_vec(nq, seed++, -2, 2)));
    const auto k = to_double(cast<T>(rand_vec(nq, seed++, -2, 2)));
    const auto v = to_double(cast<T>(rand_vec(nv, seed++)));
    const auto g = to_double(cast<T>(rand_vec(nv, seed++)));
    const double scale = 1.0 / std::sqrt(static_cast<double>(d.Dqk)) * 1.5;
    std::vector<T> o(nv), lse(d.B * d.H * d.S), dq(nq), dk(nq), dv(nv);
    attention_forward<T>(cast<T>(q).data(), cast<T>(k).data(), cast<T>(v).data(), d.B, d.S, d.H,
                         d.Dqk, d.Dv, T(scale), o.data(), lse.data());
    // The backward reads o and lse as the forward produced them (in T).
    attention_backward<T>(cast<T>(g).data(), cast<T>(q).data(), cast<T>(k).data(),
                          cast<T>(v).data(), o.data(), lse.data(), d.B, d.S, d.H, d.Dqk, d.Dv,
                          T(scale), dq.data(), dk.data(), dv.data());
    const AttnRef r = ref_attention(d, q, k, v, scale, &g);
    expect_close(o, r.o, kTol<T>, tag + " o");
    expect_close(lse, r.lse, kTol<T>, tag + " lse");
    expect_close(dq, r.dq, 2 * kTol<T>, tag + " dq");
    expect_close(dk, r.dk, 2 * kTol<T>, tag + " dk");
    expect_close(dv, r.dv, 2 * kTol<T>, tag + " dv");
  }
}

// BF16 products (the attention core of the bf16 and fp8 recipes): against the naive reference fed
// the operands the kernel rounds (scale q, k, v and dO in bf16), which leaves only the rounding of
// P and dS and the order of the sums between them; and against the exact inputs within bf16's
// error. The rounding is live: the outputs differ from the fp32 products'.
TYPED_TEST(AttentionTest, Bf16ProductsMatchNaiveOnRoundedOperands) {
  using T = TypeParam;
  auto rounded = [](const std::vector<T>& x, T mul) {
    std::vector<double> r(x.size());
    for (size_t i = 0; i < x.size(); ++i) r[i] = round_bf16(static_cast<float>(x[i] * mul));
    return r;
  };
  uint64_t seed = 101;
  for (const Dims& d : kDims) {
    std::ostringstream os;
    os << "bf16 B" << d.B << " S" << d.S << " H" << d.H << " Dqk" << d.Dqk << " Dv" << d.Dv;
    const std::string tag = os.str();
    const int64_t nq = d.B * d.S * d.H * d.Dqk, nv = d.B * d.S * d.H * d.Dv;
    const auto q = cast<T>(rand_vec(nq, seed++, -2, 2)), k = cast<T>(rand_vec(nq, seed++, -2, 2));
    const auto v = cast<T>(rand_vec(nv, seed++)), g = cast<T>(rand_vec(nv, seed++));
    const T scale = T(1.5 / std::sqrt(static_cast<double>(d.Dqk)));
    std::vector<T> o(nv), o32(nv), lse(d.B * d.H * d.S), dq(nq), dk(nq), dv(nv);
    attention_forward<T>(q.data(), k.data(), v.data(), d.B, d.S, d.H, d.Dqk, d.Dv, scale,
                         o32.data(), lse.data());
    attention_forward<T>(q.data(), k.data(), v.data(), d.B, d.S, d.H, d.Dqk, d.Dv, scale, o.data(),
                         lse.data(), GemmPrecision::BF16);
    attention_backward<T>(g.data(), q.data(), k.data(), v.data(), o.data(), lse.data(), d.B, d.S,
                          d.H, d.Dqk, d.Dv, scale, dq.data(), dk.data(), dv.data(),
                          GemmPrecision::BF16);
    const auto gr = rounded(g, T(1));
    AttnRef r = ref_attention(d, rounded(q, scale), rounded(k, T(1)), rounded(v, T(1)), 1.0, &gr);
    for (double& x : r.dq) x *= scale;  // the reference differentiates by scale q
    expect_close(o, r.o, 2e-3, tag + " o");
    expect_close(lse, r.lse, 1e-5, tag + " lse");
    expect_close(dq, r.dq, 4e-3, tag + " dq");
    expect_close(dk, r.dk, 4e-3, tag + " dk");
    expect_close(dv, r.dv, 4e-3, tag + " dv");
    const AttnRef x = ref_attention(d, to_double(q), to_double(k), to_double(v), scale);
    expect_close(o, x.o, 1e-2, tag + " o (exact inputs)");
    double moved = 0;
    for (int64_t i = 0; i < nv; ++i) moved = std::max(moved, std::fabs(double(o[i] - o32[i])));
    EXPECT_GT(moved, 1e-4) << tag << ": bf16 products changed nothing";
  }
}

// Gradients of f = sum(o * g) by central differences, in double.
TEST(Attention, BackwardMatchesFiniteDifferences) {
  for (const Dims& d : {Dims{2, 37, 3, 24, 16}, Dims{1, 130, 1, 12, 20}}) {
    const int64_t nq = d.B * d.S * d.H * d.Dqk, nv = d.B * d.S * d.H * d.Dv;
    auto q = rand_vec(nq, 21, -2, 2), k = rand_vec(nq, 22, -2, 2), v = rand_vec(nv, 23);
    const auto g = rand_vec(nv, 24);
    const double scale = 0.3;
    std::vector<double> o(nv), lse(d.B * d.H * d.S), dq(nq), dk(nq), dv(nv);
    auto f = [&] {
      attention_forward<double>(q.data(), k.data(), v.data(), d.B, d.S, d.H, d.Dqk, d.Dv, scale,
                                o.data(), lse.data());
      return dot(o, g);
    };
    f();
    attention_backward<double>(g.data(), q.data(), k.data(), v.data(), o.data(), lse.data(), d.B,
                               d.S, d.H, d.Dqk, d.Dv, scale, dq.data(), dk.data(), dv.data());
    expect_grad_fd(f, q, dq, "dq");
    expect_grad_fd(f, k, dk, "dk");
    expect_grad_fd(f, v, dv, "dv");
  }
}

// Large scores exercise the running-max rescaling across key tiles (each row's max moves).
TEST(Attention, OnlineSoftmaxIsStableForLargeScores) {
  const Dims d{1, 150, 1, 8, 8};
  const int64_t n = d.S * d.Dqk;
  std::vector<double> q(n), k(n), v = rand_vec(n, 5);
  for (int64_t i = 0; i < d.S; ++i) {
    for (int64_t x = 0; x < d.Dqk; ++x) {
      q[i * d.Dqk + x] = 3.0 + 0.01 * x;
      k[i * d.Dqk + x] = 0.2 * i;  // later keys score higher: the max grows tile by tile
    }
  }
  std::vector<float> o(n), lse(d.S);
  attention_forward<float>(cast<float>(q).data(), cast<float>(k).data(), cast<float>(v).data(), d.B,
                           d.S, d.H, d.Dqk, d.Dv, 1.0f, o.data(), lse.data());
  const AttnRef r = ref_attention(d, to_double(cast<float>(q)), to_double(cast<float>(k)),
                                  to_double(cast<float>(v)), 1.0);
  expect_close(o, r.o, 1e-5, "o");
  expect_close(lse, r.lse, 1e-5, "lse");
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
