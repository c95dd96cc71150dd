// Gradient checks of every layer and of the whole model against central finite differences, in
// double precision, on a small DeepSeek-V3-shaped config with odd sizes. A wrong backward for
// any parameter or input fails these tests.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <random>

#include "model/model.h"

using namespace moetron;

namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 37;
  c.hidden_size = 24;
  c.intermediate_size = 20;
  c.moe_intermediate_size = 6;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 1;
  c.num_attention_heads = 3;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.q_lora_rank = 12;
  c.kv_lora_rank = 10;
  c.qk_nope_head_dim = 6;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 5;
  c.num_nextn_predict_layers = 1;
  c.init_std = 0.3;
  c.seq_aux_alpha = 0.05;  // large, so the balance-loss gradient is visible
  c.lm_head_chunk = 8;     // does not divide the vocabulary
  return c;
}

std::vector<int32_t> random_tokens(int64_t B, int64_t S, int64_t V, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> t(B * (S + 1));
  for (auto& x : t) x = static_cast<int32_t>(g() % V);
  return t;
}

void randomize(std::vector<double>& v, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0, scale);
  for (auto& x : v) x = d(g);
}

// Central difference of f at *x.
double fd(const std::function<double()>& f, double* x, double eps = 1e-6) {
  const double x0 = *x;
  *x = x0 + eps;
  const double fp = f();
  *x = x0 - eps;
  const double fm = f();
  *x = x0;
  return (fp - fm) / (2 * eps);
}

void expect_close(double analytic, double numeric, const std::string& what) {
  const double tol = 1e-6 * std::max(1.0, std::abs(numeric)) + 1e-8;
  EXPECT_NEAR(analytic, numeric, tol) << what;
}

