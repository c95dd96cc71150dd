// mpi-ranks: 1 2 4
// ZeRO-1's flat arenas on real ranks. A small store mixes plain parameters, two fused tensors
// whose views are interleaved in registration order (as a MoE layer registers its experts' gate,
// up and down), and a non-trainable parameter left outside the group. Checked: every parameter's
// value and gradient (and each fused tensor) lie inside the group's arenas at the planned offsets
// with values kept, so reduce-scatter and all-gather need no pack or unpack; a DP step equals the
// reference AdamW on the summed gradients bit for bit (exactly representable sums); bf16
// reduction equals the sum of the bf16-rounded gradients within one bf16 rounding per reduction
// step; views that do not tile their fused tensor are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kernels/ops.h"
#include "kernels/scalar.h"
#include "model/param.h"
#include "parallel/comm.h"
#include "parallel/zero1.h"

using namespace moetron;

namespace {

constexpr int64_t E = 2, F = 3, D = 4;

// plain a, experts' gate|up (fused) and down (fused) interleaved per expert, the bias (not
// trainable), plain b
struct Store {
  ParamStore<float> ps;
  std::unique_ptr<Param<float>> gu, down;
  std::vector<Param<float>*> group;
  Param<float>* bias = nullptr;
  Store() {
    const auto fused = [](std::vector<int64_t> shape) {
      auto p = std::make_unique<Param<float>>();
      p->value = Tensor(shape, DType::F32), p->grad = Tensor(shape, DType::F32);
      return p;
    };
    gu = fused({E, 2 * F, D}), down = fused({E, D, F});
    group.push_back(ps.add("a", {3, 5}));
    for (int64_t e = 0; e < E; ++e) {
      const std::string n = "experts." + std::to_string(e) + ".";
      group.push_back(ps.add_view(n + "gate", *gu, e * 2 * F * D, {F, D}));
      group.push_back(ps.add_view(n + "up", *gu, e * 2 * F * D + F * D, {F, D}));
      group.push_back(ps.add_view(n + "down", *down, e * D * F, {D, F}));
    }
    bias = ps.add("bias", {E}, false);
    bias->trainable = false;
    group.push_back(ps.add("b", {7}, false));
    for (auto& p : ps.all())
      for (int64_t i = 0; i < p->numel(); ++i)
        p->w()[i] = 0.01f * static_cast<float>((i * 5 + static_cast<int64_t>(p->name.size())) % 17);
  }
};

// per-rank gradients that are multiples of 1/64 with small numerators: sums are exact in any order
float exact_grad(int rank, size_t param, int64_t i) {
  return static_cast<float>((i * 7 + rank * 13 + static_cast<int64_t>(param) * 3) % 31 - 15) / 64.f;
}

Zero1Options options(bool bf16_reduce) {
  Zero1Options zo;
  zo.weight_decay = 0.1;
  zo.bucket_elements = 40;  // several buckets, padding, and a fused tensor larger than a bucket
  zo.grad_reduce_bf16 = bf16_reduce;
  return zo;
}

}  // namespace

