// The model's (or one pipeline stage's) forward and split backward over one micro-batch.
#include "model/model.h"

#include <algorithm>
#include <stdexcept>
#include <type_traits>
#include <vector>

namespace moetron {

std::pair<int64_t, int64_t> stage_blocks(const ModelConfig& c, const StageSpec& s) {
  const int64_t n_layers = c.num_hidden_layers;
  if (s.n_stages < 1 || s.stage < 0 || s.stage >= s.n_stages)
    throw std::invalid_argument("stage " + std::to_string(s.stage) + " of " +
                                std::to_string(s.n_stages));
  if (n_layers < s.n_stages)
    throw std::invalid_argument("model.num_hidden_layers (" + std::to_string(n_layers) +
                                ") cannot be cut into " + std::to_string(s.n_stages) +
                                " pipeline stages (parallel.pp): every stage needs a block");
  const std::vector<int64_t>& cut = c.stage_starts;
  if (static_cast<int64_t>(cut.size()) == s.n_stages) {
    const int64_t begin = cut[s.stage], end = s.last() ? n_layers : cut[s.stage + 1];
    if (begin < 0 || end > n_layers || begin >= end)
      throw std::invalid_argument(
          "stage " + std::to_string(s.stage) + " of " + std::to_string(s.n_stages) + ": blocks [" +
          std::to_string(begin) + ", " + std::to_string(end) +
          ") of the cut are not a non-empty range of the " + std::to_string(n_layers) + " layers");
    return {begin, end};
  }
  const int64_t base = n_layers / s.n_stages, extra = n_layers % s.n_stages;
  const int64_t begin = s.stage * base + std::min(s.stage, extra);
  return {begin, begin + base + (s.stage < extra ? 1 : 0)};
}

template <class T>
Model<T>::Model(const ModelConfig& cfg, const PrecisionPolicy& pol,
                std::shared_ptr<TokenDispatcher<T>> dispatcher, StageSpec stage, const Exec& ex,
                ParamStore<T>* store, const Model* sibling)
    : cfg_(cfg),
      pol_(pol),
      stage_(stage),
      ex_(ex),
      own_ps_(store ? nullptr : std::make_unique<ParamStore<T>>(param_device(ex.device))),
      ps_(store ? store : own_ps_.get()),
      loads_(ex.device) {
  if (!dispatcher) dispatcher = std::make_shared<LocalDispatcher<T>>(ex);
  if (sibling && (sibling->ex_.device != ex.device || sibling->ex_.stream != ex.stream))
    throw std::invalid_argument(
        "model: a sibling chunk shares its scratch on its own device and "
        "stream only");
  const int64_t V = cfg.vocab_size, D = cfg.hidden_size, L = cfg.num_hidden_layers;
  const auto [b0, b1] = stage_blocks(cfg, stage);
  first_block_ = b0;
  const bool mtp_here = stage.last() && cfg.num_nextn_predict_layers > 0;
  if (stage.first() || mtp_here) {
    embed_ = ps_->find("model.embed_tokens.weight");  // the first stage's, in this process
    if (!embed_) {
      embed_ = ps_->add("model.embed_tokens.weight", {V, D});
      embed_->replica = !stage.first();
    }
    if (stage.first()) embed_->replica = false;
  }
  // one scratch of each kind for all the layers here (Block::Scratch: the model runs one layer
  // at a time), the one-piece kinds shared with the sibling chunk
  scratch_ = Block<T>::Scratch::make(ex.device, sibling ? &sibling->scratch_ : nullptr);
  for (int64_t l = b0; l < b1; ++l) {
    blocks_.push_back(std::make_unique<Block<T>>());
    blocks_.back()->build(*ps_, "model.layers." + std::to_string(l) + ".", cfg, pol,
                          cfg.is_moe_layer(l) ? dispatcher : nullptr, ex, 0, scratch_);
    n_moe_ += blocks_.back()->is_moe();
  }
  if (stage.last()) {
    norm_.build(*ps_, "model.norm.weight", D, cfg.rms_norm_eps, ex);
    lm_head_ = ps_->add("lm_head.weight", {V, D});
    if constexpr (std::is_same_v<T, float>) {
      if (pol.gemm(Component::Head) == kernels::GemmPrecision::BF16) {
        // the head GEMMs (main and MTP) read only this copy: ZeRO-1 may remake it (Param::copies)
        head16_ = std::make_shared<Bf16WeightCache>();
        lm_head_->copies.push_back(
            [c = head16_, e = ex, n = V * D](const float* v) { c->push(e, v, n); });
      }
    }
    for (int64_t k = 1; k <= cfg.num_nextn_predict_layers; ++k) {
      mtp_.push_back(std::make_unique<MtpLayer<T>>());
      mtp_.back()->build(*ps_, "model.layers." + std::to_string(L + k - 1) + ".", k, cfg, pol,
                         dispatcher, ex, scratch_);
      mtp_.back()->share_head_bf16(head16_);
      ++n_moe_;
    }
  }
  sized(loads_, n_moe_ * cfg.n_routed_experts);
  if (ex.device != Device::Meta) zero_loads();
}

template <class T>
void Model<T>::init(uint64_t seed) {
  const double std = cfg_.init_std;
  ParallelInit all;  // the draws below run at all.run(), in parallel over the parameters
  if (embed_) init_normal(*embed_, std, seed);  // by name: the same values from either chunk
  if (lm_head_) init_normal(*lm_head_, std, seed);
  for (auto& b : blocks_) b->init(std, seed);
  for (auto& m : mtp_) m->init(std, seed);
  all.run();
}

template <class T>
std::vector<MoE<T>*> Model<T>::moe_layers() const {
  std::vector<MoE<T>*> out;
  for (auto& b : blocks_)
    if (b->is_moe()) out.push_back(b->moe());
  for (auto& m : mtp_) out.push_back(m->block().moe());
  return out;
}

template <class T>
std::vector<const Block<T>*> Model<T>::blocks() const {
  std::vector<const Block<T>*> out;
  for (auto& b : blocks_) out.push_back(b.get());
  for (auto& m : mtp_) out.push_back(&m->block());
  return out;
}

template <class T>
int64_t Model<T>::layer_scratch_bytes() const {
  return scratch_.attn->bytes() + scratch_.mlp->bytes() + scratch_.linear->bytes() +
         scratch_.own->bytes();
}

template <class T>
void Model<T>::zero_loads() const {
  kernels::fill_zero(ex_, loads_.data(), loads_.bytes());
}

template <class T>
Program Model<T>::forward_program(MicroBatch& mb, const int32_t* tokens, int64_t B, int64_t S,
                                  double mtp_weight, const T* h_in) const {
  const Exec& ex = ex_;
  const int64_t N = B * S, D = cfg_.hidden_size, V = cfg_.vocab_size, E = cfg_.n_routed_experts;
  const int64_t Lh = static_cast<int64_t>(blocks_.size());
  const int64_t Dm = static_cast<int64_t>(mtp_.size());
  mb.B = B, mb.S = S, mb.mtp_weight = mtp_weight;
  int32_t* tok = sized(mb.tokens, B * (S + 1));
  kernels::copy_from_host(ex, tok, tokens, sizeof(int32_t) * B * (S + 1));
  kernels::shift_tokens(ex, tok, B, S, 0, sized(mb.ids, N), sized(mb.targets, N), sized(mb.pos, N));
  // loss parts: [0] lm sum, [1..Dm] MTP sums, then one balance loss per MoE layer
  double* parts = zeroed(ex, mb.loss_parts, 1 + Dm + n_moe_);
  double* balance = parts + 1 + Dm;
  int64_t* load = loads_.data();

  // stage input: the embedding (first stage) or the previous stage's output. The residual
  // stream h[0 .. Lh] is the micro-batch's; when the blocks keep their inputs in bf16 it runs
  // through the chunk's one buffer instead (each block reads it and writes its output over it)
  // and only the stage output h[Lh] is the micro-batch's.
  mb.h.resize(Lh + 1);
  mb.blocks.resize(Lh);
  const bool one_stream = !blocks_.empty() && blocks_[0]->keeps_input_bf16();
  const auto stream = [&](int64_t l) {  // h[l] for 0 <= l <= Lh
    return sized(l < Lh && one_stream ? scratch_.own->x : mb.h[l], N * D);
  };
  if (stage_.first()) {
    kernels::embedding_forward<T>(ex, mb.ids.data(), N, embed_->w(), D, stream(0));
  } else {
    if (!h_in) throw std::logic_error("Model::forward: a non-first stage needs its input");
    kernels::copy(ex, stream(0), h_in, sizeof(T) * N * D);
  }
  for (int64_t l = 0; l < Lh; ++l) {
    Program blk =
        blocks_[l]->forward_program(mb.blocks[l], stream(l), B, S, mb.pos.data(), stream(l + 1),
                                    balance, load, static_cast<int>(first_block_ + l));
    while (blk.step()) co_yield blk.last();
    if (blocks_[l]->is_moe()) ++balance, load += E;
  }
  if (stage_.last()) {
    // final norm, head, next-token loss
    T* hn = sized(mb.hn, N * D);
    norm_.forward(mb.h[Lh].data(), N, hn, sized(mb.rstd, N));
    kernels::lm_head_ce_forward<T>(ex, hn, lm_head_->w(), mb.targets.data(), N, D, V,
                                   cfg_.lm_head_chunk, sized(mb.lse, N), pol_.gemm(Component::Head),
                                   parts, head_bf16());
    // multi-token prediction: module k reads h^{k-1} (h^0 = the last block's output)
    mb.mtp.resize(Dm);
    for (int64_t k = 1; k <= Dm; ++k) {
      const T* hprev = k == 1 ? mb.h[Lh].data() : mb.mtp[k - 2].h.data();
      Program mtp = mtp_[k - 1]->forward_program(
          mb.mtp[k - 1], tok, B, S, mb.pos.data(), hprev, embed_->w(), lm_head_->w(), parts + k,
          balance, load, static_cast<int>(cfg_.num_hidden_layers + k - 1));
      while (mtp.step()) co_yield mtp.last();
      ++balance, load += E;
    }
  }
}

template <class T>
int64_t Model<T>::loss_parts_size() const {
  return 1 + static_cast<int64_t>(mtp_.size()) + n_moe_;
}

template <class T>
HostRead Model<T>::read_losses_start(const MicroBatch& mb, double* host) const {
  return kernels::copy_to_host_start(ex_, host, mb.loss_parts.data(),
                                     sizeof(double) * loss_parts_size());
}

// The losses of this stage from its loss parts, on the host.
template <class T>
Losses Model<T>::losses_from(const double* p, int64_t B, int64_t S, double mtp_weight) const {
  const int64_t N = B * S, Dm = static_cast<int64_t>(mtp_.size());
  Losses out;
  for (int64_t i = 0; i < n_moe_; ++i) out.balance += p[1 + Dm + i];
  if (!stage_.last()) {
    out.loss = out.balance;  // stage losses add up to the model's loss
    return out;
  }
  out.lm = p[0] / static_cast<double>(N);
  out.lm_tokens = N;
  for (int64_t k = 1; k <= Dm; ++k) {
    const int64_t valid = B * std::max<int64_t>(0, S - k);  // positions with a target
    out.mtp += valid > 0 ? p[k] / static_cast<double>(valid) / static_cast<double>(Dm) : 0.0;
    out.mtp_tokens += valid;
  }
  out.loss = out.lm + mtp_weight * out.mtp + out.balance;
  return out;
}

template <class T>
const Losses& Model<T>::forward(MicroBatch& mb, const int32_t* tokens, int64_t B, int64_t S,
                                double mtp_weight, const T* h_in) const {
  drain(forward_program(mb, tokens, B, S, mtp_weight, h_in));
  std::vector<double> parts(static_cast<size_t>(loss_parts_size()));
  kernels::copy_to_host(ex_, parts.data(), mb.loss_parts.data(),  // the one wait for the stream
                        sizeof(double) * parts.size());
  mb.losses = losses_from(parts.data(), B, S, mtp_weight);
  return mb.losses;
}

// The head weight's bf16 copy, fresh at the current weight version (null without one).
template <class T>
const uint16_t* Model<T>::head_bf16() const {
  if constexpr (std::is_same_v<T, float>) {
    if (head16_)
      return head16_->refresh(ex_, lm_head_->w(), lm_head_->numel(), pol_.weight_version.get());
  }
  return nullptr;
}

// The last stage's next-token head: d hn and d lm_head together (the head's weight gradient is
// not deferred: it comes out of the same chunked pass over the vocabulary), then the final norm
// into mb.dh.
template <class T>
void Model<T>::head_backward(MicroBatch& mb, double grad_scale, WeightQueue* queue) const {
  const int64_t N = mb.B * mb.S, D = cfg_.hidden_size, V = cfg_.vocab_size;
  T* dhn = sized(mb.dhn, N * D);
  kernels::lm_head_ce_backward<T>(ex_, mb.hn.data(), lm_head_->w(), mb.targets.data(),
                                  mb.lse.data(), static_cast<T>(grad_scale / N), N, D, V,
                                  cfg_.lm_head_chunk, dhn, lm_head_->g(),
                                  pol_.gemm(Component::Head), head_bf16());
  norm_.backward_input(dhn, mb.h.back().data(), mb.rstd.data(), N, mb.dh.data());
  weight_now_or_later(queue, [this, &mb, N] {
    norm_.backward_weight(mb.dhn.data(), mb.h.back().data(), mb.rstd.data(), N);
  });
}

// Tells mb.on_layer_grads that `layer`'s weight gradients are in: now, or after the layer's
// deferred work (queued behind it).
template <class T>
void Model<T>::layer_grads_done(MicroBatch& mb, WeightQueue* queue, int layer) {
  weight_now_or_later(queue, [&mb, layer] {
    if (mb.on_layer_grads) mb.on_layer_grads(layer);
  });
}

template <class T>
Program Model<T>::backward_program(MicroBatch& mb, double grad_scale, const T* dh_out,
                                   bool defer_weight) const {
  const Exec& ex = ex_;
  const int64_t B = mb.B, S = mb.S, N = B * S, D = cfg_.hidden_size;
  const int64_t Lh = static_cast<int64_t>(blocks_.size());
  const int64_t Dm = static_cast<int64_t>(mtp_.size());
  const T g = static_cast<T>(grad_scale);
  mb.deferred.clear();
  // weight-gradient work: now, or queued for backward_weight (zero-bubble schedules)
  WeightQueue* queue = defer_weight ? &mb.deferred : nullptr;
  T* dh = sized(mb.dh, N * D);
  sized(mb.dtmp, N * D);
  if (stage_.last()) {
    head_backward(mb, grad_scale, queue);
    // MTP modules, deepest first: each adds into the gradient of its predecessor's hidden state
    for (int64_t k = Dm; k >= 1; --k) {
      const int64_t valid = B * std::max<int64_t>(0, S - k);
      const double gk =
          valid > 0 ? grad_scale * mb.mtp_weight / static_cast<double>(Dm) / valid : 0.0;
      const T* dnext = k < Dm ? mb.mtp[k].dh_prev.data() : nullptr;
      const int layer = static_cast<int>(cfg_.num_hidden_layers + k - 1);
      Program mtp =
          mtp_[k - 1]->backward_program(mb.mtp[k - 1], B, S, mb.pos.data(), gk, dnext, g,
                                        lm_head_->w(), lm_head_->g(), embed_->g(), queue, layer);
      while (mtp.step()) co_yield mtp.last();
      layer_grads_done(mb, queue, layer);
    }
    layer_grads_done(mb, queue, kHeadLayer);  // the head's weight is final (MTP shares it)
    if (Dm > 0) kernels::add_inplace<T>(ex, dh, mb.mtp[0].dh_prev.data(), N * D);
  } else {
    if (!dh_out) throw std::logic_error("Model::backward_input: a non-last stage needs d(output)");
    kernels::copy(ex, dh, dh_out, sizeof(T) * N * D);
  }

  // this stage's blocks, last first (dh and dtmp ping-pong; the result ends in mb.dh)
  for (int64_t l = Lh - 1; l >= 0; --l) {
    if (blocks_[l]->is_moe()) mb.blocks[l].moe.aux_grad = g;
    Program blk =
        blocks_[l]->backward_program(mb.blocks[l], mb.dh.data(), mb.pos.data(), mb.dtmp.data(),
                                     queue, static_cast<int>(first_block_ + l));
    while (blk.step()) co_yield blk.last();
    layer_grads_done(mb, queue, static_cast<int>(first_block_ + l));
    std::swap(mb.dh, mb.dtmp);
  }
  if (stage_.first()) {
    kernels::copy(ex, sized(mb.d_embed, N * D), mb.dh.data(), sizeof(T) * N * D);
    weight_now_or_later(queue, [this, &mb, N, D] {
      kernels::embedding_backward<T>(ex_, mb.ids.data(), N, mb.d_embed.data(), D, embed_->g());
    });
  }
}

template <class T>
void Model<T>::backward_input(MicroBatch& mb, double grad_scale, const T* dh_out,
                              bool defer_weight) const {
  drain(backward_program(mb, grad_scale, dh_out, defer_weight));
}

template <class T>
void Model<T>::backward_weight(MicroBatch& mb) const {
  for (auto& fn : mb.deferred) fn();
  mb.deferred.clear();
}

template class Model<float>;
template class Model<double>;

}  // namespace moetron
