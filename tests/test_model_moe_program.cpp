// The MoE layer's forward program and a dispatcher that plans ahead (model/dispatch.h: the EP
// dispatcher on device memory): the program's first piece ends after dispatch_plan, before
// anything is posted (Posted::DispatchPlan), so an executor can enqueue the other micro-batch's
// work before the host waits for the plan's counts; the second piece posts the dispatch. The
// split changes no value: the layer's output is bit for bit that of a dispatcher that does not
// plan ahead. The local dispatcher plans ahead on a device itself, so that its layer reads its
// rows per expert without draining the stream.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/host_waits.h"
#include "kernels/ops.h"
#include "model/dispatch.h"
#include "model/moe.h"
#include "tests/moe_layer_run.h"

using namespace moetron;

namespace {

ModelConfig moe_config() {
  ModelConfig c;
  c.hidden_size = 24;
  c.moe_intermediate_size = 6;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  return c;
}

// LocalDispatcher's routing behind the interface of one that plans ahead, logging the calls.
class PlanningDispatcher final : public TokenDispatcher<double> {
 public:
  std::vector<std::string> log;
  int64_t first_expert(int64_t E) const override { return inner_.first_expert(E); }
  int64_t local_experts(int64_t E) const override { return inner_.local_experts(E); }
  bool plans_ahead() const override { return true; }
  void dispatch_plan(DispatchState<double>&, const int32_t*, int64_t, int64_t, int64_t) override {
    log.push_back("plan");
  }
  void dispatch_start(DispatchState<double>& st, const double* x, const int32_t* idx,
                      const double* w, int64_t N, int64_t K, int64_t D, int64_t E) override {
    log.push_back("start");
    inner_.dispatch_start(st, x, idx, w, N, K, D, E);
  }
  void dispatch_wait(DispatchState<double>& st) override { inner_.dispatch_wait(st); }
  void combine_start(DispatchState<double>& st) override { inner_.combine_start(st); }
  void combine_wait(DispatchState<double>& st, double* y) override { inner_.combine_wait(st, y); }
  void combine_backward_start(DispatchState<double>& st, const double* dy) override {
    inner_.combine_backward_start(st, dy);
  }
  void combine_backward_wait(DispatchState<double>& st) override {
    inner_.combine_backward_wait(st);
  }
  void dispatch_backward_start(DispatchState<double>& st) override {
    inner_.dispatch_backward_start(st);
  }
  void dispatch_backward_wait(DispatchState<double>& st, double* dx, double* dw) override {
    inner_.dispatch_backward_wait(st, dx, dw);
  }

