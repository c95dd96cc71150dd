// Allocators of the CPU, Meta and Guard devices, the allocator registry, the pinned host allocator
// in use (kernels/pinned.h) and the default device.
#include "kernels/device.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

#include "kernels/pinned.h"

#if MOETRON_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moetron {

const char* device_name(Device d) { return to_word(d); }

Device parse_device(const char* name) {
  if (const std::optional<Device> d = from_word<Device>(name)) return *d;
  throw std::invalid_argument(std::string("device '") + name + "' is not one of " +
                              word_list<Device>());
}

void* Allocator::allocate(size_t bytes) {
  void* p = do_allocate(bytes);
  const int64_t live = live_.fetch_add(static_cast<int64_t>(bytes)) + static_cast<int64_t>(bytes);
  int64_t peak = peak_.load();
  while (live > peak && !peak_.compare_exchange_weak(peak, live)) {
  }
  ++allocs_;
  return p;
}

void Allocator::deallocate(void* p, size_t bytes) {
  do_deallocate(p, bytes);
  live_ -= static_cast<int64_t>(bytes);
  ++frees_;
}

AllocStats Allocator::stats() const { return {live_.load(), peak_.load(), allocs_, frees_}; }
void Allocator::reset_peak() {
  peak_ = live_.load();
  reset_reserved_peak();
}

namespace {

class HostAllocator final : public Allocator {
 public:
  Device device() const override { return Device::CPU; }

 protected:
  void* do_allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void do_deallocate(void* p, size_t) override { std::free(p); }
};

class MetaAllocator final : public Allocator {
 public:
  Device device() const override { return Device::Meta; }

 protected:
  void* do_allocate(size_t) override { return nullptr; }
  void do_deallocate(void*, size_t) override {}
};

// Guard memory: one reserved range of address space, handed out page-aligned by a bump pointer
// (freed ranges are never reused, so a use after free outside an op faults). Locked = PROT_NONE
// over everything handed out; GuardAccess unlocks while it is held. Locking and unlocking rewrite
// the protection of every page handed out, twice per op, so the range is opened in whole
// transparent huge pages (2 MiB, 2 MiB-aligned, MADV_HUGEPAGE): one page-table entry each instead
// of 512. The pages of a freed range stay until a whole huge page is free (giving back part of one
// would split it).
class GuardAllocator final : public Allocator {
 public:
  static constexpr size_t kReserve = size_t(1) << 36;  // 64 GiB of address space, no memory
  static constexpr size_t kHuge = size_t(2) << 20;     // a transparent huge page (x86-64, arm64)
  Device device() const override { return Device::Guard; }

  void enter() {
    std::lock_guard<std::mutex> lk(mu_);
    if (users_++ == 0 && open_ > 0) protect(0, open_, PROT_READ | PROT_WRITE);
  }
  void leave() {
    std::lock_guard<std::mutex> lk(mu_);
    if (--users_ == 0 && open_ > 0) protect(0, open_, PROT_NONE);
  }
  bool holds(const void* p) const {
    if (!started_.load()) return false;
    const char* b = base_;  // set once, before started_
    return p >= b && p < b + kReserve;
  }

 protected:
  void* do_allocate(size_t bytes) override {
    std::lock_guard<std::mutex> lk(mu_);
    if (!base_) reserve();
    const size_t len = round_up(bytes, static_cast<size_t>(sysconf(_SC_PAGESIZE)));
    if (used_ + len > kReserve) throw std::bad_alloc();
    const size_t at = used_;
    used_ += len;
    if (used_ > open_) {  // open the next huge pages: locked, or unlocked while an op runs
      const size_t open = round_up(used_, kHuge);
      if (users_ > 0) protect(open_, open - open_, PROT_READ | PROT_WRITE);
      open_ = open;
    }
    return base_ + at;
  }
  void do_deallocate(void* p, size_t bytes) override {
    std::lock_guard<std::mutex> lk(mu_);
    const size_t at = static_cast<size_t>(static_cast<char*>(p) - base_);
    const size_t from = round_up(at, kHuge), to = (at + bytes) / kHuge * kHuge;
    if (to > from) madvise(base_ + from, to - from, MADV_DONTNEED);
  }

 private:
  static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
  void reserve() {
    void* p = mmap(nullptr, kReserve + kHuge, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(p), kHuge));
    madvise(base_, kReserve, MADV_HUGEPAGE);  // a hint: without THP the pages are 4 KiB
    started_ = true;
  }
  void protect(size_t at, size_t len, int prot) {
    if (mprotect(base_ + at, len, prot) != 0) throw std::runtime_error("guard device: mprotect");
  }
  std::mutex mu_;
  char* base_ = nullptr;
  size_t used_ = 0;  // bytes handed out
  size_t open_ = 0;  // bytes whose protection follows GuardAccess: used_ in whole huge pages
  int users_ = 0;
  std::atomic<bool> started_{false};
};

HostAllocator& host_alloc() {
  static HostAllocator a;
  return a;
}
MetaAllocator& meta_alloc() {
  static MetaAllocator a;
  return a;
}
GuardAllocator& guard_alloc() {
  static auto& a = *new GuardAllocator;  // never destroyed: a GuardAccess may run at exit
  return a;
}
std::atomic<Allocator*> g_cuda{nullptr};
std::atomic<Device> g_default{Device::CPU};

}  // namespace

Allocator& allocator(Device d) {
  switch (d) {
    case Device::CPU:
      return host_alloc();
    case Device::Meta:
      return meta_alloc();
    case Device::Guard:
      return guard_alloc();
    case Device::CUDA:
      if (Allocator* a = g_cuda.load()) return *a;
#if MOETRON_HAVE_CUDA
      if (!kernels::gpu::available())
        throw std::runtime_error("device cuda: " + kernels::gpu::unavailable_reason());
      return kernels::gpu::device_allocator();
#else
      throw std::runtime_error("device cuda: this build has no CUDA backend");
#endif
  }
  throw std::logic_error("allocator: unknown device");
}

void register_allocator(Device d, Allocator* a) {
  if (d != Device::CUDA) throw std::logic_error("register_allocator: only the CUDA allocator");
  g_cuda = a;
}

Allocator& pinned_allocator() {
#if MOETRON_HAVE_CUDA
  if (kernels::gpu::in_use()) return kernels::gpu::pinned_host_allocator();
#endif
  return host_alloc();
}

Device default_device() { return g_default.load(); }
void set_default_device(Device d) { g_default = d; }

bool is_guard_memory(const void* p) { return guard_alloc().holds(p); }

void select_cuda_device(int local_rank) {
#if MOETRON_HAVE_CUDA
  kernels::gpu::select_device(local_rank);
#else
  (void)local_rank;
  throw std::runtime_error(
      "this build has no CUDA backend (configure where nvcc is found, or "
      "with -DMOETRON_CUDA=ON)");
#endif
}

// Counted even before any guard memory exists, so that memory first allocated under a GuardAccess
// is open under it too.
GuardAccess::GuardAccess() { guard_alloc().enter(); }
GuardAccess::~GuardAccess() { guard_alloc().leave(); }

}  // namespace moetron
