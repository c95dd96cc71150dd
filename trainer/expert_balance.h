// Auxiliary-loss-free load balancing after the optimizer step (SPEC-deepseek-v3 §1.4): every MoE
// layer's selection bias moves by gamma * sign(mean load - load_i), from the step's expert loads
// summed over the whole global batch (the DP group's all-reduce).
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"
#include "parallel/comm.h"

namespace moetron {

// For each model chunk of this rank, in stage order: sums its expert loads over `group` (the DP
// ranks of the stage, and under DualPipe of its twin; in place, on the model's device), updates
// every MoE layer's bias with speed gamma. Returns the imbalance (max load / mean load) summed
// over the chunks' MoE layers, and sets `layers` to their count.
double update_expert_bias(const std::vector<Model<float>*>& chunks, Communicator& group,
                          double gamma, int64_t& layers);

}  // namespace moetron
