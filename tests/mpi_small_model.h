// The small DeepSeek-V3-shaped model config the pipeline tests share (tests/mpi_pipeline.cpp,
// tests/mpi_dualpipe.cpp): one dense layer then MoE layers (4 experts in 2 groups, top-2 from 1
// group), MLA with q compression, one MTP module — every kind of layer, small enough that every
// rank can also run the whole model as a reference.
#pragma once

#include <cstdint>

#include "model/config.h"

namespace moetron {

inline ModelConfig small_pipeline_model(int64_t layers) {
  ModelConfig c;
  c.vocab_size = 64, c.hidden_size = 32, c.intermediate_size = 48, c.moe_intermediate_size = 16;
  c.num_hidden_layers = layers, c.first_k_dense_replace = 1, c.num_attention_heads = 2;
  c.n_routed_experts = 4, c.n_group = 2, c.topk_group = 1, c.num_experts_per_tok = 2;
  c.q_lora_rank = 16, c.kv_lora_rank = 8, c.qk_nope_head_dim = 8, c.qk_rope_head_dim = 4;
  c.v_head_dim = 8, c.num_nextn_predict_layers = 1, c.init_std = 0.1, c.max_seq_len = 16;
  return c;
}

}  // namespace moetron
