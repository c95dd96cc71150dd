// DeepSeekMoE forward/backward phases (see moe.h; FP8 experts: the *_fp8 helpers below).
#include "model/moe.h"

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

namespace moetron {

namespace {
// Rows [r0, r0 + c) of a 1x128-tiled FP8 activation
uint8_t* act_codes(Fp8Act& a, int64_t r0) { return a.q.data() + r0 * a.cols; }
float* act_scales(Fp8Act& a, int64_t r0) { return a.s.data() + r0 * a.tiles(); }
// Sizes a for [rows, cols] (contents written later, in row slices)
void size_act(Fp8Act& a, int64_t rows, int64_t cols, bool pow2) {
  a.rows = rows, a.cols = cols, a.pow2 = pow2;
  sized(a.q, rows * cols);
  sized(a.s, rows * a.tiles());
}
}  // namespace

template <class T>
void MoE<T>::build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
                   const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher) {
  D_ = c.hidden_size, E_ = c.n_routed_experts, K_ = c.num_experts_per_tok;
  F_ = c.moe_intermediate_size;
  alpha_ = c.seq_aux_alpha;
  gp_ = {E_, K_, c.n_group, c.topk_group, c.routed_scaling_factor};
  expert_lp_ = pol.linear(Component::RoutedExpert);
  expert_down_lp_ = pol.linear(Component::RoutedExpert, /*o_proj=*/false, /*expert_down=*/true);
  expert_prec_ = expert_lp_.gemm();
  weight_version_ = pol.weight_version.get();
  if (expert_lp_.fp8() && !std::is_same_v<T, float>)
    throw std::invalid_argument("the fp8 recipe needs a float model");
  dispatcher_ = std::move(dispatcher);
  first_expert_ = dispatcher_->first_expert(E_);
  E_local_ = dispatcher_->local_experts(E_);

  gate_w_ = ps.add(prefix + "gate.weight", {E_, D_});
  bias_ = ps.add(prefix + "gate.e_score_correction_bias", {E_}, /*decay=*/false);
  bias_->trainable = false;
  params_ = {gate_w_, bias_};
  gate_ = {gate_w_, D_, E_, pol.gemm(Component::Gate)};  // never FP8

  gu_all_ = std::make_unique<Param<T>>();
  gu_all_->value = Tensor({E_local_, 2 * F_, D_}, dtype_of<T>());
  gu_all_->grad = Tensor({E_local_, 2 * F_, D_}, dtype_of<T>());
  down_all_ = std::make_unique<Param<T>>();
  down_all_->value = Tensor({E_local_, D_, F_}, dtype_of<T>());
  down_all_->grad = Tensor({E_local_, D_, F_}, dtype_of<T>());
  const Tensor &w_gu = gu_all_->value, &g_gu = gu_all_->grad;
  const Tensor &w_down = down_all_->value, &g_down = down_all_->grad;
  for (int64_t e = 0; e < E_local_; ++e) {
    const std::string p = prefix + "experts." + std::to_string(first_expert_ + e) + ".";
    const int64_t o = e * 2 * F_ * D_;
    params_.push_back(ps.add_view(p + "gate_proj.weight", w_gu, g_gu, o, {F_, D_}));
    params_.push_back(ps.add_view(p + "up_proj.weight", w_gu, g_gu, o + F_ * D_, {F_, D_}));
    params_.push_back(ps.add_view(p + "down_proj.weight", w_down, g_down, e * D_ * F_, {D_, F_}));
    for (size_t i = params_.size() - 3; i < params_.size(); ++i) params_[i]->expert = true;
  }
  shared_.build(ps, prefix + "shared_experts.", D_, c.n_shared_experts * F_, pol,
                Component::SharedExpert);
  for (Param<T>* p : shared_.params()) params_.push_back(p);
}

template <class T>
void MoE<T>::init(double std, uint64_t seed) {
  for (Param<T>* p : params_)
    if (p->trainable) init_normal(*p, std, seed);
  init_constant(*bias_, 0.0);
}

// ---- forward ---------------------------------------------------------------------------------

