// mpi-ranks: 1 2 4
// DualPipe and DualPipeV executed (parallel/pipeline.h: two model chunks per rank, overlapped
// forward+backward pairs run piece by piece) against the sequential model, in double precision.
//   * One rank, DualPipeV with N = 1: stages 0 and 1 of 2 on one rank, 2C-3 pairs, no messages —
//     the interleaver alone. Per micro-batch, the LM and MTP losses equal the sequential model's
//     bit for bit (the same kernels on the same inputs), the balance loss (two stages' sums) to
//     1e-15, every gradient to calc_diff < 1e-13 (SPEC §4.8's metric), the expert loads exactly;
//     interleaved and forward-then-backward pairs give identical bits; the pool of micro-batch
//     states stays within the schedule's in-flight bound; and each pair's pieces alternate
//     backward, forward, backward, ... with two pieces per MoE layer in each stream.
//   * P ranks (2, 4): DualPipe (P stages, two directions, the twins' gradients summed) and
//     DualPipeV (2P stages in a V) give the sequential model's losses on the rank that holds the
//     last stage of each micro-batch (bitwise) and its gradients (calc_diff < 1e-13), and
//     interleaving changes no bit. A rank's two chunks share their one-piece scratch (the MLA,
//     MLP and Linear scratch and the MoE layers' rows: Model's sibling, as in training), so that
//     also shows no piece leaves any of it live across a yield.
//   * The executor's pools: where pool_plan shares them (the ranks whose gradient sets peak in
//     the cooldown, after the states' peak), the allocator's peak over a step is lower than with
//     the pools kept, the gradients and losses are the same bits, and the step ends holding no
//     state or set; elsewhere the peak is the same.
// Every rank builds the reference itself: parameters are seeded by name, so it is cheap and
// identical everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "model/model.h"
#include "parallel/comm.h"
#include "parallel/pipeline.h"
#include "parallel/schedule.h"
#include "tests/mpi_small_model.h"

