// The FP8 recipe in the model (model/precision.h, model/linear.h; SPEC-deepseek-v3 §3):
//   - an FP8 Linear's forward, input gradient and weight gradient against a BF16-input reference
//     with DeepGEMM's criterion calc_diff = 1 - 2 sum(xy) / sum(x^2 + y^2) < 1e-3, on DeepSeek-V3
//     projection shapes divided by 16 and on the tiny model's odd sizes, for every scale rule and
//     both Dgrad tilings; a wrong weight scale (x2) fails the same criterion; with outlier
//     tokens in the activation gradient, 128x128 Dgrad tiles fail it where 1x128 passes;
//   - the weight cache: re-quantised every forward without a version counter, only when the
//     counter moves with one;
//   - the whole model (odd sizes: nothing is a multiple of 128) in fp8 against fp32: loss and
//     every weight gradient within stated tolerances, which fail when one layer's FP8 weight
//     scales are stale by a factor of 2;
//   - the activation cache: FP8 states hold uint8 codes and no fp32 copy of the cached inputs;
//     bytes saved per micro-batch for a dense and a MoE layer on the tiny config's shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/op_profile.h"
#include "kernels/scalar.h"
#include "model/model.h"

using namespace moetron;

namespace {

// DeepGEMM's criterion, in double
double calc_diff(const std::vector<double>& x, const std::vector<double>& y) {
  double xy = 0, xx = 0;
  for (size_t i = 0; i < x.size(); ++i) xy += x[i] * y[i], xx += x[i] * x[i] + y[i] * y[i];
  return xx == 0 ? 0 : 1 - 2 * xy / xx;
}

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(g);
  return v;
}

double bf(float x) { return static_cast<double>(round_bf16(x)); }

// y = op(a) op(b) in double from bf16-rounded inputs: C[M,N] = sum_k A(m,k) B(k,n)
template <class FA, class FB>
std::vector<double> ref_gemm(int64_t M, int64_t N, int64_t K, FA a, FB b) {
  std::vector<double> c(M * N, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += a(m, k) * b(k, n);
      c[m * N + n] = s;
    }
  return c;
}

std::vector<double> to_double(const float* p, size_t n) { return std::vector<double>(p, p + n); }

struct LinearDiffs {
  double fprop, dgrad, wgrad;
};

// A Linear [in -> out] on M tokens: its weight, input and output gradient, and the BF16-input
// references of its three GEMMs (computed once per shape, shared by every policy tried on it).
struct LinearCase {
  int64_t M, in, out;
  std::vector<float> w, x, dy;
  std::vector<double> y_ref, dx_ref, dw_ref;
};

LinearCase linear_case(int64_t M, int64_t in, int64_t out) {
  LinearCase c{M,
               in,
               out,
               randn(out * in, 3 + static_cast<uint32_t>(in), 0.05f),
               randn(M * in, 5 + static_cast<uint32_t>(out)),
               randn(M * out, 7 + static_cast<uint32_t>(M)),
               {},
               {},
               {}};
  const std::vector<float>&w = c.w, &x = c.x, &dy = c.dy;
  auto X = [&](int64_t m, int64_t k) { return bf(x[m * in + k]); };
  c.y_ref = ref_gemm(M, out, in, X, [&](int64_t k, int64_t n) { return bf(w[n * in + k]); });
  c.dx_ref = ref_gemm(
      M, in, out, [&](int64_t m, int64_t n) { return bf(dy[m * out + n]); },
      [&](int64_t n, int64_t k) { return bf(w[n * in + k]); });
  c.dw_ref = ref_gemm(
      out, in, M, [&](int64_t n, int64_t m) { return bf(dy[m * out + n]); },
      [&](int64_t m, int64_t k) { return X(m, k); });
  return c;
}

