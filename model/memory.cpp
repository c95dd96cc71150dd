// The activation-memory model of memory.h, written against the State structs of model/ (each
// term names the buffer it counts).
#include "model/memory.h"

#include <algorithm>

#include "model/model.h"

namespace moetron {

namespace {
// A SavedAct of `cols` per token: FP8 1x128 tiles (codes + one fp32 scale per 128) or T values.
double saved(int64_t cols, bool fp8, int64_t elem) {
  return fp8 ? static_cast<double>(cols + 4 * ((cols + 127) / 128))
             : static_cast<double>(cols * elem);
}

// A SavedGrad of `cols` per row: FP8 128x1 tiles (codes + one fp32 scale per 128 rows of a
// column; a group's partial last tile is not counted) or T values.
double kept_grad(int64_t cols, bool fp8, int64_t elem) {
  return fp8 ? static_cast<double>(cols) * (1.0 + 4.0 / 128.0) : static_cast<double>(cols * elem);
}

// Mlp<T>::State per token (its input is the caller's; FP8 keeps its tiles). Ts: the bytes of a
// kept element that is not FP8 (the storage policy), T: of a compute element.
ActivationBytes mlp_bytes(int64_t D, int64_t F, bool fp8, int64_t T, int64_t Ts) {
  ActivationBytes b;
  b.forward = (fp8 ? saved(D, true, Ts) : 0) + saved(2 * F, fp8, Ts)  // x, gu
              + (fp8 ? 0 : static_cast<double>(F * Ts));              // a (recomputed with FP8)
  b.backward = kept_grad(D, fp8, T) + kept_grad(2 * F, fp8, T);       // dy, dgu
  return b;
}
}  // namespace

ActivationBytes block_activation_bytes(const ModelConfig& c, const PrecisionPolicy& pol, bool moe,
                                       int64_t S, int64_t T, double rows, double load) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim();
  const int64_t dv = c.v_head_dim, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim;
  const int64_t ql = c.q_lora_rank, kl = c.kv_lora_rank;
  const bool attn8 = pol.recipe_of(Component::AttentionProj) == Recipe::FP8;
  const int64_t Ts = pol.store_bf16 && T == 4 ? 2 : T;  // a kept element that is not FP8
  ActivationBytes b;
  // MLA<T>::State: xn, rstd_in, [cq_raw, rstd_q, cq], q, ckv_raw, rstd_kv, ckv, k, v, o, lse
  // (and kva when k is recomputed)
  b.forward += saved(D, attn8, Ts) + T;
  if (ql > 0) b.forward += static_cast<double>(ql * Ts + T) + saved(ql, attn8, Ts);
  b.forward += static_cast<double>((H * dq + kl) * Ts + T) + saved(kl, attn8, Ts);
  if (pol.recompute_mla_up) b.forward += static_cast<double>((kl + dr) * Ts);     // kva
  const double To = pol.attn_out_e5m6 && T == 4 ? 1.5 : static_cast<double>(Ts);  // o (E5M6)
  b.forward +=
      static_cast<double>((H * dq + H * dv) * Ts + H * T) + static_cast<double>(H * dv) * To;
  if (pol.recompute_norms)  // xn, cq, ckv made again in the backward
    b.forward -= saved(D, attn8, Ts) + (ql > 0 ? saved(ql, attn8, Ts) : 0) + saved(kl, attn8, Ts);
  if (pol.recompute_mla_up)  // q, k, v made again in the backward
    b.forward -= static_cast<double>((2 * H * dq + H * dv) * Ts);
  // backward: the projections' dY (FP8: their Wgrads' tiles) dout, dq, [dcq_raw], dkv, dkva
  // (the norms' weight gradients, [D] each per micro-batch: slot_activation_bytes)
  b.backward += kept_grad(D, attn8, T) + kept_grad(H * dq, attn8, T) +
                (ql > 0 ? kept_grad(ql, attn8, T) : 0) + kept_grad(H * (dn + dv), attn8, T) +
                kept_grad(kl + dr, attn8, T);
  // Block<T>::State: h_mid, xn2 (made again under recompute_norms), rstd2
  b.forward += static_cast<double>((pol.recompute_norms ? 1 : 2) * D * Ts + T);
  if (!moe) {
    b +=
        mlp_bytes(D, c.intermediate_size, pol.recipe_of(Component::DenseMlp) == Recipe::FP8, T, Ts);
    return b;
  }
  // MoE<T>::State with K expert rows per token
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, F = c.moe_intermediate_size;
  const bool exp8 = pol.recipe_of(Component::RoutedExpert) == Recipe::FP8;
  b.forward += static_cast<double>((E + K) * T + 4 * K);  // scores, weights, idx
  // per received row: dispatch rw, ridx (rx, ry: layer scratch); slot, row_token, row_slot
  b.forward += rows * static_cast<double>(K * T + 4 * K + 3 * 8 * K);
  const double Kr = static_cast<double>(K) * load;  // expert rows per token on this rank
  b.forward += Kr * (saved(D, exp8, Ts) + T + saved(2 * F, exp8, Ts) +
                     (exp8 ? 0 : F * Ts));                           // xperm, wperm, gu, a
  b.forward += static_cast<double>(E * T) / static_cast<double>(S);  // bal_f
  b += mlp_bytes(D, c.n_shared_experts * F,  // the shared expert (its input: the block's xn2)
                 pol.recipe_of(Component::SharedExpert) == Recipe::FP8, T, Ts);
  // backward, kept for the weight gradients: dyperm, dgu (FP8 experts: the Wgrads' tiles),
  // dlogits (the rest is MoE::Scratch)
  b.backward +=
      Kr * (kept_grad(D, exp8, T) + kept_grad(2 * F, exp8, T)) + static_cast<double>(E * T);
  return b;
}

