// Tensor storage and bookkeeping: memory from the device's allocator (device.h), zero-filled by
// the device's fill op (CPU or GPU); on the Meta device a tensor has a shape and no memory.
#include "kernels/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "kernels/ops.h"

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
  if (bytes > 0) allocator(device).deallocate(ptr, bytes);
}

Tensor::Tensor(std::vector<int64_t> shape, DType dtype, Device device)
    : shape_(std::move(shape)), dtype_(dtype), device_(device) {
  for (int64_t d : shape_)
    if (d < 0) throw std::invalid_argument("Tensor: negative dimension in " + shape_str());
  storage_ = std::make_shared<Storage>();
  const size_t n = std::max<size_t>(bytes(), 64);  // never a zero-byte allocation
  storage_->device = device;
  storage_->ptr = allocator(device).allocate(n);
  storage_->bytes = n;
  if (storage_->ptr) kernels::fill_zero(Exec::on(device), storage_->ptr, n);
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

void Tensor::zero() {
  if (storage_ && storage_->ptr) kernels::fill_zero(Exec::on(device_), raw(), bytes());
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
