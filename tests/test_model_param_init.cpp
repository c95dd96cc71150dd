// The parallel initialisation (model/param.h ParallelInit): the parameters drawn in parallel are
// bit for bit those drawn one by one, on the CPU and on the guard device (whose fill goes through
// host chunks and uploads, as a GPU's does), views of a fused tensor included; nothing deferred is
// filled without run(); and the task runner under it runs each task once and passes on a failure.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/host_tasks.h"
#include "model/param.h"

namespace moetron::testing {
namespace {

// A store of odd sizes: one larger than the fill's 2^20-value host chunk, one of one value, and
// two views into a fused pair (as an MLP's gate and up weights), plus a constant.
struct Store {
  ParamStore<float> ps;
  Param<float> fused;
  explicit Store(Device dev) : ps(dev) {
    ps.add("big.weight", {1100, 1001});
    ps.add("one.weight", {1});
    ps.add("mid.weight", {37, 129});
    const std::vector<int64_t> shape = {2 * 300, 77};
    fused.value = Tensor(shape, dtype_of<float>(), dev);
    fused.grad = Tensor(shape, dtype_of<float>(), dev);
    ps.add_view("gate.weight", fused, 0, {300, 77});
    ps.add_view("up.weight", fused, 300 * 77, {300, 77});
    ps.add("bias", {513});
  }
  void init(uint64_t seed) {
    for (const auto& p : ps.all())
      if (p->name == "bias")
        init_constant(*p, 0.25);
      else
        init_normal(*p, 0.02, seed);
  }
  std::vector<float> values() const {
    std::vector<float> out;
    for (const auto& p : ps.all()) {
      std::vector<float> v(static_cast<size_t>(p->numel()));
      values_to_host(*p, 0, p->numel(), v.data(), false);
      out.insert(out.end(), v.begin(), v.end());
    }
    return out;
  }
};

TEST(ParallelInit, DrawsTheSameBitsAsOneByOne) {
  for (Device dev : {Device::CPU, Device::Guard}) {
    Store serial(dev), parallel(dev);
    serial.init(42);
    {
      ParallelInit all;
      parallel.init(42);
      all.run();
    }
    const std::vector<float> a = serial.values(), b = parallel.values();
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << device_name(dev);
    // real draws: not all equal, and the seed matters
    EXPECT_NE(a[0], a[1]);
    Store other(dev);
    other.init(43);
    EXPECT_NE(other.values()[0], a[0]);
  }
}

TEST(ParallelInit, FillsNothingWithoutRunAndStopsDeferringWhenItEnds) {
  Store s(Device::CPU);
  {
    ParallelInit all;
    s.init(7);  // deferred, never run
  }
  for (float v : s.values()) ASSERT_EQ(v, 0.f);
  s.init(7);  // no ParallelInit alive: filled at once
  EXPECT_NE(s.values()[0], 0.f);
}

TEST(HostTasks, RunEachTaskOnceAndRethrowTheFirstFailure) {
  std::vector<std::atomic<int>> ran(100);
  std::vector<std::function<void()>> tasks;
  for (size_t i = 0; i < ran.size(); ++i) tasks.push_back([&ran, i] { ++ran[i]; });
  kernels::run_host_tasks(tasks);
  for (const auto& r : ran) EXPECT_EQ(r.load(), 1);
  tasks.push_back([] { throw std::runtime_error("task failed"); });
  EXPECT_THROW(kernels::run_host_tasks(tasks), std::runtime_error);
  for (const auto& r : ran) EXPECT_EQ(r.load(), 2);  // the others still ran
}

}  // namespace
}  // namespace moetron::testing
