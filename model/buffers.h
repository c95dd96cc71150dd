// Activation buffers of a per-micro-batch state: std::vectors that are resized, not reallocated,
// when the same state object is reused for the next step (no allocation in steady state).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace moetron {

template <class T>
using Buf = std::vector<T>;

// Sizes b to n elements and returns its data (contents unspecified unless zero is set).
template <class T>
T* sized(Buf<T>& b, int64_t n, bool zero = false) {
  b.resize(static_cast<size_t>(n));
  if (zero && n > 0) std::memset(b.data(), 0, sizeof(T) * static_cast<size_t>(n));
  return b.data();
}

}  // namespace moetron
