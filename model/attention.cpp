// MLA forward and split backward (see attention.h for the equations and the FP8 caching).
#include "model/attention.h"

#include <cmath>
#include <vector>

#include "kernels/flop_counter.h"

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
                   const PrecisionPolicy& pol, const Exec& ex, std::shared_ptr<Scratch> scratch,
                   std::shared_ptr<LinearScratch<T>> linear) {
  ex_ = ex;
  scratch_ = scratch ? std::move(scratch) : std::make_shared<Scratch>(ex.device);
  recompute_norms_ = pol.recompute_norms, recompute_up_ = pol.recompute_mla_up;
  store_bf16_ = pol.store_bf16, attn_out_e5m6_ = pol.attn_out_e5m6;
  core_prec_ = pol.gemm(Component::AttentionCore);
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
  const std::vector<double> freqs = kernels::rope_frequencies(rp);
  sized(freqs_, static_cast<int64_t>(freqs.size()));
  if (ex.device != Device::Meta)
    kernels::copy_from_host(ex, freqs_.data(), freqs.data(), sizeof(double) * freqs.size());

  const LinearPrecision lp = pol.linear(Component::AttentionProj);
  const LinearPrecision lp_o = pol.linear(Component::AttentionProj, /*o_proj=*/true);
  auto lin = [&](const std::string& name, int64_t out, int64_t in, const LinearPrecision& p) {
    return Linear<T>::make(matrix(ps, params_, name, out, in), in, out, p, pol, ex, linear);
  };
  attn_norm_.build(ps, prefix + "input_layernorm.weight", D_, c.rms_norm_eps, ex);
  params_.push_back(attn_norm_.w);
  const std::string a = prefix + "self_attn.";
  if (ql_ > 0) {
    q_a_ = lin(a + "q_a_proj.weight", ql_, D_, lp);
    q_norm_.build(ps, a + "q_a_layernorm.weight", ql_, c.rms_norm_eps, ex);
    params_.push_back(q_norm_.w);
    q_b_ = lin(a + "q_b_proj.weight", H_ * dq_, ql_, lp);
  } else {
    q_ = lin(a + "q_proj.weight", H_ * dq_, D_, lp);
  }
  kv_a_ = lin(a + "kv_a_proj_with_mqa.weight", kl_ + dr_, D_, lp);
  kv_norm_.build(ps, a + "kv_a_layernorm.weight", kl_, c.rms_norm_eps, ex);
  params_.push_back(kv_norm_.w);
  kv_b_ = lin(a + "kv_b_proj.weight", H_ * (dn_ + dv_), kl_, lp);
  o_ = lin(a + "o_proj.weight", D_, H_ * dv_, lp_o);
}

template <class T>
void MLA<T>::init(double std, uint64_t seed) {
  for (Param<T>* p : params_)
    if (p->value.ndim() == 2) init_normal(*p, std, seed);
}

// q [N,H,dq], k [N,H,dq], v [N,H,dv] from the projections' inputs: qin (c_q, or xn without
// query compression), c_kv and kva's RoPE key — the forward's computation, which the backward
// runs again when they are recomputed.
template <class T>
void MLA<T>::project_qkv(const SavedAct<T>& qin, const SavedAct<T>& ckv, const T* kva, int64_t N,
                         const int32_t* pos, T* q, T* k, T* v) const {
  const Exec& ex = ex_;
  const int64_t kr = kl_ + dr_, kvw = dn_ + dv_;
  (ql_ > 0 ? q_b_ : q_).forward(qin, q);
  kernels::rope_apply<T>(ex, q + dn_, N * H_, dq_, H_, pos, freqs_.data(), dr_, false);
  T* kv = sized(scratch_->kv, N * H_ * kvw);
  kv_b_.forward(ckv, kv);
  // per-head keys [k_nope | k_pe] (k_pe broadcast to every head) and values
  kernels::copy_2d<T>(ex, kv, kvw, k, dq_, N * H_, dn_, 1, false);
  kernels::copy_2d<T>(ex, kva + kl_, kr, k + dn_, dq_, N * H_, dr_, H_, false);
  kernels::copy_2d<T>(ex, kv + dn_, kvw, v, dv_, N * H_, dv_, 1, false);
}

// out = norm(x) kept as lin's input: the forward's computation again (recompute_norms)
template <class T>
const SavedAct<T>& MLA<T>::renorm(const RMSNorm<T>& norm, const Linear<T>& lin, const T* x,
                                  int64_t N, SavedAct<T>& out) const {
  norm.forward(x, N, lin.input(out, N), sized(scratch_->rstd, N));
  lin.keep(out);
  return out;
}

template <class T>
const SavedAct<T>& MLA<T>::xn_of(State& st, const T* h) const {
  return recompute_norms_ ? renorm(attn_norm_, kv_a_, h, st.B * st.S, scratch_->xn) : st.xn;
}

template <class T>
const SavedAct<T>& MLA<T>::cq_of(State& st) const {
  if (!recompute_norms_) return st.cq;
  return renorm(q_norm_, q_b_, st.cq_raw.read(ex_, scratch_->cq_raw), st.B * st.S, scratch_->cq);
}

