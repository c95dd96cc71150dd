// Incremental decoding with MLA's latent cache (see decode.h for the equations and the window).
#include "model/decode.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

namespace moetron {

template <class T>
Decoder<T>::Decoder(const Model<T>& model, int64_t window)
    : model_(model), ex_(model.exec()), window_(window) {
  if (model.stage().n_stages != 1)
    throw std::invalid_argument("Decoder: needs the whole model (one pipeline stage)");
  if (window < 1) throw std::invalid_argument("Decoder: the window must hold a token");
  const ModelConfig& c = model.config();
  layers_.resize(model.blocks_.size());
  for (Layer& L : layers_) sized(L.cache, window * (c.kv_lora_rank + c.qk_rope_head_dim));
  zeroed(ex_, balance_, 1);
  zeroed(ex_, load_, c.n_routed_experts);
}

template <class T>
const T* Decoder<T>::forward(const int32_t* ids, int64_t M) {
  const ModelConfig& c = model_.config();
  const int64_t D = c.hidden_size;
  if (M < 1) throw std::invalid_argument("Decoder::forward: no tokens");
  if (len_ + M > window_)
    throw std::invalid_argument("Decoder::forward: " + std::to_string(M) + " token(s) after " +
                                std::to_string(len_) + " exceed the window of " +
                                std::to_string(window_));
  // positions continue from the tokens fed so far; token m attends to positions [0, len + m]
  std::vector<int32_t> pos(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) pos[m] = static_cast<int32_t>(len_ + m);
  kernels::copy_from_host(ex_, sized(ids_, M), ids, sizeof(int32_t) * M);
  kernels::copy_from_host(ex_, sized(pos_, M), pos.data(), sizeof(int32_t) * M);

  T* h = sized(h_, M * D);
  T* h2 = sized(h2_, M * D);
  kernels::embedding_forward<T>(ex_, ids_.data(), M, model_.embed_->w(), D, h);
  for (size_t l = 0; l < layers_.size(); ++l) {
    block(*model_.blocks_[l], layers_[l], h, M, h2);
    std::swap(h, h2);
  }
  len_ += M;
  T* hn = sized(hn_, M * D);
  model_.norm_.forward(h, M, hn, sized(rstd_, M));
  return head(hn, M);
}

template <class T>
const T* Decoder<T>::forward_uncached(const int32_t* ids, int64_t S) {
  if (S < 1) throw std::invalid_argument("Decoder::forward_uncached: no tokens");
  // the training forward wants S + 1 tokens (inputs and shifted targets): the last target is
  // unused here
  std::vector<int32_t> tokens(ids, ids + S);
  tokens.push_back(0);
  model_.forward(mb_, tokens.data(), 1, S, 0.0);
  return head(mb_.hn.data(), S);
}

// logits [M, V] = hn W_head^T, in the head's precision
template <class T>
const T* Decoder<T>::head(const T* hn, int64_t M) {
  const ModelConfig& c = model_.config();
  T* logits = sized(logits_, M * c.vocab_size);
  kernels::gemm<T>(ex_, false, true, M, c.vocab_size, c.hidden_size, T(1), hn, model_.lm_head_->w(),
                   T(0), logits, model_.pol_.gemm(Component::Head));
  return logits;
}

// The block as in training: h_mid = h + MLA(h); out = h_mid + FFN(ffn_norm(h_mid)).
template <class T>
void Decoder<T>::block(const Block<T>& b, Layer& L, const T* h, int64_t M, T* out) {
  const int64_t ND = M * b.D_;
  T* mid = sized(mid_, ND);
  attention(b.attn_, L, h, M, mid);
  kernels::add_inplace<T>(ex_, mid, h, ND);
  T* xn2 = sized(xn2_, ND);
  b.ffn_norm_.forward(mid, M, xn2, sized(rstd_, M));
  if (b.moe_)
    b.moe_->forward(L.moe, xn2, 1, M, out, balance_.data(), load_.data());
  else
    b.mlp_->forward(L.mlp, xn2, M, out);
  kernels::add_inplace<T>(ex_, out, mid, ND);
}

template <class T>
void Decoder<T>::attention(const MLA<T>& a, Layer& L, const T* h, int64_t M, T* out) {
  const Exec& ex = ex_;
  const int64_t H = a.H_, dn = a.dn_, dr = a.dr_, dv = a.dv_, dq = a.dq_, kl = a.kl_;
  const int64_t C = kl + dr;  // one cache row
  const int32_t* pos = pos_.data();
  T* rstd = sized(rstd_, M);
  T* xn = sized(xn_, M * a.D_);
  a.attn_norm_.forward(h, M, xn, rstd);

  // queries [M, H, nope | rope], RoPE on the rope part
  T* q = sized(q_, M * H * dq);
  if (a.ql_ > 0) {
    T* cq_raw = sized(cq_raw_, M * a.ql_);
    a.q_a_.forward(xn, M, cq_raw);
    T* cq = sized(cq_, M * a.ql_);
    a.q_norm_.forward(cq_raw, M, cq, rstd);
    a.q_b_.forward(cq, M, q);
  } else {
    a.q_.forward(xn, M, q);
  }
  kernels::rope_apply<T>(ex, q + dn, M * H, dq, H, pos, a.freqs_.data(), dr, false);

  // the new tokens' cache rows: kv_a_proj writes [c_kv | k_pe] into them, RoPE on k_pe, then
  // c_kv is replaced by kv_norm(c_kv)
  T* row = L.cache.data() + len_ * C;
  a.kv_a_.forward(xn, M, row);
  kernels::rope_apply<T>(ex, row + kl, M, C, 1, pos, a.freqs_.data(), dr, false);
  T* ckv_raw = sized(ckv_raw_, M * kl);
  kernels::copy_2d<T>(ex, row, C, ckv_raw, kl, M, kl, 1, false);
  T* ckv = sized(ckv_, M * kl);
  a.kv_norm_.forward(ckv_raw, M, ckv, rstd);
  kernels::copy_2d<T>(ex, ckv, kl, row, C, M, kl, 1, false);

  // absorbed queries [M, H, C] = [q_nope[h] W_UK[h] | q_pe[h]], W_UK[h] = kv_b rows of head h
  const T* Wkv = a.kv_b_.W->w();  // [H (dn + dv), kl]
  const kernels::GemmPrecision prec = a.kv_b_.prec();
  T* qa = sized(qa_, M * H * C);
  T* qh = sized(qh_, M * dn);
  T* lat = sized(lat_, M * kl);
  for (int64_t hd = 0; hd < H; ++hd) {
    kernels::copy_2d<T>(ex, q + hd * dq, H * dq, qh, dn, M, dn, 1, false);
    kernels::gemm<T>(ex, false, false, M, kl, dn, T(1), qh, Wkv + hd * (dn + dv) * kl, T(0), lat,
                     prec);
    kernels::copy_2d<T>(ex, lat, kl, qa + hd * C, H * C, M, kl, 1, false);
  }
  kernels::copy_2d<T>(ex, q + dn, dq, qa + kl, C, M * H, dr, 1, false);

  // attention in the latent space, then per head out of it: o[h] = o_lat[h] W_UV[h]^T
  T* ol = sized(ol_, M * H * kl);
  kernels::latent_attention_forward<T>(ex, qa, L.cache.data(), M, len_, H, C, kl, a.scale_, ol);
  T* o = sized(o_, M * H * dv);
  T* ov = sized(ov_, M * dv);
  for (int64_t hd = 0; hd < H; ++hd) {
    kernels::copy_2d<T>(ex, ol + hd * kl, H * kl, lat, kl, M, kl, 1, false);
    kernels::gemm<T>(ex, false, true, M, dv, kl, T(1), lat, Wkv + (hd * (dn + dv) + dn) * kl, T(0),
                     ov, prec);
    kernels::copy_2d<T>(ex, ov, dv, o + hd * dv, H * dv, M, dv, 1, false);
  }
  a.o_.forward(o, M, out);
}

template class Decoder<float>;
template class Decoder<double>;

}  // namespace moetron
