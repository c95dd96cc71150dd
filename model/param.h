// Parameters: named weights with their gradients, registered in one store per model.
//
// Names are the Hugging Face DeepSeek-V3 checkpoint names (model.layers.3.mlp.experts.7.up_proj.
// weight, ...), so checkpoints and exports need no renaming table. A Param owns a value tensor and
// a gradient tensor of the same shape; fused weights (an MLP's [gate; up] matrix) are allocated
// once, as an unregistered Param the layer computes with, and their named parts are views into it
// that point back at it (Param::fused), so the optimizer can move a fused tensor with its views
// (parallel/zero1.h re-homes every trainable parameter onto its group's arena). The store keeps
// registration order, which is the order of the model's layers: optimizer, checkpoint and gradient
// reduction all walk it.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace moetron {

template <class T>
struct Param {
  std::string name;
  Tensor value, grad;
  bool decay = true;       // AdamW weight decay (off for norms and biases)
  bool trainable = true;   // false: updated by a rule, not by the optimizer (the expert bias)
  bool expert = false;     // a routed expert's weight (held by an EP shard, reduced over EDP)
  bool replica = false;    // a second copy of a parameter held by another pipeline stage (the
                           // embedding on the last stage, for MTP): grads are summed between the
                           // copies and it counts once in the gradient norm
  Param* fused = nullptr;  // the fused tensor this parameter is a view of (null: its own storage)
  // The copies the model computes from instead of the values — an FP8 Linear's E4M3 blocks, a
  // BF16 Linear's bf16 copy (model/linear.h), a BF16 head's —, each remade from values given
  // here. A copy is registered only by the parameter's one reader, so a parameter with copies
  // needs its values only to remake them: ZeRO-1 may keep the values sharded with the optimizer
  // state (Zero1Options::shard_values) and hand each step's gathered values here. A copy once
  // remade so is never re-read from `value` (which then has no memory).
  std::vector<std::function<void(const T* values)>> copies;
  int64_t numel() const { return value.numel(); }
  T* w() { return value.data<T>(); }
  T* g() { return grad.data<T>(); }
  const T* w() const { return value.data<T>(); }
};

// Whether a model on the Guard test device keeps its parameters there too, which proves that
// the optimizer, ZeRO-1's reduction and the checkpoints reach them only through ops and the
// communicator (the GPU's case). Off by default: every op then unlocks and relocks the
// parameters' pages as well, about 4x the guard's system time; the tests that prove it turn it on.
bool guard_parameters();
void set_guard_parameters(bool on);

// Where a model that runs on device `d` keeps its parameters: beside its activations on the GPU,
// nowhere on Meta, and on the CPU for the CPU and (unless guard_parameters()) the Guard device.
inline Device param_device(Device d) {
  return d == Device::Guard && !guard_parameters() ? Device::CPU : d;
}

template <class T>
class ParamStore {
 public:
  // Parameters on `device`: the CPU, the GPU, or Meta for a model that is only planned (no
  // memory).
  explicit ParamStore(Device device = Device::CPU) : device_(device) {}
  Device device() const { return device_; }
  // A new parameter with its own storage.
  Param<T>* add(const std::string& name, std::vector<int64_t> shape, bool decay = true) {
    Tensor v(shape, dtype_of<T>(), device_), g(shape, dtype_of<T>(), device_);
    return push(name, v, g, decay);
  }
  // A parameter that views part of a fused tensor pair (a Param owned by the layer, not
  // registered), `offset` elements in.
  Param<T>* add_view(const std::string& name, Param<T>& fused, int64_t offset,
                     std::vector<int64_t> shape, bool decay = true) {
    Param<T>* p =
        push(name, fused.value.view(offset, shape), fused.grad.view(offset, shape), decay);
    p->fused = &fused;
    return p;
  }
  const std::vector<std::unique_ptr<Param<T>>>& all() const { return params_; }
  Param<T>* find(const std::string& name) const {
    for (auto& p : params_)
      if (p->name == name) return p.get();
    return nullptr;
  }
  int64_t numel() const {
    int64_t n = 0;
    for (auto& p : params_) n += p->numel();
    return n;
  }
  void zero_grad() {
    for (auto& p : params_) p->grad.zero();
  }

 private:
  Param<T>* push(const std::string& name, Tensor v, Tensor g, bool decay) {
    auto p = std::make_unique<Param<T>>();
    p->name = name;
    p->value = std::move(v);
    p->grad = std::move(g);
    p->decay = decay;
    params_.push_back(std::move(p));
    return params_.back().get();
  }
  Device device_ = Device::CPU;
  std::vector<std::unique_ptr<Param<T>>> params_;
};

// Initialisation, deterministic in (seed, name): each parameter draws from its own generator
// seeded by a hash of its name, so the same model has the same weights whatever the layout or
// the order in which ranks build their parts.
uint64_t name_seed(uint64_t seed, const std::string& name);
template <class T>
void init_normal(Param<T>& p, double std, uint64_t seed);
template <class T>
void init_constant(Param<T>& p, double value);
// (Both do nothing for a parameter on the Meta device.)

// Defers the init_normal / init_constant calls this thread makes while it lives, and run() fills
// them all in parallel over the parameters (kernels/host_tasks.h), largest first. Each parameter
// draws from its own generator, so the values are bit for bit those of the calls one by one; only
// the wall time changes (a 3.8B-parameter model drew for about a minute on one host thread).
// Model::init holds one. Without run() (an exception on the way), nothing deferred is filled.
class ParallelInit {
 public:
  ParallelInit();
  ~ParallelInit();
  ParallelInit(const ParallelInit&) = delete;
  ParallelInit& operator=(const ParallelInit&) = delete;
  void run();

  struct Task {
    int64_t numel = 0;
    std::function<void()> fill;
  };
  void defer(Task t);  // (what init_normal / init_constant do while this is the thread's)

 private:
  std::vector<Task> tasks_;
  ParallelInit* outer_;
};

// Between a parameter's device and the host (checkpoints, parameter files, test hooks): elements
// [offset, offset + n) of its values (or gradients) into host memory, and its values from host
// memory (all numel() of them).
template <class T>
void values_to_host(const Param<T>& p, int64_t offset, int64_t n, T* host, bool grad = false);
template <class T>
void values_from_host(Param<T>& p, const T* host);

}  // namespace moetron