// The case's FP8 Linear under pol against its BF16-input references.
LinearDiffs fp8_linear_diffs(const LinearCase& c, const PrecisionPolicy& pol, bool o_proj,
                             bool corrupt_scales) {
  const int64_t M = c.M, in = c.in, out = c.out;
  ParamStore<float> ps;
  Param<float>* W = ps.add("w", {out, in});
  std::copy(c.w.begin(), c.w.end(), W->w());
  W->grad.zero();
  Linear<float> l =
      Linear<float>::make(W, in, out, pol.linear(Component::AttentionProj, o_proj), pol, Exec{});
  SavedAct<float> xs;  // the input as the Linear keeps it (FP8 1x128 tiles)
  std::copy(c.x.begin(), c.x.end(), l.input(xs, M));
  l.keep(xs);
  EXPECT_TRUE(xs.fp8());
  std::vector<float> y(M * out), dx(M * in);
  l.wq->refresh(Exec{}, W->w(), 1, out, in, l.lp.pow2_w, nullptr);
  if (corrupt_scales) {  // every weight block's scale doubled, and the cache kept (version 0)
    for (size_t i = 0; i < l.wq->s.size(); ++i) l.wq->s.data()[i] *= 2;
    static uint64_t frozen = 0;
    l.version = &frozen;
  }
  l.forward(xs, y.data());
  l.backward_input(c.dy.data(), M, dx.data());
  l.backward_weight(c.dy.data(), xs);
  return {calc_diff(to_double(y.data(), y.size()), c.y_ref),
          calc_diff(to_double(dx.data(), dx.size()), c.dx_ref),
          calc_diff(to_double(W->g(), out * in), c.dw_ref)};
}

}  // namespace

TEST(Fp8Linear, DeepGemmCriterionOnV3AndTinyShapes) {
  // (tokens, in, out): DeepSeek-V3 projections / 16 (q_a, q_b, kv_a, kv_b, o_proj, expert up,
  // expert down), then the tiny model's odd widths and sizes that fill no tile.
  const std::tuple<int64_t, int64_t, int64_t> shapes[] = {
      {256, 448, 96},  {256, 96, 1152}, {256, 448, 36}, {256, 32, 2048}, {256, 1024, 448},
      {256, 448, 256}, {256, 128, 448}, {200, 256, 96}, {200, 96, 320},  {200, 256, 80},
      {200, 64, 256},  {200, 264, 768}, {131, 300, 5},  {37, 130, 257},  {1, 129, 3}};
  for (auto [M, in, out] : shapes) {
    const LinearCase c = linear_case(M, in, out);
    for (const auto& [scales_value, scales] : kPow2ScalesWords)
      for (const auto& [tile_value, tile] : kDgradTileWords) {
        PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
        pol.pow2_scales = scales_value;
        pol.dgrad_tile = tile_value;
        for (bool o_proj : {false, true}) {
          const LinearDiffs d = fp8_linear_diffs(c, pol, o_proj, false);
          const std::string what = std::string(scales) + " " + tile + " M=" + std::to_string(M) +
                                   " in=" + std::to_string(in) + " out=" + std::to_string(out);
          // the criterion is a statistic: outputs of fewer than ~1000 values (the last two
          // edge shapes' Fprop, Wgrad) get twice the bound
          EXPECT_LT(d.fprop, M * out < 1000 ? 3e-3 : 1e-3) << "fprop " << what;
          EXPECT_LT(d.dgrad, M * in < 1000 ? 3e-3 : 1e-3) << "dgrad " << what;
          EXPECT_LT(d.wgrad, out * in < 2000 ? 3e-3 : 1e-3) << "wgrad " << what;
        }
      }
  }
}

TEST(Fp8Linear, WrongWeightScalesFailTheCriterion) {
  const PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
  const LinearCase c = linear_case(256, 448, 96);
  const LinearDiffs good = fp8_linear_diffs(c, pol, false, false);
  const LinearDiffs bad = fp8_linear_diffs(c, pol, false, true);
  EXPECT_LT(good.fprop, 1e-3);
  EXPECT_GT(bad.fprop, 0.05) << "a factor-2 scale error must be visible";
  EXPECT_GT(bad.dgrad, 0.05);
}

