// Parameters (and gradients) as plain HDF5 datasets, one per tensor under its HF name: the
// format of `run.save_params` (every rank's parameters after the last step, compared across
// layouts by the tests) and of the gradient dumps of `moetron dump-grads` (trainer/dump.h).
// Checkpoints use their own sharded format (trainer/checkpoint.h).
#pragma once

#include <hdf5.h>

#include <string>

namespace moetron {

template <class T>
class ParamStore;

// /params/<name> float32 for every parameter, and /grads/<name> for the trainable ones when
// `grads`, into the open HDF5 file `file`.
void write_params(hid_t file, const ParamStore<float>& params, bool grads);

// An HDF5 file with every parameter of `params` under /params (written atomically).
void save_params(const ParamStore<float>& params, const std::string& out_path);

}  // namespace moetron
