// The model section of the settings table: one walk over ModelConfig's fields, in the Hugging
// Face DeepSeek-V3 config.json names, with each field's own range. trainer/config.cpp's table
// visits it (reading, writing, comparing the `model:` section); dump-grads writes the HF fields
// as HDF5 attributes and export writes them into config.json by the same walk, so a field is
// named in one place. The rules between model fields live with the struct (model/config.h).
// Visitor interface: trainer/config_schema.h.
#pragma once

#include <vector>

#include "model/config.h"
#include "trainer/config_schema.h"

namespace moetron {

// The fields that the HF DeepSeek-V3 config.json has under the same name, in table order.
template <class V, class... M>
void visit_hf_model_fields(V& v, M&... m) {
  using namespace config_schema;
  v.field("vocab_size", kAtLeast2, m.vocab_size...);
  v.field("hidden_size", kPositive, m.hidden_size...);
  v.field("intermediate_size", kPositive, m.intermediate_size...);
  v.field("moe_intermediate_size", kPositive, m.moe_intermediate_size...);
  v.field("num_hidden_layers", kPositive, m.num_hidden_layers...);
  v.field("first_k_dense_replace", kNonNegative, m.first_k_dense_replace...);
  v.field("num_attention_heads", kPositive, m.num_attention_heads...);
  v.field("n_routed_experts", kPositive, m.n_routed_experts...);
  v.field("n_shared_experts", kNonNegative, m.n_shared_experts...);
  v.field("num_experts_per_tok", kAtLeast1, m.num_experts_per_tok...);
  v.field("n_group", kPositive, m.n_group...);
  v.field("topk_group", kAtLeast1, m.topk_group...);
  v.field("routed_scaling_factor", kPositive, m.routed_scaling_factor...);
  v.field("q_lora_rank", kNonNegative, m.q_lora_rank...);
  v.field("kv_lora_rank", kPositive, m.kv_lora_rank...);
  v.field("qk_nope_head_dim", kPositive, m.qk_nope_head_dim...);
  v.field("qk_rope_head_dim", kPositive, m.qk_rope_head_dim...);
  v.field("v_head_dim", kPositive, m.v_head_dim...);
  v.field("rope_theta", kPositive, m.rope_theta...);
  v.field("rms_norm_eps", kPositive, m.rms_norm_eps...);
  v.field("num_nextn_predict_layers", kNonNegative, m.num_nextn_predict_layers...);
}

// The whole `model:` section: the HF fields, YaRN as HF's rope_scaling mapping, then moetron's
// own settings.
template <class V, class... M>
void visit_model_config(V& v, M&... m) {
  using namespace config_schema;
  visit_hf_model_fields(v, m...);
  v.section("rope_scaling", "YaRN; null or absent = off (acts when factor > 1)", [&] {
    v.tag("type", "yarn");
    v.field("factor", kAtLeast1, m.yarn_factor...);
    v.field("original_max_position_embeddings", kPositive,
            m.yarn_original_max_position_embeddings...);
    v.field("beta_fast", kPositive, m.yarn_beta_fast...);
    v.field("beta_slow", kPositive, m.yarn_beta_slow...);
    v.field("mscale", kNonNegative, m.yarn_mscale...);
  });
  v.field("max_seq_len", kPositive, m.max_seq_len...);
  v.field("init_std", kPositive, m.init_std...);
  v.field("seq_aux_alpha", kNonNegative, m.seq_aux_alpha...);
  v.field("lm_head_chunk", kPositive, m.lm_head_chunk...);
}

// A visitor that collects the names of the fields it is shown.
struct FieldNames {
  std::vector<const char*> names;
  template <class R, class T>
  void field(const char* name, const R&, const T&) {
    names.push_back(name);
  }
};

// The names of the HF fields, in table order (export's config.json keys).
inline std::vector<const char*> hf_model_field_names() {
  FieldNames v;
  const ModelConfig m;
  visit_hf_model_fields(v, m);
  return v.names;
}

}  // namespace moetron
