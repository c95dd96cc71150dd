// One forward and backward of a DeepSeekMoE layer on any device, from seeded inputs, for the
// expert-row padding tests (tests/test_model_moe_padding.cpp on the CPU and the guard device,
// tests/test_cuda_moe_padding.cpp on the GPU): the output, the input gradient, every parameter
// gradient, and the rows per expert the grouped GEMMs got.
#pragma once

#include <memory>
#include <random>
#include <vector>

#include "kernels/device.h"
#include "kernels/ops.h"
#include "model/dispatch.h"
#include "model/moe.h"

namespace moetron::test_moe {

// 8 experts of width 80 over a hidden size of 160 (partial 128-tiles in both), 4 per token.
inline ModelConfig moe_config() {
  ModelConfig c;
  c.hidden_size = 160;
  c.moe_intermediate_size = 80;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 4;
  c.n_group = 4;
  c.topk_group = 2;
  c.routed_scaling_factor = 2.5;
  c.seq_aux_alpha = 1e-2;
  return c;
}

template <class U>
std::vector<U> to_host(const Exec& ex, const U* p, int64_t n) {
  std::vector<U> h(static_cast<size_t>(n));
  kernels::copy_to_host(ex, h.data(), p, sizeof(U) * n);
  return h;
}
template <class U>
Buffer<U> on(const Exec& ex, const std::vector<U>& h) {
  Buffer<U> b(ex.device);
  kernels::copy_from_host(ex, b.resize(static_cast<int64_t>(h.size())), h.data(),
                          sizeof(U) * h.size());
  return b;
}

// One forward and backward of a layer: what it computed, and its rows per expert.
struct LayerRun {
  std::vector<float> y, dx;
  std::vector<std::vector<float>> grads;  // per parameter, in the store's order
  std::vector<int64_t> group_off;         // the grouped GEMMs' row offsets (host)
  int64_t pairs = 0;                      // (token, expert) pairs routed here
  std::vector<int64_t> load;              // tokens per expert (the routing's choices)
};

// The default device (the layer state's buffers) set for a scope.
struct DefaultDevice {
  Device before = default_device();
  explicit DefaultDevice(Device d) { set_default_device(d); }
  ~DefaultDevice() { set_default_device(before); }
  DefaultDevice(const DefaultDevice&) = delete;
  DefaultDevice& operator=(const DefaultDevice&) = delete;
};

inline LayerRun run_layer(PrecisionPolicy pol, int64_t align, Device dev,
                          const ModelConfig& c = moe_config()) {
  const int64_t B = 2, S = 160, N = B * S, D = c.hidden_size, E = c.n_routed_experts;
  pol.expert_row_align = align;
  const DefaultDevice on_dev(dev);  // the state's buffers too
  const Exec ex = Exec::on(dev);
  ParamStore<float> ps(dev);
  MoE<float> moe;
  moe.build(ps, "m.", c, pol, std::make_shared<LocalDispatcher<float>>(ex), ex);
  moe.init(0.05, 7);
  std::mt19937 g(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> xh(N * D), dyh(N * D);
  for (float& v : xh) v = nd(g);
  for (float& v : dyh) v = nd(g);
  Buffer<float> x = on(ex, xh), dy = on(ex, dyh), y = on(ex, std::vector<float>(N * D));
  Buffer<float> dx = on(ex, std::vector<float>(N * D));
  Buffer<double> balance = on(ex, std::vector<double>(1));
  Buffer<int64_t> load = on(ex, std::vector<int64_t>(E));
  MoE<float>::State st;
  ps.zero_grad();
  moe.forward(st, x.data(), B, S, y.data(), balance.data(), load.data());
  st.aux_grad = 1.f;
  moe.backward_input(st, dy.data(), dx.data());
  moe.backward_weight(st, x.data());
  LayerRun r;
  r.y = to_host(ex, y.data(), N * D), r.dx = to_host(ex, dx.data(), N * D);
  for (const auto& p : ps.all()) r.grads.push_back(to_host(ex, p->g(), p->numel()));
  r.group_off.assign(st.group_off.begin(), st.group_off.end());
  r.pairs = N * c.num_experts_per_tok;
  r.load = to_host(ex, load.data(), E);
  return r;
}

}  // namespace moetron::test_moe