// SPEC App. B.2: activation gradients carry token-correlated outliers, and one scale per 128x128
// block then sets the other tokens' codes from the outlier's amax. Every 32nd token's gradient is
// R times the others'. E4M3's normal range spans 448 / 2^-6 = 28672 and its subnormals reach
// 448 / 2^-9: with 1x128 tiles each token keeps its own scale and the other tokens' dX meets the
// DeepGEMM criterion at any R; with 128x128 blocks nothing changes up to R = 1e3, the criterion
// fails at 1e4 (subnormals) and the error is ~90x 1x128's at 1e5 (most codes flushed to zero).
TEST(Fp8Linear, Dgrad128x128LosesTheTokensBesideAnOutlier) {
  const int64_t M = 256, in = 256, out = 256;
  ParamStore<float> ps;
  Param<float>* W = ps.add("w", {out, in});
  const auto w = randn(out * in, 11, 0.05f);
  std::copy(w.begin(), w.end(), W->w());
  // calc_diff of the non-outlier tokens' dX rows (together) against the BF16-input reference
  auto small_tokens_diff = [&](DgradTile tile, float ratio) {
    auto dy = randn(M * out, 13);
    for (int64_t m = 0; m < M; m += 32)
      for (int64_t n = 0; n < out; ++n) dy[m * out + n] *= ratio;
    PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
    pol.pow2_scales = Pow2Scales::None;
    pol.dgrad_tile = tile;
    Linear<float> l = Linear<float>::make(W, in, out, pol.linear(Component::DenseMlp), pol, Exec{});
    l.wq->refresh(Exec{}, W->w(), 1, out, in, l.lp.pow2_w, nullptr);
    std::vector<float> dx(M * in);
    l.backward_input(dy.data(), M, dx.data());
    const auto dx_ref = ref_gemm(
        M, in, out, [&](int64_t m, int64_t n) { return bf(dy[m * out + n]); },
        [&](int64_t n, int64_t k) { return bf(w[n * in + k]); });
    std::vector<double> got, ref;
    for (int64_t m = 0; m < M; ++m)
      if (m % 32 != 0)
        for (int64_t k = 0; k < in; ++k)
          got.push_back(dx[m * in + k]), ref.push_back(dx_ref[m * in + k]);
    return calc_diff(got, ref);
  };
  for (float ratio : {1e2f, 1e3f, 1e4f, 1e5f}) {
    const double d1 = small_tokens_diff(DgradTile::Tile1x128, ratio),
                 d128 = small_tokens_diff(DgradTile::Tile128x128, ratio);
    std::printf("outliers %.0e: dX calc_diff of the other tokens, 1x128 %.2e, 128x128 %.2e\n",
                ratio, d1, d128);
    EXPECT_LT(d1, 1e-3) << ratio;
    if (ratio <= 1e3f) {  // within E4M3's normal range: no difference
      EXPECT_LT(d128, 1.1 * d1) << ratio;
    } else {  // subnormals: 128x128 fails the criterion (1e4), then loses the tokens (1e5)
      EXPECT_GT(d128, ratio >= 1e5f ? 30 * d1 : 1e-3) << ratio;
    }
  }
}

TEST(Fp8Linear, WeightCacheFollowsTheVersionCounter) {
  const int64_t M = 64, in = 200, out = 130;
  for (bool versioned : {false, true}) {
    PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
    if (versioned) pol.weight_version = std::make_shared<uint64_t>(0);
    ParamStore<float> ps;
    Param<float>* W = ps.add("w", {out, in});
    const auto w = randn(out * in, 11, 0.05f);
    std::copy(w.begin(), w.end(), W->w());
    const Linear<float> l =
        Linear<float>::make(W, in, out, pol.linear(Component::DenseMlp), pol, Exec{});
    const auto x = randn(M * in, 12);
    std::vector<float> y0(M * out), y1(M * out), y2(M * out);
    l.forward(x.data(), M, y0.data());
    for (int64_t i = 0; i < out * in; ++i) W->w()[i] *= 2;  // an "optimizer step"
    l.forward(x.data(), M, y1.data());
    if (versioned) ++*pol.weight_version;  // Model::weights_updated()
    l.forward(x.data(), M, y2.data());
    int64_t same01 = 0;
    for (int64_t i = 0; i < M * out; ++i) {
      same01 += y0[i] == y1[i];
      EXPECT_NEAR(y2[i], 2 * y0[i], 1e-5 * (1 + std::fabs(y0[i])));  // fresh after the bump
    }
    if (versioned)
      EXPECT_EQ(same01, M * out) << "the cached weight is reused until the counter moves";
    else
      EXPECT_LT(same01, M * out / 10) << "without a counter every forward re-quantises";
  }
}

namespace {

// A Linear and G = 3 grouped experts [200 -> out] over M = 64 rows (groups of 20, 0, 44), each
// made twice from the same weights under recipe r: `cached` with a weight-version counter,
// `plain` without one. run() gives y and dx of the Linear, then of the experts.
struct CopyCase {
  static constexpr int64_t M = 64, in = 200, G = 3;
  const int64_t out;
  const std::vector<int64_t> off = {0, 20, 20, M};
  PrecisionPolicy fresh, pol;
  ParamStore<float> ps;
  Param<float>*W, *We;
  LinearPrecision lp;
  Linear<float> cached, plain;
  GroupedLinear<float> gc, gp;
  std::vector<float> x, dy;

