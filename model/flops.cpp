// Model FLOPs per token (see flops.h). Each term is written as 2 x (multiply-accumulates per
// token) so it can be read against the layer's weight shapes in attention.cpp, mlp.cpp, moe.cpp,
// mtp.cpp and model.cpp.
#include "model/flops.h"

#include <algorithm>
#include <limits>

namespace moetron {

namespace {

struct LayerFlops {
  double attention_proj = 0, attention_core = 0, dense_ffn = 0, gate = 0, shared = 0, routed = 0;
  double sum() const {
    return attention_proj + attention_core + dense_ffn + gate + shared + routed;
  }
};

// One decoder block `l` (main model or MTP) per token at sequence length S.
LayerFlops layer_flops(const ModelConfig& c, int64_t l, int64_t S) {
  const double D = static_cast<double>(c.hidden_size),
               H = static_cast<double>(c.num_attention_heads);
  const double dn = static_cast<double>(c.qk_nope_head_dim),
               dr = static_cast<double>(c.qk_rope_head_dim);
  const double dv = static_cast<double>(c.v_head_dim), ql = static_cast<double>(c.q_lora_rank);
  const double kl = static_cast<double>(c.kv_lora_rank);
  LayerFlops f;
  const double q = c.q_lora_rank > 0 ? D * ql + ql * H * (dn + dr) : D * H * (dn + dr);
  f.attention_proj = 2 * (q + D * (kl + dr) + kl * H * (dn + dv) + H * dv * D);
  const double keys = static_cast<double>(S) / 2;  // causal: S/2 keys per query on average
  f.attention_core = 2 * H * (dn + dr) * keys + 2 * H * dv * keys;
  if (!c.is_moe_layer(l)) {
    f.dense_ffn = 2 * 3 * D * static_cast<double>(c.intermediate_size);
    return f;
  }
  const double F = static_cast<double>(c.moe_intermediate_size);
  f.gate = 2 * D * static_cast<double>(c.n_routed_experts);
  f.shared = 2 * 3 * D * F * static_cast<double>(c.n_shared_experts);
  f.routed = 2 * 3 * D * F * static_cast<double>(c.num_experts_per_tok);
  return f;
}

}  // namespace

FlopsPerToken flops_per_token(const ModelConfig& c, int64_t seq_len) {
  FlopsPerToken f;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerFlops lf = layer_flops(c, l, seq_len);
    f.attention_proj += lf.attention_proj, f.attention_core += lf.attention_core;
    f.dense_ffn += lf.dense_ffn, f.moe_gate += lf.gate;
    f.moe_shared += lf.shared, f.moe_routed += lf.routed;
  }
  const double D = static_cast<double>(c.hidden_size), V = static_cast<double>(c.vocab_size);
  f.head = 2 * D * V;
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    // eh_proj ([h; e] of width 2D to D), one block (indexed after the main layers), the head
    const LayerFlops lf = layer_flops(c, c.num_hidden_layers + k, seq_len);
    f.mtp += 2 * 2 * D * D + lf.sum() + 2 * D * V;
    f.mtp_attention_core += lf.attention_core;
  }
  return f;
}

double stage_forward_flops(const ModelConfig& c, int64_t begin, int64_t end, bool last,
                           int64_t seq_len) {
  double f = 0;
  for (int64_t l = begin; l < end; ++l) f += layer_flops(c, l, seq_len).sum();
  if (last) {
    const FlopsPerToken t = flops_per_token(c, seq_len);
    f += t.head + t.mtp;
  }
  return f;
}

// Dynamic programming over prefixes: best[s][j] = the smallest possible largest stage cost when
// the first j layers form s stages; the last stage's head and MTP cost is added to its segment.
std::vector<int64_t> balanced_stage_starts(const ModelConfig& c, int64_t n_stages,
                                           int64_t seq_len) {
  const int64_t L = c.num_hidden_layers, P = n_stages;
  if (P < 1 || P > L) return {};
  std::vector<double> prefix(static_cast<size_t>(L) + 1, 0.0);
  for (int64_t l = 0; l < L; ++l)
    prefix[l + 1] = prefix[l] + stage_forward_flops(c, l, l + 1, false, seq_len);
  const double tail = stage_forward_flops(c, 0, 0, true, seq_len);
  const auto cost = [&](int64_t a, int64_t b, bool last) {  // layers [a, b)
    return prefix[b] - prefix[a] + (last ? tail : 0.0);
  };
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(P + 1, std::vector<double>(L + 1, inf));
  std::vector<std::vector<int64_t>> from(P + 1, std::vector<int64_t>(L + 1, -1));
  best[0][0] = 0;
  for (int64_t s = 1; s <= P; ++s)
    for (int64_t j = s; j <= L - (P - s); ++j)
      for (int64_t i = s - 1; i < j; ++i) {  // stage s-1 is layers [i, j)
        const double m = std::max(best[s - 1][i], cost(i, j, s == P));
        if (m < best[s][j] * (1 - 1e-12)) best[s][j] = m, from[s][j] = i;
      }
  std::vector<int64_t> starts(static_cast<size_t>(P));
  for (int64_t s = P, j = L; s >= 1; j = from[s][j], --s) starts[s - 1] = from[s][j];
  return starts;
}

}  // namespace moetron
