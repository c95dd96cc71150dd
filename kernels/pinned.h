// Pinned (page-locked) host memory: the host side of the copies between the host and a GPU that
// should run at the link's full speed and without the driver's own staging — the checkpoint's
// snapshot of the parameters and optimizer moments, and the staging ring through which
// copy_from_host uploads (tokens, resumed values) without waiting for the GPU.
//
//   pinned_allocator()   the CUDA backend's caching cudaHostAlloc allocator once this process
//                        uses a GPU (kernels/cuda/runtime.h: gpu::in_use()); otherwise — a CPU
//                        run, a build without CUDA — the CPU allocator. Its memory is host memory
//                        either way (device() == CPU): the host reads and writes it directly.
//   PinnedVector<T>      a std::vector over it. The allocator it was made with frees what it
//                        allocated (it is stateful), and resize() default-initialises, so a
//                        snapshot's vectors are written once, by the copy, not first zeroed.
//
// A CPU run therefore takes exactly the allocations it took before, and a GPU run's checkpoint
// copies land in memory the DMA engines can write directly.
#pragma once

#include <cstddef>
#include <new>
#include <utility>
#include <vector>

#include "kernels/device.h"

namespace moetron {

Allocator& pinned_allocator();

template <class T>
class PinnedAllocator {
 public:
  using value_type = T;
  PinnedAllocator() : a_(&pinned_allocator()) {}
  template <class U>
  PinnedAllocator(const PinnedAllocator<U>& o) noexcept : a_(o.source()) {}

  T* allocate(size_t n) { return static_cast<T*>(a_->allocate(n * sizeof(T))); }
  void deallocate(T* p, size_t n) noexcept { a_->deallocate(p, n * sizeof(T)); }
  // value-initialisation only where the caller asks for a value; resize(n) leaves the new
  // elements default-initialised (indeterminate for arithmetic types), as a copy will fill them
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0)
      ::new (static_cast<void*>(p)) U;
    else
      ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }

  Allocator* source() const { return a_; }
  friend bool operator==(const PinnedAllocator& x, const PinnedAllocator& y) {
    return x.a_ == y.a_;
  }
  // moves and swaps of containers carry their allocator (so it frees what it allocated)
  using propagate_on_container_move_assignment = std::true_type;
  using propagate_on_container_swap = std::true_type;

 private:
  Allocator* a_;
};

template <class T>
using PinnedVector = std::vector<T, PinnedAllocator<T>>;

}  // namespace moetron
