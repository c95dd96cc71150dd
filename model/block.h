// Transformer block (pre-norm):  h_mid = h + MLA(attn_norm(h));  out = h_mid + FFN(ffn_norm(h_mid))
// FFN is the dense SwiGLU MLP for the first `first_k_dense_replace` layers, DeepSeekMoE after.
// Same split-backward and per-micro-batch State contracts as its sublayers. The residual stream
// is stored once, by the caller: the state points at the block input instead of copying it.
#pragma once

#include <memory>
#include <string>

#include "model/attention.h"
#include "model/moe.h"

namespace moetron {

template <class T>
class Block {
  template <class>
  friend class Decoder;  // model/decode.h: decoding with a cache

 public:
  struct State {
    int64_t B = 0, S = 0;
    const T* h_in = nullptr;  // the block input: the caller's residual stream, not a copy
    SavedAct<T> h_mid, xn2;   // [N,D], ffn_norm(h_mid) [N,D] (T or bf16: the storage policy)
    Buffer<T> rstd2;          // [N]
    typename MLA<T>::State attn;
    typename Mlp<T>::State mlp;
    typename MoE<T>::State moe;
    Buffer<T> dxn2;  // kept for ffn_norm's weight gradient
    Buffer<T> dmid;  // d h_mid: kept for the attention's weight gradient (o_proj's dy)
    template <class F>
    void for_each_grad(F&& f) {
      f(dxn2), f(dmid);
      attn.for_each_grad(f), mlp.for_each_grad(f), moe.for_each_grad(f);
    }
    int64_t saved_bytes() const {
      return h_mid.bytes() + xn2.bytes() + static_cast<int64_t>(rstd2.size() * sizeof(T)) +
             attn.saved_bytes() + mlp.saved_bytes() + moe.saved_bytes();
    }
  };

  // prefix "model.layers.N."
  // dispatcher: set for a MoE block, null for a dense one. tail, moe_scratch: MoE::build's (MTP
  // depth k: tail k; the model's MoE layers share one scratch).
  void build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
             const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher,
             const Exec& ex, int64_t tail = 0,
             std::shared_ptr<typename MoE<T>::Scratch> moe_scratch = nullptr);
  void init(double std, uint64_t seed);

  // h must stay alive until backward_weight. A MoE block writes its balance loss to balance[0]
  // and adds its expert loads into load[E] (both device memory; unused by a dense block).
  void forward(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos, T* out,
               double* balance, int64_t* load) const;
  // dh[N,D] (write) from dout.
  void backward_input(State& st, const T* dout, const int32_t* pos, T* dh) const;
  void backward_weight(State& st) const;

  // The same as programs (model/program.h): a MoE block stops after posting its dispatch and
  // its combine (forward) and after posting the combine's and the dispatch's backward; a dense
  // block runs in one piece. forward/backward_input are these programs run to the end. The
  // backward's weight gradients run in it (queue == null) or are queued; layer labels the yields.
  Program forward_program(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos, T* out,
                          double* balance, int64_t* load, int layer) const;
  Program backward_program(State& st, const T* dout, const int32_t* pos, T* dh, WeightQueue* queue,
                           int layer) const;

  bool is_moe() const { return moe_ != nullptr; }
  MoE<T>* moe() const { return moe_.get(); }

 private:
  Exec ex_{};
  int64_t D_ = 0;
  MLA<T> attn_;
  RMSNorm<T> ffn_norm_;
  std::unique_ptr<Mlp<T>> mlp_;
  std::unique_ptr<MoE<T>> moe_;
  // the weight gradients other than the routed experts' (attention, ffn_norm, shared expert and
  // gate, or the dense MLP)
  void dense_backward_weight(State& st) const;
  bool store_bf16_ = false;                // PrecisionPolicy::store_bf16
  mutable Buffer<T> h_mid_tmp_, xn2_tmp_;  // bf16 storage: the fp32 values of one call
};

}  // namespace moetron