ScratchBytes moe_scratch_bytes(const ModelConfig& c, const PrecisionPolicy& pol, int64_t N,
                               int64_t T, double rows, double load) {
  if (c.n_routed_experts == 0) return {};
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  const int64_t F = c.moe_intermediate_size;
  const bool exp8 = pol.recipe_of(Component::RoutedExpert) == Recipe::FP8;
  const bool narrow = exp8 || (pol.store_bf16 && T == 4);  // gu, a not kept as T
  const double n = static_cast<double>(N), R = n * rows, A = n * static_cast<double>(K) * load;
  // one piece: logits; yperm (the backward's dyperm staging and d xperm); a_tmp (the backward's
  // dA); gu_tmp unless gu and a are kept as T (under FP8 also dgu before its tiles, in place)
  double one = n * static_cast<double>(E * T) + A * static_cast<double>((D + F) * T);
  if (narrow) one += A * static_cast<double>(2 * F * T);
  // the chunk's own: shared_out; rdw; dwperm; dweights (the rows rx .. rdx: `received`)
  const double own = n * static_cast<double>(D * T) + R * static_cast<double>(K * T) +
                     A * static_cast<double>(T) + n * static_cast<double>(K * T);
  return {static_cast<int64_t>(one), static_cast<int64_t>(own),
          static_cast<int64_t>(R * static_cast<double>(D * T))};
}

namespace {
// MLA<T>::Scratch per token: Ts the bytes of a kept element that is not FP8 (wide: bf16 storage)
double attention_scratch(const ModelConfig& c, const PrecisionPolicy& pol, int64_t T, bool wide) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim();
  const int64_t dv = c.v_head_dim, dn = c.qk_nope_head_dim, dr = c.qk_rope_head_dim;
  const int64_t ql = c.q_lora_rank, kl = c.kv_lora_rank;
  // kv (in the backward d_o); dk, dv; dckv_raw, dhn
  int64_t e = H * (dn + dv) + H * dq + H * dv + kl + D;
  if (!pol.recompute_mla_up || wide) e += kl + dr;             // kva, unless kept as T
  if (pol.recompute_mla_up || wide) e += 2 * H * dq + H * dv;  // q, k, v
  if (wide || (pol.attn_out_e5m6 && T == 4)) e += H * dv;      // o widened (or its staging)
  if (wide) e += (ql > 0 ? ql : 0) + kl;                       // cq_raw, ckv_raw widened
  const bool attn8 = pol.recipe_of(Component::AttentionProj) == Recipe::FP8;
  if (attn8) e += D + H * dq + (ql > 0 ? ql : 0) + kl + dr;  // dout, dq, dcq_raw, dkva before tiles
  e += D + (ql > 0 ? ql : 0) + kl;                           // dxn, dcq, dckv
  double b = static_cast<double>(e * T);
  if (pol.recompute_norms) {  // rstd; xn, cq, ckv in their Linears' kept form
    const int64_t Ts = wide ? 2 : T;
    b += static_cast<double>(T) + saved(D, attn8, Ts) + saved(kl, attn8, Ts) +
         (ql > 0 ? saved(ql, attn8, Ts) : 0);
  }
  return b;
}

