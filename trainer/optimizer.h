// The optimizer of a training step: AdamW on ZeRO-1 shards in two groups — the dense parameters
// sharded over the DP group, the routed experts over the EDP group (the ranks that hold the same
// experts); under DualPipe both over the twins' ranks as well (process_groups.h) — with one clip
// to the global gradient norm across both groups and every rank.
//
//   step(lr, t):  reduce-scatter gradients (each group over its ranks)
//                 norm = sqrt(sum over every rank's owned shards of g^2)
//                 clip = grad_clip / norm when norm > grad_clip (else 1)
//                 AdamW(lr, clip, t) on the owned shards, all-gather the parameters
// A norm that is NaN or Inf (split into reduce() and update()) lets the trainer skip the update.
// The sharding, the arenas and the moments are Zero1's (parallel/zero1.h); this object only
// groups the parameters and owns the norm, so the train step reads like the method.
#pragma once

#include <cstdint>
#include <vector>

#include "model/param.h"
#include "parallel/process_groups.h"
#include "parallel/zero1.h"
#include "trainer/config.h"

namespace moetron {

class Optimizer {
 public:
  // params: every parameter of this rank's stage; the trainable ones are split into dense and
  // expert groups (in their order, the same on every rank of a group).
  Optimizer(const std::vector<Param<float>*>& params, ProcessGroups& groups,
            const OptimizerConfig& oc);

  // One optimizer step (t: 1-based step number); returns the global gradient norm before
  // clipping. The parameters of every rank are updated and in sync when it returns.
  double step(double lr, int64_t t) {
    const double norm = reduce(true);
    update(lr, norm, t);
    return norm;
  }
  // The two halves of a step, for the trainer's non-finite guard (train.cpp):
  // reduce() reduce-scatters every group's gradients and returns the global gradient norm, the
  // same on every rank; a rank that passes loss_finite = false makes it NaN everywhere, so a
  // step whose loss or gradients are NaN/Inf on any rank has a non-finite norm on all of them.
  double reduce(bool loss_finite);
  // AdamW on the owned shards with the clip that `norm` (reduce()'s) implies, then all-gather.
  void update(double lr, double norm, int64_t t);
  // After reduce(): whether this rank's own gradients, before the reduction, were all finite
  // (a full pass over them; the trainer asks only on a bad step, to name the ranks).
  bool local_grads_finite() const {
    return dense_.local_grads_finite() && experts_.local_grads_finite();
  }

  // Overlap of the reduction with the backward: every parameter of global layer `layer`
  // (model.layers.<layer>.*; Model::kHeadLayer: lm_head and model.norm) has its final gradient
  // of the step on this rank; their buckets may start reducing (zero1.h), and the reductions in
  // flight progress. The embedding reduces in reduce(), after the tied embedding's sum.
  // progress(): let the reductions in flight move.
  void grads_final(int layer);
  void progress() { dense_.progress(), experts_.progress(); }
  // Of the last reduce(): the share of gradient elements whose reduction started before it.
  double reduce_started_early() const {
    const double n = static_cast<double>(dense_.reduced_elements() + experts_.reduced_elements());
    return n > 0 ? static_cast<double>(dense_.started_early() + experts_.started_early()) / n : 0;
  }

  // Every parameter's whole values on this rank, where master values are sharded (collective;
  // Zero1::gather_values): whole_values(p) is then where p's are, until the next step.
  void gather_values() { dense_.gather_values(), experts_.gather_values(); }
  const Tensor& whole_values(const Param<float>& p) const {
    return (p.expert ? experts_ : dense_).whole_values(p);
  }

  // The groups in checkpoint order (dense, experts).
  std::vector<Zero1*> shards() { return {&dense_, &experts_}; }
  std::vector<const Zero1*> shards() const { return {&dense_, &experts_}; }
  int64_t state_bytes() const { return dense_.state_bytes() + experts_.state_bytes(); }
  // Whether a group keeps master values only in its shard (Zero1::sharded), and the fp32 bytes of
  // values the rank holds (the resident parameters' and the owned masters; bias excluded).
  bool masters_sharded() const { return dense_.sharded() || experts_.sharded(); }
  int64_t value_bytes() const { return dense_.value_bytes() + experts_.value_bytes(); }
  // Seconds spent waiting for the reduce-scatter/all-gather since the last call.
  double take_comm_seconds() { return dense_.take_comm_seconds() + experts_.take_comm_seconds(); }

 private:
  Communicator& world_;
  double grad_clip_;
  Zero1 dense_, experts_;
  std::vector<std::vector<int64_t>> dense_layers_, expert_layers_;  // [layer] -> param indices
};

}  // namespace moetron