// Checks `per_param` random entries of every trainable parameter.
void check_params(ParamStore<double>& ps, const std::function<double()>& f, int per_param,
                  uint64_t seed) {
  std::mt19937_64 g(seed);
  int checked = 0;
  double max_abs_grad = 0;
  for (auto& p : ps.all()) {
    if (!p->trainable) continue;
    for (int i = 0; i < per_param; ++i) {
      const int64_t j = static_cast<int64_t>(g() % p->numel());
      const double a = p->g()[j];
      max_abs_grad = std::max(max_abs_grad, std::abs(a));
      expect_close(a, fd(f, p->w() + j), p->name + "[" + std::to_string(j) + "]");
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
  EXPECT_GT(max_abs_grad, 1e-6) << "all gradients are ~zero: the check would be vacuous";
}

}  // namespace

TEST(ModelGrad, MLAInputAndWeights) {
  for (int64_t ql : {12, 0}) {
    ModelConfig c = small_config();
    c.q_lora_rank = ql;
    ParamStore<double> ps;
    MLA<double> attn;
    attn.build(ps, "model.layers.0.", c, PrecisionPolicy{}, Exec{});
    attn.init(0.3, 7);
    const int64_t B = 2, S = 5, N = B * S, D = c.hidden_size;
    std::vector<double> h(N * D), R(N * D), out(N * D), dh(N * D, 0.0);
    randomize(h, 1);
    randomize(R, 2);
    std::vector<int32_t> pos(N);
    for (int64_t n = 0; n < N; ++n) pos[n] = static_cast<int32_t>(n % S);
    MLA<double>::State st;
    auto f = [&] {
      attn.forward(st, h.data(), B, S, pos.data(), out.data());
      double s = 0;
      for (int64_t i = 0; i < N * D; ++i) s += out[i] * R[i];
      return s;
    };
    f();
    attn.backward_input(st, h.data(), R.data(), pos.data(), dh.data());
    attn.backward_weight(st, h.data());
    for (int64_t i : {0L, 7L, 31L, N * D - 1})
      expect_close(dh[i], fd(f, &h[i]), "dh[" + std::to_string(i) + "]");
    check_params(ps, f, 4, 3);
  }
}

// tail: the positions at each sequence's end left out of the balance loss and the loads (MTP)
static void check_moe_with_balance_loss(int64_t tail) {
  SCOPED_TRACE("tail " + std::to_string(tail));
  ModelConfig c = small_config();
  ParamStore<double> ps;
  MoE<double> moe;
  moe.build(ps, "model.layers.1.mlp.", c, PrecisionPolicy{},
            std::make_shared<LocalDispatcher<double>>(), Exec{}, tail);
  moe.init(0.3, 11);
  // a non-zero selection bias must change routing but never receive a gradient
  for (int64_t e = 0; e < c.n_routed_experts; ++e) moe.bias()->w()[e] = 0.01 * (e % 3);
  const int64_t B = 2, S = 6, N = B * S, D = c.hidden_size;
  std::vector<double> x(N * D), R(N * D), y(N * D), dx(N * D, 0.0);
  randomize(x, 4);
  randomize(R, 5);
  MoE<double>::State st;
  const double aux = 3.0;  // d(total)/d(balance loss)
  double balance = 0;
  std::vector<int64_t> load(c.n_routed_experts, 0);
  auto f = [&] {
    moe.forward(st, x.data(), B, S, y.data(), &balance, load.data());
    double s = aux * balance;
    for (int64_t i = 0; i < N * D; ++i) s += y[i] * R[i];
    return s;
  };
  f();
  st.aux_grad = aux;
  moe.backward_input(st, R.data(), dx.data());
  moe.backward_weight(st, x.data());
  for (int64_t i : {0L, 13L, 50L, N * D - 1})
    expect_close(dx[i], fd(f, &x[i]), "dx[" + std::to_string(i) + "]");
  check_params(ps, f, 3, 6);
  // every assignment is counted once per forward: no token dropping (loads accumulate)
  std::fill(load.begin(), load.end(), 0);
  f();
  int64_t total = 0;
  for (int64_t v : load) total += v;
  EXPECT_EQ(total, B * (S - tail) * c.num_experts_per_tok);
}

TEST(ModelGrad, MoEWithBalanceLoss) {
  check_moe_with_balance_loss(0);
  check_moe_with_balance_loss(2);  // MTP depth 2: 4 of the 6 positions count
}

TEST(ModelGrad, WholeModelWithMtp) {
  for (int64_t depth : {1, 2}) {
    ModelConfig c = small_config();
    c.num_nextn_predict_layers = depth;
    Model<double> model(c, PrecisionPolicy{});
    model.init(42);
    const int64_t B = 2, S = 6;
    auto tokens = random_tokens(B, S, c.vocab_size, 9);
    Model<double>::MicroBatch mb;
    const double lambda = 0.3;
    auto f = [&] { return model.forward(mb, tokens.data(), B, S, lambda).loss; };
    const Losses l = model.forward(mb, tokens.data(), B, S, lambda);
    EXPECT_NEAR(l.loss, l.lm + lambda * l.mtp + l.balance, 1e-12);
    EXPECT_GT(l.mtp, 0);
    EXPECT_GT(l.balance, 0);
    // expert loads: every position in the main blocks, the S - k with a target in MTP depth k
    model.zero_loads();
    model.forward(mb, tokens.data(), B, S, lambda);
    const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok;
    const size_t n_main = model.moe_layers().size() - static_cast<size_t>(depth);
    for (size_t m = 0; m < model.moe_layers().size(); ++m) {
      const int64_t k = m < n_main ? 0 : static_cast<int64_t>(m - n_main) + 1;
      int64_t total = 0;
      for (int64_t e = 0; e < E; ++e) total += model.loads()[m * E + e];
      EXPECT_EQ(total, B * (S - k) * K) << "MoE layer " << m << " (MTP depth " << k << ")";
    }
    model.params().zero_grad();
    model.backward(mb, 1.0);
    check_params(model.params(), f, 2, 10 + depth);
  }
}

TEST(ModelGrad, GradScaleAndAccumulation) {
  // backward(mb, s) accumulates s * dloss: two half-scaled passes equal one full pass.
  ModelConfig c = small_config();
  Model<double> model(c, PrecisionPolicy{});
  model.init(5);
  const int64_t B = 1, S = 5;
  auto tokens = random_tokens(B, S, c.vocab_size, 3);
  Model<double>::MicroBatch mb;
  model.forward(mb, tokens.data(), B, S, 0.3);
  model.backward(mb, 1.0);
  std::vector<double> full;
  for (auto& p : model.params().all()) full.insert(full.end(), p->g(), p->g() + p->numel());
  model.params().zero_grad();
  for (int r = 0; r < 2; ++r) {
    model.forward(mb, tokens.data(), B, S, 0.3);
    model.backward(mb, 0.5);
  }
  size_t i = 0;
  for (auto& p : model.params().all())
    for (int64_t j = 0; j < p->numel(); ++j, ++i) ASSERT_NEAR(p->g()[j], full[i], 1e-12) << p->name;
}

TEST(ModelGrad, BiasUpdateFollowsLoadSign) {
  ModelConfig c = small_config();
  ParamStore<double> ps;
  MoE<double> moe;
  moe.build(ps, "m.", c, PrecisionPolicy{}, std::make_shared<LocalDispatcher<double>>(), Exec{});
  moe.init(0.1, 1);
  std::vector<int64_t> load = {10, 0, 5, 5, 5, 5, 5, 5};  // mean 5
  moe.update_bias(load.data(), 0.001);
  EXPECT_DOUBLE_EQ(moe.bias()->w()[0], -0.001);  // overloaded: lowered
  EXPECT_DOUBLE_EQ(moe.bias()->w()[1], 0.001);   // underloaded: raised
  EXPECT_DOUBLE_EQ(moe.bias()->w()[2], 0.0);     // at the mean: unchanged
}

TEST(ModelGrad, ParameterNamesFollowHuggingFace) {
  ModelConfig c = small_config();
  Model<float> model(c, PrecisionPolicy{});
  for (const char* name :
       {"model.embed_tokens.weight", "model.layers.0.self_attn.q_a_proj.weight",
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.gate.e_score_correction_bias",
        "model.layers.1.mlp.experts.7.up_proj.weight",
        "model.layers.1.mlp.shared_experts.down_proj.weight", "model.layers.2.eh_proj.weight",
        "model.layers.2.shared_head.norm.weight", "model.norm.weight", "lm_head.weight"})
    EXPECT_NE(model.params().find(name), nullptr) << name;
  EXPECT_FALSE(model.params().find("model.layers.1.mlp.gate.e_score_correction_bias")->trainable);
  EXPECT_FALSE(model.params().find("model.norm.weight")->decay);
}

namespace {
// Gradient of every parameter by name.
std::map<std::string, std::vector<double>> grads_by_name(const ParamStore<double>& ps) {
  std::map<std::string, std::vector<double>> out;
  for (auto& p : ps.all())
    out[p->name].assign(p->grad.data<double>(), p->grad.data<double>() + p->numel());
  return out;
}
}  // namespace

TEST(ModelGrad, DeferredWeightGradientsEqualImmediate) {
  ModelConfig c = small_config();
  Model<double> model(c, PrecisionPolicy{});
  model.init(8);
  const int64_t B = 2, S = 5;
  auto tokens = random_tokens(B, S, c.vocab_size, 4);
  Model<double>::MicroBatch mb;
  model.forward(mb, tokens.data(), B, S, 0.3);
  model.backward(mb, 1.0);
  auto want = grads_by_name(model.params());
  model.params().zero_grad();
  model.forward(mb, tokens.data(), B, S, 0.3);
  model.backward_input(mb, 1.0, nullptr, /*defer_weight=*/true);
  EXPECT_FALSE(mb.deferred.empty());
  model.backward_weight(mb);
  auto got = grads_by_name(model.params());
  for (auto& [name, g] : want) EXPECT_EQ(got[name], g) << name;
}

TEST(ModelGrad, PipelineStagesComposeToTheWholeModel) {
  // Stages run one after another in one process, activations and their gradients handed over
  // by hand, give the whole model's loss and gradients (embedding: first + last stage copies).
  ModelConfig c = small_config();
  c.num_hidden_layers = 3;
  const int64_t B = 2, S = 5, N = B * S, D = c.hidden_size;
  auto tokens = random_tokens(B, S, c.vocab_size, 12);
  Model<double> whole(c, PrecisionPolicy{});
  whole.init(21);
  Model<double>::MicroBatch mb;
  const double want_loss = whole.forward(mb, tokens.data(), B, S, 0.3).loss;
  whole.backward(mb, 1.0);
  auto want = grads_by_name(whole.params());

  for (int64_t P : {2, 3}) {
    std::vector<std::unique_ptr<Model<double>>> st;
    std::vector<Model<double>::MicroBatch> mbs(P);
    for (int64_t s = 0; s < P; ++s) {
      st.push_back(std::make_unique<Model<double>>(c, PrecisionPolicy{}, nullptr, StageSpec{s, P}));
      st.back()->init(21);
    }
    const double* h = nullptr;
    double loss = 0;
    for (int64_t s = 0; s < P; ++s) {
      loss += st[s]->forward(mbs[s], tokens.data(), B, S, 0.3, h).loss;
      h = st[s]->output(mbs[s]);
    }
    EXPECT_NEAR(loss, want_loss, 1e-12) << "P=" << P;
    std::vector<double> dh;
    for (int64_t s = P - 1; s >= 0; --s) {
      st[s]->backward(mbs[s], 1.0, s == P - 1 ? nullptr : dh.data());
      dh.assign(mbs[s].dh.data(), mbs[s].dh.data() + N * D);
    }
    std::map<std::string, std::vector<double>> got;
    for (auto& m : st)
      for (auto& [name, g] : grads_by_name(m->params())) {
        auto& acc = got[name];
        if (acc.empty()) acc.assign(g.size(), 0.0);
        for (size_t i = 0; i < g.size(); ++i) acc[i] += g[i];
      }
    ASSERT_EQ(got.size(), want.size());
    for (auto& [name, g] : want) {
      ASSERT_EQ(got[name].size(), g.size()) << name;
      for (size_t i = 0; i < g.size(); ++i)
        ASSERT_NEAR(got[name][i], g[i], 1e-12) << name << " P=" << P;
    }
  }
}