TEST(Zero1Arena, ParametersLiveInTheArenasAtTheirPlannedOffsets) {
  Communicator& w = world();
  Store s;
  std::vector<std::vector<float>> before;
  for (Param<float>* p : s.group) before.emplace_back(p->w(), p->w() + p->numel());
  for (Param<float>* p : s.group)
    for (int64_t i = 0; i < p->numel(); ++i) p->g()[i] = 1.f + static_cast<float>(i);
  const void* bias_at = s.bias->value.raw();
  Zero1 opt(s.group, w, options(false));

  const auto* v0 = static_cast<const char*>(opt.value_arena().raw());
  const auto* g0 = static_cast<const char*>(opt.grad_arena().raw());
  const int64_t n = opt.value_arena().numel();
  ASSERT_EQ(opt.grad_arena().numel(), n);
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (size_t i = 0; i < s.group.size(); ++i) {
    Param<float>* p = s.group[i];
    const int64_t at = opt.arena_offset(i);
    EXPECT_EQ(p->value.raw(), v0 + 4 * at) << p->name;
    EXPECT_EQ(p->grad.raw(), g0 + 4 * at) << p->name;
    EXPECT_TRUE(std::equal(before[i].begin(), before[i].end(), p->w())) << p->name;
    for (int64_t k = 0; k < p->numel(); ++k) ASSERT_EQ(p->g()[k], 1.f + k) << p->name;
    spans.push_back({at, at + p->numel()});
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 0; i < spans.size(); ++i) {
    EXPECT_GE(spans[i].first, i ? spans[i - 1].second : 0);
    EXPECT_LE(spans[i].second, n);
  }
  // each fused tensor is the arena slice that spans its views, in the views' order
  EXPECT_EQ(s.gu->value.raw(), s.group[1]->value.raw());
  EXPECT_EQ(s.gu->grad.raw(), s.group[1]->grad.raw());
  EXPECT_EQ(opt.arena_offset(4), opt.arena_offset(1) + 2 * F * D);  // expert 1's gate
  EXPECT_EQ(opt.arena_offset(5), opt.arena_offset(1) + 3 * F * D);  // expert 1's up
  EXPECT_EQ(s.down->value.raw(), s.group[3]->value.raw());
  EXPECT_EQ(opt.arena_offset(6), opt.arena_offset(3) + D * F);  // expert 1's down
  // the bias is outside every group
  EXPECT_EQ(s.bias->value.raw(), bias_at);
  // writes through the fused tensor are the views' values
  s.gu->w()[2 * F * D] = 42.f;
  EXPECT_EQ(s.group[4]->w()[0], 42.f);
}

TEST(Zero1Arena, DataParallelStepEqualsAdamWOnSummedGradients) {
  Communicator& w = world();
  const int P = w.size();
  Store s;
  Zero1 opt(s.group, w, options(false));
  // the reference: every rank runs AdamW on the whole parameters with the summed gradients
  std::vector<std::vector<float>> ref, m, v;
  for (Param<float>* p : s.group) {
    ref.emplace_back(p->w(), p->w() + p->numel());
    m.emplace_back(p->numel(), 0.f), v.emplace_back(p->numel(), 0.f);
  }
  for (int step = 1; step <= 2; ++step) {
    const double scale = step == 1 ? 1.0 : 0.5;  // the second step clips
    s.ps.zero_grad();
    for (size_t j = 0; j < s.group.size(); ++j)
      for (int64_t i = 0; i < s.group[j]->numel(); ++i)
        s.group[j]->g()[i] = exact_grad(w.rank() + step, j, i);
    opt.reduce_scatter_grads();
    for (const auto& r : opt.owned_ranges()) {  // the owned gradients are the exact sums
      const size_t j = std::find(s.group.begin(), s.group.end(), r.param) - s.group.begin();
      for (int64_t k = 0; k < r.len; ++k) {
        float sum = 0;
        for (int q = 0; q < P; ++q) sum += exact_grad(q + step, j, r.offset + k);
        ASSERT_EQ(opt.owned_grads()[r.grad_offset + k], sum) << r.param->name << " " << k;
      }
    }
    opt.step(1e-2, scale, step);
    kernels::AdamWParams ap;
    ap.lr = 1e-2, ap.beta1 = 0.9, ap.beta2 = 0.95, ap.eps = 1e-8, ap.step = step;
    for (size_t j = 0; j < s.group.size(); ++j) {
      const int64_t n = s.group[j]->numel();
      std::vector<float> g(n, 0.f);
      for (int64_t i = 0; i < n; ++i) {
        for (int q = 0; q < P; ++q) g[i] += exact_grad(q + step, j, i);
        g[i] *= static_cast<float>(scale);
      }
      ap.weight_decay = s.group[j]->decay ? 0.1 : 0.0;
      kernels::adamw_update<float>(Exec{}, ref[j].data(), g.data(), m[j].data(), v[j].data(), n,
                                   ap);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(s.group[j]->w()[i], ref[j][i])
            << s.group[j]->name << "[" << i << "] step " << step << " rank " << w.rank();
    }
  }
}