template <class T>
const SavedAct<T>& MLA<T>::ckv_of(State& st) const {
  if (!recompute_norms_) return st.ckv;
  return renorm(kv_norm_, kv_b_, st.ckv_raw.read(ex_, scratch_->ckv_raw), st.B * st.S,
                scratch_->ckv);
}

template <class T>
void MLA<T>::forward(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos,
                     T* out) const {
  Scratch& sc = *scratch_;
  const Exec& ex = ex_;
  const int64_t N = B * S, kr = kl_ + dr_;
  st.B = B, st.S = S;
  for (SavedAct<T>* a : {&st.cq_raw, &st.kva, &st.ckv_raw, &st.q, &st.k, &st.v, &st.o})
    a->set_form(false, store_bf16_);
  if (attn_out_e5m6_) st.o.set_e5m6();
  // the norm outputs go to the state, or (recomputed later) to scratch
  SavedAct<T>& xn_s = recompute_norms_ ? sc.xn : st.xn;
  T* xn = kv_a_.input(xn_s, N);  // q_a / q share the input (and its precision)
  attn_norm_.forward(h, N, xn, sized(st.rstd_in, N));
  kv_a_.keep(xn_s);
  SavedAct<T>& cq_s = recompute_norms_ ? sc.cq : st.cq;
  if (ql_ > 0) {  // query latent
    T* cq_raw = st.cq_raw.write(N, ql_, sc.cq_raw);
    q_a_.forward(xn_s, cq_raw);
    st.cq_raw.keep(ex, sc.cq_raw);
    q_norm_.forward(cq_raw, N, q_b_.input(cq_s, N), sized(st.rstd_q, N));
    q_b_.keep(cq_s);
  }
  // compressed kv [N, kl | dr]; the shared RoPE key (kept only when k is recomputed)
  T* kva = recompute_up_ ? st.kva.write(N, kr, sc.kva) : sized(sc.kva, N * kr);
  kv_a_.forward(xn_s, kva);
  kernels::rope_apply<T>(ex, kva + kl_, N, kr, 1, pos, freqs_.data(), dr_, false);
  if (recompute_up_) st.kva.keep(ex, sc.kva);
  T* ckv_raw = st.ckv_raw.write(N, kl_, sc.ckv_raw);
  kernels::copy_2d<T>(ex, kva, kr, ckv_raw, kl_, N, kl_, 1, false);
  st.ckv_raw.keep(ex, sc.ckv_raw);
  SavedAct<T>& ckv_s = recompute_norms_ ? sc.ckv : st.ckv;
  kv_norm_.forward(ckv_raw, N, kv_b_.input(ckv_s, N), sized(st.rstd_kv, N));
  kv_b_.keep(ckv_s);

  // per-head queries, keys and values: kept in the state, or (recomputed later) only scratch
  T* q = recompute_up_ ? sized(sc.q, N * H_ * dq_) : st.q.write(N, H_ * dq_, sc.q);
  T* k = recompute_up_ ? sized(sc.k, N * H_ * dq_) : st.k.write(N, H_ * dq_, sc.k);
  T* v = recompute_up_ ? sized(sc.v, N * H_ * dv_) : st.v.write(N, H_ * dv_, sc.v);
  project_qkv(ql_ > 0 ? cq_s : xn_s, ckv_s, kva, N, pos, q, k, v);
  if (!recompute_up_) st.q.keep(ex, sc.q), st.k.keep(ex, sc.k), st.v.keep(ex, sc.v);

  T* o = st.o.write(N, H_ * dv_, sc.o);
  kernels::attention_forward<T>(ex, q, k, v, B, S, H_, dq_, dv_, scale_, o,
                                sized(st.lse, B * H_ * S), core_prec_);
  st.o.keep(ex, sc.o);
  o_.forward(o, N, out);
}