// The SwiGLU MLPs and Linears present on a stage, per token: the largest use of each buffer.
struct Widest {
  double x = 0, wide = 0, x8q = 0, x8s = 0;  // LinearScratch: elements, bytes of codes, scales
  double gu = 0, a = 0;                      // Mlp::Scratch: elements (gu: also FP8's dgu; a: dA)
  void mlp(int64_t F, bool fp8, bool wide_) {
    const bool narrow = fp8 || wide_;  // gu and a not kept as T: written to scratch first
    gu = std::max(gu, narrow ? static_cast<double>(2 * F) : 0.0);
    a = std::max(a, static_cast<double>(F));  // the output (narrow) or dA (always)
  }
  void quantised(double rows, int64_t cols) {  // Linear::forward of an input not kept (FP8)
    x8q = std::max(x8q, rows * static_cast<double>(cols));
    x8s = std::max(x8s, rows * static_cast<double>(4 * ((cols + 127) / 128)));
  }
  void kept(double rows, int64_t cols, bool fp8, bool wide_) {  // Linear::input()/kept()
    if (fp8 || wide_) x = std::max(x, rows * static_cast<double>(cols));
    if (!fp8 && wide_) wide = std::max(wide, rows * static_cast<double>(cols));
  }
};
}  // namespace

LayerScratchBytes layer_scratch_bytes(const ModelConfig& c, const PrecisionPolicy& pol,
                                      int64_t stage, int64_t n_stages, int64_t N, int64_t T) {
  return layer_scratch_bytes(c, pol, std::vector<int64_t>{stage}, n_stages, N, T);
}

LayerScratchBytes layer_scratch_bytes(const ModelConfig& c, const PrecisionPolicy& pol,
                                      const std::vector<int64_t>& stages, int64_t n_stages,
                                      int64_t N, int64_t T, double load) {
  bool dense = false, moe = false;  // the kinds of block present on any of the stages
  int64_t mtp = 0, chunks = 0;      // stages with the MTP module; chunks (each its Block::Own)
  for (int64_t stage : stages) {
    const StageSpec st{stage, n_stages};
    const auto [b0, b1] = stage_blocks(c, st);
    for (int64_t l = b0; l < b1; ++l) (c.is_moe_layer(l) ? moe : dense) = true;
    const bool m = st.last() && c.num_nextn_predict_layers > 0;
    moe |= m, mtp += m, ++chunks;
  }
  const bool wide = pol.store_bf16 && T == 4;
  const auto fp8 = [&](Component k) { return pol.recipe_of(k) == Recipe::FP8; };
  const int64_t D = c.hidden_size, K = c.num_experts_per_tok;
  Widest w;
  // attention: the inputs of kv_a (and q_a or q), q_b, kv_b; o_proj's input quantised
  const bool attn8 = fp8(Component::AttentionProj);
  w.kept(1, std::max({D, c.q_lora_rank, c.kv_lora_rank}), attn8, wide);
  if (attn8) w.quantised(1, c.num_attention_heads * c.v_head_dim);
  if (dense) {
    w.mlp(c.intermediate_size, fp8(Component::DenseMlp), wide);
    if (fp8(Component::DenseMlp)) w.quantised(1, c.intermediate_size);
  }
  if (moe) {  // the shared expert; the routed experts' sorted rows (gu) and down input
    const int64_t Fs = c.n_shared_experts * c.moe_intermediate_size;
    w.mlp(Fs, fp8(Component::SharedExpert), wide);
    if (fp8(Component::SharedExpert)) w.quantised(1, Fs);
    // (under fp8 the experts quantise the received rows as they gather them: no staging)
    const double Kr = static_cast<double>(K) * load;
    if (!fp8(Component::RoutedExpert)) w.kept(Kr, D, false, wide);
    if (fp8(Component::RoutedExpert)) w.quantised(Kr, c.moe_intermediate_size);
  }
  const double n = static_cast<double>(N), t = static_cast<double>(T);
  LayerScratchBytes b;
  b.attention = static_cast<int64_t>(n * attention_scratch(c, pol, T, wide));
  b.mlp = static_cast<int64_t>(n * (w.gu + w.a) * t);
  b.linear = static_cast<int64_t>(n * ((w.x + w.wide) * t + w.x8q + w.x8s));
  // Block::Own, per chunk: dxn2; h_mid, xn2 under bf16 storage; under recompute_norms xn2 (if
  // not already) and the recomputed rstd; with bf16-kept block inputs the stream x; the MTP
  // module's en, hpn (their gradients in the backward), de
  const bool rn = pol.recompute_norms, x = pol.block_input_bf16 && T == 4;
  const int64_t own = (1 + (wide ? 2 : 0) + (rn && !wide ? 1 : 0) + (x ? 1 : 0)) * D + (rn ? 1 : 0);
  b.block = static_cast<int64_t>(n * static_cast<double>(chunks * own + mtp * 3 * D) * t);
  return b;
}