TEST(Zero1Arena, Bf16ReductionWithinOneRoundingPerStep) {
  Communicator& w = world();
  const int P = w.size();
  Store s;
  Zero1 opt(s.group, w, options(true));
  // gradients of magnitude 2^-4..2^4, both signs; any rank can regenerate another's
  const auto grads = [&](int rank) {
    std::mt19937 gen(77u + 31u * static_cast<unsigned>(rank));
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::uniform_int_distribution<int> e(-4, 4);
    std::vector<std::vector<float>> g;
    for (Param<float>* p : s.group) {
      g.emplace_back(p->numel());
      for (float& x : g.back()) x = std::ldexp(u(gen), e(gen));
    }
    return g;
  };
  const auto mine = grads(w.rank());
  for (size_t j = 0; j < s.group.size(); ++j)
    std::copy(mine[j].begin(), mine[j].end(), s.group[j]->g());
  std::vector<std::vector<std::vector<float>>> all;
  for (int q = 0; q < P; ++q) all.push_back(grads(q));
  opt.reduce_scatter_grads();
  int64_t checked = 0;
  for (const auto& r : opt.owned_ranges()) {
    const size_t j = std::find(s.group.begin(), s.group.end(), r.param) - s.group.begin();
    for (int64_t k = 0; k < r.len; ++k) {
      double sum = 0, mag = 0;
      float sum2 = 0;
      for (int q = 0; q < P; ++q) {
        const float b = round_bf16(all[q][j][r.offset + k]);
        sum += b, mag += std::fabs(b), sum2 += b;
      }
      const float got = opt.owned_grads()[r.grad_offset + k];
      ASSERT_EQ(round_bf16(got), got);  // a bf16 value, widened
      // P - 1 additions, each rounded to nearest bf16: at most 2^-8 of the magnitude each
      ASSERT_LE(std::fabs(got - sum), (P - 1) * std::ldexp(mag, -8) * (1 + 1e-6))
          << r.param->name << "[" << r.offset + k << "]";
      if (P <= 2) {  // one rounding of the exact fp32 sum
        ASSERT_EQ(got, round_bf16(sum2));
      }
      ++checked;
    }
  }
  int64_t total = checked;
  w.all_reduce(&total, 1);
  int64_t expect = 0;
  for (Param<float>* p : s.group) expect += p->numel();
  EXPECT_EQ(total, expect);  // every element is owned once
}

// The reduction lands in place (the owned part of each bucket of the gradient arena), so the
// local gradients it overwrites are counted before: a NaN in one rank's own gradient is named by
// that rank alone after the reduction (which spreads the NaN to its owner's sums), fp32 and bf16,
// overlapped or not; the next step's clean gradients are finite everywhere (the trainer skips
// the bad step's update, and so does this test).
TEST(Zero1Arena, LocalGradientsJudgedBeforeTheReductionOverwritesThem) {
  Communicator& w = world();
  const int P = w.size();
  for (const bool bf16 : {false, true})
    for (const bool overlap : {false, true}) {
      Store s;
      Zero1Options zo = options(bf16);
      zo.overlap = overlap;
      Zero1 opt(s.group, w, zo);
      for (int step = 1; step <= 2; ++step) {
        s.ps.zero_grad();
        for (size_t j = 0; j < s.group.size(); ++j)
          for (int64_t i = 0; i < s.group[j]->numel(); ++i)
            s.group[j]->g()[i] = exact_grad(w.rank() + step, j, i);
        const bool bad = step == 1 && w.rank() == P - 1;
        if (bad) s.group.back()->g()[1] = NAN;
        for (size_t j = 0; j < s.group.size(); ++j) opt.mark_final(static_cast<int64_t>(j));
        opt.reduce_scatter_grads();
        EXPECT_EQ(opt.local_grads_finite(), !bad) << "rank " << w.rank() << " step " << step
                                                  << " bf16 " << bf16 << " overlap " << overlap;
      }
    }
}