template <class T>
void MoE<T>::gate(State& st, const T* x, int64_t B, int64_t S) const {
  const int64_t N = B * S;
  st.B = B, st.S = S, st.N = N;
  T* logits = sized(st.logits, N * E_);
  gate_.forward(x, N, logits);
  std::vector<float> bias(E_);
  for (int64_t e = 0; e < E_; ++e) bias[e] = static_cast<float>(bias_->w()[e]);
  T* s = sized(st.scores, N * E_);
  st.idx.resize(N * K_);
  kernels::gate_forward<T>(logits, bias.data(), N, gp_, s, st.idx.data(),
                           sized(st.weights, N * K_));
  st.load.assign(E_, 0);
  for (int32_t e : st.idx) ++st.load[e];

  // Sequence-wise balance loss: f_i from the plain top-K of the unbiased scores (no groups),
  // P_i the mean over the sequence of s_i / sum_j s_j.  L = alpha * mean_b sum_i f_i P_i.
  T* f = sized(st.bal_f, B * E_, /*zero=*/true);
  double loss = 0;
  std::vector<int32_t> order(E_);
  for (int64_t b = 0; b < B; ++b) {
    T* fb = f + b * E_;
    std::vector<double> P(E_, 0.0);
    for (int64_t t = 0; t < S; ++t) {
      const T* st_s = s + (b * S + t) * E_;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + K_, order.end(), [&](int32_t i, int32_t j) {
        return st_s[i] > st_s[j] || (st_s[i] == st_s[j] && i < j);
      });
      for (int64_t k = 0; k < K_; ++k) fb[order[k]] += T(1);
      double z = 0;
      for (int64_t e = 0; e < E_; ++e) z += st_s[e];
      for (int64_t e = 0; e < E_; ++e) P[e] += st_s[e] / z;
    }
    const double fscale = static_cast<double>(E_) / static_cast<double>(K_ * S);
    for (int64_t e = 0; e < E_; ++e) {
      fb[e] = static_cast<T>(fb[e] * fscale);
      loss += static_cast<double>(fb[e]) * P[e] / static_cast<double>(S);
    }
  }
  st.balance_loss = alpha_ * loss / static_cast<double>(B);
}

template <class T>
void MoE<T>::shared(State& st, const T* x) const {
  shared_.forward(st.shared, x, st.N, sized(st.shared_out, st.N * D_));
}

template <class T>
void MoE<T>::dispatch_start(State& st, const T* x) const {
  dispatcher_->dispatch_start(st.ds, x, st.idx.data(), st.weights.data(), st.N, K_, D_, E_);
}

template <class T>
void MoE<T>::dispatch_wait(State& st) const {
  dispatcher_->dispatch_wait(st.ds);
  // received (token, slot) pairs grouped by local expert; slots of other processes' experts skip
  st.routing = kernels::route_by_expert(st.ds.ridx.data(), st.ds.R, K_, E_local_);
  const int64_t A = static_cast<int64_t>(st.routing.row_token.size());
  if (expert_lp_.fp8()) {  // the experts' inputs are kept as FP8 tiles only
    kernels::permute_rows<T>(st.ds.rx.data(), st.routing, D_, sized(fwd_x_, A * D_));
    quantize_act(fwd_x_.data(), A, D_, expert_lp_.pow2_x, st.xperm8);
  } else {
    kernels::permute_rows<T>(st.ds.rx.data(), st.routing, D_, sized(st.xperm, A * D_));
  }
  T* w = sized(st.wperm, A);
  for (int64_t r = 0; r < A; ++r) w[r] = st.ds.rw[st.routing.row_slot[r]];
}

template <class T>
void MoE<T>::experts(State& st) const {
  const int64_t R = static_cast<int64_t>(st.routing.row_token.size());
  if constexpr (std::is_same_v<T, float>) {
    if (expert_lp_.fp8()) return experts_fp8(st);
  }
  T* gu = sized(st.gu, R * 2 * F_);
  T* a = sized(st.a, R * F_);
  T* y = sized(st.yperm, R * D_);
  // one expert per thread: the experts' GEMMs are small, so running them side by side beats
  // splitting each one over the threads (kernels called here see no nested parallelism)
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t e = 0; e < E_local_; ++e) {
    const int64_t r0 = st.routing.offsets[e], c = st.routing.counts[e];
    if (c == 0) continue;
    const T* Wgu = gu_all_->w() + e * 2 * F_ * D_;
    const T* Wd = down_all_->w() + e * D_ * F_;
    // gu[c,2F] = x[c,D] Wgu^T ; a = silu(g) * u * w ; y[c,D] = a Wd^T
    kernels::gemm<T>(false, true, c, 2 * F_, D_, T(1), st.xperm.data() + r0 * D_, Wgu, T(0),
                     gu + r0 * 2 * F_, expert_prec_, /*dynamic=*/true);
    kernels::swiglu_forward<T>(gu + r0 * 2 * F_, c, F_, st.wperm.data() + r0, a + r0 * F_);
    kernels::gemm<T>(false, true, c, D_, F_, T(1), a + r0 * F_, Wd, T(0), y + r0 * D_, expert_prec_,
                     /*dynamic=*/true);
  }
}

