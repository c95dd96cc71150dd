// The DeepSeek-V3 model: embedding, transformer blocks, final norm + output head with the loss,
// and the multi-token-prediction (MTP) modules, as an ordered list of layers.
//
//   h0 = embed(x);  h_{l+1} = Block_l(h_l);  lm_loss = CE(lm_head(norm(h_L)), y)
//   MTP module k (depth D): h'^k = eh_proj([enorm(embed(t_{i+k})); hnorm(h^{k-1}_i)]),
//     h^k = Block(h'^k), L^k = CE(lm_head(shared_head.norm(h^k)), t_{i+k+1});  h^0 = h_L
//   loss = lm_loss + lambda/D sum_k L^k + sum over MoE layers of the balance loss
// Embedding and output head are shared with the MTP modules (one tensor each). h^0 is the last
// block's output before the final norm (SPEC 1.5 IMPL-CHOICE); L^k averages over the positions
// that have a target; MTP MoE layers take part in balancing (loss and bias update).
//
// Everything a forward keeps for its backward lives in a MicroBatch object owned by the caller,
// one per micro-batch in flight; its buffers are on the model's device and only ops touch them.
// The model knows nothing of ranks, schedules or files. Losses are written by ops to a device
// buffer and read once per micro-batch forward (one small device-to-host copy).
//
// Pipeline stages: the ordered layer list [embedding, block 0 .. block L-1, head + MTP] is cut
// into `n_stages` contiguous pieces (StageSpec); a Model object holds one piece. Blocks are split
// as evenly as possible, earlier stages taking the remainder. The first stage holds the
// embedding; the last holds the final norm, output head and the MTP modules, and (because MTP
// embeds tokens too) its own copy of the embedding, whose gradient the caller sums with the
// first stage's. With one stage this is the whole model.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/block.h"
#include "model/mtp.h"

namespace moetron {

struct StageSpec {
  int64_t stage = 0, n_stages = 1;
  bool first() const { return stage == 0; }
  bool last() const { return stage == n_stages - 1; }
};

// Blocks [begin, end) of stage s: c.stage_starts' cut, or as even as possible (throws
// std::invalid_argument if the layers cannot be cut).
std::pair<int64_t, int64_t> stage_blocks(const ModelConfig& c, const StageSpec& s);

struct Losses {
  double loss = 0, lm = 0, mtp = 0, balance = 0;  // loss = lm + lambda * mtp + balance
  int64_t lm_tokens = 0, mtp_tokens = 0;
};

template <class T>
class Model {
  template <class>
  friend class Decoder;  // model/decode.h: decoding with a cache

 public:
  static constexpr int kHeadLayer = -1;  // MicroBatch::on_layer_grads: model.norm and lm_head
  struct MicroBatch {
    int64_t B = 0, S = 0;
    Buffer<int32_t> tokens;             // [B, S+1] on the model's device
    Buffer<int32_t> ids, targets, pos;  // [N]
    std::vector<Buffer<T>> h;           // residual stream: h[0] = stage input .. h[local L]
                                        // (only h[local L] when the blocks keep bf16 inputs)
    std::vector<typename Block<T>::State> blocks;
    Buffer<T> hn, rstd, lse;  // final norm, CE log-sum-exp
    std::vector<typename MtpLayer<T>::State> mtp;
    Buffer<double> loss_parts;  // [1 + D_mtp + MoE layers]: lm sum, MTP sums, balance losses
    Losses losses;              // forward() fills it (an executor keeps its own: read_losses_start)
    double mtp_weight = 0;
    Buffer<T> dhn;
    Buffer<T> dh;          // after backward_input: gradient of the stage input (non-first stages)
    Buffer<T> dtmp;        // backward scratch: the other half of dh's ping-pong
    Buffer<T> d_embed;     // gradient reaching the embedding output, kept for the weight gradient
    WeightQueue deferred;  // weight-gradient work queued by backward_input
    // Called, when set, with a layer's global index once this micro-batch's weight gradients of
    // that block (or MTP block) have all been accumulated — during the backward, or with the
    // deferred work in backward_weight; kHeadLayer: the final norm's and the head's (after the
    // MTP blocks, which add into the head's). A caller that knows this is the step's last
    // contribution can start reducing them (parallel/pipeline.h).
    std::function<void(int layer)> on_layer_grads;
    // Every buffer the backward writes and keeps until backward_weight (or the send of dh): a
    // pipeline executor lends these to a micro-batch only from its backward to its last op.
    template <class F>
    void for_each_grad(F&& f) {
      f(dhn), f(dh), f(dtmp), f(d_embed);
      for (auto& b : blocks) b.for_each_grad(f);
      for (auto& m : mtp) m.for_each_grad(f);
    }
  };

