// Incremental decoding (generation) with MLA's compressed latent cache.
//
// Per block, the cache keeps for every token what MLA compresses its keys and values into: the kv
// latent after kv_norm (kv_lora_rank values) and the RoPE'd shared key (qk_rope_head_dim values),
// one row [c_kv | k_pe] — 80 floats per token and layer in tiny.yaml instead of H (dq + dv) = 320
// for full keys and values (DeepSeek-V3: 576 instead of 40,960). Attention runs in the absorbed
// form (DeepSeek-V2 §2.1.3), so per-head keys and values are never made:
//   q_lat[h] = q_nope[h] W_UK[h]       W_UK[h]: head h's k_nope rows of kv_b_proj [dn, kl]
//   o_lat[h] = softmax(scale [q_lat[h] | q_pe[h]] . [c_kv | k_pe]^T) c_kv   (latent_attention op)
//   o[h]     = o_lat[h] W_UV[h]^T      W_UV[h]: head h's v rows of kv_b_proj [dv, kl]
// which is the training forward's softmax(q k^T) v with k_nope = c_kv W_UK^T, v = c_kv W_UV^T,
// the products associated differently (so equal up to round-off). A step of M new tokens costs
// M tokens' forward (projections, experts, head) plus their attention over the cache.
//
// The cache holds up to `window` tokens (the context: model.max_seq_len unless asked otherwise)
// and refuses more: a caller that generates past the context starts a new, shorter one (reset()
// and feed the tokens it keeps; trainer/generate.h keeps the newest half), the way the
// reference, forward_uncached (the training forward over the whole sequence), sees it too.
//
// MoE blocks route with the training gate — sigmoid scores, bias for selection, group-limited
// top-k, which is what makes routing node-limited — through the layer's own forward; the layer's
// balance loss and expert loads go to the decoder's scratch, never into the model's loads. The
// MTP modules are not used. The Linears compute in the model's precision (trainer/generate
// builds an fp32 model). Like every layer: op calls and pointer arithmetic; token ids come from
// the host, logits stay on the model's device.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"

namespace moetron {

template <class T>
class Decoder {
 public:
  // model: a whole model in this process (one pipeline stage, every expert: a LocalDispatcher);
  // window >= 1 tokens of context.
  Decoder(const Model<T>& model, int64_t window);
  // Forgets every token (a new sequence starts at position 0).
  void reset() { len_ = 0; }
  int64_t length() const { return len_; }  // tokens fed since reset()
  int64_t window() const { return window_; }
  const Model<T>& model() const { return model_; }

  // Feeds M tokens (host ids) after those fed so far (length() + M <= window()) and returns their
  // next-token logits [M, V] (device memory, valid until the next call): a prompt at once, then
  // one token at a time.
  const T* forward(const int32_t* ids, int64_t M);
  // The reference: the logits [S, V] of ids[0, S) (host) by the training forward over the whole
  // sequence from position 0, no cache. Adds into the model's expert loads, like any forward.
  const T* forward_uncached(const int32_t* ids, int64_t S);

 private:
  struct Layer {
    Buffer<T> cache;  // [window, kl + dr]: [c_kv | k_pe] of the token at each position
    typename Mlp<T>::State mlp;
    typename MoE<T>::State moe;
  };
  void block(const Block<T>& b, Layer& L, const T* h, int64_t M, T* out);
  void attention(const MLA<T>& a, Layer& L, const T* h, int64_t M, T* out);
  const T* head(const T* hn, int64_t M);

  const Model<T>& model_;
  Exec ex_;
  int64_t window_ = 0, len_ = 0;
  std::vector<Layer> layers_;
  // one step's scratch
  Buffer<int32_t> ids_, pos_;
  Buffer<T> h_, h2_, mid_, xn_, xn2_, rstd_, cq_raw_, cq_, q_, ckv_raw_, ckv_, qa_, qh_, lat_, ol_,
      ov_, o_, hn_, logits_;
  Buffer<double> balance_;
  Buffer<int64_t> load_;
  typename Model<T>::MicroBatch mb_;  // forward_uncached
};

}  // namespace moetron
