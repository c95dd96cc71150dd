// The CUDA backend's runtime and memory ops: the allocator counts and reuses, copies round-trip,
// fills zero, the elementwise ops and the bf16 storage conversions agree with the CPU bit for bit
// (one rounding rule: kernels/scalar.h); pinned host memory is page-locked and cached; uploads
// stage through pinned slots, so the caller's memory is free at once and the host does not wait
// for the compute queued before them; the host's waits for the device are visible to the hang
// watchdog; the grid cap's parsing. Skipped without a GPU (but the parsing).
#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/pinned.h"
#include "parallel/watchdog.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

TEST(CudaRuntime, ProbeAndStreams) {
  MOETRON_REQUIRE_GPU();
  EXPECT_NE(compute_stream(), nullptr);
  EXPECT_NE(comm_stream(), compute_stream());
  EXPECT_EQ(exec().device, Device::CUDA);
}

// The cap on a grid-stride loop's blocks (runtime.h): the default without the variable, the
// number it names, and a clear error for anything else. Needs no GPU.
TEST(CudaRuntime, GridCapComesFromTheEnvironmentAndBadValuesAreNamed) {
  EXPECT_EQ(parse_max_grid_blocks(nullptr), 65535 * 8);
  EXPECT_EQ(parse_max_grid_blocks("2"), 2);
  EXPECT_EQ(parse_max_grid_blocks("524280"), 524280);
  for (const char* bad : {"", "0", "-3", "2x", " 2", "524281", "99999999999999999999"}) {
    try {
      parse_max_grid_blocks(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()), std::string("MOETRON_GPU_MAX_BLOCKS=") + bad +
                                           ": expected a whole number of blocks from 1 to 524280");
    }
  }
  EXPECT_EQ(max_grid_blocks(), parse_max_grid_blocks(std::getenv("MOETRON_GPU_MAX_BLOCKS")));
}

TEST(CudaRuntime, AllocatorCountsAndCaches) {
  MOETRON_REQUIRE_GPU();
  Allocator& a = allocator(Device::CUDA);
  const AllocStats before = a.stats();
  {
    Buffer<float> b(Device::CUDA);
    ASSERT_NE(b.resize(1 << 20), nullptr);
    EXPECT_EQ(a.stats().live_bytes - before.live_bytes, int64_t(4) << 20);
  }
  EXPECT_EQ(a.stats().live_bytes, before.live_bytes);
  EXPECT_EQ(a.stats().frees - before.frees, 1);
}

TEST(CudaMemory, CopiesRoundTripAndFillZero) {
  MOETRON_REQUIRE_GPU();
  const auto h = rand_vec<float>(1000, 1);
  Buffer<float> a = dev(h), b(Device::CUDA);
  kernels::copy(gpu_exec(), b.resize(1000), a.data(), 1000 * sizeof(float));
  expect_equal(host(b, 1000), h, "copy");
  kernels::fill_zero(gpu_exec(), b.data() + 10, 100 * sizeof(float));
  std::vector<float> want = h;
  std::fill(want.begin() + 10, want.begin() + 110, 0.f);
  expect_equal(host(b, 1000), want, "fill_zero");
}

TEST(CudaPinned, PageLockedAndCachedBySize) {
  MOETRON_REQUIRE_GPU();
  (void)compute_stream();  // this process now uses the GPU
  ASSERT_EQ(&pinned_allocator(), &pinned_host_allocator());
  const float* first = nullptr;
  {
    PinnedVector<float> v(777777);
    cudaPointerAttributes at{};
    MOETRON_CUDA_CHECK(cudaPointerGetAttributes(&at, v.data()));
    EXPECT_EQ(at.type,
              cudaMemoryTypeHost);  // page-locked, not pageable (cudaMemoryTypeUnregistered)
    first = v.data();
  }
  EXPECT_GE(pinned_cached_bytes(), 777777 * sizeof(float));
  PinnedVector<float> again(777777);  // the same size: the cached block again, no cudaHostAlloc
  EXPECT_EQ(again.data(), first);
  // a checkpoint-sized round trip through it
  const auto h = rand_vec<float>(again.size(), 11);
  Buffer<float> d = dev(h);
  kernels::copy_to_host(gpu_exec(), again.data(), d.data(), h.size() * sizeof(float));
  EXPECT_TRUE(std::equal(h.begin(), h.end(), again.begin()));
}