  CopyCase(Recipe r, Component c, int64_t out_, uint32_t seed)
      : out(out_), fresh(PrecisionPolicy::from(r)), pol(fresh) {
    pol.weight_version = std::make_shared<uint64_t>(0);
    W = ps.add("w", {out, in});
    We = ps.add("we", {G, out, in});
    const auto w = randn(G * out * in, seed, 0.05f);
    std::copy(w.begin(), w.begin() + out * in, W->w());
    std::copy(w.begin(), w.end(), We->w());
    lp = pol.linear(c);
    cached = Linear<float>::make(W, in, out, lp, pol, Exec{});
    plain = Linear<float>::make(W, in, out, lp, fresh, Exec{});
    gc = GroupedLinear<float>::make(We, G, in, out, lp, pol, Exec{});
    gp = GroupedLinear<float>::make(We, G, in, out, lp, fresh, Exec{});
    x = randn(M * in, seed + 1), dy = randn(M * out, seed + 2);
  }
  std::vector<float> run(bool with_counter) const {
    const Linear<float>& l = with_counter ? cached : plain;
    const GroupedLinear<float>& g = with_counter ? gc : gp;
    std::vector<float> r(2 * M * (out + in));
    float* p = r.data();
    l.forward(x.data(), M, p);
    l.backward_input(dy.data(), M, p + M * out);
    g.forward(x.data(), M, off.data(), p + M * (out + in));
    g.backward_input(dy.data(), off.data(), p + M * (2 * out + in));
    return r;
  }
  // an "optimizer step": every weight doubled (the counter left as it is)
  void double_weights() {
    for (int64_t i = 0; i < out * in; ++i) W->w()[i] *= 2;
    for (int64_t i = 0; i < G * out * in; ++i) We->w()[i] *= 2;
  }
};

// how many elements of a equal b's
int64_t same_elements(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  return same;
}

// the calls of transpose_e4m3_blocks that f made
template <class F>
int64_t transposes(F&& f) {
  kernels::op_profile::reset();
  kernels::op_profile::set_enabled(true);
  f();
  kernels::op_profile::set_enabled(false);
  for (const auto& row : kernels::op_profile::collect())
    if (row.op == "transpose_e4m3_blocks") return row.calls;
  return 0;
}

}  // namespace

// Dgrad reads W^T, which the FP8 weight cache makes from its codes once per weight version (not
// once per micro-batch): for a Linear and for grouped experts (out = 130 and 256: partial and whole
// 128-row blocks; the experts quantised by one quantize_batched), the cache's codes and W^T are
// the per-expert quantisation and its exact transpose; a versioned Linear's input gradients
// equal, bit for bit, those of a Linear that re-quantises and transposes in every call, while it
// transposes once for two micro-batches; stale until the counter moves, fresh after.
TEST(Fp8Linear, DgradReadsTheCachedTransposeMadeOncePerWeightVersion) {
  for (const int64_t out : {int64_t{130}, int64_t{256}}) {
    CopyCase k(Recipe::FP8, Component::RoutedExpert, out, 21);
    const std::string what = "out " + std::to_string(out);
    std::vector<float> a, b;
    EXPECT_EQ(transposes([&] { a = k.run(true), a = k.run(true); }), 2) << what;
    EXPECT_EQ(transposes([&] { b = k.run(false), b = k.run(false); }), 4) << what;
    EXPECT_EQ(a, b) << what << ": the cached W^T gives the per-call transpose's bits";
    // the cache's codes: each expert quantised alone; its W^T: their exact transposes
    const int64_t in = CopyCase::in, bl = ((out + 127) / 128) * ((in + 127) / 128);
    for (int64_t e = 0; e < CopyCase::G; ++e) {
      std::vector<uint8_t> q(out * in), qt(out * in);
      std::vector<float> sc(bl), st(bl);
      kernels::cpu::quantize(k.We->w() + e * out * in, out, in, kernels::kTile128x128, k.lp.pow2_w,
                             q.data(), sc.data());
      kernels::cpu::transpose_e4m3_blocks(q.data(), sc.data(), out, in, qt.data(), st.data());
      const Fp8WeightCache& c = *k.gc.wq;
      EXPECT_TRUE(std::equal(q.begin(), q.end(), c.q.data() + e * out * in)) << what << " " << e;
      EXPECT_TRUE(std::equal(sc.begin(), sc.end(), c.s.data() + e * bl)) << what << " " << e;
      EXPECT_TRUE(std::equal(qt.begin(), qt.end(), c.qT.data() + e * out * in)) << what << " " << e;
      EXPECT_TRUE(std::equal(st.begin(), st.end(), c.sT.data() + e * bl)) << what << " " << e;
    }
    k.double_weights();
    const auto stale = k.run(true), now = k.run(false);
    EXPECT_LT(same_elements(stale, now), int64_t(now.size()) / 10)
        << what << ": kept until the counter moves";
    ++*k.pol.weight_version;  // Model::weights_updated()
    EXPECT_EQ(transposes([&] { a = k.run(true); }), 2) << what;
    EXPECT_EQ(a, now) << what << ": fresh after the bump";
  }
}

