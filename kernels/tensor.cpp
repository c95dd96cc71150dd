// Tensor storage and bookkeeping (CPU allocator: 64-byte aligned, zero-filled).
#include "kernels/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace moetron {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
      return 8;
    case DType::F32:
      return 4;
    case DType::BF16:
      return 2;
    case DType::F8E4M3:
    case DType::F8E5M2:
      return 1;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F64:
      return "fp64";
    case DType::F32:
      return "fp32";
    case DType::BF16:
      return "bf16";
    case DType::F8E4M3:
      return "fp8e4m3";
    case DType::F8E5M2:
      return "fp8e5m2";
    case DType::I32:
      return "int32";
    case DType::I64:
      return "int64";
  }
  return "?";
}

Storage::~Storage() {
  if (device == Device::CPU) std::free(ptr);
}

Tensor::Tensor(std::vector<int64_t> shape, DType dtype, Device device)
    : shape_(std::move(shape)), dtype_(dtype), device_(device) {
  if (device != Device::CPU) throw std::runtime_error("Tensor: this build has no CUDA allocator");
  for (int64_t d : shape_)
    if (d < 0) throw std::invalid_argument("Tensor: negative dimension in " + shape_str());
  storage_ = std::make_shared<Storage>();
  size_t n = bytes();
  size_t alloc = ((n + 63) / 64) * 64;
  if (alloc == 0) alloc = 64;
  storage_->ptr = std::aligned_alloc(64, alloc);
  if (!storage_->ptr) throw std::bad_alloc();
  storage_->bytes = n;
  storage_->device = device;
  std::memset(storage_->ptr, 0, alloc);
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

void Tensor::zero() {
  if (storage_) std::memset(raw(), 0, bytes());
}

Tensor Tensor::view(int64_t offset, std::vector<int64_t> shape) const {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype_;
  t.device_ = device_;
  t.storage_ = storage_;
  t.offset_bytes_ = offset_bytes_ + offset * dtype_size(dtype_);
  if (offset < 0 || t.offset_bytes_ + t.bytes() > storage_->bytes)
    throw std::out_of_range("Tensor::view: " + t.shape_str() + " at offset " +
                            std::to_string(offset) + " exceeds " + shape_str());
  return t;
}

std::string Tensor::shape_str() const {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape_.size(); ++i) s << (i ? "," : "") << shape_[i];
  s << "]";
  return s.str();
}

void Tensor::check_type(DType t) const {
  if (t != dtype_)
    throw std::logic_error(std::string("Tensor: accessed ") + dtype_name(dtype_) + " tensor as " +
                           dtype_name(t));
}

}  // namespace moetron
