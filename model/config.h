// ModelConfig: the hyper-parameters of a DeepSeek-V3-shaped model, named as in the Hugging Face
// DeepSeek-V3 config.json, and the rules between them (rules()). trainer/config.cpp fills it from
// YAML (the field list with each field's own range: trainer/model_fields.h) and reports the
// first broken rule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moetron {

// A rule between settings: `key` must `must` (`ok`: it does), got `got`; `inputs` are the other
// keys it was checked against (so a message can name the override that set one of them).
struct SettingRule {
  std::string key;
  bool ok;
  std::string must;  // completes "must ..."
  std::string got;
  std::vector<std::string> inputs;
};

struct ModelConfig {
  int64_t vocab_size = 264;
  int64_t hidden_size = 256;
  int64_t intermediate_size = 512;      // dense FFN (first_k_dense_replace layers)
  int64_t moe_intermediate_size = 128;  // one routed expert; shared = n_shared_experts x this
  int64_t num_hidden_layers = 4;
  int64_t first_k_dense_replace = 1;
  int64_t num_attention_heads = 4;
  int64_t n_routed_experts = 16;
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 4;
  int64_t n_group = 4;
  int64_t topk_group = 2;
  double routed_scaling_factor = 2.5;
  int64_t q_lora_rank = 96;  // 0 = no query compression (single q_proj)
  int64_t kv_lora_rank = 64;
  int64_t qk_nope_head_dim = 32;
  int64_t qk_rope_head_dim = 16;
  int64_t v_head_dim = 32;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int64_t num_nextn_predict_layers = 1;  // MTP depth D
  // YaRN (rope_scaling in the HF config); off unless yarn_factor > 1.
  double yarn_factor = 1.0;
  int64_t yarn_original_max_position_embeddings = 4096;
  double yarn_beta_fast = 32.0, yarn_beta_slow = 1.0, yarn_mscale = 1.0;
  int64_t max_seq_len = 4096;    // the run's sequence length; YaRN acts when > original
  double init_std = 0.006;       // N(0, init_std) for every matrix (SPEC 2)
  double seq_aux_alpha = 1e-4;   // sequence-wise balance loss weight
  int64_t lm_head_chunk = 4096;  // vocabulary chunk of the fused head + cross-entropy
  // How the layers are cut into pipeline stages: the first block of each stage, increasing from
  // 0 (set by the trainer: parallel.stage_layers, or its cost-balanced cut); empty, or sized for
  // another stage count: as even as possible. Not a Hugging Face field.
  std::vector<int64_t> stage_starts;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t l) const { return l >= first_k_dense_replace; }

  // The rules between fields (expert groups, top-k, RoPE pairs, YaRN's band), in an order where
  // a rule's inputs were checked by the rules before it. Keys are `prefix` + the HF name
  // ("model." in the config). Each field must already hold its own range (n_group >= 1, ...).
  std::vector<SettingRule> rules(const std::string& prefix) const;
};

}  // namespace moetron