// The BF16 recipe's weight copy (Bf16WeightCache): the same bits as converting the weight in every
// GEMM (a Linear without the counter converts at every call), kept until the counter moves, fresh
// after it; for a Linear and for grouped experts, forward and input gradient.
TEST(Bf16Linear, WeightCacheFollowsTheVersionCounterAndKeepsTheBits) {
  CopyCase k(Recipe::BF16, Component::DenseMlp, 130, 11);
  EXPECT_EQ(k.run(true), k.run(false)) << "the copy gives the per-call conversion's bits";
  k.double_weights();
  const auto stale = k.run(true), now = k.run(false);
  EXPECT_LT(same_elements(stale, now), int64_t(now.size()) / 10)
      << "the copy is kept until the counter moves";
  ++*k.pol.weight_version;  // Model::weights_updated()
  EXPECT_EQ(k.run(true), now) << "fresh after the bump";
}

namespace {

// A DeepSeek-V3-shaped model whose widths are not multiples of 128 (partial tiles everywhere).
ModelConfig odd_config() {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 160;
  c.intermediate_size = 264;
  c.moe_intermediate_size = 80;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 1;
  c.num_attention_heads = 3;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.q_lora_rank = 96;
  c.kv_lora_rank = 80;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  c.num_nextn_predict_layers = 1;
  c.init_std = 0.05;
  c.max_seq_len = 64;
  return c;
}

struct ModelRun {
  double loss = 0;
  std::vector<std::vector<double>> grads;  // per parameter
  std::vector<std::string> names;
};

// Routing is pinned: a large bias on experts 0 and 1 makes every token pick them in every
// precision. Otherwise FP8 (and bf16) noise flips near-tied top-k choices of this random-init
// model and whole expert gradients move with the flips, which says nothing about the GEMMs. The
// gate weights still get gradients (the routing weights are the unbiased scores).
void pin_routing(Model<float>& model) {
  for (auto& p : model.params().all())
    if (p->name.find("e_score_correction_bias") != std::string::npos)
      for (int64_t e = 0; e < p->numel(); ++e) p->w()[e] = e < 2 ? 10.f : 0.f;
}

// One forward/backward of a float model. victim_scale != 1 scales one Linear's weight by it;
// `stale`: only after the FP8 weight cache was filled, without bumping the weight version (its
// FP8 copy is then off by that factor: a wrong scale).
ModelRun run_model(const PrecisionPolicy& pol, bool stale, float victim_scale = 1.f) {
  const ModelConfig c = odd_config();
  Model<float> model(c, pol);
  model.init(5);
  pin_routing(model);
  const int64_t B = 2, S = 64;
  std::mt19937 g(3);
  std::vector<int32_t> tokens(B * (S + 1));
  for (auto& t : tokens) t = static_cast<int32_t>(g() % c.vocab_size);
  Model<float>::MicroBatch mb;
  Param<float>* victim = model.params().find("model.layers.0.self_attn.kv_b_proj.weight");
  if (stale) model.forward(mb, tokens.data(), B, S, 0.3);  // fills the cache at version 0
  for (int64_t i = 0; i < victim->numel(); ++i) victim->w()[i] *= victim_scale;
  model.params().zero_grad();
  ModelRun r;
  r.loss = model.forward(mb, tokens.data(), B, S, 0.3).loss;
  model.backward(mb, 1.0);
  for (auto& p : model.params().all()) {
    if (!p->trainable) continue;
    r.names.push_back(p->name);
    r.grads.emplace_back(p->g(), p->g() + p->numel());
  }
  return r;
}

// The loss' relative difference; calc_diff of all gradients together, and the worst
// per-parameter calc_diff (parameters whose gradient is zero in both runs, the experts no token
// is routed to, are skipped).
struct Gap {
  double loss_rel = 0, worst = 0, all = 0;
  std::string worst_name;
};
Gap gap(const ModelRun& a, const ModelRun& b) {
  Gap g;
  g.loss_rel = std::fabs(a.loss - b.loss) / std::fabs(b.loss);
  std::vector<double> xa, xb;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    double sq = 0;
    for (size_t j = 0; j < a.grads[i].size(); ++j)
      sq += a.grads[i][j] * a.grads[i][j] + b.grads[i][j] * b.grads[i][j];
    if (sq == 0) continue;
    const double d = calc_diff(a.grads[i], b.grads[i]);
    if (d > g.worst) g.worst = d, g.worst_name = a.names[i];
    xa.insert(xa.end(), a.grads[i].begin(), a.grads[i].end());
    xb.insert(xb.end(), b.grads[i].begin(), b.grads[i].end());
  }
  g.all = calc_diff(xa, xb);
  return g;
}

