// The two ZeRO-1 groups and the global-norm clip of a training step (see optimizer.h).
#include "trainer/optimizer.h"

#include <cmath>
#include <string>

#include "model/model.h"

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
  zo.overlap = oc.overlap_grad_reduce;
  zo.bucket_elements = oc.grad_bucket_elements;
  zo.shard_values = oc.shard_master_weights;
  return zo;
}

// Where a parameter's gradient is reported final (Model::MicroBatch::on_layer_grads): 1 + its
// global layer (model.layers.<l>.*); 0 for the head and the final norm (Model::kHeadLayer);
// -1 for the rest (the embedding: final only with the step's end, after the tied sum).
int layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name == "lm_head.weight" || name == "model.norm.weight") return 0;
  if (name.rfind(prefix, 0) != 0) return -1;
  size_t end = prefix.size();
  int l = 0;
  while (end < name.size() && name[end] >= '0' && name[end] <= '9')
    l = l * 10 + (name[end++] - '0');
  return end > prefix.size() && end < name.size() && name[end] == '.' ? 1 + l : -1;
}

// [1 + layer] -> indices into the group's params() ([0]: the head's).
std::vector<std::vector<int64_t>> by_layer(const Zero1& group) {
  std::vector<std::vector<int64_t>> out;
  for (size_t i = 0; i < group.params().size(); ++i) {
    const int l = layer_of(group.params()[i]->name);
    if (l < 0) continue;
    if (static_cast<size_t>(l) >= out.size()) out.resize(static_cast<size_t>(l) + 1);
    out[static_cast<size_t>(l)].push_back(static_cast<int64_t>(i));
  }
  return out;
}
}  // namespace

Optimizer::Optimizer(const std::vector<Param<float>*>& params, ProcessGroups& groups,
                     const OptimizerConfig& oc)
    : world_(*groups.world),
      grad_clip_(oc.grad_clip),
      dense_(trainable(params, false), groups.device().dense_group(), zero1_options(oc)),
      experts_(trainable(params, true), groups.device().expert_group(), zero1_options(oc)),
      dense_layers_(by_layer(dense_)),
      expert_layers_(by_layer(experts_)) {}

void Optimizer::grads_final(int layer) {
  const size_t at = static_cast<size_t>(layer - Model<float>::kHeadLayer);
  const auto mark = [at](Zero1& z, const std::vector<std::vector<int64_t>>& layers) {
    if (at >= layers.size()) return;
    for (int64_t i : layers[at]) z.mark_final(i);
  };
  mark(dense_, dense_layers_);
  mark(experts_, expert_layers_);
  progress();  // a backward without exchanges calls MPI nowhere else until its end
}

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
