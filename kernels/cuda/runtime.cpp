// The CUDA runtime side of the backend (kernels/cuda/runtime.h): device probe, streams, the
// caching stream-ordered allocator and per-stream workspaces.
#include "kernels/cuda/runtime.h"

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/buffer.h"
#include "parallel/watchdog.h"

namespace moetron::kernels::gpu {

namespace {

struct Probe {
  bool ok = false;
  std::string reason;
  Probe() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
      cudaGetLastError();  // clear it
    } else if (n == 0) {
      reason = "no CUDA device";
    } else {
      ok = true;
    }
  }
};
const Probe& probe() {
  static const Probe p;
  return p;
}

std::atomic<bool> g_in_use{false};
// The process's device: select_device's, or the one current when the streams were made.
std::atomic<int> g_device{-1};

struct Streams {
  cudaStream_t compute = nullptr, comm = nullptr;
  Streams() {
    if (!available()) throw std::runtime_error("CUDA: " + unavailable_reason());
    g_in_use = true;
    int current = 0;
    MOETRON_CUDA_CHECK(cudaGetDevice(&current));
    int unset = -1;
    g_device.compare_exchange_strong(unset, current);
    MOETRON_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    MOETRON_CUDA_CHECK(cudaStreamCreateWithFlags(&comm, cudaStreamNonBlocking));
    // the pool keeps what is freed: later allocations of the run reuse it
    int dev = 0;
    MOETRON_CUDA_CHECK(cudaGetDevice(&dev));
    cudaMemPool_t pool;
    MOETRON_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
    uint64_t never = UINT64_MAX;
    MOETRON_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &never));
  }
  // Streams and the pool go with the process: destroying them here would race the CUDA runtime's
  // own teardown at exit.
};
Streams& streams() {
  bind_thread();
  static Streams s;
  return s;
}

class CudaAllocator final : public Allocator {
 public:
  Device device() const override { return Device::CUDA; }
  // the stream-ordered pool's high mark of backing memory (it keeps what is freed)
  int64_t reserved_peak_bytes() const override {
    uint64_t high = 0;
    MOETRON_CUDA_CHECK(cudaMemPoolGetAttribute(pool(), cudaMemPoolAttrReservedMemHigh, &high));
    return static_cast<int64_t>(high);
  }

 protected:
  void* do_allocate(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e = cudaMallocAsync(&p, bytes, compute_stream());
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw std::bad_alloc();
    }
    MOETRON_CUDA_CHECK(e);
    return p;
  }
  void reset_reserved_peak() override {  // (the mark can only be reset to zero: it then
    uint64_t zero = 0;                   // restarts from what the pool holds)
    MOETRON_CUDA_CHECK(cudaMemPoolSetAttribute(pool(), cudaMemPoolAttrReservedMemHigh, &zero));
  }
  static cudaMemPool_t pool() {
    streams();  // (the pool's release threshold is set with the streams)
    int dev = 0;
    MOETRON_CUDA_CHECK(cudaGetDevice(&dev));
    cudaMemPool_t p;
    MOETRON_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&p, dev));
    return p;
  }
  // Called from destructors (a Buffer's), so it must not throw: after a sticky device error (a
  // faulted kernel, an aborted NCCL kernel) every free fails, and a throw from the first Buffer
  // destroyed while that error unwinds would end the process in std::terminate before the error
  // reached main. The block is left to the driver; the first such failure is reported once.
  void do_deallocate(void* p, size_t) override {
    const cudaError_t e = cudaFreeAsync(p, compute_stream());
    if (e == cudaSuccess) return;
    cudaGetLastError();
    static std::atomic<bool> reported{false};
    if (!reported.exchange(true))
      std::fprintf(stderr,
                   "moetron: cudaFreeAsync failed (%s); device blocks are left to the driver\n",
                   cudaGetErrorString(e));
  }
};

// Page-locked host blocks, cached: a freed block goes back on a free list under its rounded size
// and serves the next request of that size. A run's requests repeat (the same pieces at every
// checkpoint, the same staging slots), so the cache settles at what one checkpoint needs; it is
// given back to the driver only when cudaHostAlloc runs out (then every cached block is freed and
// the request retried).
class PinnedHostCache final : public Allocator {
 public:
  Device device() const override { return Device::CPU; }
  size_t cached() {
    std::lock_guard<std::mutex> lk(mu_);
    return cached_;
  }

