// The model's (or one pipeline stage's) forward and split backward over one micro-batch.
#include "model/model.h"

#include <algorithm>
#include <stdexcept>

namespace moetron {

std::pair<int64_t, int64_t> stage_blocks(int64_t n_layers, const StageSpec& s) {
  if (s.n_stages < 1 || s.stage < 0 || s.stage >= s.n_stages)
    throw std::invalid_argument("stage " + std::to_string(s.stage) + " of " +
                                std::to_string(s.n_stages));
  if (n_layers < s.n_stages)
    throw std::invalid_argument("model.num_hidden_layers (" + std::to_string(n_layers) +
                                ") cannot be cut into " + std::to_string(s.n_stages) +
                                " pipeline stages (parallel.pp): every stage needs a block");
  const int64_t base = n_layers / s.n_stages, extra = n_layers % s.n_stages;
  const int64_t begin = s.stage * base + std::min(s.stage, extra);
  return {begin, begin + base + (s.stage < extra ? 1 : 0)};
}

template <class T>
Model<T>::Model(const ModelConfig& cfg, const PrecisionPolicy& pol,
                std::shared_ptr<TokenDispatcher<T>> dispatcher, StageSpec stage)
    : cfg_(cfg), pol_(pol), stage_(stage) {
  if (!dispatcher) dispatcher = std::make_shared<LocalDispatcher<T>>();
  const int64_t V = cfg.vocab_size, D = cfg.hidden_size, L = cfg.num_hidden_layers;
  const auto [b0, b1] = stage_blocks(L, stage);
  first_block_ = b0;
  const bool mtp_here = stage.last() && cfg.num_nextn_predict_layers > 0;
  if (stage.first() || mtp_here) {
    embed_ = ps_.add("model.embed_tokens.weight", {V, D});
    embed_->replica = !stage.first();
  }
  for (int64_t l = b0; l < b1; ++l) {
    blocks_.push_back(std::make_unique<Block<T>>());
    blocks_.back()->build(ps_, "model.layers." + std::to_string(l) + ".", cfg, pol,
                          cfg.is_moe_layer(l) ? dispatcher : nullptr);
  }
  if (!stage.last()) return;
  norm_.build(ps_, "model.norm.weight", D, cfg.rms_norm_eps);
  lm_head_ = ps_.add("lm_head.weight", {V, D});
  for (int64_t k = 0; k < cfg.num_nextn_predict_layers; ++k) {
    const std::string p = "model.layers." + std::to_string(L + k) + ".";
    auto m = std::make_unique<Mtp>();
    m->enorm.build(ps_, p + "enorm.weight", D, cfg.rms_norm_eps);
    m->hnorm.build(ps_, p + "hnorm.weight", D, cfg.rms_norm_eps);
    m->eh_proj = {ps_.add(p + "eh_proj.weight", {D, 2 * D}), 2 * D, D,
                  pol.gemm(Component::AttentionProj)};
    m->block.build(ps_, p, cfg, pol, dispatcher);
    m->head_norm.build(ps_, p + "shared_head.norm.weight", D, cfg.rms_norm_eps);
    mtp_.push_back(std::move(m));
  }
}

template <class T>
void Model<T>::init(uint64_t seed) {
  const double std = cfg_.init_std;
  if (embed_) init_normal(*embed_, std, seed);
  if (lm_head_) init_normal(*lm_head_, std, seed);
  for (auto& b : blocks_) b->init(std, seed);
  for (auto& m : mtp_) {
    init_normal(*m->eh_proj.W, std, seed);
    m->block.init(std, seed);
  }
}

template <class T>
std::vector<MoE<T>*> Model<T>::moe_layers() const {
  std::vector<MoE<T>*> out;
  for (auto& b : blocks_)
    if (b->is_moe()) out.push_back(b->moe());
  for (auto& m : mtp_) out.push_back(m->block.moe());
  return out;
}

template <class T>
std::vector<const typename MoE<T>::State*> Model<T>::moe_states(const MicroBatch& mb) const {
  std::vector<const typename MoE<T>::State*> out;
  for (size_t l = 0; l < blocks_.size(); ++l)
    if (blocks_[l]->is_moe()) out.push_back(&mb.blocks[l].moe);
  for (auto& ms : mb.mtp) out.push_back(&ms.block.moe);
  return out;
}

template <class T>
const Losses& Model<T>::forward(MicroBatch& mb, const int32_t* tokens, int64_t B, int64_t S,
                                double mtp_weight, const T* h_in) const {
  const int64_t N = B * S, D = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t Lh = static_cast<int64_t>(blocks_.size()), Dm = cfg_.num_nextn_predict_layers;
  const auto head_prec = pol_.gemm(Component::Head);
  mb.B = B, mb.S = S, mb.mtp_weight = mtp_weight;
  mb.ids.resize(N), mb.targets.resize(N), mb.pos.resize(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      mb.ids[b * S + s] = tokens[b * (S + 1) + s];
      mb.targets[b * S + s] = tokens[b * (S + 1) + s + 1];
      mb.pos[b * S + s] = static_cast<int32_t>(s);
    }
  Losses& out = mb.losses;
  out = Losses{};

  // stage input: the embedding (first stage) or the previous stage's output
  mb.h.resize(Lh + 1);
  mb.blocks.resize(Lh);
  if (stage_.first()) {
    kernels::embedding_forward<T>(mb.ids.data(), N, embed_->w(), D, sized(mb.h[0], N * D));
  } else {
    if (!h_in) throw std::logic_error("Model::forward: a non-first stage needs its input");
    std::copy(h_in, h_in + N * D, sized(mb.h[0], N * D));
  }
  for (int64_t l = 0; l < Lh; ++l) {
    blocks_[l]->forward(mb.blocks[l], mb.h[l].data(), B, S, mb.pos.data(),
                        sized(mb.h[l + 1], N * D));
    if (blocks_[l]->is_moe()) out.balance += mb.blocks[l].moe.balance_loss;
  }
  if (!stage_.last()) {
    out.loss = out.balance;  // stage losses add up to the model's loss
    return out;
  }

  // final norm, head, next-token loss
  T* hn = sized(mb.hn, N * D);
  norm_.forward(mb.h[Lh].data(), N, hn, sized(mb.rstd, N));
  out.lm = kernels::lm_head_ce_forward<T>(hn, lm_head_->w(), mb.targets.data(), N, D, V,
                                          cfg_.lm_head_chunk, sized(mb.lse, N), head_prec) /
           static_cast<double>(N);
  out.lm_tokens = N;

  // multi-token prediction
  mb.mtp.resize(Dm);
  for (int64_t k = 1; k <= Dm; ++k) {
    const Mtp& m = *mtp_[k - 1];
    MtpState& ms = mb.mtp[k - 1];
    ms.ids.resize(N), ms.targets.resize(N);
    int64_t valid = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t n = b * S + s;
        ms.ids[n] = s + k <= S ? tokens[b * (S + 1) + s + k] : 0;
        ms.targets[n] = s + k + 1 <= S ? tokens[b * (S + 1) + s + k + 1] : -1;
        valid += ms.targets[n] >= 0;
      }
    const T* hprev = k == 1 ? mb.h[Lh].data() : mb.mtp[k - 2].h.data();
    T* e = sized(ms.e, N * D);
    kernels::embedding_forward<T>(ms.ids.data(), N, embed_->w(), D, e);
    T* en = sized(ms.en, N * D);
    m.enorm.forward(e, N, en, sized(ms.rstd_e, N));
    T* hpn = sized(ms.hpn, N * D);
    m.hnorm.forward(hprev, N, hpn, sized(ms.rstd_h, N));
    std::copy(hprev, hprev + N * D, sized(ms.hp, N * D));
    T* cat = sized(ms.cat, N * 2 * D);
    for (int64_t n = 0; n < N; ++n) {
      std::copy(en + n * D, en + (n + 1) * D, cat + n * 2 * D);
      std::copy(hpn + n * D, hpn + (n + 1) * D, cat + n * 2 * D + D);
    }
    T* x = sized(ms.x, N * D);
    m.eh_proj.forward(cat, N, x);
    T* h = sized(ms.h, N * D);
    m.block.forward(ms.block, x, B, S, mb.pos.data(), h);
    out.balance += ms.block.moe.balance_loss;
    T* mhn = sized(ms.hn, N * D);
    m.head_norm.forward(h, N, mhn, sized(ms.rstd_o, N));
    const double sum =
        kernels::lm_head_ce_forward<T>(mhn, lm_head_->w(), ms.targets.data(), N, D, V,
                                       cfg_.lm_head_chunk, sized(ms.lse, N), head_prec);
    out.mtp += valid > 0 ? sum / static_cast<double>(valid) / static_cast<double>(Dm) : 0.0;
    out.mtp_tokens += valid;
  }
  out.loss = out.lm + mtp_weight * out.mtp + out.balance;
  return out;
}

