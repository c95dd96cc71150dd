// Small helpers shared by the FP8 kernels (fp8.cpp, fp8_gemm.cpp, fp8_linear.cpp): block counts,
// grow-only scratch vectors, and the size check every FP8 GEMM entry point makes.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetron::kernels::fp8_detail {

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// v resized up (never down) to at least n elements; its data.
template <class T>
T* grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

inline void check(int64_t M, int64_t N, int64_t K, const char* what) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument(std::string(what) + ": negative size");
}

}  // namespace moetron::kernels::fp8_detail
