// The tensor-core attention of kernels/cuda/attention_bf16.cu: what attention.cu's ops call for
// GemmPrecision::BF16 on float tensors (arguments as kernels/op_signatures.inc's attention ops).
#pragma once

#include <cstdint>

#include "kernels/exec.h"

namespace moetron::kernels::gpu {

void attention_forward_bf16(const Exec& ex, const float* q, const float* k, const float* v,
                            int64_t B, int64_t S, int64_t H, int64_t Dqk, int64_t Dv, float scale,
                            float* o, float* lse);
void attention_backward_bf16(const Exec& ex, const float* dout, const float* q, const float* k,
                             const float* v, const float* o, const float* lse, int64_t B, int64_t S,
                             int64_t H, int64_t Dqk, int64_t Dv, float scale, float* dq, float* dk,
                             float* dv);

}  // namespace moetron::kernels::gpu