template <class T>
void MoE<T>::combine_start(State& st) const {
  // per received token: the sum of its local experts' (already weighted) outputs
  kernels::unpermute_add<T>(st.yperm.data(), st.routing, st.ds.R, D_,
                            sized(st.ds.ry, st.ds.R * D_, /*zero=*/true));
  dispatcher_->combine_start(st.ds);
}

template <class T>
void MoE<T>::combine_wait(State& st, T* y) const {
  std::copy(st.shared_out.begin(), st.shared_out.begin() + st.N * D_, y);
  dispatcher_->combine_wait(st.ds, y);
}

template <class T>
void MoE<T>::forward(State& st, const T* x, int64_t B, int64_t S, T* y) const {
  gate(st, x, B, S);
  dispatch_start(st, x);
  shared(st, x);  // overlaps the dispatch when it is asynchronous
  dispatch_wait(st);
  experts(st);
  combine_start(st);
  combine_wait(st, y);
}

// ---- backward --------------------------------------------------------------------------------

template <class T>
void MoE<T>::combine_backward_start(State& st, const T* dy, T* dx) const {
  // combine summed expert rows (plus the shared expert): its backward sends dy to every process
  // the token went to; the shared expert's backward runs meanwhile.
  dispatcher_->combine_backward_start(st.ds, dy);
  shared_.backward_input(st.shared, dy, dx, /*accumulate=*/true);
}

template <class T>
void MoE<T>::combine_backward_wait(State& st) const {
  dispatcher_->combine_backward_wait(st.ds);
  const int64_t A = static_cast<int64_t>(st.routing.row_token.size());
  kernels::permute_rows<T>(st.ds.rdy.data(), st.routing, D_, sized(st.dyperm, A * D_));
}

template <class T>
void MoE<T>::experts_backward(State& st) const {
  const int64_t R = static_cast<int64_t>(st.routing.row_token.size());
  if constexpr (std::is_same_v<T, float>) {
    if (expert_lp_.fp8()) return experts_backward_fp8(st);
  }
  T* dgu = sized(st.dgu, R * 2 * F_);
  T* dw = sized(st.dwperm, R);
  T* dxp = sized(st.dxperm, R * D_);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t e = 0; e < E_local_; ++e) {
    const int64_t r0 = st.routing.offsets[e], c = st.routing.counts[e];
    if (c == 0) continue;
    const T* Wgu = gu_all_->w() + e * 2 * F_ * D_;
    const T* Wd = down_all_->w() + e * D_ * F_;
    Buf<T> da;
    T* dap = sized(da, c * F_);
    kernels::gemm<T>(false, false, c, F_, D_, T(1), st.dyperm.data() + r0 * D_, Wd, T(0), dap,
                     expert_prec_, /*dynamic=*/true);
    kernels::swiglu_backward<T>(dap, st.gu.data() + r0 * 2 * F_, c, F_, st.wperm.data() + r0,
                                dgu + r0 * 2 * F_, dw + r0);
    kernels::gemm<T>(false, false, c, D_, 2 * F_, T(1), dgu + r0 * 2 * F_, Wgu, T(0), dxp + r0 * D_,
                     expert_prec_, /*dynamic=*/true);
  }
}

template <class T>
void MoE<T>::dispatch_backward_start(State& st) const {
  // per received token: d x summed over its local pairs; d weight per (token, slot)
  const int64_t R = st.ds.R;
  kernels::unpermute_add<T>(st.dxperm.data(), st.routing, R, D_,
                            sized(st.ds.rdx, R * D_, /*zero=*/true));
  T* rdw = sized(st.ds.rdw, R * K_, /*zero=*/true);
  for (int64_t i = 0; i < R * K_; ++i)
    if (st.routing.slot[i] >= 0) rdw[i] = st.dwperm[st.routing.slot[i]];
  dispatcher_->dispatch_backward_start(st.ds);
}

template <class T>
void MoE<T>::dispatch_backward_wait(State& st, T* dx) const {
  dispatcher_->dispatch_backward_wait(st.ds, dx, sized(st.dweights, st.N * K_));
}

