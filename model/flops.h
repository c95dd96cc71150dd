// Model FLOPs per token, by component, in the standard convention (DESIGN-NOTES Part B §3.2):
// 2 FLOPs per multiply-accumulate of a matrix product; training = 3 x forward (input and weight
// gradients); causal attention attends S/2 keys on average; norms, RoPE, softmax, element-wise
// work, the embedding lookup, the optimizer and any recomputation are not counted (they belong to
// hardware FLOPs, not model FLOPs). Routed experts count exactly K per token: no token is dropped.
//
// The figure MFU is measured against: DeepSeek-V3 at seq_len 4096 with its MTP module gives
// 2.606e11 training FLOPs per token (the paper's 180K H800 GPU-hours per 10^12 tokens rest on
// about 2.6e11). Every GEMM term is 2 x the matrix parameters a token passes through, so the
// counts check against the model's own parameter counts (tests/test_model_flops.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace moetron {

// Forward FLOPs per token of one forward pass, summed over the layers of the main model; the MTP
// modules are their own total.
struct FlopsPerToken {
  double attention_proj = 0;  // MLA's projections: q (compressed or not), kv_a, kv_b, o
  double attention_core = 0;  // Q K^T and P V over S/2 keys on average (causal)
  double dense_ffn = 0;       // SwiGLU MLPs of the first_k_dense_replace layers
  double moe_gate = 0;        // router logits (D x E)
  double moe_shared = 0;      // shared experts
  double moe_routed = 0;      // K routed experts per token
  double head = 0;            // output projection (D x V)
  double mtp = 0;             // every MTP module: eh_proj, its block, its attention core, its head
  double mtp_attention_core = 0;  // the part of `mtp` that is attention core

  double forward() const {
    return attention_proj + attention_core + dense_ffn + moe_gate + moe_shared + moe_routed + head +
           mtp;
  }
  double training() const { return 3 * forward(); }  // forward + input and weight gradients
  // the part of forward() done by GEMMs (everything but the attention cores)
  double gemm_forward() const { return forward() - attention_core - mtp_attention_core; }
};

// FLOPs per token of `c` trained at sequence length seq_len.
FlopsPerToken flops_per_token(const ModelConfig& c, int64_t seq_len);

// Forward FLOPs per token of a pipeline stage holding layers [begin, end) (and, if last, the head
// and the MTP modules): what balanced_stage_starts balances.
double stage_forward_flops(const ModelConfig& c, int64_t begin, int64_t end, bool last,
                           int64_t seq_len);

// A cost-balanced cut of c's layers into n_stages pipeline stages (the first block of each stage,
// for ModelConfig::stage_starts): contiguous, each stage at least one block, the largest stage's
// training FLOPs per token as small as possible, where the last stage also carries the head and
// the MTP modules (at V3's size worth about four MoE layers) and the first the embedding (no
// FLOPs). Ties go to the first cut found; empty unless 1 <= n_stages <= layers.
std::vector<int64_t> balanced_stage_starts(const ModelConfig& c, int64_t n_stages, int64_t seq_len);

}  // namespace moetron
