// MLA forward and split backward (see attention.h for the equations and the FP8 caching).
#include "model/attention.h"

#include <cmath>

namespace moetron {

namespace {
template <class T>
Param<T>* matrix(ParamStore<T>& ps, std::vector<Param<T>*>& list, const std::string& name,
                 int64_t out, int64_t in) {
  Param<T>* p = ps.add(name, {out, in});
  list.push_back(p);
  return p;
}
}  // namespace

template <class T>
void MLA<T>::build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
                   const PrecisionPolicy& pol) {
  D_ = c.hidden_size, H_ = c.num_attention_heads, dn_ = c.qk_nope_head_dim;
  dr_ = c.qk_rope_head_dim, dv_ = c.v_head_dim, dq_ = dn_ + dr_;
  ql_ = c.q_lora_rank, kl_ = c.kv_lora_rank;
  // softmax scale = dq^-1/2, times mscale^2 when YaRN extends the context (SPEC 1.3)
  double scale = 1.0 / std::sqrt(static_cast<double>(dq_));
  kernels::RopeParams rp;
  rp.dim = static_cast<int>(dr_);
  rp.theta = c.rope_theta;
  if (c.yarn_factor > 1.0 && c.max_seq_len > c.yarn_original_max_position_embeddings) {
    rp.yarn = true;
    rp.factor = c.yarn_factor;
    rp.original_seq_len = c.yarn_original_max_position_embeddings;
    rp.beta_fast = c.yarn_beta_fast;
    rp.beta_slow = c.yarn_beta_slow;
    double mscale = 0.1 * c.yarn_mscale * std::log(c.yarn_factor) + 1.0;
    scale *= mscale * mscale;
  }
  scale_ = static_cast<T>(scale);
  freqs_ = kernels::rope_frequencies(rp);

  const LinearPrecision lp = pol.linear(Component::AttentionProj);
  const LinearPrecision lp_o = pol.linear(Component::AttentionProj, /*o_proj=*/true);
  fp8_ = lp.fp8();
  auto lin = [&](const std::string& name, int64_t out, int64_t in, const LinearPrecision& p) {
    return Linear<T>::make(matrix(ps, params_, name, out, in), in, out, p, pol);
  };
  attn_norm_.build(ps, prefix + "input_layernorm.weight", D_, c.rms_norm_eps);
  params_.push_back(attn_norm_.w);
  const std::string a = prefix + "self_attn.";
  if (ql_ > 0) {
    q_a_ = lin(a + "q_a_proj.weight", ql_, D_, lp);
    q_norm_.build(ps, a + "q_a_layernorm.weight", ql_, c.rms_norm_eps);
    params_.push_back(q_norm_.w);
    q_b_ = lin(a + "q_b_proj.weight", H_ * dq_, ql_, lp);
  } else {
    q_ = lin(a + "q_proj.weight", H_ * dq_, D_, lp);
  }
  kv_a_ = lin(a + "kv_a_proj_with_mqa.weight", kl_ + dr_, D_, lp);
  kv_norm_.build(ps, a + "kv_a_layernorm.weight", kl_, c.rms_norm_eps);
  params_.push_back(kv_norm_.w);
  kv_b_ = lin(a + "kv_b_proj.weight", H_ * (dn_ + dv_), kl_, lp);
  o_ = lin(a + "o_proj.weight", D_, H_ * dv_, lp_o);
}

template <class T>
void MLA<T>::init(double std, uint64_t seed) {
  for (Param<T>* p : params_)
    if (p->value.ndim() == 2) init_normal(*p, std, seed);
}

