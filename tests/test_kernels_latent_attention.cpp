// Latent attention (MLA decoding): against a naive softmax in double on odd sizes, several new
// tokens after a cached prefix (causal among them) and MLA's head dims; with no prefix it equals
// the training attention given the shared row as every head's key and its first Dv values as the
// value.
#include <sstream>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

struct Dims {
  int64_t M, past, H, Dk, Dv;
};

std::vector<double> ref_latent(const Dims& d, const std::vector<double>& q,
                               const std::vector<double>& kv, double scale) {
  std::vector<double> o(d.M * d.H * d.Dv, 0.0);
  for (int64_t m = 0; m < d.M; ++m) {
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t n = d.past + m + 1;
      std::vector<double> s(n);
      double mx = -1e300;
      for (int64_t t = 0; t < n; ++t) {
        double dot = 0;
        for (int64_t x = 0; x < d.Dk; ++x) dot += q[(m * d.H + h) * d.Dk + x] * kv[t * d.Dk + x];
        s[t] = dot * scale;
        mx = std::max(mx, s[t]);
      }
      double l = 0;
      for (double& v : s) l += (v = std::exp(v - mx));
      for (int64_t t = 0; t < n; ++t)
        for (int64_t x = 0; x < d.Dv; ++x)
          o[(m * d.H + h) * d.Dv + x] += s[t] / l * kv[t * d.Dk + x];
    }
  }
  return o;
}

const Dims kDims[] = {
    {1, 0, 1, 5, 3},         // the first token: one row
    {1, 37, 3, 27, 19},      // one new token after a prefix (decoding), odd widths
    {5, 11, 4, 80, 64},      // several new tokens after a prefix (tiny.yaml's kv_lora + rope dims)
    {33, 0, 2, 13, 13},      // a prompt (prefill), Dv = Dk
    {1, 300, 16, 576, 512},  // DeepSeek-V3's latent (512) + rope (64)
};

template <class T>
class LatentAttentionTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LatentAttentionTest, Types);

TYPED_TEST(LatentAttentionTest, MatchesNaive) {
  using T = TypeParam;
  uint64_t seed = 7;
  for (const Dims& d : kDims) {
    std::ostringstream os;
    os << "M" << d.M << " past" << d.past << " H" << d.H << " Dk" << d.Dk << " Dv" << d.Dv;
    const auto q = to_double(cast<T>(rand_vec(d.M * d.H * d.Dk, seed++, -1, 1)));
    const auto kv = to_double(cast<T>(rand_vec((d.past + d.M) * d.Dk, seed++, -1, 1)));
    const double scale = 1.3 / std::sqrt(static_cast<double>(d.Dk));
    std::vector<T> o(d.M * d.H * d.Dv);
    latent_attention_forward<T>(cast<T>(q).data(), cast<T>(kv).data(), d.M, d.past, d.H, d.Dk, d.Dv,
                                T(scale), o.data());
    expect_close(o, ref_latent(d, q, kv, scale), kTol<T>, os.str());
  }
}

TEST(LatentAttention, EqualsTrainingAttentionWithSharedKeys) {
  const int64_t S = 23, H = 3, Dk = 20, Dv = 12;
  const auto q = rand_vec(S * H * Dk, 1), kv = rand_vec(S * Dk, 2);
  std::vector<double> k(S * H * Dk), v(S * H * Dv);
  for (int64_t t = 0; t < S; ++t)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t x = 0; x < Dk; ++x) k[(t * H + h) * Dk + x] = kv[t * Dk + x];
      for (int64_t x = 0; x < Dv; ++x) v[(t * H + h) * Dv + x] = kv[t * Dk + x];
    }
  std::vector<double> o(S * H * Dv), o_ref(S * H * Dv), lse(H * S);
  latent_attention_forward<double>(q.data(), kv.data(), S, 0, H, Dk, Dv, 0.4, o.data());
  attention_forward<double>(q.data(), k.data(), v.data(), 1, S, H, Dk, Dv, 0.4, o_ref.data(),
                            lse.data());
  expect_close(o, o_ref, 1e-12, "latent vs training attention");
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
