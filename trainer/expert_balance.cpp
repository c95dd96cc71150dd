// The expert-bias update of a step and the imbalance it reports (see expert_balance.h).
#include "trainer/expert_balance.h"

#include <algorithm>

#include "kernels/ops.h"

namespace moetron {

double part_imbalance(const int64_t* loads, size_t n, size_t parts) {
  const size_t per = n / parts;
  double total = 0, most = 0;
  for (size_t p = 0; p < parts; ++p) {
    double sum = 0;
    for (size_t i = p * per; i < (p + 1) * per; ++i) sum += static_cast<double>(loads[i]);
    total += sum, most = std::max(most, sum);
  }
  return total > 0 ? most / (total / static_cast<double>(parts)) : 0;
}

LoadImbalance update_expert_bias(const std::vector<Model<float>*>& chunks, Communicator& group,
                                 double gamma, int64_t ep) {
  LoadImbalance out;
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
      out.expert += part_imbalance(host.data() + i * E, E, E);
      out.ep_rank += part_imbalance(host.data() + i * E, E, static_cast<size_t>(ep));
    }
    out.layers += static_cast<int64_t>(moe.size());
  }
  return out;
}

}  // namespace moetron
