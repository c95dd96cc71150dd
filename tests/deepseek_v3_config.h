// DeepSeek-V3's model config (SPEC; the Hugging Face config.json), for the tests that build it on
// the meta device or count its FLOPs.
#pragma once

#include "model/config.h"

inline moetron::ModelConfig deepseek_v3_config() {
  moetron::ModelConfig c;
  c.vocab_size = 129280, c.hidden_size = 7168, c.intermediate_size = 18432;
  c.moe_intermediate_size = 2048, c.num_hidden_layers = 61, c.first_k_dense_replace = 3;
  c.num_attention_heads = 128, c.n_routed_experts = 256, c.n_shared_experts = 1;
  c.num_experts_per_tok = 8, c.n_group = 8, c.topk_group = 4, c.routed_scaling_factor = 2.5;
  c.q_lora_rank = 1536, c.kv_lora_rank = 512, c.qk_nope_head_dim = 128, c.qk_rope_head_dim = 64;
  c.v_head_dim = 128, c.num_nextn_predict_layers = 1, c.max_seq_len = 4096;
  return c;
}