TEST(Zero1Arena, RefusesViewsThatDoNotTileTheirFusedTensor) {
  Communicator& w = world();
  Store s;
  std::vector<Param<float>*> part = {s.group[0], s.group[1], s.group[2]};  // no expert 1
  EXPECT_THROW((void)Zero1(part, w, options(false)), std::invalid_argument);
}

// The reduction overlapped with the backward (zero1_reduce.cpp): each rank writes a parameter's
// gradient and marks it final, in an order of its own (as DualPipe's twins finish their chunks in
// mirrored orders); buckets start only once all their parameters are final and in one order on
// every rank, so the reduced gradients equal those of the reduction at the end bit for bit — fp32,
// and bf16 with one staging buffer (a start waits for the bucket in flight). The first parameter
// is never marked (as the embedding): its bucket, and only it, starts in reduce_scatter_grads.
TEST(Zero1Arena, OverlappedReductionEqualsTheReductionAtTheEnd) {
  Communicator& w = world();
  const int P = w.size();
  for (const bool bf16 : {false, true}) {
    Store at_end, overlapped;
    Zero1Options zo = options(bf16);
    zo.staging = 1;
    zo.overlap = false;
    Zero1 ref(at_end.group, w, zo);
    zo.overlap = true;
    Zero1 opt(overlapped.group, w, zo);
    for (int step = 1; step <= 2; ++step) {
      const size_t n = at_end.group.size();
      for (size_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < at_end.group[j]->numel(); ++i)
          at_end.group[j]->g()[i] = exact_grad(w.rank() + step, j, i) * 1.001f;
      std::vector<size_t> order;  // 1 .. n-1, rotated by this rank
      for (size_t j = 1; j < n; ++j) order.push_back(1 + (j - 1 + 3 * w.rank() + step) % (n - 1));
      for (size_t j : order) {
        Param<float>* p = overlapped.group[j];
        std::copy(at_end.group[j]->g(), at_end.group[j]->g() + p->numel(), p->g());
        opt.mark_final(static_cast<int64_t>(j));
        opt.progress();
      }
      std::copy(at_end.group[0]->g(), at_end.group[0]->g() + at_end.group[0]->numel(),
                overlapped.group[0]->g());
      ref.reduce_scatter_grads();
      opt.reduce_scatter_grads();
      for (const auto& r : ref.owned_ranges())  // (the same layout: the same ranges)
        ASSERT_EQ(0, std::memcmp(ref.owned_grads() + r.grad_offset,
                                 opt.owned_grads() + r.grad_offset, 4 * r.len))
            << "bf16 " << bf16 << " " << r.param->name;
      // "a" (15 elements) alone is the first bucket, the last to start; the rest started early
      const int64_t first_bucket = (15 + P - 1) / P * P;
      EXPECT_EQ(ref.started_early(), 0);
      EXPECT_EQ(opt.started_early(), P > 1 ? opt.grad_arena().numel() - first_bucket : 0);
    }
  }
}