// Tolerances of the whole-model comparison, routing pinned (measured gaps are printed;
// docs/fp8.md): measured fp8 vs fp32 loss 0.08-0.18%, all gradients calc_diff 1.0-1.1e-2, worst
// parameter 2.4e-2 (bf16: 5e-5, 5e-5, 1e-4). E4M3 keeps 3 mantissa bits, so each GEMM adds a few
// percent of unbiased error and the backward chains about ten of them. A weight copy with a wrong
// scale gives 0.2 / 0.4 and fails.
constexpr double kLossRel = 5e-3, kWorstGrad = 5e-2, kAllGrads = 3e-2;

}  // namespace

TEST(Fp8Model, LossAndGradientsCloseToFp32) {
  const ModelRun ref = run_model(PrecisionPolicy::from(Recipe::FP32), false);
  for (Pow2Scales scale_rule : {Pow2Scales::Spec, Pow2Scales::All}) {
    const char* scales = to_word(scale_rule);
    PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
    pol.pow2_scales = scale_rule;
    const ModelRun fp8 = run_model(pol, false);
    const Gap g = gap(fp8, ref);
    std::printf(
        "fp8 (%s scales) vs fp32: loss %.6f vs %.6f (rel %.2e), grads calc_diff all %.2e, "
        "worst %.2e (%s)\n",
        scales, fp8.loss, ref.loss, g.loss_rel, g.all, g.worst, g.worst_name.c_str());
    EXPECT_LT(g.loss_rel, kLossRel) << scales;
    EXPECT_LT(g.worst, kWorstGrad) << scales << " " << g.worst_name;
    EXPECT_LT(g.all, kAllGrads) << scales;
  }
  // bf16 for scale: the same measures
  const Gap gb = gap(run_model(PrecisionPolicy::from(Recipe::BF16), false), ref);
  std::printf("bf16 vs fp32: loss rel %.2e, grads calc_diff all %.2e, worst %.2e (%s)\n",
              gb.loss_rel, gb.all, gb.worst, gb.worst_name.c_str());
}

TEST(Fp8Model, StaleWeightScalesFailTheTolerance) {
  // One Linear's FP8 weight copy off by x2 (cache not invalidated after a weight change) against
  // fp32 with the changed weight: the comparison must fail.
  PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
  pol.weight_version = std::make_shared<uint64_t>(0);
  const ModelRun bad = run_model(pol, true, 2.f);
  const Gap g = gap(bad, run_model(PrecisionPolicy::from(Recipe::FP32), false, 2.f));
  std::printf("stale x2 scales: loss rel %.2e, grads calc_diff all %.2e, worst %.2e (%s)\n",
              g.loss_rel, g.all, g.worst, g.worst_name.c_str());
  EXPECT_TRUE(g.loss_rel > kLossRel || g.worst > kWorstGrad || g.all > kAllGrads);
  EXPECT_GT(g.worst, kWorstGrad);
}

TEST(Fp8Model, OverridesSelectThePathPerComponent) {
  // Everything but the routed experts in bf16: the result differs from all-bf16 (the experts
  // ran FP8) and from all-fp8.
  const ModelRun bf = run_model(PrecisionPolicy::from(Recipe::BF16), false);
  PrecisionPolicy mixed_policy = PrecisionPolicy::from(Recipe::BF16);
  mixed_policy.overrides[Component::RoutedExpert] = Recipe::FP8;
  const ModelRun mixed = run_model(mixed_policy, false);
  const ModelRun f8 = run_model(PrecisionPolicy::from(Recipe::FP8), false);
  EXPECT_NE(mixed.loss, bf.loss);
  EXPECT_NE(mixed.loss, f8.loss);
  EXPECT_LT(gap(mixed, bf).all, gap(f8, bf).all);  // one component in FP8 moves less than all
}

// ---- activation memory --------------------------------------------------------------------------