TEST(CudaMemory, UploadDoesNotWaitForQueuedComputeAndFreesTheSourceAtOnce) {
  MOETRON_REQUIRE_GPU();
  const BusyStream queued;
  std::vector<float> src = rand_vec<float>(300001, 13);
  const std::vector<float> want = src;
  Buffer<float> d(Device::CUDA);
  kernels::copy_from_host(gpu_exec(), d.resize(src.size()), src.data(), src.size() * sizeof(float));
  EXPECT_TRUE(BusyStream::busy());          // returned while the GEMMs still run: it did not wait
  std::fill(src.begin(), src.end(), -1.f);  // the caller's memory is free again
  expect_equal(host(d, want.size()), want, "upload behind queued compute");
}

// copy_to_host_start's wait() waits for the stream up to the copy only: with GEMMs enqueued after
// it, the read completes while the stream is still busy (what lets the EP dispatcher's plan piece
// and the other micro-batch's compute run before the host needs the counts).
TEST(CudaMemory, ReadStartWaitsForTheCopyNotForLaterWork) {
  MOETRON_REQUIRE_GPU();
  const std::vector<int64_t> h = {3, 1, 4, 1, 5, 9, 2, 6};
  Buffer<int64_t> d = dev(h);
  PinnedVector<int64_t> back(h.size());
  HostRead read =
      kernels::copy_to_host_start(gpu_exec(), back.data(), d.data(), h.size() * sizeof(int64_t));
  EXPECT_TRUE(read.pending());
  const BusyStream later;
  read.wait();
  EXPECT_TRUE(BusyStream::busy());  // the GEMMs enqueued after the copy still run
  EXPECT_FALSE(read.pending());
  EXPECT_TRUE(std::equal(h.begin(), h.end(), back.begin()));
  // into pageable memory the copy would wait for the stream inside the call: refused
  std::vector<int64_t> pageable(h.size());
  EXPECT_THROW(kernels::copy_to_host_start(gpu_exec(), pageable.data(), d.data(),
                                           h.size() * sizeof(int64_t)),
               std::invalid_argument);
  // a pointer inside a pinned block is pinned too
  HostRead part = kernels::copy_to_host_start(gpu_exec(), back.data() + 2, d.data(), 8);
  part.wait();
  EXPECT_EQ(back[2], h[0]);
}

// A read behind queued compute blocks its thread in a wait the hang watchdog sees ("device read"
// on group "gpu"), from the start: a stream stuck behind a collective whose peer stopped ends the
// job at run.comm_timeout_s instead of hanging unseen. The destination is pageable memory, into
// which cudaMemcpyAsync returns only once the copy has run, so the stream's work before it must be
// waited for first, watched; a wait only after the copy is seen late or not at all. (The emulator's
// copies into pageable memory run their stream's work, as CUDA's do; its GEMMs are 192^3 there,
// 0.2 s.)
TEST(CudaMemory, TheHostsWaitForTheDeviceIsAWatchdogWait) {
  MOETRON_REQUIRE_GPU();
  const std::vector<float> h = {1.f, 2.f, 3.f};
  Buffer<float> d = dev(h);
  std::vector<float> back(h.size());
  const BusyStream queued(emulated() ? 192 : BusyStream::kN);
  std::atomic<bool> done{false};
  std::atomic<int64_t> begin_ns{0}, end_ns{0};
  std::thread reader([&] {
    begin_ns = watchdog::steady_now_ns();
    kernels::copy_to_host(gpu_exec(), back.data(), d.data(), h.size() * sizeof(float));
    end_ns = watchdog::steady_now_ns();
    done = true;
  });
  int64_t seen_from = -1;  // when the first wait seen began
  while (!done && seen_from < 0)
    for (const watchdog::WaitInfo& w : watchdog::snapshot())
      if (seen_from < 0 && w.op && w.group && std::string(w.op) == "device read" &&
          std::string(w.group) == "gpu")
        seen_from = w.start_ns;
  reader.join();
  ASSERT_GE(seen_from, 0) << "the read finished before the watchdog saw it wait";
  EXPECT_LT(seen_from - begin_ns, (end_ns - begin_ns) / 2)
      << "the watched wait began " << (seen_from - begin_ns) * 1e-6 << " ms into a "
      << (end_ns - begin_ns) * 1e-6 << " ms read: the stream's work ran before it, unseen";
  EXPECT_EQ(back, h);
}