// Sharded master values (Zero1Options::shard_values): "a" and the experts' gate|up tensor have
// copies (Param::copies, here host vectors that record the values handed to them), so on more
// than one rank their fp32 values leave the rank; the rest stay. Over two steps, against the
// same group unsharded: every copy is remade from bit-identical values, the resident parameters
// and the owned master values (read_owned) are the same bits, the rank holds fewer value bytes,
// gather_values gives every whole value back, and load_owned restores a fresh group's values.
TEST(Zero1Arena, ShardedMastersRemakeTheCopiesFromTheSameBits) {
  Communicator& w = world();
  const int P = w.size();
  Store plain, shard, fresh;
  struct Copies {
    std::vector<float> a, gu;
  } got, loaded;
  const auto watch = [](Store& s, Copies& c) {
    Param<float>* a = s.group[0];
    a->copies.push_back([&c, n = a->numel()](const float* v) { c.a.assign(v, v + n); });
    s.gu->copies.push_back([&c, n = s.gu->numel()](const float* v) { c.gu.assign(v, v + n); });
  };
  watch(shard, got), watch(fresh, loaded);
  Zero1Options zo = options(false);
  Zero1 ref(plain.group, w, zo);
  zo.shard_values = true;
  Zero1 opt(shard.group, w, zo);
  ASSERT_EQ(opt.sharded(), P > 1);
  if (P == 1) {  // one rank: nothing to shard, the values stay and no copy is handed values
    EXPECT_NE(shard.gu->value.raw(), nullptr);
    EXPECT_TRUE(got.a.empty() && got.gu.empty());
    return;
  }
  EXPECT_EQ(shard.gu->value.raw(), nullptr);  // (Meta: the shape, no memory)
  EXPECT_EQ(shard.group[0]->value.raw(), nullptr);
  EXPECT_EQ(shard.group[0]->value.shape(), plain.group[0]->value.shape());
  EXPECT_LT(opt.value_bytes(), ref.value_bytes());
  const auto same = [](const std::vector<float>& v, const Param<float>& p, const char* what) {
    ASSERT_EQ(v.size(), static_cast<size_t>(p.numel())) << what;
    EXPECT_EQ(0, std::memcmp(v.data(), p.w(), 4 * v.size())) << what;
  };
  same(got.a, *plain.group[0], "copy of a, as made");
  for (int step = 1; step <= 2; ++step) {
    for (Store* s : {&plain, &shard}) {
      s->ps.zero_grad();
      for (size_t j = 0; j < s->group.size(); ++j)
        for (int64_t i = 0; i < s->group[j]->numel(); ++i)
          s->group[j]->g()[i] = exact_grad(w.rank() + step, j, i) * 1.001f;
    }
    ref.reduce_scatter_grads(), opt.reduce_scatter_grads();
    ref.step(1e-2, 0.5, step), opt.step(1e-2, 0.5, step);
    same(got.a, *plain.group[0], "copy of a");
    same(got.gu, *plain.gu, "copy of gate|up");
    for (size_t j = 0; j < shard.group.size(); ++j) {
      if (!shard.group[j]->value.raw()) continue;
      EXPECT_EQ(0,
                std::memcmp(shard.group[j]->w(), plain.group[j]->w(), 4 * shard.group[j]->numel()))
          << shard.group[j]->name << " step " << step;
    }
    const auto owned = ref.owned_ranges(), owned_s = opt.owned_ranges();
    ASSERT_EQ(owned.size(), owned_s.size());
    for (size_t k = 0; k < owned.size(); ++k) {
      std::vector<float> x(owned[k].len), y(owned[k].len);
      ref.read_owned(owned[k], x.data()), opt.read_owned(owned_s[k], y.data());
      EXPECT_EQ(x, y) << owned[k].param->name << " owned from " << owned[k].offset;
    }
  }
  EXPECT_THROW(opt.whole_values(*shard.group[0]), std::logic_error);  // not gathered yet
  opt.gather_values();
  for (size_t j = 0; j < shard.group.size(); ++j) {
    const Tensor& v = opt.whole_values(*shard.group[j]);
    EXPECT_EQ(0, std::memcmp(v.data<float>(), plain.group[j]->w(), 4 * plain.group[j]->numel()))
        << shard.group[j]->name;
  }
  opt.reduce_scatter_grads();  // the next step's gradients: the gathered values are gone
  EXPECT_THROW(opt.whole_values(*shard.group[0]), std::logic_error);
  // a fresh sharded group (other initial values) loads the owned values and gathers
  Zero1 back(fresh.group, w, zo);
  back.load_owned([&](const Param<float>& p, int64_t offset, int64_t len, float* host) {
    const size_t j = std::find(fresh.group.begin(), fresh.group.end(), &p) - fresh.group.begin();
    std::copy(plain.group[j]->w() + offset, plain.group[j]->w() + offset + len, host);
  });
  back.gather_values();
  same(loaded.a, *plain.group[0], "loaded copy of a");
  same(loaded.gu, *plain.gu, "loaded copy of gate|up");
  EXPECT_EQ(0, std::memcmp(fresh.group.back()->w(), plain.group.back()->w(), 4 * 7)) << "b";
}
