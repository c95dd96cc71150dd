// Transformer block forward and split backward (see block.h).
#include "model/block.h"

#include <type_traits>

namespace moetron {

template <class T>
void Block<T>::build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
                     const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher,
                     const Exec& ex, int64_t tail, const Scratch& scratch) {
  ex_ = ex;
  D_ = c.hidden_size;
  attn_.build(ps, prefix, c, pol, ex, scratch.attn, scratch.linear);
  ffn_norm_.build(ps, prefix + "post_attention_layernorm.weight", D_, c.rms_norm_eps, ex);
  store_bf16_ = pol.store_bf16, recompute_norms_ = pol.recompute_norms;
  keep_input_bf16_ = pol.block_input_bf16 && std::is_same_v<T, float>;
  own_ = scratch.own ? scratch.own : std::make_shared<Own>(ex.device);
  if (dispatcher) {
    moe_ = std::make_unique<MoE<T>>();
    moe_->build(ps, prefix + "mlp.", c, pol, std::move(dispatcher), ex, tail, scratch.moe,
                scratch.mlp, scratch.linear);
  } else {
    mlp_ = std::make_unique<Mlp<T>>();
    mlp_->build(ps, prefix + "mlp.", D_, c.intermediate_size, pol, Component::DenseMlp, ex,
                scratch.mlp, scratch.linear);
  }
}

template <class T>
void Block<T>::init(double std, uint64_t seed) {
  attn_.init(std, seed);
  if (moe_) moe_->init(std, seed);
  if (mlp_) mlp_->init(std, seed);
}

template <class T>
Program Block<T>::forward_program(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos,
                                  T* out, double* balance, int64_t* load, int layer) const {
  const int64_t N = B * S, ND = N * D_;
  st.B = B, st.S = S, st.h_in = keep_input_bf16_ ? nullptr : h;
  if (keep_input_bf16_) {  // kept before anything overwrites the caller's stream (out may be h)
    st.h_kept.set_form(false, true);
    st.h_kept.keep_from(ex_, h, N, D_);
  }
  st.h_mid.set_form(false, store_bf16_), st.xn2.set_form(false, store_bf16_);
  Own& sc = *own_;  // h_mid and xn2 (bf16 storage) stay in it until this forward returns
  T* h_mid = st.h_mid.write(N, D_, sc.h_mid);
  attn_.forward(st.attn, h, B, S, pos, h_mid);
  kernels::add_inplace<T>(ex_, h_mid, h, ND);
  st.h_mid.keep(ex_, sc.h_mid);
  // ffn_norm's output: kept (the gate's weight gradient reads it; the experts keep their own
  // input), or under recompute_norms staged in Own until this forward returns and made again
  T* xn2 = recompute_norms_ ? sized(sc.xn2, ND) : st.xn2.write(N, D_, sc.xn2);
  ffn_norm_.forward(h_mid, N, xn2, sized(st.rstd2, N));
  if (!recompute_norms_) st.xn2.keep(ex_, sc.xn2);
  if (moe_) {
    Program ffn = moe_->forward_program(st.moe, xn2, B, S, out, balance, load, layer);
    while (ffn.step()) co_yield ffn.last();
  } else {
    mlp_->forward(st.mlp, xn2, N, out);
  }
  kernels::add_inplace<T>(ex_, out, h_mid, ND);
}

template <class T>
void Block<T>::forward(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos, T* out,
                       double* balance, int64_t* load) const {
  drain(forward_program(st, h, B, S, pos, out, balance, load, -1));
}

template <class T>
Program Block<T>::backward_program(State& st, const T* dout, const int32_t* pos, T* dh,
                                   WeightQueue* queue, int layer) const {
  const int64_t N = st.B * st.S, ND = N * D_;
  // FFN branch: dxn2 = FFN^T dout; d h_mid = dout + ffn_norm^T dxn2
  T* dxn2 = zeroed(ex_, own_->dxn2, ND);  // (the chunk's: no other program runs until this ends)
  if (moe_) {
    Program ffn = moe_->backward_program(st.moe, dout, dxn2, queue, layer);
    while (ffn.step()) co_yield ffn.last();
  } else {
    mlp_->backward_input(st.mlp, dout, dxn2, /*accumulate=*/false);
  }
  T* dmid = attn_.output_grad(st.attn, N);  // kept by the attention for o_proj's Wgrad
  const T* h_mid = st.h_mid.read(ex_, own_->h_mid);
  ffn_norm_.backward_input(dxn2, h_mid, st.rstd2.data(), N, dmid);
  ffn_norm_.weight_grad(dxn2, h_mid, st.rstd2.data(), N, st.dw_ffn_norm);
  kernels::add_inplace<T>(ex_, dmid, dout, ND);
  // attention branch: dh = d h_mid + MLA^T d h_mid
  kernels::copy(ex_, dh, dmid, sizeof(T) * ND);
  attn_.backward_input(st.attn, input(st), dmid, pos, dh);
  weight_now_or_later(queue, [this, &st] { dense_backward_weight(st); });
}

template <class T>
void Block<T>::backward_input(State& st, const T* dout, const int32_t* pos, T* dh) const {
  WeightQueue later;  // backward_weight's
  drain(backward_program(st, dout, pos, dh, &later, -1));
}

template <class T>
void Block<T>::dense_backward_weight(State& st) const {
  attn_.backward_weight(st.attn, input(st));
  ffn_norm_.backward_weight(st.dw_ffn_norm);
  const T* xn2 = ffn_input(st);
  if (moe_)
    moe_->dense_backward_weight(st.moe, xn2);
  else
    mlp_->backward_weight(st.mlp, xn2);
}

// Under recompute_norms the forward's computation again, from h_mid as kept: the same bits as the
// forward's under T storage; under bf16 storage the norm of the bf16-kept h_mid (where the kept
// form was the bf16 of the norm: each a bf16 round-off from the forward's value).
template <class T>
const T* Block<T>::ffn_input(State& st) const {
  if (!recompute_norms_) return st.xn2.read(ex_, own_->xn2);
  const int64_t N = st.B * st.S;
  const T* h_mid = st.h_mid.read(ex_, own_->h_mid);
  T* xn2 = sized(own_->xn2, N * D_);
  ffn_norm_.forward(h_mid, N, xn2, sized(own_->rstd, N));
  return xn2;
}

// (Own::x is free in a backward: the forward that ran the stream through it has returned, and
// no program of this chunk runs beside this one)
template <class T>
const T* Block<T>::input(State& st) const {
  return st.h_in ? st.h_in : st.h_kept.read(ex_, own_->x);
}

template <class T>
void Block<T>::backward_weight(State& st) const {
  if (moe_) moe_->experts_backward_weight(st.moe);
  dense_backward_weight(st);
}

template class Block<float>;
template class Block<double>;

}  // namespace moetron
