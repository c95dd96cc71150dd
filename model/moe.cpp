// DeepSeekMoE forward/backward phases (see moe.h; FP8 experts: the *_fp8 helpers below).
#include "model/moe.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels/scalar.h"

namespace moetron {

template <class T>
void MoE<T>::build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
                   const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher,
                   const Exec& ex, int64_t tail, std::shared_ptr<Scratch> scratch,
                   std::shared_ptr<typename Mlp<T>::Scratch> mlp,
                   std::shared_ptr<LinearScratch<T>> linear) {
  if (tail < 0) throw std::invalid_argument("MoE: negative tail");
  ex_ = ex, tail_ = tail;
  scratch_ = scratch ? std::move(scratch) : std::make_shared<Scratch>(ex.device);
  D_ = c.hidden_size, E_ = c.n_routed_experts, K_ = c.num_experts_per_tok;
  F_ = c.moe_intermediate_size;
  alpha_ = c.seq_aux_alpha;
  gp_ = {E_, K_, c.n_group, c.topk_group, c.routed_scaling_factor};
  dispatcher_ = std::move(dispatcher);
  first_expert_ = dispatcher_->first_expert(E_);
  E_local_ = dispatcher_->local_experts(E_);
  if (pol.expert_row_align < 1) throw std::invalid_argument("MoE: expert_row_align below 1");
  row_align_ = pol.expert_row_align;

  gate_w_ = ps.add(prefix + "gate.weight", {E_, D_});
  bias_ = ps.add(prefix + "gate.e_score_correction_bias", {E_}, /*decay=*/false);
  bias_->trainable = false;
  params_ = {gate_w_, bias_};
  gate_ = Linear<T>::make(gate_w_, D_, E_, pol.linear(Component::Gate), pol, ex,  // never FP8
                          linear);

  auto fused = [&](std::vector<int64_t> shape) {
    auto p = std::make_unique<Param<T>>();
    p->value = Tensor(shape, dtype_of<T>(), ps.device());
    p->grad = Tensor(shape, dtype_of<T>(), ps.device());
    return p;
  };
  gu_all_ = fused({E_local_, 2 * F_, D_});
  down_all_ = fused({E_local_, D_, F_});
  for (int64_t e = 0; e < E_local_; ++e) {
    const std::string p = prefix + "experts." + std::to_string(first_expert_ + e) + ".";
    const int64_t o = e * 2 * F_ * D_;
    params_.push_back(ps.add_view(p + "gate_proj.weight", *gu_all_, o, {F_, D_}));
    params_.push_back(ps.add_view(p + "up_proj.weight", *gu_all_, o + F_ * D_, {F_, D_}));
    params_.push_back(ps.add_view(p + "down_proj.weight", *down_all_, e * D_ * F_, {D_, F_}));
    for (size_t i = params_.size() - 3; i < params_.size(); ++i) params_[i]->expert = true;
  }
  const LinearPrecision up = pol.linear(Component::RoutedExpert);
  const LinearPrecision down = pol.linear(Component::RoutedExpert, false, /*expert_down=*/true);
  gu_ = GroupedLinear<T>::make(gu_all_.get(), E_local_, D_, 2 * F_, up, pol, ex, linear);
  down_ = GroupedLinear<T>::make(down_all_.get(), E_local_, F_, D_, down, pol, ex, linear);
  recompute_swiglu_ = up.fp8();
  store_bf16_ = pol.store_bf16;
  shared_.build(ps, prefix + "shared_experts.", D_, c.n_shared_experts * F_, pol,
                Component::SharedExpert, ex, std::move(mlp), std::move(linear));
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
void MoE<T>::gate(State& st, const T* x, int64_t B, int64_t S, double* balance,
                  int64_t* load) const {
  const int64_t N = B * S;
  st.B = B, st.S = S, st.N = N;
  T* logits = sized(scratch_->one->logits, N * E_);
  gate_.forward(x, N, logits);
  T* s = sized(st.scores, N * E_);
  int32_t* idx = sized(st.idx, N * K_);
  kernels::gate_forward<T>(ex_, logits, bias_->w(), N, gp_, s, idx, sized(st.weights, N * K_));
  // loads and the sequence-wise balance loss (SPEC §1.4; f from the plain top-K of the unbiased
  // scores) over the first V positions of each sequence, the ones with a target
  const int64_t V = valid_positions(S);
  kernels::expert_histogram(ex_, idx, N * K_, S * K_, V * K_, E_, load, /*accumulate=*/true);
  kernels::seq_balance_loss_forward<T>(ex_, s, B, S, V, E_, K_, alpha_, sized(st.bal_f, B * E_),
                                       balance);
}

template <class T>
void MoE<T>::shared_expert(State& st, const T* x) const {
  shared_.forward(st.shared, x, st.N, sized(scratch_->shared_out, st.N * D_));
}

template <class T>
void MoE<T>::dispatch_start(State& st, const T* x) const {
  dispatcher_->dispatch_start(st.ds, x, st.idx.data(), st.weights.data(), st.N, K_, D_, E_);
}

template <class T>
void MoE<T>::dispatch_wait(State& st) const {
  st.ds.rx.swap(scratch_->one->rows);  // lent for this call (DispatchState)
  dispatcher_->dispatch_wait(st.ds);
  // received (token, slot) pairs grouped by local expert, each expert's rows padded to a
  // multiple of row_align_ (at most rows_max); slots of other processes' experts skip
  const int64_t R = st.ds.R, rows_max = R * K_ + E_local_ * (row_align_ - 1);
  kernels::route_by_expert(ex_, st.ds.ridx.data(), R, K_, E_local_, row_align_,
                           sized(st.counts, E_local_), sized(st.offsets, E_local_ + 1),
                           sized(st.slot, R * K_), sized(st.row_token, rows_max),
                           sized(st.row_slot, rows_max));
  // the rows per expert size what follows and lead the grouped GEMMs (kernels/ops.h: their offsets
  // are host memory): the dispatcher's, when its exchange brought them (padded here as the routing
  // op pads), else one small device-to-host read per forward (torchtitan has the same)
  if (const int64_t* off = dispatcher_->expert_offsets(st.ds)) {  // host memory both
    st.group_off.resize(E_local_ + 1);
    st.group_off[0] = 0;
    for (int64_t e = 0; e < E_local_; ++e)
      st.group_off[e + 1] = st.group_off[e] + round_up(off[e + 1] - off[e], row_align_);
  } else {
    st.group_off.resize(E_local_ + 1);
    kernels::copy_to_host(ex_, st.group_off.data(), st.offsets.data(),
                          sizeof(int64_t) * (E_local_ + 1));
  }
  const int64_t A = st.A = st.group_off[E_local_];
  gu_.keep_gathered(st.xperm, st.ds.rx.data(), st.row_token.data(), A);
  kernels::gather_rows<T>(ex_, st.ds.rw.data(), st.row_slot.data(), A, 1, sized(st.wperm, A));
  st.ds.rx.swap(scratch_->one->rows);
}

template <class T>
void MoE<T>::experts(State& st) const {
  const int64_t A = st.A;
  // gu = x Wgu_e^T ; a = silu(g) * u * w ; y = a Wd_e^T   (per expert e, over its rows)
  st.gu.set_form(recompute_swiglu_, store_bf16_, gu_.lp.pow2_x);
  T* gu = st.gu.write(A, 2 * F_, scratch_->one->gu_tmp);
  gu_.forward(st.xperm, st.group_off.data(), gu);
  st.gu.keep(ex_, scratch_->one->gu_tmp);
  st.a.set_form(false, store_bf16_);
  T* a = recompute_swiglu_ ? sized(scratch_->one->a_tmp, A * F_)
                           : st.a.write(A, F_, scratch_->one->a_tmp);
  kernels::swiglu_forward<T>(ex_, gu, A, F_, st.wperm.data(), a);
  if (!recompute_swiglu_) st.a.keep(ex_, scratch_->one->a_tmp);
  down_.forward(a, A, st.group_off.data(), sized(scratch_->one->yperm, A * D_));
}

template <class T>
void MoE<T>::combine_start(State& st) const {
  // per received token: the sum of its local experts' (already weighted) outputs
  const int64_t R = st.ds.R;
  st.ds.ry.swap(scratch_->one->rows);  // lent for this call (DispatchState)
  kernels::unpermute_add<T>(ex_, scratch_->one->yperm.data(), st.slot.data(), R, K_, D_,
                            zeroed(ex_, st.ds.ry, R * D_));
  dispatcher_->combine_start(st.ds);
  st.ds.ry.swap(scratch_->one->rows);
}

template <class T>
void MoE<T>::combine_wait(State& st, T* y) const {
  kernels::copy(ex_, y, scratch_->shared_out.data(), sizeof(T) * st.N * D_);
  dispatcher_->combine_wait(st.ds, y);
}

template <class T>
Program MoE<T>::forward_program(State& st, const T* x, int64_t B, int64_t S, T* y, double* balance,
                                int64_t* load, int layer) const {
  // The received rows and their outputs (ds.rx, ds.ry) are lent by the Scratch for the one call
  // that writes or reads each (dispatch_wait, combine_start), so no slot keeps them.
  gate(st, x, B, S, balance, load);
  if (dispatcher_->plans_ahead()) {
    dispatcher_->dispatch_plan(st.ds, st.idx.data(), st.N, K_, E_);
    co_yield Yield{layer, Posted::DispatchPlan};
  }
  dispatch_start(st, x);
  co_yield Yield{layer, Posted::Dispatch};
  shared_expert(st, x);  // overlaps the dispatch
  dispatch_wait(st);
  experts(st);
  combine_start(st);
  co_yield Yield{layer, Posted::Combine};
  combine_wait(st, y);
}

template <class T>
void MoE<T>::forward(State& st, const T* x, int64_t B, int64_t S, T* y, double* balance,
                     int64_t* load) const {
  drain(forward_program(st, x, B, S, y, balance, load, -1));
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
  st.ds.rdy.swap(scratch_->one->rows);  // lent for this call (DispatchState)
  dispatcher_->combine_backward_wait(st.ds);
  kernels::gather_rows<T>(ex_, st.ds.rdy.data(), st.row_token.data(), st.A, D_,
                          down_.grad(st.dyperm, st.A, scratch_->one->yperm));
  st.ds.rdy.swap(scratch_->one->rows);
}

template <class T>
void MoE<T>::experts_backward(State& st) const {
  const int64_t A = st.A;
  const int64_t* off = st.group_off.data();
  T* dyperm = down_.grad(st.dyperm, A, scratch_->one->yperm);  // as combine_backward_wait wrote it
  T* da = sized(scratch_->one->a_tmp, A * F_);  // (a_tmp: the forward's; recomputed after this)
  down_.backward_input(dyperm, off, da);
  down_.keep_grad(st.dyperm, dyperm, off);
  // dyperm is read: its staging becomes d xperm (given back at the program's end)
  st.dxperm.swap(scratch_->one->yperm);
  // FP8: gu widened into gu_tmp, and dgu staged there too before its tiles (in place: the
  // SwiGLU backward reads each (g, u) pair before it writes its (dg, du))
  const T* gu = st.gu.read(ex_, scratch_->one->gu_tmp);
  T* dgu = gu_.grad(st.dgu, A, scratch_->one->gu_tmp);
  kernels::swiglu_backward<T>(ex_, da, gu, A, F_, st.wperm.data(), dgu, sized(st.dwperm, A));
  gu_.backward_input(dgu, off, sized(st.dxperm, A * D_));
  gu_.keep_grad(st.dgu, dgu, off);
}

template <class T>
void MoE<T>::dispatch_backward_start(State& st) const {
  // per received token: d x summed over its local pairs; d weight per (token, slot)
  const int64_t R = st.ds.R;
  st.ds.rdx.swap(scratch_->one->rows);  // lent for this call (DispatchState)
  kernels::unpermute_add<T>(ex_, st.dxperm.data(), st.slot.data(), R, K_, D_,
                            zeroed(ex_, st.ds.rdx, R * D_));
  kernels::gather_rows<T>(ex_, st.dwperm.data(), st.slot.data(), R * K_, 1,
                          sized(st.ds.rdw, R * K_));
  dispatcher_->dispatch_backward_start(st.ds);
  st.ds.rdx.swap(scratch_->one->rows);
  st.dxperm.swap(scratch_->one->yperm);  // d xperm is sent: its buffer goes back (one-piece)
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
  kernels::gate_backward<T>(ex_, st.dweights.data(), st.scores.data(), st.idx.data(),
                            st.weights.data(), N, gp_, dl);
  // balance loss, c = aux_grad alpha / (B V) over the first V positions of each sequence
  const int64_t V = valid_positions(S);
  if (alpha_ > 0 && st.aux_grad != T(0) && V > 0) {
    const double c = static_cast<double>(st.aux_grad) * alpha_ / static_cast<double>(B * V);
    kernels::seq_balance_loss_backward<T>(ex_, st.scores.data(), st.bal_f.data(), B, S, V, E_, c,
                                          dl);
  }
  gate_.backward_input(dl, N, dx, /*accumulate=*/true);
}

template <class T>
Program MoE<T>::backward_program(State& st, const T* dy, T* dx, WeightQueue* queue,
                                 int layer) const {
  // The gradients no weight gradient reads (the rows exchanged, d xperm, d wperm, d weights)
  // live only during this program: lent by the model's Scratch, as the forward's rx and ry, so a
  // micro-batch waiting for its deferred weight gradients keeps only dyperm, dgu (FP8 experts: as
  // the Wgrads' tiles) and dlogits. d xperm is the forward's yperm (from experts_backward to
  // dispatch_backward_start, one piece; no forward of this model runs meanwhile); the rows
  // exchanged are lent per call, like the forward's.
  Scratch& sc = *scratch_;
  const auto lend = [&] {
    st.ds.rdw.swap(sc.rdw), st.dwperm.swap(sc.dwperm), st.dweights.swap(sc.dweights);
  };
  lend();
  combine_backward_start(st, dy, dx);
  co_yield Yield{layer, Posted::CombineBackward};
  combine_backward_wait(st);
  experts_backward(st);
  dispatch_backward_start(st);
  weight_now_or_later(queue, [this, &st] { experts_backward_weight(st); });
  co_yield Yield{layer, Posted::DispatchBackward};
  dispatch_backward_wait(st, dx);
  gate_backward(st, dx);
  lend();  // back
}

template <class T>
void MoE<T>::backward_input(State& st, const T* dy, T* dx) const {
  WeightQueue later;  // the experts' weight gradients: backward_weight's
  drain(backward_program(st, dy, dx, &later, -1));
}

template <class T>
void MoE<T>::dense_backward_weight(State& st, const T* x) const {
  shared_.backward_weight(st.shared, x);
  gate_.backward_weight(st.dlogits.data(), x, st.N);
}

template <class T>
void MoE<T>::experts_backward_weight(State& st) const {
  const T* a = nullptr;
  if (recompute_swiglu_) {  // a = swiglu(gu) * w from the kept gu
    a = sized(scratch_->one->a_tmp, st.A * F_);
    kernels::swiglu_forward<T>(ex_, st.gu.read(ex_, scratch_->one->gu_tmp), st.A, F_,
                               st.wperm.data(), scratch_->one->a_tmp.data());
  } else {
    a = st.a.read(ex_, scratch_->one->a_tmp);
  }
  down_.backward_weight(st.dyperm, a, st.group_off.data());
  gu_.backward_weight(st.dgu, st.xperm, st.group_off.data());
}

template <class T>
void MoE<T>::update_bias(const int64_t* load, double gamma) {
  kernels::bias_sign_update<T>(ex_, bias_->w(), load, E_, gamma);
}

template class MoE<float>;
template class MoE<double>;

}  // namespace moetron