template <class T>
void MLA<T>::forward(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos,
                     T* out) const {
  const int64_t N = B * S;
  st.B = B, st.S = S;
  // FP8: the Linear inputs go to scratch and are kept as FP8 tiles only
  T* xn = sized(fp8_ ? fwd_xn_ : st.xn, N * D_);
  attn_norm_.forward(h, N, xn, sized(st.rstd_in, N));
  if (fp8_) kv_a_.quantize_input(xn, N, st.xn8);

  // queries [N, H, dq]
  T* q = sized(st.q, N * H_ * dq_);
  if (ql_ > 0) {
    T* cq_raw = sized(st.cq_raw, N * ql_);
    T* cq = sized(fp8_ ? fwd_cq_ : st.cq, N * ql_);
    if (fp8_) {
      q_a_.forward(st.xn8, cq_raw);
      q_norm_.forward(cq_raw, N, cq, sized(st.rstd_q, N));
      q_b_.quantize_input(cq, N, st.cq8);
      q_b_.forward(st.cq8, q);
    } else {
      q_a_.forward(xn, N, cq_raw);
      q_norm_.forward(cq_raw, N, cq, sized(st.rstd_q, N));
      q_b_.forward(cq, N, q);
    }
  } else if (fp8_) {
    q_.forward(st.xn8, q);
  } else {
    q_.forward(xn, N, q);
  }
  kernels::rope_apply<T>(q + dn_, N * H_, dq_, H_, pos, freqs_, false);

  // compressed kv [N, kl | dr]; the shared RoPE key
  T* kva = sized(st.kva, N * (kl_ + dr_));
  if (fp8_)
    kv_a_.forward(st.xn8, kva);
  else
    kv_a_.forward(xn, N, kva);
  kernels::rope_apply<T>(kva + kl_, N, kl_ + dr_, 1, pos, freqs_, false);
  T* ckv_raw = sized(st.ckv_raw, N * kl_);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < kl_; ++i) ckv_raw[n * kl_ + i] = kva[n * (kl_ + dr_) + i];
  T* ckv = sized(fp8_ ? fwd_ckv_ : st.ckv, N * kl_);
  kv_norm_.forward(ckv_raw, N, ckv, sized(st.rstd_kv, N));
  T* kv = sized(st.kv, N * H_ * (dn_ + dv_));
  if (fp8_) {
    kv_b_.quantize_input(ckv, N, st.ckv8);
    kv_b_.forward(st.ckv8, kv);
  } else {
    kv_b_.forward(ckv, N, kv);
  }

  // per-head keys [k_nope | k_pe] and values
  T* k = sized(st.k, N * H_ * dq_);
  T* v = sized(st.v, N * H_ * dv_);
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n)
    for (int64_t hh = 0; hh < H_; ++hh) {
      const T* src = kv + (n * H_ + hh) * (dn_ + dv_);
      T* kd = k + (n * H_ + hh) * dq_;
      for (int64_t i = 0; i < dn_; ++i) kd[i] = src[i];
      for (int64_t i = 0; i < dr_; ++i) kd[dn_ + i] = kva[n * (kl_ + dr_) + kl_ + i];
      T* vd = v + (n * H_ + hh) * dv_;
      for (int64_t i = 0; i < dv_; ++i) vd[i] = src[dn_ + i];
    }

  T* o = sized(st.o, N * H_ * dv_);
  kernels::attention_forward<T>(q, k, v, B, S, H_, dq_, dv_, scale_, o, sized(st.lse, B * H_ * S));
  o_.forward(o, N, out);
}

