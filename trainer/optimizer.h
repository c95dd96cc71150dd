// AdamW over a model's parameters, with global-norm gradient clipping.
//
// Master weights are the fp32 parameters themselves; moments are fp32 or bf16 (config). Norm
// weights and biases get no weight decay (Param::decay); non-trainable parameters (the expert
// selection bias) are skipped. The optimizer owns only its moments, one pair per parameter, in
// the parameter store's order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/param.h"
#include "trainer/config.h"

namespace moetron {

class AdamW {
 public:
  AdamW(ParamStore<float>& params, const OptimizerConfig& cfg);
  // Global L2 norm of all trainable gradients.
  double grad_norm() const;
  // Clips (if grad_clip > 0 and the norm exceeds it), then updates every trainable parameter.
  // Returns the norm before clipping.
  double step(double lr);
  int64_t steps_taken() const { return step_; }
  // Bytes held by the optimizer state (moments).
  int64_t state_bytes() const;

 private:
  ParamStore<float>& params_;
  OptimizerConfig cfg_;
  bool bf16_ = false;
  int64_t step_ = 0;
  std::vector<std::vector<float>> m32_, v32_;
  std::vector<std::vector<uint16_t>> m16_, v16_;
};

}  // namespace moetron
