// Transformer block (pre-norm):  h_mid = h + MLA(attn_norm(h));  out = h_mid + FFN(ffn_norm(h_mid))
// FFN is the dense SwiGLU MLP for the first `first_k_dense_replace` layers, DeepSeekMoE after.
// Same split-backward and per-micro-batch State contracts as its sublayers.
#pragma once

#include <memory>
#include <string>

#include "model/attention.h"
#include "model/moe.h"

namespace moetron {

template <class T>
class Block {
 public:
  struct State {
    int64_t B = 0, S = 0;
    Buf<T> h_in, h_mid, xn2, rstd2;  // [N,D], [N,D], ffn_norm(h_mid), [N]
    typename MLA<T>::State attn;
    typename Mlp<T>::State mlp;
    typename MoE<T>::State moe;
    Buf<T> dxn2;  // kept for ffn_norm's weight gradient
    Buf<T> dmid;  // backward scratch: d h_mid
  };

  // prefix "model.layers.N."
  // dispatcher: set for a MoE block, null for a dense one.
  void build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
             const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher);
  void init(double std, uint64_t seed);

  void forward(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos, T* out) const;
  // dh[N,D] (write) from dout.
  void backward_input(State& st, const T* dout, const int32_t* pos, T* dh) const;
  void backward_weight(State& st) const;

  bool is_moe() const { return moe_ != nullptr; }
  MoE<T>* moe() const { return moe_.get(); }

 private:
  int64_t D_ = 0;
  MLA<T> attn_;
  RMSNorm<T> ffn_norm_;
  std::unique_ptr<Mlp<T>> mlp_;
  std::unique_ptr<MoE<T>> moe_;
};

}  // namespace moetron
