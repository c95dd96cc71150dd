// The two ZeRO-1 groups and the global-norm clip of a training step (see optimizer.h).
#include "trainer/optimizer.h"

#include <cmath>

namespace moetron {

namespace {
std::vector<Param<float>*> trainable(const std::vector<Param<float>*>& params, bool expert) {
  std::vector<Param<float>*> out;
  for (Param<float>* p : params)
    if (p->trainable && p->expert == expert) out.push_back(p);
  return out;
}

Zero1Options zero1_options(const OptimizerConfig& oc) {
  Zero1Options zo;
  zo.beta1 = oc.beta1, zo.beta2 = oc.beta2, zo.eps = oc.eps;
  zo.weight_decay = oc.weight_decay;
  zo.bf16_moments = oc.moment_dtype == FloatFormat::BF16;
  zo.grad_reduce_bf16 = oc.grad_reduce_dtype == FloatFormat::BF16;
  return zo;
}
}  // namespace

Optimizer::Optimizer(const std::vector<Param<float>*>& params, ProcessGroups& groups,
                     const OptimizerConfig& oc)
    : world_(*groups.world),
      grad_clip_(oc.grad_clip),
      dense_(trainable(params, false), groups.dense_group(), zero1_options(oc)),
      experts_(trainable(params, true), groups.expert_group(), zero1_options(oc)) {}

double Optimizer::reduce(bool loss_finite) {
  dense_.reduce_scatter_grads();
  experts_.reduce_scatter_grads();
  double sq = dense_.owned_grad_sq() + experts_.owned_grad_sq();
  if (!loss_finite) sq = std::nan("");  // a NaN in the sum reaches every rank
  world_.all_reduce(&sq, 1);
  return std::sqrt(sq);
}

void Optimizer::update(double lr, double norm, int64_t t) {
  const double clip = grad_clip_ > 0 && norm > grad_clip_ ? grad_clip_ / norm : 1.0;
  dense_.step(lr, clip, t);
  experts_.step(lr, clip, t);
}

}  // namespace moetron
