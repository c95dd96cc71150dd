// Deterministic per-parameter initialisation (see param.h).
#include "model/param.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <vector>

#include "kernels/host_tasks.h"
#include "kernels/ops.h"

namespace moetron {

uint64_t name_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ seed;  // FNV-1a over the name, keyed by the seed
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

namespace {
std::atomic<bool> g_guard_parameters{false};
}  // namespace

bool guard_parameters() { return g_guard_parameters.load(); }
void set_guard_parameters(bool on) { g_guard_parameters = on; }

namespace {
// The values are drawn on the host and copied to the parameter's device (a no-op copy on the CPU
// is avoided: the CPU path writes in place).
template <class T, class F>
void fill_values(Param<T>& p, F&& value_at) {
  if (!p.value.raw()) return;  // Meta device
  if (p.value.device() == Device::CPU) {
    T* w = p.w();
    for (int64_t i = 0; i < p.numel(); ++i) w[i] = value_at();
    return;
  }
  // in chunks, so parallel fills hold little host memory (the upload stages each chunk at once)
  constexpr int64_t kChunk = int64_t(1) << 20;
  std::vector<T> host(static_cast<size_t>(std::min(kChunk, p.numel())));
  for (int64_t at = 0; at < p.numel(); at += kChunk) {
    const int64_t n = std::min(kChunk, p.numel() - at);
    for (int64_t i = 0; i < n; ++i) host[static_cast<size_t>(i)] = value_at();
    kernels::copy_from_host(Exec::on(p.value.device()), p.w() + at, host.data(), sizeof(T) * n);
  }
}

thread_local ParallelInit* t_deferring = nullptr;

// Runs `fill` now, or hands it to the thread's ParallelInit.
void fill_or_defer(int64_t numel, std::function<void()> fill) {
  if (t_deferring)
    t_deferring->defer({numel, std::move(fill)});
  else
    fill();
}
}  // namespace

ParallelInit::ParallelInit() : outer_(t_deferring) { t_deferring = this; }
ParallelInit::~ParallelInit() { t_deferring = outer_; }

void ParallelInit::defer(Task t) { tasks_.push_back(std::move(t)); }

void ParallelInit::run() {
  std::vector<Task> tasks = std::move(tasks_);
  tasks_.clear();
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const Task& a, const Task& b) { return a.numel > b.numel; });
  std::vector<std::function<void()>> fills;
  fills.reserve(tasks.size());
  for (Task& t : tasks) fills.push_back(std::move(t.fill));
  kernels::run_host_tasks(fills);
}

template <class T>
void init_normal(Param<T>& p, double std, uint64_t seed) {
  fill_or_defer(p.numel(), [&p, std, seed] {
    std::mt19937_64 gen(name_seed(seed, p.name));
    std::normal_distribution<double> dist(0.0, std);
    fill_values(p, [&] { return static_cast<T>(dist(gen)); });
  });
}

template <class T>
void init_constant(Param<T>& p, double value) {
  fill_or_defer(p.numel(), [&p, value] { fill_values(p, [&] { return static_cast<T>(value); }); });
}

template <class T>
void values_to_host(const Param<T>& p, int64_t offset, int64_t n, T* host, bool grad) {
  const Tensor& t = grad ? p.grad : p.value;
  if (offset < 0 || n < 0 || offset + n > t.numel())
    throw std::out_of_range("values_to_host: " + p.name + ": elements out of range");
  if (n > 0 && !t.raw())
    throw std::logic_error("values_to_host: " + p.name + ": its " +
                           (grad ? "gradients" : "values") + " have no memory here (device " +
                           device_name(t.device()) + ")");
  kernels::copy_to_host(Exec::on(t.device()), host, t.data<T>() + offset, sizeof(T) * n);
}

template <class T>
void values_from_host(Param<T>& p, const T* host) {
  if (p.numel() > 0 && !p.value.raw())
    throw std::logic_error("values_from_host: " + p.name +
                           ": its values have no memory here (device " +
                           device_name(p.value.device()) + ")");
  kernels::copy_from_host(Exec::on(p.value.device()), p.w(), host, sizeof(T) * p.numel());
}

template void values_to_host<float>(const Param<float>&, int64_t, int64_t, float*, bool);
template void values_to_host<double>(const Param<double>&, int64_t, int64_t, double*, bool);
template void values_from_host<float>(Param<float>&, const float*);
template void values_from_host<double>(Param<double>&, const double*);
template void init_normal<float>(Param<float>&, double, uint64_t);
template void init_normal<double>(Param<double>&, double, uint64_t);
template void init_constant<float>(Param<float>&, double);
template void init_constant<double>(Param<double>&, double);

}  // namespace moetron