template <class T>
void MLA<T>::backward_input(State& st, const T* h, const T* dy, const int32_t* pos, T* dh) const {
  Scratch& sc = *scratch_;
  const Exec& ex = ex_;
  const int64_t B = st.B, S = st.S, N = B * S, kr = kl_ + dr_, kvw = dn_ + dv_;

  // the attention core's inputs: the forward's q, k, v (kept, or made again from the kept
  // latents), then through o_proj its output gradient d_o, in kv_b's output buffer (made in
  // every forward; dead once split into k and v, and until kv_b's output gradient goes there)
  T* dk = sized(sc.dk, N * H_ * dq_);
  T* dvv = sized(sc.dv, N * H_ * dv_);
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  if (recompute_up_) {
    const kernels::flop_counter::RecomputeScope recompute;  // hardware FLOPs, not model FLOPs
    T* qr = sized(sc.q, N * H_ * dq_);
    T* kr_ = sized(sc.k, N * H_ * dq_);
    T* vr = sized(sc.v, N * H_ * dv_);
    project_qkv(ql_ > 0 ? cq_of(st) : xn_of(st, h), ckv_of(st), st.kva.read(ex, sc.kva), N, pos, qr,
                kr_, vr);
    q = qr, k = kr_, v = vr;
  } else {
    q = st.q.read(ex, sc.q), k = st.k.read(ex, sc.k), v = st.v.read(ex, sc.v);
  }
  T* d_o = sized(sc.kv, N * H_ * dv_);
  o_.backward_input(dy, N, d_o);
  o_.keep_grad(st.dout, dy, N);                 // (in place when dy was written into output_grad)
  const Linear<T>& q_in = ql_ > 0 ? q_b_ : q_;  // the projection that made q
  T* dq = q_in.grad(st.dq, N, sc.dq);
  kernels::attention_backward<T>(ex, d_o, q, k, v, st.o.read(ex, sc.o), st.lse.data(), B, S, H_,
                                 dq_, dv_, scale_, dq, dk, dvv, core_prec_);
  kernels::rope_apply<T>(ex, dq + dn_, N * H_, dq_, H_, pos, freqs_.data(), dr_, true);

  // split key/value gradients: per-head [dk_nope | dv] and the shared dk_pe summed over heads
  T* dkv = kv_b_.grad(st.dkv, N, sc.kv);  // (kv: d_o, read now)
  T* dkva = kv_a_.grad(st.dkva, N, sc.dkva);
  kernels::copy_2d<T>(ex, dk, dq_, dkv, kvw, N * H_, dn_, 1, false);
  kernels::copy_2d<T>(ex, dvv, dv_, dkv + dn_, kvw, N * H_, dv_, 1, false);
  kernels::sum_row_groups<T>(ex, dk + dn_, dq_, dkva + kl_, kr, N, dr_, H_);
  kernels::rope_apply<T>(ex, dkva + kl_, N, kr, 1, pos, freqs_.data(), dr_, true);

  // kv path: kv_b, kv_norm (its weight gradient now), back into dkva's latent part
  T* dckv = sized(sc.dckv, N * kl_);
  kv_b_.backward_input(dkv, N, dckv);
  kv_b_.keep_grad(st.dkv, dkv, N);
  T* dckv_raw = sized(sc.dckv_raw, N * kl_);
  const T* ckv_raw = st.ckv_raw.read(ex, sc.ckv_raw);
  kv_norm_.backward_input(dckv, ckv_raw, st.rstd_kv.data(), N, dckv_raw);
  kv_norm_.weight_grad(dckv, ckv_raw, st.rstd_kv.data(), N, st.dw_kv_norm);
  kernels::copy_2d<T>(ex, dckv_raw, kl_, dkva, kr, N, kl_, 1, false);

  // d xn from both projections of xn
  T* dxn = sized(sc.dxn, N * D_);
  kv_a_.backward_input(dkva, N, dxn);
  kv_a_.keep_grad(st.dkva, dkva, N);
  if (ql_ > 0) {
    T* dcq = sized(sc.dcq, N * ql_);
    q_b_.backward_input(dq, N, dcq);
    T* dcq_raw = q_a_.grad(st.dcq_raw, N, sc.dcq_raw);
    const T* cq_raw = st.cq_raw.read(ex, sc.cq_raw);
    q_norm_.backward_input(dcq, cq_raw, st.rstd_q.data(), N, dcq_raw);
    q_norm_.weight_grad(dcq, cq_raw, st.rstd_q.data(), N, st.dw_q_norm);
    q_a_.backward_input(dcq_raw, N, dxn, /*accumulate=*/true);
    q_a_.keep_grad(st.dcq_raw, dcq_raw, N);
  } else {
    q_.backward_input(dq, N, dxn, /*accumulate=*/true);
  }
  q_in.keep_grad(st.dq, dq, N);

  // through attn_norm into the residual stream
  T* dhn = sized(sc.dhn, N * D_);
  attn_norm_.backward_input(dxn, h, st.rstd_in.data(), N, dhn);
  attn_norm_.weight_grad(dxn, h, st.rstd_in.data(), N, st.dw_attn_norm);
  kernels::add_inplace<T>(ex, dh, dhn, N * D_);
}

template <class T>
void MLA<T>::backward_weight(State& st, const T* h) const {
  Scratch& sc = *scratch_;
  const int64_t N = st.B * st.S;
  o_.backward_weight(st.dout, st.o.read(ex_, sc.o), N);  // o: T, bf16 or E5M6, never FP8
  kv_norm_.backward_weight(st.dw_kv_norm);
  if (ql_ > 0) q_norm_.backward_weight(st.dw_q_norm);
  kv_b_.backward_weight(st.dkv, ckv_of(st));
  if (ql_ > 0) q_b_.backward_weight(st.dq, cq_of(st));
  const SavedAct<T>& xn = xn_of(st, h);
  kv_a_.backward_weight(st.dkva, xn);
  if (ql_ > 0)
    q_a_.backward_weight(st.dcq_raw, xn);
  else
    q_.backward_weight(st.dq, xn);
  attn_norm_.backward_weight(st.dw_attn_norm);
}

template class MLA<float>;
template class MLA<double>;

}  // namespace moetron