TEST(CudaMemory, UploadsLargerThanTheStagingRingRoundTrip) {
  MOETRON_REQUIRE_GPU();
  // 10.3M floats = 41 MB: more chunks than the ring has slots, so slots are reused while their
  // earlier uploads may still be queued; then many small uploads back to back into one buffer
  std::vector<float> big = rand_vec<float>(10300007, 14);
  const std::vector<float> want = big;
  Buffer<float> d(Device::CUDA);
  kernels::copy_from_host(gpu_exec(), d.resize(big.size()), big.data(), big.size() * sizeof(float));
  std::fill(big.begin(), big.end(), 0.f);
  expect_equal(host(d, want.size()), want, "large upload");
  std::vector<int32_t> small(1000);
  Buffer<int32_t> s(Device::CUDA);
  s.resize(1000 * 64);
  for (int k = 0; k < 64; ++k) {
    for (int i = 0; i < 1000; ++i) small[i] = k * 1000 + i;
    kernels::copy_from_host(gpu_exec(), s.data() + k * 1000, small.data(), sizeof(int32_t) * 1000);
  }
  const std::vector<int32_t> got = host(s, 64000);
  for (int i = 0; i < 64000; ++i) ASSERT_EQ(got[i], i);
}

template <class T>
void check_add_axpy() {
  const size_t n = 100003;  // more than one grid-stride pass
  const auto y = rand_vec<T>(n, 2), x = rand_vec<T>(n, 3);
  Buffer<T> dy = dev(y), dx = dev(x);
  kernels::add_inplace<T>(gpu_exec(), dy.data(), dx.data(), n);
  kernels::axpy<T>(gpu_exec(), dy.data(), T(0.375), dx.data(), n);
  std::vector<T> want = y;
  cpu::add_inplace<T>(want.data(), x.data(), n);
  cpu::axpy<T>(want.data(), T(0.375), x.data(), n);
  expect_equal(host(dy, n), want, "add_inplace + axpy");
}
TEST(CudaElementwise, AddAndAxpyMatchTheCpuExactly) {
  MOETRON_REQUIRE_GPU();
  check_add_axpy<float>();
  check_add_axpy<double>();
}

TEST(CudaElementwise, E5m6NarrowAndWidenMatchTheCpuExactly) {
  MOETRON_REQUIRE_GPU();
  for (const int64_t n : {int64_t{4099}, int64_t{4100}}) {    // an odd length pads its last pair
    std::vector<float> x = rand_vec<float>(n, 6, -7e4, 7e4);  // saturating beyond 65024
    for (int64_t i = 0; i < n; i += 3) x[i] *= 1e-7f;         // subnormal E5M6 values
    x[0] = std::numeric_limits<float>::quiet_NaN(), x[1] = -std::numeric_limits<float>::infinity();
    const int64_t nb = 3 * ((n + 1) / 2);
    Buffer<float> dx = dev(x), back(Device::CUDA);
    Buffer<uint8_t> p(Device::CUDA);
    kernels::narrow_to_e5m6(gpu_exec(), dx.data(), n, p.resize(nb));
    kernels::widen_from_e5m6(gpu_exec(), p.data(), n, back.resize(n));
    std::vector<uint8_t> want_p(nb);
    std::vector<float> want(n);
    cpu::narrow_to_e5m6(x.data(), n, want_p.data());
    cpu::widen_from_e5m6(want_p.data(), n, want.data());
    expect_equal(host(p, nb), want_p, "narrow_to_e5m6");
    expect_equal(host(back, n), want, "widen_from_e5m6");
  }
}

TEST(CudaElementwise, Bf16NarrowAndWidenMatchTheCpuExactly) {
  MOETRON_REQUIRE_GPU();
  std::vector<float> x = rand_vec<float>(4099, 4, -1e3, 1e3);
  x[0] = std::numeric_limits<float>::quiet_NaN(), x[1] = std::numeric_limits<float>::infinity();
  x[2] = 1.00390625f;  // a tie: rounds to even
  Buffer<float> dx = dev(x), back(Device::CUDA);
  Buffer<uint16_t> h(Device::CUDA);
  kernels::narrow_to_bf16(gpu_exec(), dx.data(), 4099, h.resize(4099));
  kernels::widen_from_bf16(gpu_exec(), h.data(), 4099, back.resize(4099));
  std::vector<uint16_t> want_h(4099);
  std::vector<float> want(4099);
  cpu::narrow_to_bf16(x.data(), 4099, want_h.data());
  cpu::widen_from_bf16(want_h.data(), 4099, want.data());
  expect_equal(host(h, 4099), want_h, "narrow_to_bf16");
  expect_equal(host(back, 4099), want, "widen_from_bf16");
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
