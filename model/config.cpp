// ModelConfig::rules (see config.h): the model's invariants, next to its fields, so that the
// config's cross-section rules (trainer/config.cpp) keep only what relates sections.
#include "model/config.h"

#include <charconv>

namespace moetron {

namespace {

std::string text(int64_t x) { return std::to_string(x); }
// Shortest decimal that reads back as exactly `x`, as the config writes numbers.
std::string text(double x) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, res.ptr);
}

}  // namespace

std::vector<SettingRule> ModelConfig::rules(const std::string& prefix) const {
  const std::string p = prefix;
  // Products in 128 bits: a huge value must fail a rule, not overflow.
  const int64_t per_group = n_routed_experts / n_group;
  const __int128 kept = static_cast<__int128>(topk_group) * per_group;
  return {
      {p + "first_k_dense_replace",
       first_k_dense_replace <= num_hidden_layers,
       "be <= " + p + "num_hidden_layers (" + text(num_hidden_layers) + ")",
       text(first_k_dense_replace),
       {p + "num_hidden_layers"}},
      {p + "num_experts_per_tok",
       num_experts_per_tok <= n_routed_experts,
       "be <= " + p + "n_routed_experts (" + text(n_routed_experts) + ")",
       text(num_experts_per_tok),
       {p + "n_routed_experts"}},
      {p + "n_group",
       n_routed_experts % n_group == 0,
       "divide " + p + "n_routed_experts (" + text(n_routed_experts) + ")",
       text(n_group),
       {p + "n_routed_experts"}},
      {p + "topk_group",
       topk_group <= n_group,
       "be <= " + p + "n_group (" + text(n_group) + ")",
       text(topk_group),
       {p + "n_group"}},
      {p + "num_experts_per_tok",
       num_experts_per_tok % topk_group == 0,
       "be divisible by " + p + "topk_group (" + text(topk_group) + ")",
       text(num_experts_per_tok),
       {p + "topk_group"}},
      {p + "num_experts_per_tok",
       num_experts_per_tok <= kept,
       "be <= " + p + "topk_group x experts per group (" + text(topk_group) + " x " +
           text(per_group) + " = " + text(static_cast<int64_t>(kept)) +
           "), the experts in the kept groups",
       text(num_experts_per_tok),
       {p + "topk_group", p + "n_routed_experts", p + "n_group"}},
      {p + "qk_rope_head_dim",
       qk_rope_head_dim % 2 == 0,
       "be even (RoPE rotates pairs of dimensions)",
       text(qk_rope_head_dim),
       {}},
      {p + "rope_scaling.beta_fast",
       yarn_beta_fast > yarn_beta_slow,
       "be > " + p + "rope_scaling.beta_slow (" + text(yarn_beta_slow) + ")",
       text(yarn_beta_fast),
       {p + "rope_scaling.beta_slow"}},
  };
}

}  // namespace moetron
