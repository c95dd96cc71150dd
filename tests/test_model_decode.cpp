// Decoding with MLA's latent cache (model/decode.h) against the training forward over the whole
// prefix (Decoder::forward_uncached): the logits of a prompt fed at once and of every token fed
// one at a time after it agree to round-off, in double and in float, with and without query
// compression; the cache holds the window and refuses more; the model's expert loads are not
// touched. Small DeepSeek-V3-shaped models with random weights,
// random norm weights and a random expert bias (so selection and weighting differ).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <vector>

#include "kernels/op_types.h"
#include "model/decode.h"

using namespace moetron;

namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 53;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.moe_intermediate_size = 12;
  c.num_hidden_layers = 3;
  c.first_k_dense_replace = 1;
  c.num_attention_heads = 3;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.q_lora_rank = 12;
  c.kv_lora_rank = 10;
  c.qk_nope_head_dim = 6;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 5;
  c.num_nextn_predict_layers = 0;
  c.max_seq_len = 64;
  c.init_std = 0.2;
  return c;
}

template <class T>
void randomize(Model<T>& m, uint64_t seed) {
  m.init(seed);
  std::mt19937_64 g(seed ^ 0xdec0de);
  std::uniform_real_distribution<double> u(-1, 1);
  for (auto& p : m.params().all()) {
    if (p->value.ndim() != 1) continue;  // norm weights around 1, the bias large enough to route
    for (int64_t i = 0; i < p->numel(); ++i)
      p->w()[i] = static_cast<T>(p->trainable ? 1 + 0.3 * u(g) : 0.05 * u(g));
  }
}

std::vector<int32_t> tokens(int64_t n, int64_t V, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = static_cast<int32_t>(g() % V);
  return t;
}

// max |a - b| / max |b| over n values
template <class T>
double rel_err(const T* a, const T* b, int64_t n) {
  double d = 0, s = 0;
  for (int64_t i = 0; i < n; ++i) {
    d = std::max(d, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    s = std::max(s, std::abs(static_cast<double>(b[i])));
  }
  return d / s;
}

// Feeds `prompt` tokens at once, then the rest one at a time; every step's logits against the
// uncached forward of the whole prefix. Returns the worst relative error.
template <class T>
double cached_vs_uncached(const ModelConfig& c, int64_t window, int64_t prompt, int64_t total,
                          uint64_t seed) {
  kernels::set_num_threads(1);  // tiny ops: threads would only wait for each other
  Model<T> model(c, PrecisionPolicy{});
  randomize(model, seed);
  Decoder<T> dec(model, window);
  Decoder<T> ref(model, window);
  const int64_t V = c.vocab_size;
  const std::vector<int32_t> ids = tokens(total, V, seed + 1);
  std::vector<T> got, want;
  double worst = 0;
  auto compare = [&](const T* cached, int64_t rows, int64_t end) {
    got.assign(cached, cached + rows * V);
    const T* full = ref.forward_uncached(ids.data(), end);
    want.assign(full + (end - rows) * V, full + end * V);
    const double e = rel_err(got.data(), want.data(), rows * V);
    worst = std::max(worst, e);
    return e;
  };
  compare(dec.forward(ids.data(), prompt), prompt, prompt);
  for (int64_t t = prompt; t < total; ++t) compare(dec.forward(&ids[t], 1), 1, t + 1);
  EXPECT_EQ(dec.length(), total);
  return worst;
}

TEST(Decode, CachedLogitsEqualTheFullPrefixInDouble) {
  const double e = cached_vs_uncached<double>(small_config(), 64, 7, 40, 11);
  EXPECT_LT(e, 1e-12);
  std::cout << "double: worst relative logit difference " << e << "\n";
}

TEST(Decode, CachedLogitsEqualTheFullPrefixInFloat) {
  const double e = cached_vs_uncached<float>(small_config(), 64, 5, 48, 12);
  EXPECT_LT(e, 2e-5);
  std::cout << "float: worst relative logit difference " << e << "\n";
}

TEST(Decode, WithoutQueryCompressionAndOneTokenPrompt) {
  ModelConfig c = small_config();
  c.q_lora_rank = 0;
  c.first_k_dense_replace = 0;  // every block MoE
  EXPECT_LT(cached_vs_uncached<double>(c, 64, 1, 20, 13), 1e-12);
}

TEST(Decode, TheWindowBoundsTheCache) {
  EXPECT_LT(cached_vs_uncached<double>(small_config(), 9, 3, 9, 14), 1e-12);  // fills it exactly
  Model<double> model(small_config(), PrecisionPolicy{});
  randomize(model, 3);
  Decoder<double> dec(model, 4);
  const std::vector<int32_t> ids = tokens(5, 53, 4);
  EXPECT_THROW(dec.forward(ids.data(), 5), std::invalid_argument);
  dec.forward(ids.data(), 3);
  EXPECT_THROW(dec.forward(ids.data(), 2), std::invalid_argument);
  dec.forward(ids.data(), 1);
  EXPECT_THROW(dec.forward(ids.data(), 1), std::invalid_argument);
  dec.reset();
  EXPECT_EQ(dec.length(), 0);
  dec.forward(ids.data(), 4);
}

TEST(Decode, LeavesTheModelsExpertLoadsAlone) {
  Model<float> model(small_config(), PrecisionPolicy{});
  randomize(model, 5);
  model.zero_loads();
  Decoder<float> dec(model, 16);
  const std::vector<int32_t> ids = tokens(8, 53, 6);
  dec.forward(ids.data(), 8);
  dec.forward(ids.data(), 1);
  const int64_t n = static_cast<int64_t>(model.moe_layers().size()) * 8;
  ASSERT_GT(n, 0);
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(model.loads()[i], 0) << i;
}

}  // namespace