 protected:
  void* do_allocate(size_t bytes) override {
    const size_t n = rounded(bytes);
    bind_thread();  // cudaHostAlloc makes a context on the current device if it has none
    std::lock_guard<std::mutex> lk(mu_);
    if (auto it = free_.find(n); it != free_.end()) {
      void* p = it->second;
      free_.erase(it);
      cached_ -= n;
      return p;
    }
    void* p = nullptr;
    cudaError_t e = cudaHostAlloc(&p, n, cudaHostAllocDefault);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cache();
      e = cudaHostAlloc(&p, n, cudaHostAllocDefault);
    }
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      throw std::bad_alloc();
    }
    MOETRON_CUDA_CHECK(e);
    return p;
  }
  void do_deallocate(void* p, size_t bytes) override {
    const size_t n = rounded(bytes);
    std::lock_guard<std::mutex> lk(mu_);
    free_.emplace(n, p);
    cached_ += n;
  }

 private:
  // 4 KiB granules below 1 MiB, 1 MiB granules above: at most a quarter wasted past 4 MiB
  static size_t rounded(size_t bytes) {
    const size_t g = bytes < (size_t(1) << 20) ? size_t(4) << 10 : size_t(1) << 20;
    return (bytes + g - 1) / g * g;
  }
  void release_cache() {
    for (auto& [n, p] : free_) MOETRON_CUDA_CHECK(cudaFreeHost(p));
    free_.clear();
    cached_ = 0;
  }
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
};

}  // namespace

bool available() { return probe().ok; }
const std::string& unavailable_reason() { return probe().reason; }

void select_device(int local_rank) {
  if (!available()) throw std::runtime_error("no usable GPU (" + unavailable_reason() + ")");
  int n = 0;
  MOETRON_CUDA_CHECK(cudaGetDeviceCount(&n));
  int want = local_rank % n, unset = -1;
  if (!g_device.compare_exchange_strong(unset, want) && unset != want)
    throw std::logic_error("select_device(" + std::to_string(want) +
                           "): this process already uses device " + std::to_string(unset) +
                           " (its streams were made before the device was selected)");
  MOETRON_CUDA_CHECK(cudaSetDevice(want));
  g_in_use = true;
}

void bind_thread() {
  thread_local int bound = -1;
  const int d = g_device.load(std::memory_order_relaxed);
  if (d < 0 || d == bound) return;
  MOETRON_CUDA_CHECK(cudaSetDevice(d));
  bound = d;
}

bool in_use() { return g_in_use.load(); }

void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return;
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(e) + " (" +
                           cudaGetErrorString(e) + ") in " + what + " at " + file + ":" +
                           std::to_string(line));
}

namespace {
std::atomic<int64_t> g_launches{0};
// by the name each launch site gives (a string literal: its address is the key, names merged in
// launch_tally); a mutex costs tens of nanoseconds against a launch's microseconds
std::mutex g_tally_mutex;
std::map<const char*, int64_t> g_tally;
}  // namespace

void launched(const char* what, const char* file, int line) {
  g_launches.fetch_add(1, std::memory_order_relaxed);
  {
    const std::lock_guard<std::mutex> lock(g_tally_mutex);
    ++g_tally[what];
  }
  check(cudaGetLastError(), what, file, line);
}

int64_t kernel_launches() { return g_launches.load(std::memory_order_relaxed); }

std::map<std::string, int64_t> launch_tally() {
  const std::lock_guard<std::mutex> lock(g_tally_mutex);
  std::map<std::string, int64_t> out;
  for (const auto& [name, n] : g_tally) out[name] += n;
  return out;
}

cudaStream_t compute_stream() { return streams().compute; }
cudaStream_t comm_stream() { return streams().comm; }

Exec exec() { return Exec{Device::CUDA, compute_stream(), nullptr}; }

void stream_wait(cudaStream_t waiter, cudaStream_t producer) {
  if (waiter == producer) return;
  bind_thread();
  cudaEvent_t ev;
  MOETRON_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  MOETRON_CUDA_CHECK(cudaEventRecord(ev, producer));
  MOETRON_CUDA_CHECK(cudaStreamWaitEvent(waiter, ev, 0));
  MOETRON_CUDA_CHECK(cudaEventDestroy(ev));  // released once the wait has been satisfied
}

void synchronize(const Exec& ex) { wait_stream(stream_of(ex), "synchronize"); }

