// `moetron dump-grads`: one forward and backward of the initialised model on the first training
// micro-batch, written to HDF5 (hyper-parameters, tokens, parameters, gradients, losses) so an
// independent implementation (tests/torch_ref/parity.py) can check loss and every gradient.
#pragma once

#include <string>

#include "trainer/config.h"

namespace moetron {

void dump_grads(const Config& cfg, const std::string& out_path);

// Writes every parameter of `params` (fp32, HF names) to an HDF5 file under /params.
template <class T>
class ParamStore;
void save_params(const ParamStore<float>& params, const std::string& out_path);

}  // namespace moetron