template <class T>
void Model<T>::backward_input(MicroBatch& mb, double grad_scale, const T* dh_out,
                              bool defer_weight) const {
  const int64_t B = mb.B, S = mb.S, N = B * S, D = cfg_.hidden_size, V = cfg_.vocab_size;
  const int64_t Lh = static_cast<int64_t>(blocks_.size()), Dm = cfg_.num_nextn_predict_layers;
  const auto head_prec = pol_.gemm(Component::Head);
  const T g = static_cast<T>(grad_scale);
  mb.deferred.clear();
  // weight-gradient work: now, or queued for backward_weight (zero-bubble schedules)
  auto weight = [&](std::function<void()> fn) {
    if (defer_weight)
      mb.deferred.push_back(std::move(fn));
    else
      fn();
  };

  Buf<T>& dh = mb.dh;
  sized(dh, N * D);
  Buf<T> dtmp(N * D);
  if (stage_.last()) {
    // next-token head: d hn and d lm_head together (the head's weight gradient is not deferred:
    // it comes out of the same chunked pass over the vocabulary), then the final norm
    T* dhn = sized(mb.dhn, N * D);
    kernels::lm_head_ce_backward<T>(mb.hn.data(), lm_head_->w(), mb.targets.data(), mb.lse.data(),
                                    static_cast<T>(grad_scale / static_cast<double>(N)), N, D, V,
                                    cfg_.lm_head_chunk, dhn, lm_head_->g(), head_prec);
    norm_.backward_input(dhn, mb.h[Lh].data(), mb.rstd.data(), N, dh.data());
    weight([this, &mb, N] {
      norm_.backward_weight(mb.dhn.data(), mb.h.back().data(), mb.rstd.data(), N);
    });

    // MTP modules, deepest first: each adds into the gradient of its predecessor's hidden state
    Buf<T> dnext;  // gradient flowing into module k's output h^k from module k+1
    for (int64_t k = Dm; k >= 1; --k) {
      const Mtp& m = *mtp_[k - 1];
      MtpState& ms = mb.mtp[k - 1];
      int64_t valid = 0;
      for (int32_t t : ms.targets) valid += t >= 0;
      Buf<T> dhk(N * D, T(0));
      T* mdhn = sized(ms.dhn, N * D, /*zero=*/true);
      if (valid > 0) {
        const double gk =
            grad_scale * mb.mtp_weight / static_cast<double>(Dm) / static_cast<double>(valid);
        kernels::lm_head_ce_backward<T>(ms.hn.data(), lm_head_->w(), ms.targets.data(),
                                        ms.lse.data(), static_cast<T>(gk), N, D, V,
                                        cfg_.lm_head_chunk, mdhn, lm_head_->g(), head_prec);
        m.head_norm.backward_input(mdhn, ms.h.data(), ms.rstd_o.data(), N, dhk.data());
      }
      weight([&m, &ms, N] {
        m.head_norm.backward_weight(ms.dhn.data(), ms.h.data(), ms.rstd_o.data(), N);
      });
      if (!dnext.empty()) kernels::add_inplace<T>(dhk.data(), dnext.data(), N * D);
      ms.block.moe.aux_grad = g;
      Buf<T> dx(N * D);
      m.block.backward_input(ms.block, dhk.data(), mb.pos.data(), dx.data());
      weight([&m, &ms] { m.block.backward_weight(ms.block); });
      T* dcat = sized(ms.dcat, N * 2 * D);
      m.eh_proj.backward_input(dx.data(), N, dcat);
      // eh_proj's weight gradient needs dx: keep it in the state
      std::copy(dx.begin(), dx.end(), sized(ms.x, N * D));
      weight([&m, &ms, N] { m.eh_proj.backward_weight(ms.x.data(), ms.cat.data(), N); });
      Buf<T> den(N * D), dhpn(N * D);
      for (int64_t n = 0; n < N; ++n) {
        std::copy(dcat + n * 2 * D, dcat + n * 2 * D + D, den.data() + n * D);
        std::copy(dcat + n * 2 * D + D, dcat + (n + 1) * 2 * D, dhpn.data() + n * D);
      }
      // embedding input of the module (its norm's and the embedding's weight gradients now:
      // they are cheap and keep no extra state)
      m.enorm.backward_input(den.data(), ms.e.data(), ms.rstd_e.data(), N, dtmp.data());
      m.enorm.backward_weight(den.data(), ms.e.data(), ms.rstd_e.data(), N);
      kernels::embedding_backward<T>(ms.ids.data(), N, dtmp.data(), D, embed_->g());
      // hidden-state input: h^{k-1}
      m.hnorm.backward_input(dhpn.data(), ms.hp.data(), ms.rstd_h.data(), N, dtmp.data());
      m.hnorm.backward_weight(dhpn.data(), ms.hp.data(), ms.rstd_h.data(), N);
      if (k == 1)
        kernels::add_inplace<T>(dh.data(), dtmp.data(), N * D);
      else
        dnext = dtmp;
    }
  } else {
    if (!dh_out) throw std::logic_error("Model::backward_input: a non-last stage needs d(output)");
    std::copy(dh_out, dh_out + N * D, dh.data());
  }

  // this stage's blocks, last first
  for (int64_t l = Lh - 1; l >= 0; --l) {
    if (blocks_[l]->is_moe()) mb.blocks[l].moe.aux_grad = g;
    blocks_[l]->backward_input(mb.blocks[l], dh.data(), mb.pos.data(), dtmp.data());
    weight([this, &mb, l] { blocks_[l]->backward_weight(mb.blocks[l]); });
    std::swap(dh, dtmp);
  }
  if (stage_.first()) {
    std::copy(dh.begin(), dh.end(), sized(mb.d_embed, N * D));
    weight([this, &mb, N, D] {
      kernels::embedding_backward<T>(mb.ids.data(), N, mb.d_embed.data(), D, embed_->g());
    });
  }
}

template <class T>
void Model<T>::backward_weight(MicroBatch& mb) const {
  for (auto& fn : mb.deferred) fn();
  mb.deferred.clear();
}

template class Model<float>;
template class Model<double>;

}  // namespace moetron
