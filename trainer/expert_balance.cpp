// The expert-bias update of a step and the imbalance it reports (see expert_balance.h).
#include "trainer/expert_balance.h"

#include <algorithm>

#include "kernels/ops.h"

namespace moetron {

double update_expert_bias(Model<float>& model, Communicator& dp, std::vector<int64_t>& host,
                          double gamma) {
  dp.all_reduce(model.loads(), host.size());
  kernels::copy_to_host(model.exec(), host.data(), model.loads(), sizeof(int64_t) * host.size());
  const std::vector<MoE<float>*> layers = model.moe_layers();
  if (layers.empty()) return 0;
  const size_t E = host.size() / layers.size();
  double imbalance = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i]->update_bias(model.loads() + i * E, gamma);
    const auto first = host.begin() + static_cast<std::ptrdiff_t>(i * E);
    double mean = 0;
    for (auto v = first; v != first + static_cast<std::ptrdiff_t>(E); ++v)
      mean += static_cast<double>(*v);
    mean /= static_cast<double>(E);
    const int64_t most = *std::max_element(first, first + static_cast<std::ptrdiff_t>(E));
    imbalance += mean > 0 ? static_cast<double>(most) / mean : 0;
  }
  return imbalance;
}

}  // namespace moetron
