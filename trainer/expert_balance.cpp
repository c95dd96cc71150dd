// The expert-bias update of a step and the imbalance it reports (see expert_balance.h).
#include "trainer/expert_balance.h"

#include <algorithm>

#include "kernels/ops.h"

namespace moetron {

double update_expert_bias(const std::vector<Model<float>*>& chunks, Communicator& group,
                          double gamma, int64_t& layers) {
  double imbalance = 0;
  layers = 0;
  for (Model<float>* model : chunks) {
    const std::vector<MoE<float>*> moe = model->moe_layers();
    if (moe.empty()) continue;
    const size_t E = static_cast<size_t>(model->config().n_routed_experts);
    std::vector<int64_t> host(moe.size() * E);
    group.all_reduce(model->loads(), host.size());
    kernels::copy_to_host(model->exec(), host.data(), model->loads(),
                          sizeof(int64_t) * host.size());
    for (size_t i = 0; i < moe.size(); ++i) {
      moe[i]->update_bias(model->loads() + i * E, gamma);
      const auto first = host.begin() + static_cast<std::ptrdiff_t>(i * E);
      double mean = 0;
      for (auto v = first; v != first + static_cast<std::ptrdiff_t>(E); ++v)
        mean += static_cast<double>(*v);
      mean /= static_cast<double>(E);
      const int64_t most = *std::max_element(first, first + static_cast<std::ptrdiff_t>(E));
      imbalance += mean > 0 ? static_cast<double>(most) / mean : 0;
    }
    layers += static_cast<int64_t>(moe.size());
  }
  return imbalance;
}

}  // namespace moetron