template <class T>
void MLA<T>::backward_input(State& st, const T* h, const T* dy, const int32_t* pos, T* dh) const {
  const int64_t B = st.B, S = st.S, N = B * S;
  T* dyc = sized(st.dy, N * D_);
  for (int64_t i = 0; i < N * D_; ++i) dyc[i] = dy[i];

  // through o_proj and the attention core
  T* d_o = sized(st.tmp_do, N * H_ * dv_);
  T* dk = sized(st.tmp_dk, N * H_ * dq_);
  T* dvv = sized(st.tmp_dv, N * H_ * dv_);
  o_.backward_input(dy, N, d_o);
  T* dq = sized(st.dq, N * H_ * dq_);
  kernels::attention_backward<T>(d_o, st.q.data(), st.k.data(), st.v.data(), st.o.data(),
                                 st.lse.data(), B, S, H_, dq_, dv_, scale_, dq, dk, dvv);
  kernels::rope_apply<T>(dq + dn_, N * H_, dq_, H_, pos, freqs_, true);

  // split key/value gradients: per-head [dk_nope | dv] and the shared dk_pe summed over heads
  T* dkv = sized(st.dkv, N * H_ * (dn_ + dv_));
  T* dkva = sized(st.dkva, N * (kl_ + dr_));
#pragma omp parallel for
  for (int64_t n = 0; n < N; ++n) {
    T* dpe = dkva + n * (kl_ + dr_) + kl_;
    for (int64_t i = 0; i < dr_; ++i) dpe[i] = T(0);
    for (int64_t hh = 0; hh < H_; ++hh) {
      const T* dkh = dk + (n * H_ + hh) * dq_;
      T* dst = dkv + (n * H_ + hh) * (dn_ + dv_);
      for (int64_t i = 0; i < dn_; ++i) dst[i] = dkh[i];
      for (int64_t i = 0; i < dv_; ++i) dst[dn_ + i] = dvv[(n * H_ + hh) * dv_ + i];
      for (int64_t i = 0; i < dr_; ++i) dpe[i] += dkh[dn_ + i];
    }
  }
  kernels::rope_apply<T>(dkva + kl_, N, kl_ + dr_, 1, pos, freqs_, true);

  // kv path: kv_b, kv_norm, back into dkva's latent part
  T* dckv = sized(st.dckv, N * kl_);
  kv_b_.backward_input(dkv, N, dckv);
  T* dckv_raw = sized(st.tmp_dckv_raw, N * kl_);
  kv_norm_.backward_input(dckv, st.ckv_raw.data(), st.rstd_kv.data(), N, dckv_raw);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < kl_; ++i) dkva[n * (kl_ + dr_) + i] = dckv_raw[n * kl_ + i];

  // d xn from both projections of xn
  T* dxn = sized(st.dxn, N * D_);
  kv_a_.backward_input(dkva, N, dxn);
  if (ql_ > 0) {
    T* dcq = sized(st.dcq, N * ql_);
    q_b_.backward_input(dq, N, dcq);
    T* dcq_raw = sized(st.dcq_raw, N * ql_);
    q_norm_.backward_input(dcq, st.cq_raw.data(), st.rstd_q.data(), N, dcq_raw);
    q_a_.backward_input(dcq_raw, N, dxn, /*accumulate=*/true);
  } else {
    q_.backward_input(dq, N, dxn, /*accumulate=*/true);
  }

  // through attn_norm into the residual stream
  T* dhn = sized(st.tmp_dhn, N * D_);
  attn_norm_.backward_input(dxn, h, st.rstd_in.data(), N, dhn);
  kernels::add_inplace<T>(dh, dhn, N * D_);
}

template <class T>
void MLA<T>::backward_weight(State& st, const T* h) const {
  const int64_t N = st.B * st.S;
  o_.backward_weight(st.dy.data(), st.o.data(), N);  // o is fp32 in every recipe
  kv_norm_.backward_weight(st.dckv.data(), st.ckv_raw.data(), st.rstd_kv.data(), N);
  if (ql_ > 0) q_norm_.backward_weight(st.dcq.data(), st.cq_raw.data(), st.rstd_q.data(), N);
  if (fp8_) {  // from the cached FP8 inputs
    kv_b_.backward_weight(st.dkv.data(), st.ckv8);
    kv_a_.backward_weight(st.dkva.data(), st.xn8);
    if (ql_ > 0) {
      q_b_.backward_weight(st.dq.data(), st.cq8);
      q_a_.backward_weight(st.dcq_raw.data(), st.xn8);
    } else {
      q_.backward_weight(st.dq.data(), st.xn8);
    }
  } else {
    kv_b_.backward_weight(st.dkv.data(), st.ckv.data(), N);
    kv_a_.backward_weight(st.dkva.data(), st.xn.data(), N);
    if (ql_ > 0) {
      q_b_.backward_weight(st.dq.data(), st.cq.data(), N);
      q_a_.backward_weight(st.dcq_raw.data(), st.xn.data(), N);
    } else {
      q_.backward_weight(st.dq.data(), st.xn.data(), N);
    }
  }
  attn_norm_.backward_weight(st.dxn.data(), h, st.rstd_in.data(), N);
}

template class MLA<float>;
template class MLA<double>;

}  // namespace moetron
