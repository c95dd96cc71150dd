// Auxiliary-loss-free load balancing after the optimizer step (SPEC-deepseek-v3 §1.4): every MoE
// layer's selection bias moves by gamma * sign(mean load - load_i), from the step's expert loads
// summed over the whole global batch (the DP group's all-reduce).
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"
#include "parallel/comm.h"

namespace moetron {

// Sums the model's expert loads over `dp` (in place, on the model's device), copies them to
// `host` [MoE layers, E], updates every MoE layer's bias with speed gamma and returns the
// imbalance (max load / mean load) summed over this stage's MoE layers.
double update_expert_bias(Model<float>& model, Communicator& dp, std::vector<int64_t>& host,
                          double gamma);

}  // namespace moetron
