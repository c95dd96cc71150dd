// Auxiliary-loss-free load balancing after the optimizer step (SPEC-deepseek-v3 §1.4): every MoE
// layer's selection bias moves by gamma * sign(mean load - load_i), from the step's expert loads
// summed over the whole global batch (the DP group's all-reduce).
#pragma once

#include <cstdint>
#include <vector>

#include "model/model.h"
#include "parallel/comm.h"

namespace moetron {

// The step's load imbalance, summed over a rank's MoE layers (divide by `layers` for the mean).
struct LoadImbalance {
  double expert = 0;   // max expert load / mean expert load
  double ep_rank = 0;  // max rows of an EP rank (its E / ep experts) / mean rows of the EP ranks:
                       // how long the busiest rank computes experts over the mean (1 at ep 1)
  int64_t layers = 0;
};

// For each model chunk of this rank, in stage order: sums its expert loads over `group` (the DP
// ranks of the stage, and under DualPipe of its twin; in place, on the model's device), updates
// every MoE layer's bias with speed gamma. Returns the imbalances summed over the chunks' MoE
// layers, the EP ranks' with EP rank r holding experts [r E / ep, (r + 1) E / ep).
LoadImbalance update_expert_bias(const std::vector<Model<float>*>& chunks, Communicator& group,
                                 double gamma, int64_t ep);

// max / mean of `loads` summed in `parts` contiguous equal parts (parts divides its size; 0 when
// every load is 0).
double part_imbalance(const int64_t* loads, size_t n, size_t parts);

}  // namespace moetron
