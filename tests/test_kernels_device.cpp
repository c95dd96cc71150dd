// Devices and buffers: the Guard device faults on host access outside ops and lets ops in; the
// Meta device counts bytes and allocates nothing; Buffer sizing is grow-only; the allocators count
// what they hold; an op on a device without a backend is an error; pinned host vectors are CPU
// memory from the CPU allocator in a process that uses no GPU, freed by the allocator that made
// them; the host-wait counter counts the blocking reads of device memory.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/buffer.h"
#include "kernels/host_waits.h"
#include "kernels/ops.h"
#include "kernels/pinned.h"

namespace moetron {
namespace {

TEST(GuardDevice, HostAccessOutsideOpsFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Buffer<float> b(Device::Guard);
  b.resize(1000);
  EXPECT_DEATH({ b.data()[3] = 1.f; }, "");  // a write outside any op
  EXPECT_DEATH(
      {
        volatile float x = b.data()[7];
        (void)x;
      },
      "");  // a read
}

// The guard range opens in whole 2 MiB huge pages (kernels/device.cpp). Every page handed out
// locks when the last op leaves: those of a buffer allocated while an op runs (it opens new huge
// pages, and may be the process's first guard memory: run alone, as the death tests' children
// run it, it is), both ends of a buffer larger than a huge page, and a freed buffer's.
TEST(GuardDevice, PagesOpenedInsideAnOpAndFreedPagesLockToo) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const size_t n = size_t(3) << 20;  // 12 MiB of floats
  Allocator& guard = allocator(Device::Guard);
  float* big = nullptr;
  {
    GuardAccess access;  // an op running
    big = static_cast<float*>(guard.allocate(n * sizeof(float)));
    big[0] = 1.f, big[n - 1] = 2.f;  // reachable inside
  }
  EXPECT_DEATH({ big[0] = 3.f; }, "");
  EXPECT_DEATH({ big[n - 1] = 3.f; }, "");
  float* small = static_cast<float*>(guard.allocate(64));
  guard.deallocate(small, 64);
  EXPECT_DEATH({ small[1] = 3.f; }, "");
  {
    GuardAccess access;
    EXPECT_EQ(big[n - 1], 2.f);  // and open again inside
  }
  guard.deallocate(big, n * sizeof(float));
  EXPECT_DEATH({ big[n / 2] = 3.f; }, "");  // a whole freed huge page: given back, still locked
}

TEST(GuardDevice, OpsAndGuardAccessReachIt) {
  const Exec ex = Exec::on(Device::Guard);
  Buffer<float> a(Device::Guard), b(Device::Guard);
  std::vector<float> host(257), back(257);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f;
  kernels::copy_from_host(ex, a.resize(257), host.data(), 257 * sizeof(float));
  kernels::copy(ex, b.resize(257), a.data(), 257 * sizeof(float));
  kernels::add_inplace<float>(ex, b.data(), a.data(), 257);  // b = 2a
  kernels::copy_to_host(ex, back.data(), b.data(), 257 * sizeof(float));
  for (size_t i = 0; i < host.size(); ++i) ASSERT_EQ(back[i], 2 * host[i]);
  {
    GuardAccess access;  // what the communicator holds while MPI uses the memory
    EXPECT_EQ(a.data()[2], 1.f);
  }
}

TEST(MetaDevice, CountsBytesAndAllocatesNothing) {
  Allocator& meta = allocator(Device::Meta);
  const AllocStats before = meta.stats();
  {
    Buffer<double> b(Device::Meta);
    EXPECT_EQ(b.resize(size_t(1) << 40), nullptr);  // 8 TiB of nothing
    EXPECT_EQ(b.size(), size_t(1) << 40);
    EXPECT_EQ(meta.stats().live_bytes - before.live_bytes, int64_t(8) << 40);
  }
  EXPECT_EQ(meta.stats().live_bytes, before.live_bytes);
  Buffer<float> c(Device::Meta);
  c.resize(10);
  EXPECT_THROW(kernels::fill_zero(Exec::on(Device::Meta), c.data(), 40), std::logic_error);
}

TEST(Buffer, GrowOnlySizingAndAllocationCounts) {
  Allocator& cpu = allocator(Device::CPU);
  Buffer<float> b(Device::CPU);
  const int64_t a0 = cpu.stats().allocations;
  float* p = b.resize(100);
  EXPECT_EQ(cpu.stats().allocations, a0 + 1);
  EXPECT_EQ(b.resize(50), p);  // smaller: same memory, no allocation
  EXPECT_EQ(b.resize(100), p);
  EXPECT_EQ(cpu.stats().allocations, a0 + 1);
  b.resize(101);  // larger: one new allocation, the old one freed
  EXPECT_EQ(cpu.stats().allocations, a0 + 2);
  Buffer<float> moved = std::move(b);
  EXPECT_EQ(b.size(), 0u);
  EXPECT_EQ(moved.size(), 101u);
  EXPECT_EQ(moved.device(), Device::CPU);
}

TEST(PinnedVector, IsTheCpuAllocatorsMemoryWithoutAGpuAndFreedWhereItCameFrom) {
  // this process never selects a GPU: no pinning (nothing of CUDA's is made on a CPU run)
  Allocator& cpu = allocator(Device::CPU);
  EXPECT_EQ(&pinned_allocator(), &cpu);
  EXPECT_EQ(pinned_allocator().device(), Device::CPU);
  const AllocStats s0 = cpu.stats();
  {
    PinnedVector<float> v;
    EXPECT_EQ(v.get_allocator().source(), &cpu);
    v.resize(1000);
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
    EXPECT_EQ(cpu.stats().live_bytes - s0.live_bytes, int64_t(4000));
    PinnedVector<float> w = std::move(v);  // the allocator moves with the memory
    EXPECT_EQ(w.get_allocator().source(), &cpu);
    EXPECT_EQ(w[999], 999.f);
    PinnedVector<float> x(3, 2.5f);  // an explicit value is still constructed
    EXPECT_EQ(x[2], 2.5f);
  }
  EXPECT_EQ(cpu.stats().live_bytes, s0.live_bytes);
  EXPECT_EQ(cpu.stats().frees - s0.frees, cpu.stats().allocations - s0.allocations);
}

// copy_to_host_start on the host backends: the copy is done at once, the read complete.
TEST(HostRead, HostBackendsCopyAtOnce) {
  for (Device dev : {Device::CPU, Device::Guard}) {
    const Exec ex = Exec::on(dev);
    Buffer<int64_t> d(dev);
    const std::vector<int64_t> h = {7, -1, 42};
    kernels::copy_from_host(ex, d.resize(3), h.data(), sizeof(int64_t) * 3);
    std::vector<int64_t> back(3, 0);
    HostRead r = kernels::copy_to_host_start(ex, back.data(), d.data(), sizeof(int64_t) * 3);
    EXPECT_FALSE(r.pending());
    EXPECT_EQ(back, h);  // before any wait
    r.wait();
  }
  EXPECT_THROW(kernels::copy_to_host_start(Exec::on(Device::Meta), nullptr, nullptr, 8),
               std::logic_error);
}

// The host-wait counter counts the blocking reads of device memory (a GPU's stream drains; the
// guard device stands for one), not a CPU device's reads nor reads that wait for their copy only.
TEST(HostWaits, CountBlockingReadsOfDeviceMemoryOnly) {
  for (Device dev : {Device::CPU, Device::Guard}) {
    const Exec ex = Exec::on(dev);
    Buffer<int64_t> d(dev);
    const std::vector<int64_t> h = {3, 5};
    kernels::copy_from_host(ex, d.resize(2), h.data(), sizeof(int64_t) * 2);
    std::vector<int64_t> back(2, 0);
    kernels::host_waits::reset();
    kernels::copy_to_host(ex, back.data(), d.data(), sizeof(int64_t) * 2);
    kernels::copy_to_host(ex, back.data(), d.data(), sizeof(int64_t));
    kernels::copy_to_host_start(ex, back.data(), d.data(), sizeof(int64_t) * 2).wait();
    EXPECT_EQ(back, h);
    EXPECT_EQ(kernels::host_waits::read(), dev == Device::Guard ? 2 : 0) << device_name(dev);
  }
  kernels::host_waits::reset();
  EXPECT_EQ(kernels::host_waits::read(), 0);
}

TEST(Device, DefaultDeviceAndParsing) {
  EXPECT_EQ(parse_device("guard"), Device::Guard);
  EXPECT_THROW(parse_device("tpu"), std::invalid_argument);
  set_default_device(Device::Meta);
  Buffer<int> b;
  EXPECT_EQ(b.device(), Device::Meta);
  set_default_device(Device::CPU);
#if !MOETRON_CUDA_EMULATED                                    // (the CUDA emulator is a device)
  EXPECT_THROW(allocator(Device::CUDA), std::runtime_error);  // no CUDA backend, or no GPU
#endif
}

}  // namespace
}  // namespace moetron