  // dispatcher: how MoE layers reach their experts (default: all experts in this process).
  // ex: the device and stream the model runs on; activations live on ex.device, parameters on
  // param_device(ex.device) (on the Meta device: nowhere — a model for planning, which cannot
  // run).
  // store: where the parameters are registered — the model's own store by default, or one shared
  // by the model chunks of a process (DualPipe and DualPipeV place two stages on a rank; build
  // them in stage order). An embedding already in a shared store (the first stage's) is the one
  // the last stage's MTP modules use — no copy, so its gradient needs no summing across ranks.
  // sibling: a model chunk of this process (on the same device and stream) whose one-piece
  // scratch — the attention, MLP and Linear scratch (Block::Scratch) — this one shares: DualPipe
  // and DualPipeV interleave two chunks' programs only where no such scratch is live, so a rank
  // holds it once (4.6 GiB per V3 rank).
  Model(const ModelConfig& cfg, const PrecisionPolicy& pol,
        std::shared_ptr<TokenDispatcher<T>> dispatcher = nullptr, StageSpec stage = {},
        const Exec& ex = Exec{}, ParamStore<T>* store = nullptr, const Model* sibling = nullptr);
  void init(uint64_t seed);

  // tokens [B, S+1] (host memory; inputs and shifted targets; every stage gets them). h_in
  // [B*S, D]: the previous stage's output (device; null on the first stage). mtp_weight =
  // lambda. Returns the losses of this stage (a non-last stage's loss is its layers' balance
  // loss; the stages' losses add up to the model's) — the output for the next stage is
  // output(mb). Expert loads add into loads() until zero_loads().
  const Losses& forward(MicroBatch& mb, const int32_t* tokens, int64_t B, int64_t S,
                        double mtp_weight, const T* h_in = nullptr) const;
  const T* output(const MicroBatch& mb) const { return mb.h.back().data(); }
  // The output's buffer. The backward of a stage that is not the last does not read it (each
  // block keeps its input), so an executor may move it away once the forward has run — into
  // the send to the next stage; the next forward into mb makes it again.
  Buffer<T>& output_buffer(MicroBatch& mb) const { return mb.h.back(); }
  // Backward of grad_scale * loss (last stage) or of <dh_out, output> (other stages): input
  // gradients of every layer, in reverse order; mb.dh then holds d(stage input). Weight
  // gradients accumulate into the parameters now, or in backward_weight if deferred.
  void backward_input(MicroBatch& mb, double grad_scale, const T* dh_out = nullptr,
                      bool defer_weight = false) const;
  void backward_weight(MicroBatch& mb) const;
  // forward and backward_input as programs (model/program.h) that stop after each exchange a MoE
  // layer posts (2 per MoE layer in each direction), so an executor can interleave the forward
  // of one micro-batch with the backward of another; forward/backward_input run them to the end.
  // The forward program leaves its loss parts on the device (mb.loss_parts) and waits for nothing
  // at its end: read_losses_start reads them into `host` ([loss_parts_size()] doubles, kept by the
  // caller until the read's wait, pinned on a GPU for the read to run ahead) without waiting for
  // the work enqueued after it, and losses_from turns them into the stage's losses. An executor
  // starts one read per micro-batch and waits for them all at the end of its step; forward()
  // reads at once.
  Program forward_program(MicroBatch& mb, const int32_t* tokens, int64_t B, int64_t S,
                          double mtp_weight, const T* h_in = nullptr) const;
  int64_t loss_parts_size() const;
  HostRead read_losses_start(const MicroBatch& mb, double* host) const;
  Losses losses_from(const double* parts, int64_t B, int64_t S, double mtp_weight) const;
  Program backward_program(MicroBatch& mb, double grad_scale, const T* dh_out = nullptr,
                           bool defer_weight = false) const;
  // Both, weight gradients not deferred.
  void backward(MicroBatch& mb, double grad_scale, const T* dh_out = nullptr) const {
    backward_input(mb, grad_scale, dh_out, false);
  }
  const StageSpec& stage() const { return stage_; }
  const Exec& exec() const { return ex_; }
  // FP8 weight cache (PrecisionPolicy::weight_version): call after every change of the weights
  // (optimizer step, checkpoint load) when the policy has a version counter; a no-op without one
  // (every FP8 Linear then re-quantises its weight in each forward).
  void weights_updated() const {
    if (pol_.weight_version) ++*pol_.weight_version;
  }