void wait_event(cudaEvent_t ev, const char* what) {
  const watchdog::WaitScope waiting(what, -1, "gpu");
  cudaError_t e;
  while ((e = cudaEventQuery(ev)) == cudaErrorNotReady) std::this_thread::yield();
  cudaGetLastError();  // "not ready" is not an error: keep it out of later launch checks
  check(e, what, __FILE__, __LINE__);
}

namespace {
struct TimingPool {
  std::mutex mu;
  std::vector<cudaEvent_t> free;
};
// never destroyed, as the streams
TimingPool& timing_pool() {
  static auto& p = *new TimingPool;
  return p;
}
}  // namespace

int64_t parse_max_grid_blocks(const char* value) {
  constexpr int64_t kMax = int64_t{65535} * 8;
  if (!value) return kMax;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(value, &end, 10);
  if (!std::isdigit(static_cast<unsigned char>(value[0])) || *end != '\0' || errno != 0 || v < 1 ||
      v > kMax)
    throw std::invalid_argument(std::string("MOETRON_GPU_MAX_BLOCKS=") + value +
                                ": expected a whole number of blocks from 1 to " +
                                std::to_string(kMax));
  return v;
}

int64_t max_grid_blocks() {
  static const int64_t cap = parse_max_grid_blocks(std::getenv("MOETRON_GPU_MAX_BLOCKS"));
  return cap;
}

void* timing_event(cudaStream_t s) {
  bind_thread();
  cudaEvent_t ev = nullptr;
  {
    TimingPool& p = timing_pool();
    const std::lock_guard<std::mutex> lk(p.mu);
    if (!p.free.empty()) ev = p.free.back(), p.free.pop_back();
  }
  if (!ev) MOETRON_CUDA_CHECK(cudaEventCreate(&ev));  // with timing
  const cudaError_t e = cudaEventRecord(ev, s);
  if (e != cudaSuccess) release_timing_event(ev);
  MOETRON_CUDA_CHECK(e);
  return ev;
}

double timing_seconds(void* start, void* end) {
  wait_event(static_cast<cudaEvent_t>(end), "op profile");
  float ms = 0;
  MOETRON_CUDA_CHECK(
      cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
  return 1e-3 * static_cast<double>(ms);
}

void release_timing_event(void* ev) {
  TimingPool& p = timing_pool();
  const std::lock_guard<std::mutex> lk(p.mu);
  p.free.push_back(static_cast<cudaEvent_t>(ev));
}

namespace {
// The calling thread's event for wait_stream (destroyed with the thread; errors ignored, as at
// process exit the runtime may be gone).
struct ThreadEvent {
  cudaEvent_t ev = nullptr;
  ~ThreadEvent() {
    if (ev && cudaEventDestroy(ev) != cudaSuccess) cudaGetLastError();
  }
};
}  // namespace

void wait_stream(cudaStream_t s, const char* what) {
  bind_thread();
  thread_local ThreadEvent t;
  if (!t.ev) MOETRON_CUDA_CHECK(cudaEventCreateWithFlags(&t.ev, cudaEventDisableTiming));
  MOETRON_CUDA_CHECK(cudaEventRecord(t.ev, s));
  wait_event(t.ev, what);
}

Allocator& device_allocator() {
  static CudaAllocator a;
  return a;
}

namespace {
// never destroyed: the cached blocks stay pinned until the process exits
PinnedHostCache& pinned() {
  static auto& a = *new PinnedHostCache;
  return a;
}
}  // namespace
Allocator& pinned_host_allocator() { return pinned(); }
size_t pinned_cached_bytes() { return pinned().cached(); }

void* workspace(const Exec& ex, size_t bytes) {
  if (ex.workspace) {
    if (ex.workspace->device() != Device::CUDA)
      throw std::logic_error("CUDA op: the execution context's workspace is not on the GPU");
    if (ex.workspace->size() < bytes) ex.workspace->resize(bytes);
    return ex.workspace->data();
  }
  static std::mutex mu;
  // never destroyed: freeing at exit would race the CUDA runtime's own teardown
  static auto& own = *new std::map<cudaStream_t, Buffer<uint8_t>>;
  std::lock_guard<std::mutex> lk(mu);
  auto [it, fresh] = own.try_emplace(stream_of(ex), Device::CUDA);
  (void)fresh;
  if (it->second.size() < bytes) it->second.resize(bytes);
  return it->second.data();
}

}  // namespace moetron::kernels::gpu