template <class T>
void MoE<T>::gate_backward(State& st, T* dx) const {
  const int64_t N = st.N, B = st.B, S = st.S;
  // d weights[n,k] came back with the dispatch backward
  T* dl = sized(st.dlogits, N * E_);
  kernels::gate_backward<T>(st.dweights.data(), st.scores.data(), st.idx.data(), st.weights.data(),
                            N, gp_, dl);
  // balance loss: dL/ds_it = c (f_i / Z_t - sum_j f_j s_jt / Z_t^2), c = aux_grad alpha/(B S);
  // then through the sigmoid: dlogit = ds * s (1 - s)
  if (alpha_ > 0 && st.aux_grad != T(0)) {
    const double c = static_cast<double>(st.aux_grad) * alpha_ / static_cast<double>(B * S);
    for (int64_t n = 0; n < N; ++n) {
      const T* s = st.scores.data() + n * E_;
      const T* f = st.bal_f.data() + (n / S) * E_;
      double z = 0, fs = 0;
      for (int64_t e = 0; e < E_; ++e) z += s[e], fs += static_cast<double>(f[e]) * s[e];
      for (int64_t e = 0; e < E_; ++e) {
        const double ds = c * (f[e] / z - fs / (z * z));
        dl[n * E_ + e] += static_cast<T>(ds * s[e] * (1.0 - s[e]));
      }
    }
  }
  gate_.backward_input(dl, N, dx, /*accumulate=*/true);
}

template <class T>
void MoE<T>::backward_input(State& st, const T* dy, T* dx) const {
  combine_backward_start(st, dy, dx);
  combine_backward_wait(st);
  experts_backward(st);
  dispatch_backward_start(st);
  dispatch_backward_wait(st, dx);
  gate_backward(st, dx);
}

template <class T>
void MoE<T>::backward_weight(State& st, const T* x) const {
  shared_.backward_weight(st.shared, x);
  gate_.backward_weight(st.dlogits.data(), x, st.N);
  if constexpr (std::is_same_v<T, float>) {
    if (expert_lp_.fp8()) return experts_backward_weight_fp8(st);
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t e = 0; e < E_local_; ++e) {
    const int64_t r0 = st.routing.offsets[e], c = st.routing.counts[e];
    if (c == 0) continue;
    // dWd[D,F] += dy^T a ; dWgu[2F,D] += dgu^T x
    kernels::gemm<T>(true, false, D_, F_, c, T(1), st.dyperm.data() + r0 * D_,
                     st.a.data() + r0 * F_, T(1), down_all_->g() + e * D_ * F_, expert_prec_,
                     /*dynamic=*/true);
    kernels::gemm<T>(true, false, 2 * F_, D_, c, T(1), st.dgu.data() + r0 * 2 * F_,
                     st.xperm.data() + r0 * D_, T(1), gu_all_->g() + e * 2 * F_ * D_, expert_prec_,
                     /*dynamic=*/true);
  }
}

// ---- FP8 experts (T = float) -----------------------------------------------------------------
// Per expert e with rows [r0, r0 + c) of the expert-sorted tokens (SPEC §3.3, §3.5):
//   forward   gu = fprop(x8, Wgu8_e) -> kept as gu8; a = swiglu(gu) * w; y = fprop(q(a), Wd8_e)
//   backward  da = dgrad(dy, Wd8_e); gu = deq(gu8); dgu, dw = swiglu_backward; dx = dgrad(dgu,
//             Wgu8_e); weights: a recomputed from deq(gu8), dWd += wgrad(dy, a),
//             dWgu += wgrad(dgu, x8 re-quantised 128x1)

template <class T>
void MoE<T>::experts_fp8(State& st) const {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t R = static_cast<int64_t>(st.routing.row_token.size());
    gu_w8_.refresh(gu_all_->w(), E_local_, 2 * F_, D_, expert_lp_.pow2_w, weight_version_);
    down_w8_.refresh(down_all_->w(), E_local_, D_, F_, expert_down_lp_.pow2_w, weight_version_);
    T* gu = sized(fwd_gu_, R * 2 * F_);
    T* a = sized(fwd_a_, R * F_);
    T* y = sized(st.yperm, R * D_);
    size_act(st.gu8, R, 2 * F_, expert_lp_.pow2_x);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t e = 0; e < E_local_; ++e) {
      const int64_t r0 = st.routing.offsets[e], c = st.routing.counts[e];
      if (c == 0) continue;
      kernels::fp8_fprop(act_codes(st.xperm8, r0), act_scales(st.xperm8, r0), gu_w8_.codes(e),
                         gu_w8_.scales(e), c, 2 * F_, D_, gu + r0 * 2 * F_);
      kernels::quantize(gu + r0 * 2 * F_, c, 2 * F_, kernels::kTile1x128, st.gu8.pow2,
                        act_codes(st.gu8, r0), act_scales(st.gu8, r0));
      kernels::swiglu_forward<T>(gu + r0 * 2 * F_, c, F_, st.wperm.data() + r0, a + r0 * F_);
      thread_local Fp8Act a8;
      quantize_act(a + r0 * F_, c, F_, expert_down_lp_.pow2_x, a8);
      kernels::fp8_fprop(a8.q.data(), a8.s.data(), down_w8_.codes(e), down_w8_.scales(e), c, D_, F_,
                         y + r0 * D_);
    }
  }
}