  const ModelConfig& config() const { return cfg_; }
  // The store this model registered its parameters in (shared with the other chunks, if any).
  ParamStore<T>& params() { return *ps_; }
  const ParamStore<T>& params() const { return *ps_; }
  // Every MoE layer (main blocks first, then MTP blocks), for load statistics and bias updates.
  std::vector<MoE<T>*> moe_layers() const;
  // Expert loads [moe_layers().size(), n_routed_experts] (device) summed over the forwards since
  // the last zero_loads().
  const int64_t* loads() const { return loads_.data(); }
  int64_t* loads() { return loads_.data(); }
  void zero_loads() const;
  // Every block (main blocks first, then MTP blocks).
  std::vector<const Block<T>*> blocks() const;
  // The layers' shared scratch (Block::Scratch) and the bytes it holds now (model/memory.h counts
  // them): the MoE layers' (MoE::Scratch), and the rest (MLA, Mlp and Linear scratch, and the
  // blocks' and MTP modules' own, Block::Own).
  const typename Block<T>::Scratch& scratch() const { return scratch_; }
  int64_t moe_scratch_bytes() const { return scratch_.moe->bytes(); }
  int64_t layer_scratch_bytes() const;

 private:
  ModelConfig cfg_;
  PrecisionPolicy pol_;
  StageSpec stage_;
  Exec ex_;
  int64_t first_block_ = 0;                // global index of blocks_[0]
  std::unique_ptr<ParamStore<T>> own_ps_;  // unless a store was given
  ParamStore<T>* ps_ = nullptr;
  Param<T>* embed_ = nullptr;    // [V, D] (first and last stage; the last may share the first's)
  Param<T>* lm_head_ = nullptr;  // [V, D] (last stage)
  // lm_head_'s bf16 copy for a BF16 head on a float model (shared with the MTP modules), else null
  std::shared_ptr<Bf16WeightCache> head16_;
  const uint16_t* head_bf16() const;
  std::vector<std::unique_ptr<Block<T>>> blocks_;
  RMSNorm<T> norm_;
  std::vector<std::unique_ptr<MtpLayer<T>>> mtp_;
  int64_t n_moe_ = 0;
  typename Block<T>::Scratch scratch_;  // shared by every layer here
  mutable Buffer<int64_t> loads_;
  void head_backward(MicroBatch& mb, double grad_scale, WeightQueue* queue) const;
  static void layer_grads_done(MicroBatch& mb, WeightQueue* queue, int layer);
};

}  // namespace moetron