SlotBytes slot_activation_bytes(const ModelConfig& c, const PrecisionPolicy& pol, int64_t stage,
                                int64_t n_stages, int64_t B, int64_t S, int64_t T, double rows,
                                double load) {
  const StageSpec st{stage, n_stages};
  const auto [b0, b1] = stage_blocks(c, st);
  const int64_t N = B * S, D = c.hidden_size, E = c.n_routed_experts;
  const int64_t Dm = st.last() ? c.num_nextn_predict_layers : 0;
  double fwd = 0, bwd = 0;
  int64_t n_moe = 0;
  // per block and micro-batch: its norms' weight gradients (attn, q, kv, ffn)
  const double norms_dw = static_cast<double>((2 * D + c.q_lora_rank + c.kv_lora_rank) * T);
  for (int64_t l = b0; l < b1; ++l) {
    const ActivationBytes a = block_activation_bytes(c, pol, c.is_moe_layer(l), S, T, rows, load);
    fwd += a.forward * N, bwd += a.backward * N + norms_dw;
    n_moe += c.is_moe_layer(l);
  }
  fwd += static_cast<double>(4 * B * (S + 1) + 12 * N);  // tokens; ids, targets, pos
  // the residual stream h[0..L], or (bf16-kept block inputs) the output h[L] and each block's
  // bf16 copy of its input (Block::State::h_kept), the stream itself being layer scratch
  const bool kept16 = pol.block_input_bf16 && T == 4;
  fwd += static_cast<double>((kept16 ? 1 : b1 - b0 + 1) * N * D * T);
  if (kept16) fwd += static_cast<double>((b1 - b0) * N * D * 2);
  bwd += static_cast<double>(2 * N * D * T);              // dh, dtmp
  if (st.first()) bwd += static_cast<double>(N * D * T);  // d_embed
  if (st.last()) {
    fwd += static_cast<double>(N * (D + 2) * T);  // hn, rstd, lse
    bwd += static_cast<double>(N * D * T);        // dhn
    for (int64_t k = 0; k < Dm; ++k) {            // MtpLayer<T>::State and its block
      const ActivationBytes a = block_activation_bytes(c, pol, true, S, T, rows, load);
      // e, cat (2D), x (or the block's bf16 copy of it), h, hn; ids, targets; 4 statistics
      fwd += a.forward * N + static_cast<double>(N * (8 + ((kept16 ? 5 : 6) * D + 4) * T));
      if (kept16) fwd += static_cast<double>(N * D * 2);
      bwd += a.backward * N + norms_dw + static_cast<double>(N * 6 * D * T);
      ++n_moe;
    }
  }
  fwd += static_cast<double>(8 * (1 + Dm + n_moe));  // loss parts
  // per MoE layer and micro-batch: routing counts [E] and offsets [E+1]
  fwd += static_cast<double>(n_moe * 8 * (2 * E + 1));
  return {static_cast<int64_t>(fwd), static_cast<int64_t>(bwd)};
}

}  // namespace moetron
