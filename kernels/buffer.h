// Buffer<T>: the one buffer type of moetron — pointer, size, device, allocator — used for every
// activation, gradient, scratch and communication buffer of model/ and parallel/.
//
// Sizing is grow-only (sized(b, n)): a state reused for the next micro-batch keeps its memory, so
// steady-state training allocates nothing; contents are unspecified after a resize unless zeroed.
// A buffer is made on the default device (device.h) unless its owner names one; on the Meta
// device it has a size and no memory. Only ops (kernels/ops.h) and the communicator may touch the
// memory: model code passes data() pointers, never reads or writes elements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kernels/device.h"

namespace moetron {

template <class T>
class Buffer {
  static_assert(std::is_trivially_copyable_v<T>, "Buffer holds plain data");

 public:
  Buffer() : dev_(default_device()) {}
  explicit Buffer(Device d) : dev_(d) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { swap(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      release();
      swap(o);
    }
    return *this;
  }
  ~Buffer() { release(); }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t capacity() const { return cap_; }
  size_t bytes() const { return size_ * sizeof(T); }
  Device device() const { return dev_; }

  // n elements; reallocates (contents lost) only when n exceeds the capacity.
  T* resize(size_t n) {
    if (n > cap_) {
      release();
      ptr_ = static_cast<T*>(allocator(dev_).allocate(n * sizeof(T)));
      cap_ = n;
    }
    size_ = n;
    return ptr_;
  }
  // Frees the memory (size and capacity 0); the device stays.
  void release() {
    if (cap_ > 0) allocator(dev_).deallocate(ptr_, cap_ * sizeof(T));
    ptr_ = nullptr, size_ = cap_ = 0;
  }
  // Exchanges the memory of two buffers (lending a buffer without a copy).
  void swap(Buffer& o) noexcept {
    std::swap(ptr_, o.ptr_), std::swap(size_, o.size_), std::swap(cap_, o.cap_);
    std::swap(dev_, o.dev_);
  }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0, cap_ = 0;
  Device dev_ = Device::CPU;
};

}  // namespace moetron