namespace moetron {
namespace {

ModelConfig small(int64_t layers) {
  ModelConfig c = small_pipeline_model(layers);
  c.seq_aux_alpha = 0.01;
  return c;
}

constexpr int64_t kB = 2, kS = 8;
constexpr double kMtpWeight = 0.3;
const PrecisionPolicy kFp32 = PrecisionPolicy::from(Recipe::FP32);

std::vector<int32_t> tokens(const ModelConfig& c, int C) {
  std::mt19937 g(11);
  std::vector<int32_t> t(static_cast<size_t>(C * kB * (kS + 1)));
  for (auto& x : t) x = static_cast<int32_t>(g() % c.vocab_size);
  return t;
}

// 1 - 2 sum(xy) / sum(x^2 + y^2), in double (SPEC §4.8)
double calc_diff(const double* x, const double* y, int64_t n) {
  double xy = 0, xx = 0;
  for (int64_t i = 0; i < n; ++i) xy += x[i] * y[i], xx += x[i] * x[i] + y[i] * y[i];
  return xx > 0 ? 1 - 2 * xy / xx : 0.0;
}

struct Outcome {
  std::vector<Losses> losses;  // per micro-batch (the whole model's: stages added)
  std::map<std::string, std::vector<double>> grads;
  std::vector<int64_t> loads;  // every MoE layer's, in model order
};

std::vector<double> grad_of(const Param<double>& p) {
  return std::vector<double>(p.grad.data<double>(), p.grad.data<double>() + p.numel());
}

// The sequential model: micro-batches one after another, forward then backward.
Outcome sequential(const ModelConfig& c, const std::vector<int32_t>& tok, int C) {
  Model<double> m(c, kFp32);
  m.init(7);
  Outcome o;
  for (int mb = 0; mb < C; ++mb) {
    Model<double>::MicroBatch s;
    o.losses.push_back(m.forward(s, tok.data() + mb * kB * (kS + 1), kB, kS, kMtpWeight));
    m.backward(s, 1.0 / C);
  }
  for (const auto& p : m.params().all()) o.grads[p->name] = grad_of(*p);
  const int64_t n = static_cast<int64_t>(m.moe_layers().size()) * c.n_routed_experts;
  o.loads.assign(m.loads(), m.loads() + n);
  return o;
}

// A rank's chunks of `s`, built in stage order into one store.
struct Chunks {
  ParamStore<double> store;
  std::vector<std::unique_ptr<Model<double>>> models;
  std::vector<const Model<double>*> list() const {
    std::vector<const Model<double>*> out;
    for (const auto& m : models) out.push_back(m.get());
    return out;
  }
};
std::unique_ptr<Chunks> build(const ModelConfig& c, const pipeline::Schedule& s, int rank) {
  auto ch = std::make_unique<Chunks>();
  std::vector<int> stages;
  for (const pipeline::Chunk& k : s.chunks_of_rank[rank]) stages.push_back(k.stage);
  std::sort(stages.begin(), stages.end());
  for (int st : stages) {  // the second shares the first's one-piece scratch, as in training
    const Model<double>* sibling = ch->models.empty() ? nullptr : ch->models.front().get();
    ch->models.push_back(std::make_unique<Model<double>>(c, kFp32, nullptr, StageSpec{st, s.stages},
                                                         Exec{}, &ch->store, sibling));
    ch->models.back()->init(7);
  }
  if (ch->models.size() == 2) {
    EXPECT_EQ(ch->models[0]->scratch().attn, ch->models[1]->scratch().attn);
    EXPECT_EQ(ch->models[0]->scratch().linear, ch->models[1]->scratch().linear);
    EXPECT_NE(ch->models[0]->scratch().moe, ch->models[1]->scratch().moe);
    EXPECT_EQ(ch->models[0]->scratch().moe->one, ch->models[1]->scratch().moe->one);
  }
  return ch;
}

struct Piece {
  bool forward;
  Yield y;
};

// Runs one step of `s` on this rank's chunks; records the pieces of the pairs.
std::unique_ptr<Chunks> run_step(const ModelConfig& c, const pipeline::Schedule& s,
                                 Communicator& pp, const std::vector<int32_t>& tok, bool interleave,
                                 std::vector<Piece>* pieces, std::vector<Losses>* per_key,
                                 int* slots) {
  auto ch = build(c, s, pp.rank());
  ExecOptions o;
  o.interleave = interleave;
  o.on_piece = [&](bool f, const Yield& y) {
    if (pieces) pieces->push_back({f, y});
  };
  PipelineExecutor<double> ex(ch->list(), pp, s, pp.rank(), o);
  Losses sum;
  ex.run([&](int m) { return tok.data() + m * kB * (kS + 1); }, kB, kS, kMtpWeight,
         1.0 / s.microbatches, sum);
  per_key->clear();
  for (int m = 0; m < s.microbatches; ++m)
    for (int st = 0; st < s.stages; ++st) per_key->push_back(ex.losses_of(m, st));
  *slots = ex.slots();
  return ch;
}

void expect_same_bits(const Chunks& a, const Chunks& b, const std::string& what) {
  ASSERT_EQ(a.store.all().size(), b.store.all().size());
  for (size_t i = 0; i < a.store.all().size(); ++i)
    EXPECT_EQ(grad_of(*a.store.all()[i]), grad_of(*b.store.all()[i]))
        << what << ": " << a.store.all()[i]->name;
}

TEST(dualpipe, OneRankTwoChunksEqualsSequential) {
  std::unique_ptr<Communicator> self = world().split(world().rank(), 0);  // one rank
  const ModelConfig c = small(4);
  const int C = 4;
  const std::vector<int32_t> tok = tokens(c, C);
  const Outcome ref = sequential(c, tok, C);
  const pipeline::Schedule s = pipeline::make_schedule("dualpipev", 1, C);
  ASSERT_EQ(s.stages, 2);
  std::vector<Piece> pieces;
  std::vector<Losses> lk, lk_none;
  int slots = 0, slots_none = 0;
  auto on = run_step(c, s, *self, tok, true, &pieces, &lk, &slots);
  auto off = run_step(c, s, *self, tok, false, nullptr, &lk_none, &slots_none);

  for (int m = 0; m < C; ++m) {
    const Losses& last = lk[m * 2 + 1];
    EXPECT_EQ(last.lm, ref.losses[m].lm) << "micro-batch " << m;
    EXPECT_EQ(last.mtp, ref.losses[m].mtp) << "micro-batch " << m;
    const double bal = lk[m * 2].balance + last.balance;
    EXPECT_NEAR(bal, ref.losses[m].balance, 1e-15 * std::abs(ref.losses[m].balance) + 1e-300);
  }
  for (const auto& p : on->store.all()) {
    const std::vector<double> g = grad_of(*p);
    const std::vector<double>& r = ref.grads.at(p->name);
    ASSERT_EQ(g.size(), r.size()) << p->name;
    EXPECT_LT(calc_diff(g.data(), r.data(), static_cast<int64_t>(g.size())), 1e-13) << p->name;
  }
  EXPECT_EQ(on->store.all().size(), ref.grads.size());  // one embedding, shared by both chunks
  std::vector<int64_t> loads;
  for (const auto& m : on->models) {
    const int64_t n = static_cast<int64_t>(m->moe_layers().size()) * c.n_routed_experts;
    loads.insert(loads.end(), m->loads(), m->loads() + n);
  }
  EXPECT_EQ(loads, ref.loads);
  // interleaving changes the order across independent streams only
  expect_same_bits(*on, *off, "interleave vs none");
  for (size_t k = 0; k < lk.size(); ++k) {
    EXPECT_EQ(lk[k].loss, lk_none[k].loss) << k;
    EXPECT_EQ(lk[k].balance, lk_none[k].balance) << k;
  }
  EXPECT_LE(slots, s.in_flight_bound[0]);
  // each pair: backward, forward, backward, ... two pieces per MoE layer of each stream
  size_t at = 0;
  int pairs = 0;
  for (const pipeline::Op& op : s.per_rank[0]) {
    if (op.kind != pipeline::OpKind::ForwardBackward) continue;
    ++pairs;
    const size_t nf = 2 * on->models[op.stage]->moe_layers().size();
    const size_t nb = 2 * on->models[op.stage2]->moe_layers().size();
    ASSERT_LE(at + nf + nb, pieces.size());
    size_t f = 0, b = 0;
    for (size_t i = 0; i < nf + nb; ++i) {
      const Piece& p = pieces[at + i];
      if (f < nf && b < nb) {
        EXPECT_EQ(p.forward, i % 2 == 1) << "pair " << pairs << " piece " << i;
      }
      (p.forward ? f : b)++;
    }
    EXPECT_EQ(f, nf);
    EXPECT_EQ(b, nb);
    at += nf + nb;
  }
  EXPECT_EQ(pairs, 2 * C - 3);
  EXPECT_EQ(at, pieces.size());
}

// The gradients of this rank's parameters summed with its DualPipe twin's (rank P-1-r holds the
// same stages; both stores list them in stage order).
void sum_twins(Chunks& ch, Communicator& world) {
  const int r = world.rank(), P = world.size();
  std::unique_ptr<Communicator> twins = world.split(std::min(r, P - 1 - r), r <= P - 1 - r ? 0 : 1);
  for (const auto& p : ch.store.all()) twins->all_reduce(p->g(), static_cast<size_t>(p->numel()));
}

TEST(dualpipe, PipelineRanksEqualSequential) {
  Communicator& w = world();
  const int P = w.size();
  if (P < 2) GTEST_SKIP() << "needs 2 or more ranks";
  const ModelConfig c = small(2 * P);
  // the 8 steps (C = 2P), and below them: fewer micro-batches (3) and an odd count (2P + 1)
  for (const int C : {2 * P, 3, 2 * P + 1}) {
    const std::vector<int32_t> tok = tokens(c, C);
    const Outcome ref = sequential(c, tok, C);
    for (const char* kind : {"dualpipe", "dualpipev"}) {
      SCOPED_TRACE(std::string(kind) + " C=" + std::to_string(C));
      const pipeline::Schedule s = pipeline::make_schedule(kind, P, C);
      std::vector<Losses> lk, lk_none;
      int slots = 0;
      auto on = run_step(c, s, w, tok, true, nullptr, &lk, &slots);
      auto off = run_step(c, s, w, tok, false, nullptr, &lk_none, &slots);
      expect_same_bits(*on, *off, std::string(kind) + ": interleave vs none");
      EXPECT_LE(slots, s.in_flight_bound[w.rank()]) << kind;
      for (int m = 0; m < C; ++m) {
        if (s.rank_of(m, s.stages - 1) != w.rank()) continue;
        const Losses& last = lk[m * s.stages + s.stages - 1];
        EXPECT_EQ(last.lm, ref.losses[m].lm) << kind << " micro-batch " << m;
        EXPECT_EQ(last.mtp, ref.losses[m].mtp) << kind << " micro-batch " << m;
      }
      if (std::string(kind) == "dualpipe") sum_twins(*on, w);
      for (const auto& p : on->store.all()) {
        const std::vector<double> g = grad_of(*p);
        const std::vector<double>& r = ref.grads.at(p->name);
        EXPECT_LT(calc_diff(g.data(), r.data(), static_cast<int64_t>(g.size())), 1e-13)
            << kind << " rank " << w.rank() << " " << p->name;
      }
    }
  }
}

// One executor's third step (the first two grow what grows): the allocator's peak during it, and
// what the executor holds after it.
struct PoolRun {
  std::vector<std::vector<double>> grads;  // this rank's parameters', in store order
  std::vector<Losses> losses;
  int64_t peak = 0;
  int held_slots = 0, held_sets = 0, slots = 0, sets = 0;
  int64_t messages = 0;  // the bytes of its message pool: when a send's buffer comes back
                         // depends on the peer's progress, so the peak may differ by these
};
PoolRun pool_run(const ModelConfig& c, const pipeline::Schedule& s, Communicator& pp,
                 const std::vector<int32_t>& tok, bool share) {
  PoolRun out;
  const std::unique_ptr<Chunks> ch = build(c, s, pp.rank());
  ExecOptions o;
  o.share_pools = share;
  PipelineExecutor<double> ex(ch->list(), pp, s, pp.rank(), o);
  for (int step = 0; step < 3; ++step) {
    for (const auto& p : ch->store.all()) std::fill_n(p->g(), p->numel(), 0.0);
    if (step == 2) allocator(Device::CPU).reset_peak();
    Losses sum;
    ex.run([&](int m) { return tok.data() + m * kB * (kS + 1); }, kB, kS, kMtpWeight,
           1.0 / s.microbatches, sum);
  }
  out.peak = allocator(Device::CPU).stats().peak_bytes;
  for (const auto& p : ch->store.all()) out.grads.push_back(grad_of(*p));
  for (int m = 0; m < s.microbatches; ++m)
    for (int st = 0; st < s.stages; ++st) out.losses.push_back(ex.losses_of(m, st));
  out.held_slots = ex.held_slots(), out.held_sets = ex.held_grad_sets();
  out.slots = ex.slots(), out.sets = ex.grad_sets();
  out.messages = ex.message_buffers() * kB * kS * c.hidden_size * 8;
  return out;
}

TEST(dualpipe, SharedPoolsHoldLessAndChangeNoBit) {
  Communicator& w = world();
  const int P = w.size();
  if (P < 2) GTEST_SKIP() << "needs 2 or more ranks";
  const ModelConfig c = small(2 * P);
  const int C = 2 * P;
  const std::vector<int32_t> tok = tokens(c, C);
  for (const char* kind : {"dualpipe", "dualpipev"}) {
    SCOPED_TRACE(std::string(kind) + " rank " + std::to_string(w.rank()));
    const pipeline::Schedule s = pipeline::make_schedule(kind, P, C);
    const auto plan = PipelineExecutor<double>::pool_plan(s, w.rank());
    // one after the other: each run's chunks and executor are gone before the next starts
    const PoolRun kept = pool_run(c, s, w, tok, false);
    const PoolRun shared = pool_run(c, s, w, tok, true);
    EXPECT_EQ(kept.grads, shared.grads);
    for (size_t k = 0; k < kept.losses.size(); ++k) {
      EXPECT_EQ(kept.losses[k].loss, shared.losses[k].loss) << k;
    }
    for (const PoolRun* r : {&kept, &shared}) {  // each pool grew to its own peak
      EXPECT_EQ(r->slots, plan.peak_slots);
      EXPECT_EQ(r->sets, plan.peak_sets);
    }
    EXPECT_EQ(kept.held_slots + kept.held_sets, plan.peak_slots + plan.peak_sets);
    const int64_t slack = std::max(kept.messages, shared.messages);
    if (plan.share) {
      EXPECT_LT(plan.peak_held, plan.peak_slots + plan.peak_sets);
      EXPECT_LT(shared.peak + slack, kept.peak);
      EXPECT_EQ(shared.held_slots + shared.held_sets, 0);
    } else {
      EXPECT_LE(std::abs(shared.peak - kept.peak), slack);
      EXPECT_EQ(shared.held_slots + shared.held_sets, plan.peak_slots + plan.peak_sets);
    }
  }
  // the middle ranks of DualPipe and the second half of DualPipeV's share (P >= 2)
  const pipeline::Schedule v = pipeline::make_schedule("dualpipev", P, C);
  EXPECT_EQ(PipelineExecutor<double>::pool_plan(v, P - 1).share, true);
}

}  // namespace
}  // namespace moetron
