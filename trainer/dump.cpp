// Gradient dumps for cross-implementation parity and for precision studies (see dump.h). Layout:
// root attributes = model hyper-parameters (HF names), mtp_weight, seq_aux_alpha and the losses;
// /tokens int32 [B, S+1]; /params/<name> and /grads/<name> float32 (no grads for non-trainable).
#include "trainer/dump.h"

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "kernels/ops.h"
#include "model/model.h"
#include "trainer/checkpoint.h"
#include "trainer/h5io.h"
#include "trainer/model_fields.h"
#include "trainer/param_file.h"
#include "trainer/train.h"

namespace moetron {

namespace {
using namespace h5;

// The model's HF fields by type (the walk of trainer/model_fields.h), for root attributes.
struct HfAttributes {
  std::vector<std::pair<const char*, int64_t>> ints;
  std::vector<std::pair<const char*, double>> reals;
  template <class R>
  void field(const char* name, const R&, int64_t x) {
    ints.emplace_back(name, x);
  }
  template <class R>
  void field(const char* name, const R&, double x) {
    reals.emplace_back(name, x);
  }
};

}  // namespace

void dump_grads(const Config& cfg, const std::string& out_path, const std::string& from) {
  const PrecisionPolicy policy = cfg.policy();
  const auto train_data = open_dataset(cfg, cfg.data.train_path, "data.train_path", true);
  kernels::set_num_threads(resolve_threads(cfg.run));

  // the first micro-batch of the training order: samples 0..B-1
  const int64_t B = cfg.data.micro_batch_size, S = cfg.data.seq_len;
  const std::vector<int32_t> tokens = train_data->batch(0, B, 1, 0).tokens;  // [B, S+1]
  const double lambda = cfg.schedule.mtp_weight.at(0);

  Model<float> model(cfg.model, policy);
  model.init(cfg.run.seed);
  if (!from.empty()) {
    load_params(model.params(), CheckpointReader(from), from, "the config's model");
  } else {
    // norm weights of 1 and a zero expert bias would leave two paths unexercised by the parity
    // check: give them seeded random values (the bias large enough to change routing)
    std::mt19937_64 gen(cfg.run.seed ^ 0x5eedull);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (auto& p : model.params().all()) {
      const bool norm = p->value.ndim() == 1 && p->trainable;
      if (!norm && p->trainable) continue;
      for (int64_t i = 0; i < p->numel(); ++i)
        p->w()[i] = norm ? 1.f + 0.3f * u(gen) : 0.02f * u(gen);
    }
  }
  Model<float>::MicroBatch mb;
  const Losses l = model.forward(mb, tokens.data(), B, S, lambda);
  model.backward(mb, 1.0);

  write_h5(out_path, "gradient dump", [&](hid_t f) {
    // the HF model fields (integers, then reals), then the loss setup and the losses
    HfAttributes hf;
    visit_hf_model_fields(hf, cfg.model);
    for (auto& [k, v] : hf.ints) attr_int(f, k, v);
    for (auto& [k, v] : hf.reals) attr_double(f, k, v);
    const std::pair<const char*, double> dbls[] = {{"seq_aux_alpha", cfg.model.seq_aux_alpha},
                                                   {"mtp_weight", lambda},
                                                   {"loss", l.loss},
                                                   {"lm_loss", l.lm},
                                                   {"mtp_loss", l.mtp},
                                                   {"balance_loss", l.balance}};
    for (auto& [k, v] : dbls) attr_double(f, k, v);
    dataset(f, "tokens", H5T_NATIVE_INT32, {static_cast<hsize_t>(B), static_cast<hsize_t>(S + 1)},
            tokens.data());
    write_params(f, model.params(), true);
  });
}

}  // namespace moetron
