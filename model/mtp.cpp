// MTP module forward and split backward (see mtp.h).
#include "model/mtp.h"

namespace moetron {

template <class T>
void MtpLayer<T>::build(ParamStore<T>& ps, const std::string& p, int64_t depth,
                        const ModelConfig& c, const PrecisionPolicy& pol,
                        std::shared_ptr<TokenDispatcher<T>> dispatcher, const Exec& ex,
                        const typename Block<T>::Scratch& scratch) {
  ex_ = ex, k_ = depth;
  D_ = c.hidden_size, V_ = c.vocab_size, chunk_ = c.lm_head_chunk;
  head_prec_ = pol.gemm(Component::Head);
  version_ = pol.weight_version.get();
  enorm_.build(ps, p + "enorm.weight", D_, c.rms_norm_eps, ex);
  hnorm_.build(ps, p + "hnorm.weight", D_, c.rms_norm_eps, ex);
  LinearPrecision lp;  // eh_proj: the attention projections' GEMM precision, never FP8
  lp.recipe = pol.gemm(Component::AttentionProj) == kernels::GemmPrecision::FP32 ? Recipe::FP32
                                                                                 : Recipe::BF16;
  eh_proj_ = Linear<T>::make(ps.add(p + "eh_proj.weight", {D_, 2 * D_}), 2 * D_, D_, lp, pol, ex,
                             scratch.linear);
  // the last k positions of each sequence have no target: out of the MoE's balance statistics
  block_.build(ps, p, c, pol, std::move(dispatcher), ex, /*tail=*/depth, scratch);
  own_ = block_.own();
  head_norm_.build(ps, p + "shared_head.norm.weight", D_, c.rms_norm_eps, ex);
}

template <class T>
void MtpLayer<T>::init(double std, uint64_t seed) {
  init_normal(*eh_proj_.W, std, seed);
  block_.init(std, seed);
}

template <class T>
Program MtpLayer<T>::forward_program(State& st, const int32_t* tokens, int64_t B, int64_t S,
                                     const int32_t* pos, const T* hprev, const T* embed,
                                     const T* head, double* loss_sum, double* balance,
                                     int64_t* load, int layer) const {
  const Exec& ex = ex_;
  const int64_t N = B * S, D = D_;
  int32_t* ids = sized(st.ids, N);
  int32_t* targets = sized(st.targets, N);
  kernels::shift_tokens(ex, tokens, B, S, k_, ids, targets, nullptr);
  T* e = sized(st.e, N * D);
  kernels::embedding_forward<T>(ex, ids, N, embed, D, e);
  T* en = sized(own_->en, N * D);
  enorm_.forward(e, N, en, sized(st.rstd_e, N));
  T* hpn = sized(own_->hpn, N * D);
  hnorm_.forward(hprev, N, hpn, sized(st.rstd_h, N));
  st.hp = hprev;
  T* cat = sized(st.cat, N * 2 * D);
  kernels::copy_2d<T>(ex, en, D, cat, 2 * D, N, D, 1, false);
  kernels::copy_2d<T>(ex, hpn, D, cat + D, 2 * D, N, D, 1, false);
  // the block input: kept by this state, or (the block keeps it in bf16) a forward's staging
  T* x = sized(block_.keeps_input_bf16() ? own_->x : st.x, N * D);
  eh_proj_.forward(cat, N, x);
  T* h = sized(st.h, N * D);
  Program blk = block_.forward_program(st.block, x, B, S, pos, h, balance, load, layer);
  while (blk.step()) co_yield blk.last();
  T* hn = sized(st.hn, N * D);
  head_norm_.forward(h, N, hn, sized(st.rstd_o, N));
  kernels::lm_head_ce_forward<T>(ex, hn, head, targets, N, D, V_, chunk_, sized(st.lse, N),
                                 head_prec_, loss_sum, head_bf16(head));
}

template <class T>
const uint16_t* MtpLayer<T>::head_bf16(const T* head) const {
  if constexpr (std::is_same_v<T, float>) {
    if (head16_) return head16_->refresh(ex_, head, V_ * D_, version_);
  }
  return nullptr;
}

template <class T>
void MtpLayer<T>::forward(State& st, const int32_t* tokens, int64_t B, int64_t S,
                          const int32_t* pos, const T* hprev, const T* embed, const T* head,
                          double* loss_sum, double* balance, int64_t* load) const {
  drain(forward_program(st, tokens, B, S, pos, hprev, embed, head, loss_sum, balance, load, -1));
}

template <class T>
Program MtpLayer<T>::backward_program(State& st, int64_t B, int64_t S, const int32_t* pos, double g,
                                      const T* dnext, T aux, const T* head, T* d_head, T* d_embed,
                                      WeightQueue* queue, int layer) const {
  const Exec& ex = ex_;
  const int64_t N = B * S, D = D_;
  T* dhk = zeroed(ex, st.dhk, N * D);
  T* dhn = zeroed(ex, st.dhn, N * D);
  if (S > k_) {  // some position has a target
    kernels::lm_head_ce_backward<T>(ex, st.hn.data(), head, st.targets.data(), st.lse.data(),
                                    static_cast<T>(g), N, D, V_, chunk_, dhn, d_head, head_prec_,
                                    head_bf16(head));
    head_norm_.backward_input(dhn, st.h.data(), st.rstd_o.data(), N, dhk);
  }
  if (dnext) kernels::add_inplace<T>(ex, dhk, dnext, N * D);
  st.block.moe.aux_grad = aux;
  T* dx = sized(st.dx, N * D);
  Program blk = block_.backward_program(st.block, dhk, pos, dx, queue, layer);
  while (blk.step()) co_yield blk.last();
  input_backward(st, N, d_embed);
  weight_now_or_later(queue, [this, &st, N] { module_backward_weight(st, N); });
}

// from d x (the block input): eh_proj, then the embedding input (its norm's and the embedding's
// weight gradients now: they are cheap and keep no extra state) and the hidden-state input
// h^{k-1}
template <class T>
void MtpLayer<T>::input_backward(State& st, int64_t N, T* d_embed) const {
  const Exec& ex = ex_;
  const int64_t D = D_;
  T* dcat = sized(st.dcat, N * 2 * D);
  eh_proj_.backward_input(st.dx.data(), N, dcat);
  T* den = sized(own_->en, N * D);  // the forward's enorm(e) and hnorm(h) buffers
  T* dhpn = sized(own_->hpn, N * D);
  kernels::copy_2d<T>(ex, dcat, 2 * D, den, D, N, D, 1, false);
  kernels::copy_2d<T>(ex, dcat + D, 2 * D, dhpn, D, N, D, 1, false);
  T* de = sized(own_->de, N * D);
  enorm_.backward_input(den, st.e.data(), st.rstd_e.data(), N, de);
  enorm_.backward_weight(den, st.e.data(), st.rstd_e.data(), N);
  kernels::embedding_backward<T>(ex, st.ids.data(), N, de, D, d_embed);
  hnorm_.backward_input(dhpn, st.hp, st.rstd_h.data(), N, sized(st.dh_prev, N * D));
  hnorm_.backward_weight(dhpn, st.hp, st.rstd_h.data(), N);
}

template <class T>
void MtpLayer<T>::backward_input(State& st, int64_t B, int64_t S, const int32_t* pos, double g,
                                 const T* dnext, T aux, const T* head, T* d_head,
                                 T* d_embed) const {
  WeightQueue later;  // backward_weight's
  drain(backward_program(st, B, S, pos, g, dnext, aux, head, d_head, d_embed, &later, -1));
}

template <class T>
void MtpLayer<T>::module_backward_weight(State& st, int64_t N) const {
  head_norm_.backward_weight(st.dhn.data(), st.h.data(), st.rstd_o.data(), N);
  eh_proj_.backward_weight(st.dx.data(), st.cat.data(), N);
}

template <class T>
void MtpLayer<T>::backward_weight(State& st, int64_t N) const {
  block_.backward_weight(st.block);
  module_backward_weight(st, N);
}

template class MtpLayer<float>;
template class MtpLayer<double>;

}  // namespace moetron