 private:
  LocalDispatcher<double> inner_;
};

struct Layer {
  ParamStore<double> ps;
  MoE<double> moe;
  MoE<double>::State st;
  std::vector<double> y, balance{0.0};
  std::vector<int64_t> load;
  explicit Layer(std::shared_ptr<TokenDispatcher<double>> d, const Exec& ex = Exec{})
      : ps(ex.device) {
    moe.build(ps, "m.", moe_config(), PrecisionPolicy{}, std::move(d), ex);
    moe.init(0.1, 5);
  }
  Program forward(const std::vector<double>& x, int64_t B, int64_t S) {
    const ModelConfig c = moe_config();
    y.assign(x.size(), 0.0), load.assign(c.n_routed_experts, 0);
    return moe.forward_program(st, x.data(), B, S, y.data(), balance.data(), load.data(), 3);
  }
};

TEST(MoEProgram, PlanningAheadEndsAPieceBeforeThePostAndChangesNoBit) {
  const int64_t B = 2, S = 5, D = moe_config().hidden_size;
  std::mt19937_64 g(11);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> x(B * S * D);
  for (double& v : x) v = nd(g);

  Layer plain(std::make_shared<LocalDispatcher<double>>());
  Program p = plain.forward(x, B, S);
  ASSERT_TRUE(p.step());
  EXPECT_EQ(p.last().posted, Posted::Dispatch);  // no plan piece without plans_ahead
  drain(std::move(p));

  auto d = std::make_shared<PlanningDispatcher>();
  Layer ahead(d);
  Program q = ahead.forward(x, B, S);
  ASSERT_TRUE(q.step());
  EXPECT_EQ(q.last().posted, Posted::DispatchPlan);
  EXPECT_EQ(q.last().layer, 3);
  EXPECT_EQ(d->log, std::vector<std::string>{"plan"});  // planned, nothing posted yet
  ASSERT_TRUE(q.step());
  EXPECT_EQ(q.last().posted, Posted::Dispatch);
  EXPECT_EQ((d->log), (std::vector<std::string>{"plan", "start"}));
  ASSERT_TRUE(q.step());
  EXPECT_EQ(q.last().posted, Posted::Combine);
  EXPECT_FALSE(q.step());

  ASSERT_EQ(ahead.y.size(), plain.y.size());
  EXPECT_EQ(std::memcmp(ahead.y.data(), plain.y.data(), plain.y.size() * sizeof(double)), 0);
  EXPECT_EQ(ahead.balance, plain.balance);
  EXPECT_EQ(ahead.load, plain.load);
}

// Forward and backward of one layer on `dev` from host x and dy: y, dx, the balance loss, the
// loads, and the blocking device reads the two made (kernels/host_waits.h).
struct LayerRun {
  std::vector<double> y, dx, balance;
  std::vector<int64_t> load;
  int64_t host_waits = 0;
};
using test_moe::on;
using test_moe::to_host;
LayerRun run_layer(Device dev, const std::vector<double>& x, const std::vector<double>& dy,
                   int64_t B, int64_t S) {
  const Exec ex = Exec::on(dev);
  const int64_t n = static_cast<int64_t>(x.size()), E = moe_config().n_routed_experts;
  auto d = std::make_shared<LocalDispatcher<double>>(ex);
  EXPECT_EQ(d->plans_ahead(), dev != Device::CPU);
  Layer l(d, ex);
  Buffer<double> xb = on(ex, x), dyb = on(ex, dy), yb = on(ex, std::vector<double>(x.size()));
  Buffer<double> dxb = on(ex, std::vector<double>(x.size())), bal = on(ex, std::vector<double>(1));
  Buffer<int64_t> load = on(ex, std::vector<int64_t>(static_cast<size_t>(E)));
  kernels::host_waits::reset();
  drain(l.moe.forward_program(l.st, xb.data(), B, S, yb.data(), bal.data(), load.data(), 0));
  l.moe.backward_input(l.st, dyb.data(), dxb.data());
  l.moe.backward_weight(l.st, xb.data());
  LayerRun r;
  r.host_waits = kernels::host_waits::read();
  r.y = to_host(ex, yb.data(), n), r.dx = to_host(ex, dxb.data(), n),
  r.balance = to_host(ex, bal.data(), 1);
  r.load = to_host(ex, load.data(), E);
  return r;
}

TEST(MoEProgram, TheLocalDispatcherPlansAheadOnADeviceAndDrainsNothing) {
  const int64_t B = 2, S = 7, D = moe_config().hidden_size;
  std::mt19937_64 g(5);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> x(B * S * D), dy(B * S * D);
  for (double& v : x) v = nd(g);
  for (double& v : dy) v = nd(g);
  const LayerRun cpu = run_layer(Device::CPU, x, dy, B, S);
  const LayerRun guard = run_layer(Device::Guard, x, dy, B, S);
  EXPECT_EQ(guard.host_waits, 0);  // before: one, the rows per expert read after the shared expert
  EXPECT_EQ(std::memcmp(guard.y.data(), cpu.y.data(), x.size() * sizeof(double)), 0);
  EXPECT_EQ(std::memcmp(guard.dx.data(), cpu.dx.data(), x.size() * sizeof(double)), 0);
  EXPECT_EQ(guard.balance, cpu.balance);
  EXPECT_EQ(guard.load, cpu.load);
  int64_t routed = 0;
  for (int64_t v : cpu.load) routed += v;
  EXPECT_EQ(routed, B * S * moe_config().num_experts_per_tok);  // real routing, every pair
  EXPECT_NE(cpu.dx[0], 0.0);
}

}  // namespace