template <class T>
void MoE<T>::experts_backward_fp8(State& st) const {
  if constexpr (std::is_same_v<T, float>) {
    const int64_t R = static_cast<int64_t>(st.routing.row_token.size());
    T* dgu = sized(st.dgu, R * 2 * F_);
    T* dw = sized(st.dwperm, R);
    T* dxp = sized(st.dxperm, R * D_);
    gu_w8_.refresh(gu_all_->w(), E_local_, 2 * F_, D_, expert_lp_.pow2_w, weight_version_);
    down_w8_.refresh(down_all_->w(), E_local_, D_, F_, expert_down_lp_.pow2_w, weight_version_);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t e = 0; e < E_local_; ++e) {
      const int64_t r0 = st.routing.offsets[e], c = st.routing.counts[e];
      if (c == 0) continue;
      thread_local std::vector<float> da, gu;
      da.resize(c * F_), gu.resize(c * 2 * F_);
      kernels::fp8_linear_dgrad(st.dyperm.data() + r0 * D_, c, D_, F_, down_w8_.codes(e),
                                down_w8_.scales(e), expert_down_lp_.pow2_dy,
                                expert_down_lp_.dgrad_128x128, da.data(), false);
      kernels::dequantize(act_codes(st.gu8, r0), act_scales(st.gu8, r0), c, 2 * F_,
                          kernels::kTile1x128, gu.data());
      kernels::swiglu_backward<T>(da.data(), gu.data(), c, F_, st.wperm.data() + r0,
                                  dgu + r0 * 2 * F_, dw + r0);
      kernels::fp8_linear_dgrad(dgu + r0 * 2 * F_, c, 2 * F_, D_, gu_w8_.codes(e), gu_w8_.scales(e),
                                expert_lp_.pow2_dy, expert_lp_.dgrad_128x128, dxp + r0 * D_, false);
    }
  }
}

template <class T>
void MoE<T>::experts_backward_weight_fp8(State& st) const {
  if constexpr (std::is_same_v<T, float>) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t e = 0; e < E_local_; ++e) {
      const int64_t r0 = st.routing.offsets[e], c = st.routing.counts[e];
      if (c == 0) continue;
      thread_local std::vector<float> gu, a;
      gu.resize(c * 2 * F_), a.resize(c * F_);
      kernels::dequantize(act_codes(st.gu8, r0), act_scales(st.gu8, r0), c, 2 * F_,
                          kernels::kTile1x128, gu.data());
      kernels::swiglu_forward<T>(gu.data(), c, F_, st.wperm.data() + r0, a.data());
      kernels::fp8_linear_wgrad_f32(st.dyperm.data() + r0 * D_, a.data(), c, D_, F_,
                                    expert_down_lp_.pow2_dy, expert_down_lp_.pow2_x,
                                    down_all_->g() + e * D_ * F_);
      kernels::fp8_linear_wgrad(st.dgu.data() + r0 * 2 * F_, act_codes(st.xperm8, r0),
                                act_scales(st.xperm8, r0), c, 2 * F_, D_, expert_lp_.pow2_dy,
                                st.xperm8.pow2, gu_all_->g() + e * 2 * F_ * D_);
    }
  }
}

template <class T>
void MoE<T>::update_bias(const std::vector<int64_t>& load, double gamma) {
  double mean = 0;
  for (int64_t e = 0; e < E_; ++e) mean += static_cast<double>(load[e]);
  mean /= static_cast<double>(E_);
  T* b = bias_->w();
  for (int64_t e = 0; e < E_; ++e) {
    const double d = mean - static_cast<double>(load[e]);
    b[e] += static_cast<T>(gamma * (d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0)));
  }
}

template class MoE<float>;
template class MoE<double>;

}  // namespace moetron
