// Tensor: a shaped, typed view of memory on one device.
//
// A Tensor owns (shares) its storage through a shared_ptr, so copies are cheap handles. Storage
// comes from the device's allocator (aligned host memory on CPU; cudaMalloc on GPU once the CUDA
// backend lands). Kernels take raw pointers plus sizes; the Tensor is the container that model
// code and the optimizer pass around. Element types: fp64 (reference/gradient checks), fp32,
// bf16, fp8 e4m3/e5m2 (stored as bytes), int32, int64.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/device.h"

namespace moetron {

enum class DType : uint8_t { F64, F32, BF16, F8E4M3, F8E5M2, I32, I64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);

template <class T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<double>() {
  return DType::F64;
}
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<int32_t>() {
  return DType::I32;
}
template <>
constexpr DType dtype_of<int64_t>() {
  return DType::I64;
}
template <>
constexpr DType dtype_of<uint16_t>() {
  return DType::BF16;
}

struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
  ~Storage();
};

class Tensor {
 public:
  Tensor() = default;
  // Allocates zero-initialised storage.
  Tensor(std::vector<int64_t> shape, DType dtype, Device device = Device::CPU);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const;
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t bytes() const { return numel() * dtype_size(dtype_); }
  bool defined() const { return storage_ != nullptr; }

  // null on the Meta device (and for an undefined tensor), views included
  void* raw() {
    return storage_ && storage_->ptr ? static_cast<char*>(storage_->ptr) + offset_bytes_ : nullptr;
  }
  const void* raw() const {
    return storage_ && storage_->ptr ? static_cast<const char*>(storage_->ptr) + offset_bytes_
                                     : nullptr;
  }
  template <class T>
  T* data() {
    check_type(dtype_of<T>());
    return static_cast<T*>(raw());
  }
  template <class T>
  const T* data() const {
    check_type(dtype_of<T>());
    return static_cast<const T*>(raw());
  }

  void zero();
  std::string shape_str() const;
  // A tensor of `shape` over this one's storage starting `offset` elements in (no copy). Used to
  // give fused weights (e.g. an MLP's [gate; up] matrix) their separate checkpoint names.
  Tensor view(int64_t offset, std::vector<int64_t> shape) const;

 private:
  void check_type(DType t) const;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  std::shared_ptr<Storage> storage_;
  size_t offset_bytes_ = 0;
};

}  // namespace moetron
