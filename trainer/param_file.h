// Parameters (and gradients) as plain HDF5 datasets, one per tensor under its HF name: the
// format of `run.save_params` (every rank's parameters after the last step, compared across
// layouts by the tests) and of the gradient dumps of `moetron dump-grads` (trainer/dump.h).
// Checkpoints use their own sharded format (trainer/checkpoint.h).
#pragma once

#include <hdf5.h>

#include <functional>
#include <string>

namespace moetron {

template <class T>
class ParamStore;
template <class T>
struct Param;
class Tensor;

// Where a parameter's whole values are (default: its value tensor; a trainer whose master values
// are sharded gathers them first: Optimizer::whole_values).
using WholeValues = std::function<const Tensor&(const Param<float>&)>;
// p's whole values (where `values` says: default its value tensor) into host memory [numel].
void whole_values_to_host(const Param<float>& p, const WholeValues& values, float* host);

// /params/<name> float32 for every parameter, and /grads/<name> for the trainable ones when
// `grads`, into the open HDF5 file `file`.
void write_params(hid_t file, const ParamStore<float>& params, bool grads,
                  const WholeValues& values = {});

// An HDF5 file with every parameter of `params` under /params (written atomically).
void save_params(const ParamStore<float>& params, const std::string& out_path,
                 const WholeValues& values = {});

}  // namespace moetron