namespace {

ModelConfig tiny_config() {  // configs/tiny.yaml's model
  ModelConfig c;
  c.vocab_size = 264;
  c.hidden_size = 256;
  c.intermediate_size = 768;
  c.moe_intermediate_size = 128;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 1;
  c.num_attention_heads = 4;
  c.n_routed_experts = 16;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.q_lora_rank = 96;
  c.kv_lora_rank = 64;
  c.qk_nope_head_dim = 32;
  c.qk_rope_head_dim = 16;
  c.v_head_dim = 32;
  c.num_nextn_predict_layers = 0;
  c.init_std = 0.02;
  c.max_seq_len = 128;
  return c;
}

struct LayerBytes {
  int64_t attn = 0, ffn = 0, block = 0;
  int64_t total() const { return attn + ffn + block; }
};

LayerBytes layer_bytes(const Block<float>::State& s, bool moe) {
  LayerBytes b;
  b.attn = s.attn.saved_bytes();
  b.ffn = moe ? s.moe.saved_bytes() : s.mlp.saved_bytes();
  // (the block input is the model's residual stream, stored once, not in the block's state)
  b.block = s.h_mid.bytes() + s.xn2.bytes() + static_cast<int64_t>(s.rstd2.size() * sizeof(float));
  return b;
}

}  // namespace

TEST(Fp8Memory, ActivationCacheIsUint8AndSmaller) {
  static_assert(std::is_same_v<decltype(Fp8Act::q), Buffer<uint8_t>>);
  const ModelConfig c = tiny_config();
  const int64_t B = 8, S = 128;  // one micro-batch of configs/tiny.yaml
  std::mt19937 g(1);
  std::vector<int32_t> tokens(B * (S + 1));
  for (auto& t : tokens) t = static_cast<int32_t>(g() % c.vocab_size);
  LayerBytes bytes[2][2];  // [fp32, fp8][dense, moe]
  for (int f = 0; f < 2; ++f) {
    Model<float> model(c, PrecisionPolicy::from(f ? Recipe::FP8 : Recipe::FP32));
    model.init(1);
    Model<float>::MicroBatch mb;
    model.forward(mb, tokens.data(), B, S, 0.0);
    for (int l = 0; l < 2; ++l) bytes[f][l] = layer_bytes(mb.blocks[l], l == 1);
    const auto& dense = mb.blocks[0];
    const auto& moe = mb.blocks[1];
    if (f) {  // no fp32 copy of an FP8-cached input; the codes are one byte each
      EXPECT_EQ(dense.attn.xn.x.size(), 0u);
      EXPECT_EQ(dense.attn.cq.x.size(), 0u);
      EXPECT_EQ(dense.attn.ckv.x.size(), 0u);
      EXPECT_EQ(dense.mlp.gu.x.size(), 0u);
      EXPECT_EQ(dense.mlp.a.x.size(), 0u);
      EXPECT_EQ(moe.moe.xperm.x.size(), 0u);
      EXPECT_EQ(moe.moe.gu.x.size(), 0u);
      EXPECT_EQ(moe.moe.a.x.size(), 0u);
      const int64_t N = B * S;
      EXPECT_EQ(dense.attn.xn.x8.q.size(), static_cast<size_t>(N * c.hidden_size));
      EXPECT_EQ(dense.attn.xn.x8.s.size(), static_cast<size_t>(N * 2));  // 256 / 128 tiles
      EXPECT_EQ(dense.mlp.gu.bytes(), N * 2 * c.intermediate_size + N * 12 * 4);
      EXPECT_EQ(moe.moe.gu.x8.rows, N * c.num_experts_per_tok);
    } else {
      EXPECT_FALSE(dense.attn.xn.fp8());
      EXPECT_EQ(dense.attn.xn.x8.bytes(), 0);
      EXPECT_FALSE(moe.moe.xperm.fp8());
      EXPECT_EQ(moe.moe.xperm.x8.bytes(), 0);
    }
  }
  const char* kind[] = {"dense", "MoE"};
  for (int l = 0; l < 2; ++l) {
    const LayerBytes &a = bytes[0][l], &b = bytes[1][l];
    std::printf(
        "%s layer, saved per micro-batch (%lld tokens): fp32 %.2f MiB (attn %.2f, ffn "
        "%.2f, block %.2f) -> fp8 %.2f MiB (attn %.2f, ffn %.2f, block %.2f): %.1f%% "
        "saved\n",
        kind[l], static_cast<long long>(B * S), a.total() / 1048576.0, a.attn / 1048576.0,
        a.ffn / 1048576.0, a.block / 1048576.0, b.total() / 1048576.0, b.attn / 1048576.0,
        b.ffn / 1048576.0, b.block / 1048576.0, 100.0 * (1 - double(b.total()) / a.total()));
    EXPECT_LT(b.ffn, a.ffn / 2) << kind[l];  // the FFN's saved state is mostly FP8
    EXPECT_LT(b.attn, a.attn) << kind[l];
    EXPECT_LT(b.total(), a.total()) << kind[l];
  }
}

