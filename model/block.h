// Transformer block (pre-norm):  h_mid = h + MLA(attn_norm(h));  out = h_mid + FFN(ffn_norm(h_mid))
// FFN is the dense SwiGLU MLP for the first `first_k_dense_replace` layers, DeepSeekMoE after.
// Same split-backward and per-micro-batch State contracts as its sublayers. The residual stream
// is stored once, by the caller: the state points at the block input instead of copying it — or,
// under activations.block_input: storage (PrecisionPolicy::block_input_bf16), keeps it in bf16,
// and the caller's stream may then be overwritten once the forward has returned (model/model.h
// runs it through one buffer per chunk).
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
    const T* h_in = nullptr;  // the block input: the caller's residual stream, not a copy,
    SavedAct<T> h_kept;       // or (block_input_bf16; h_in null) its bf16 copy [N,D]
    SavedAct<T> h_mid, xn2;   // [N,D], ffn_norm(h_mid) [N,D] (T or bf16: the storage policy;
                              // xn2 not kept under recompute_norms: made again from h_mid)
    Buffer<T> rstd2;          // [N]
    typename MLA<T>::State attn;
    typename Mlp<T>::State mlp;
    typename MoE<T>::State moe;
    Buffer<T> dw_ffn_norm;  // ffn_norm's weight gradient of this micro-batch [D]
    template <class F>
    void for_each_grad(F&& f) {
      f(dw_ffn_norm);
      attn.for_each_grad(f), mlp.for_each_grad(f), moe.for_each_grad(f);
    }
    int64_t saved_bytes() const {
      return h_kept.bytes() + h_mid.bytes() + xn2.bytes() +
             static_cast<int64_t>(rstd2.size() * sizeof(T)) + attn.saved_bytes() +
             mlp.saved_bytes() + moe.saved_bytes();
    }
  };

  // The blocks' and MTP modules' own one-call buffers (a block's bf16-storage staging, an
  // MtpLayer's temporaries), shared like the layers' scratch: every call writes what it reads
  // here and keeps nothing in it for a later call (the backward widens the bf16-kept h_mid and
  // ffn_norm output again; the forward's fp32 values live only until the forward returns).
  struct Own {
    explicit Own(Device d) : x(d), h_mid(d), xn2(d), rstd(d), dxn2(d), en(d), hpn(d), de(d) {}
    // block_input_bf16: a block input in fp32 — in the forward the residual stream that the
    // model's blocks (and an MTP module's block) read and overwrite in turn, in the backward the
    // bf16-kept input widened
    Buffer<T> x;  // [N,D]
    // bf16 storage: h_mid and ffn_norm(h_mid) as T [N,D], or widened; under recompute_norms
    // xn2 is ffn_norm(h_mid) in the forward and made again for the weight gradients (with rstd)
    Buffer<T> h_mid, xn2, rstd;  // [N,D], [N,D], [N]
    Buffer<T> dxn2;              // the backward's d ffn_norm output [N,D]
    Buffer<T> en, hpn;           // MtpLayer: enorm(e), hnorm(h^{k-1}) [N,D]; in its backward their
                                 // gradients (the forward's values are dead once concatenated)
    Buffer<T> de;                // MtpLayer backward: d e [N,D]
    int64_t bytes() const {      // the bytes held (capacities)
      size_t n = 0;
      for (const Buffer<T>* b : {&x, &h_mid, &xn2, &rstd, &dxn2, &en, &hpn, &de})
        n += b->capacity();
      return static_cast<int64_t>(n * sizeof(T));
    }
  };

  // The one-call scratch of a block's layers, one of each kind per model (pipeline chunk), shared
  // by all its blocks and MTP blocks (each kind's struct says why that is valid): make() makes
  // them; a default Scratch leaves every layer to make its own.
  //   attn, mlp, linear: one-piece scratch. Their contents never outlive one piece of a program:
  //     only a MoE layer yields (model/program.h), between its calls, never inside an attention,
  //     an MLP or a Linear call. So the model chunks of one process may share them (make's
  //     `pieces`): an executor interleaves two chunks' programs only at those yields.
  //   moe, own: live across a MoE layer's yields (the expert outputs, the SwiGLU staging and the
  //     backward's d wperm; the block's h_mid before the MoE output is added): each chunk's own,
  //     but for the MoE scratch's rows (MoE::Scratch::rows), lent for one call at a time.
  struct Scratch {
    std::shared_ptr<typename MLA<T>::Scratch> attn;
    std::shared_ptr<typename Mlp<T>::Scratch> mlp;  // the dense MLPs' and the shared experts'
    std::shared_ptr<typename MoE<T>::Scratch> moe;
    std::shared_ptr<LinearScratch<T>> linear;  // every Linear's
    std::shared_ptr<Own> own;                  // the blocks' and MTP modules' own
    // pieces: another chunk's Scratch whose one-piece scratch this one shares (null: its own)
    static Scratch make(Device d, const Scratch* pieces = nullptr) {
      if (pieces) {
        auto moe = std::make_shared<typename MoE<T>::Scratch>(d);
        moe->one = pieces->moe->one;
        return {pieces->attn, pieces->mlp, std::move(moe), pieces->linear,
                std::make_shared<Own>(d)};
      }
      return {std::make_shared<typename MLA<T>::Scratch>(d),
              std::make_shared<typename Mlp<T>::Scratch>(d),
              std::make_shared<typename MoE<T>::Scratch>(d), std::make_shared<LinearScratch<T>>(d),
              std::make_shared<Own>(d)};
    }
  };

  // prefix "model.layers.N."
  // dispatcher: set for a MoE block, null for a dense one. tail: MoE::build's (MTP depth k: k).
  // scratch: the model's shared scratch.
  void build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
             const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher,
             const Exec& ex, int64_t tail = 0, const Scratch& scratch = {});
  void init(double std, uint64_t seed);

  // h must stay alive until backward_weight (under keeps_input_bf16(): until the forward
  // returns; out may then be h itself). A MoE block writes its balance loss to balance[0] and
  // adds its expert loads into load[E] (both device memory; unused by a dense block).
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
  bool keeps_input_bf16() const { return keep_input_bf16_; }  // PrecisionPolicy::block_input_bf16
  MoE<T>* moe() const { return moe_.get(); }
  const MLA<T>& attention() const { return attn_; }
  const Mlp<T>* mlp() const { return mlp_.get(); }          // null in a MoE block
  const std::shared_ptr<Own>& own() const { return own_; }  // the model's, or the block's own

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
  // ffn_norm(h_mid) for the weight gradients: kept, or made again (recompute_norms)
  const T* ffn_input(State& st) const;
  // the block input as T values: the caller's stream, or the bf16-kept copy widened into Own::x
  const T* input(State& st) const;
  bool store_bf16_ = false;       // PrecisionPolicy::store_bf16
  bool recompute_norms_ = false;  // PrecisionPolicy::recompute_norms: xn2 made again
  bool keep_input_bf16_ = false;  // PrecisionPolicy::block_input_bf16 (a float model)
  std::shared_ptr<Own> own_;      // one call's staging (Own::h_mid, xn2), shared with the model
};

}  // namespace moetron
