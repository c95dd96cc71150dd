// `moetron dump-grads`: one forward and backward on the first training micro-batch, written to
// HDF5 (hyper-parameters, tokens, parameters, gradients, losses), either
//  - of the initialised model, with norm weights and expert biases set to seeded random values,
//    so that an independent implementation (tests/torch_ref/parity.py) can check loss and every
//    gradient on all paths; or
//  - of the parameters of a checkpoint (`from`, a step directory), as trained: comparing the
//    dumps of one checkpoint under several precision recipes measures how far each recipe's
//    gradients are from fp32's on a trained model (bench/fp8_grad_error.py).
#pragma once

#include <string>

#include "trainer/config.h"

namespace moetron {

void dump_grads(const Config& cfg, const std::string& out_path, const std::string& from = "");

}  // namespace moetron
