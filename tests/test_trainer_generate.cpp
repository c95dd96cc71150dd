// Host side of generation (trainer/generate.h): picking a token from logits (greedy, temperature,
// top-k, the seeded draw), streaming text whose characters span tokens, the prompt's leading EOS,
// and the generation loop past the context: with and without the latent cache it gives the same
// tokens on a small random model whose context is crossed several times.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "kernels/op_types.h"
#include "trainer/generate.h"

using namespace moetron;

namespace {

TEST(PickToken, GreedyIsTheArgmaxLowestIdOnTies) {
  std::mt19937_64 rng(1);
  const std::vector<float> l = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  EXPECT_EQ(pick_token(l.data(), 5, 0.0, 0, rng), 1);
  EXPECT_EQ(pick_token(l.data(), 5, 0.0, 3, rng), 1);
  EXPECT_EQ(pick_token(l.data(), 5, 1.0, 1, rng), 1);  // top-1 is greedy at any temperature
}

TEST(PickToken, DrawsFollowTheSoftmaxOfTheTopK) {
  const std::vector<float> l = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f};
  const double T = 0.7;
  std::mt19937_64 rng(42);
  std::map<int32_t, int> n;
  const int draws = 40000;
  for (int i = 0; i < draws; ++i) ++n[pick_token(l.data(), 5, T, 3, rng)];
  EXPECT_EQ(n.count(1) + n.count(3), 0u);  // outside the top 3 (ids 2, 0, 4)
  double z = 0;
  for (int id : {0, 2, 4}) z += std::exp(l[id] / T);
  for (int id : {0, 2, 4}) {
    const double p = std::exp(l[id] / T) / z;
    EXPECT_NEAR(n[id] / static_cast<double>(draws), p, 0.01) << id;
  }
}

TEST(PickToken, TheSeedFixesTheDraws) {
  const std::vector<float> l(50, 0.0f);
  std::mt19937_64 a(7), b(7), c(8);
  std::vector<int32_t> x, y, z;
  for (int i = 0; i < 20; ++i) {
    x.push_back(pick_token(l.data(), 50, 1.0, 0, a));
    y.push_back(pick_token(l.data(), 50, 1.0, 0, b));
    z.push_back(pick_token(l.data(), 50, 1.0, 0, c));
  }
  EXPECT_EQ(x, y);
  EXPECT_NE(x, z);
}

TEST(TextStream, HoldsBackACharacterSplitOverTokens) {
  const TextCodec bytes = TextCodec::bytes();
  TextStream s(bytes);
  EXPECT_EQ(s.push('a'), "a");
  EXPECT_EQ(s.push(0xE2), "");  // the first of the three bytes of U+2014 (em dash)
  EXPECT_EQ(s.push(0x80), "");
  EXPECT_EQ(s.push(0x94), "\xE2\x80\x94");
  EXPECT_EQ(s.push(static_cast<int32_t>(bytes.eos())), "");  // specials print nothing
  EXPECT_EQ(s.push(0xC3), "");
  EXPECT_EQ(s.finish(), "\xC3");  // what is left at the end comes out as it is
}

TEST(PromptIds, StartWithEos) {
  const TextCodec bytes = TextCodec::bytes();
  const std::vector<int32_t> ids = prompt_ids(bytes, "Hi");
  EXPECT_EQ(ids, (std::vector<int32_t>{bytes.eos(), 'H', 'i'}));
  EXPECT_EQ(prompt_ids(bytes, ""), std::vector<int32_t>{bytes.eos()});
  EXPECT_EQ(bytes.decode(ids), "Hi");
}

ModelConfig small_config(int64_t context) {
  ModelConfig c;
  c.vocab_size = 40;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.moe_intermediate_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.n_group = 4;
  c.topk_group = 2;
  c.q_lora_rank = 16;
  c.kv_lora_rank = 12;
  c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 8;
  c.num_nextn_predict_layers = 0;
  c.max_seq_len = context;
  c.init_std = 0.5;  // large: logits far from uniform, so greedy decoding varies
  return c;
}

TEST(Generate, CachedAndUncachedAgreePastTheContext) {
  kernels::set_num_threads(1);  // tiny ops: threads would only wait for each other
  Model<float> model(small_config(8), PrecisionPolicy{});
  model.init(3);
  Decoder<float> dec(model, 8);
  const std::vector<int32_t> prompt = {1, 5, 9};
  for (double temperature : {0.0, 1.0}) {
    GenerateOptions o;
    o.max_tokens = 40, o.temperature = temperature, o.top_k = 0, o.seed = 11;
    std::vector<int32_t> emitted;
    const auto a = generate(dec, prompt, o, -1, [&](int32_t id) { emitted.push_back(id); });
    o.cache = false;
    const auto b = generate(dec, prompt, o, -1, [](int32_t) {});
    EXPECT_EQ(a.size(), 40u);
    EXPECT_EQ(a, b) << "temperature " << temperature;
    EXPECT_EQ(a, emitted);
    std::map<int32_t, int> distinct;
    for (int32_t t : a) ++distinct[t];
    EXPECT_GT(distinct.size(), 3u) << "temperature " << temperature;
  }
}

TEST(Generate, StopsAtTheStopToken) {
  kernels::set_num_threads(1);
  Model<float> model(small_config(16), PrecisionPolicy{});
  model.init(4);
  Decoder<float> dec(model, 16);
  GenerateOptions o;
  o.max_tokens = 10, o.temperature = 0;
  const auto all = generate(dec, {2}, o, -1, [](int32_t) {});
  const auto cut = generate(dec, {2}, o, all[3], [](int32_t) {});
  size_t first = 0;
  while (all[first] != all[3]) ++first;
  EXPECT_EQ(cut, std::vector<int32_t>(all.begin(), all.begin() + first + 1));
  EXPECT_THROW(generate(dec, std::vector<int32_t>(17, 1), o, -1, [](int32_t) {}),
               std::invalid_argument);
}

}  // namespace