// A micro-batch that defers its weight gradients keeps every FP8 Linear's dY (the routed experts',
// the MLPs', the attention projections') as its Wgrad's 128x1 tiles (a quarter of the fp32 bytes,
// no fp32 copy), its RMSNorms their weight gradients [D] (not their dy [N, D]), and nothing the
// deferred work reads lives in the scratch the layers share: a second micro-batch's forward and
// backward in between leave its weight gradients bit for bit what they are without one.
TEST(Fp8Memory, DeferredGradientsAreWgradTilesAndOwnTheirBytes) {
  const ModelConfig c = tiny_config();
  const int64_t B = 2, S = 64, N = B * S, D = c.hidden_size, K = c.num_experts_per_tok;
  std::mt19937 g(7);
  std::vector<int32_t> t1(B * (S + 1)), t2(B * (S + 1));
  for (auto& t : t1) t = static_cast<int32_t>(g() % c.vocab_size);
  for (auto& t : t2) t = static_cast<int32_t>(g() % c.vocab_size);
  for (const Recipe r : {Recipe::FP8, Recipe::FP32}) {
    Model<float> model(c, PrecisionPolicy::from(r));
    model.init(2);
    // mb1's deferred weight gradients alone: run directly, and with mb2 run in between
    std::vector<std::vector<float>> want, got;
    for (const bool between : {false, true}) {
      Model<float>::MicroBatch mb1, mb2;
      model.forward(mb1, t1.data(), B, S, 0.3);
      model.backward_input(mb1, 1.0, nullptr, /*defer_weight=*/true);
      if (between) {
        model.forward(mb2, t2.data(), B, S, 0.3);
        model.backward_input(mb2, 1.0, nullptr, /*defer_weight=*/true);
      }
      model.params().zero_grad();
      model.backward_weight(mb1);
      auto& out = between ? got : want;
      for (auto& p : model.params().all()) out.emplace_back(p->g(), p->g() + p->numel());
      if (between) {
        const auto& moe = mb1.blocks[1].moe;
        const auto& mlp = mb1.blocks[0].mlp;
        const auto& attn = mb1.blocks[1].attn;
        const bool fp8 = r == Recipe::FP8;
        for (const SavedGrad<float>* k : {&moe.dyperm, &moe.dgu, &mlp.dy, &mlp.dgu, &attn.dout,
                                          &attn.dq, &attn.dcq_raw, &attn.dkv, &attn.dkva})
          EXPECT_EQ(k->fp8, fp8);
        // the norms keep their micro-batch's weight gradient [D], not their dy [N, D]
        EXPECT_EQ(mb1.blocks[1].dw_ffn_norm.size(), static_cast<size_t>(D));
        EXPECT_EQ(attn.dw_attn_norm.size(), static_cast<size_t>(D));
        EXPECT_EQ(attn.dw_kv_norm.size(), static_cast<size_t>(c.kv_lora_rank));
        if (fp8) {
          EXPECT_EQ(moe.dyperm.dy.size(), 0u);  // no fp32 copy
          EXPECT_EQ(attn.dkv.dy.size(), 0u);
          EXPECT_EQ(attn.dout.q.size(), static_cast<size_t>(N * D));
          const int64_t kv_cols = c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim);
          EXPECT_EQ(attn.dkv.bytes(), kv_cols * (N + 4));  // N = 128 rows: one tile a column
          EXPECT_EQ(moe.dyperm.q.size(), static_cast<size_t>(moe.A * D));
          EXPECT_EQ(mlp.dy.q.size(), static_cast<size_t>(N * D));
          EXPECT_EQ(mlp.dy.bytes(), N * D + D * 4);  // one 128-row tile per column
          EXPECT_GE(moe.A, N * K);
          EXPECT_LT(moe.dyperm.bytes() + moe.dgu.bytes(),
                    moe.A * (D + 2 * c.moe_intermediate_size) * 4 / 3);
        } else {
          EXPECT_EQ(mlp.dy.bytes(), N * D * 4);
        }
      }
    }
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_EQ(got[i], want[i]) << model.params().all()[i]->name
                                 << (r == Recipe::FP8 ? " fp8" : "");
  }
}
