// Shared helpers of the kernel tests (tests/test_kernels_*.cpp): seeded random inputs, the
// tolerance check used against double references, and central finite differences.
//
// Every kernel test follows one pattern: draw inputs in double, cast them to T, run the kernel in
// T, and compare with a naive double-precision reference computed from the *cast* inputs (so the
// input rounding of float is not counted as kernel error). Backward passes in double are also
// checked against central differences of a scalar loss sum(out * random weights).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace moetron::kernels::cpu::testing {

// Relative tolerance of a kernel in T against a double reference.
template <class T>
constexpr double kTol = 1e-5;
template <>
inline constexpr double kTol<double> = 1e-12;

inline std::vector<double> rand_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = u(rng);
  return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Checks |got_i - ref_i| <= rtol * (|ref_i| + max_j |ref_j|) for every i: relative for large
// entries, relative to the array's scale for entries near zero (cancellation). Reports the worst.
template <class T>
void expect_close(const T* got, const double* ref, size_t n, double rtol, const std::string& what) {
  double scale = 0;
  for (size_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(ref[i]));
  size_t bad = 0, worst = 0;
  double worst_ratio = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - ref[i]);
    const double ratio = d / (rtol * (std::fabs(ref[i]) + scale) + 1e-300);
    if (!(ratio <= 1.0)) ++bad;  // also counts NaN
    if (!(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << n << " entries out of tolerance; worst ["
                     << worst << "] got " << (n ? static_cast<double>(got[worst]) : 0.0) << " ref "
                     << (n ? ref[worst] : 0.0) << " (rtol " << rtol << ", scale " << scale << ")";
}

template <class T>
void expect_close(const std::vector<T>& got, const std::vector<double>& ref, double rtol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  expect_close(got.data(), ref.data(), got.size(), rtol, what);
}

// Central-difference check of an analytic gradient: for up to `probes` coordinates of x (spread
// evenly), (f(x + e) - f(x - e)) / 2e must match grad within rtol of the gradient's scale.
inline void expect_grad_fd(const std::function<double()>& f, std::vector<double>& x,
                           const std::vector<double>& grad, const std::string& what,
                           size_t probes = 40, double eps = 1e-6, double rtol = 1e-6) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  double scale = 0;
  for (double g : grad) scale = std::max(scale, std::fabs(g));
  ASSERT_GT(scale, 0.0) << what << ": gradient is identically zero";
  const size_t n = x.size();
  const size_t step = std::max<size_t>(1, n / probes);
  size_t bad = 0;
  std::string first;
  for (size_t i = (n % step) / 2; i < n; i += step) {
    const double x0 = x[i];
    x[i] = x0 + eps;
    const double fp = f();
    x[i] = x0 - eps;
    const double fm = f();
    x[i] = x0;
    const double fd = (fp - fm) / (2 * eps);
    if (!(std::fabs(fd - grad[i]) <= rtol * (std::fabs(grad[i]) + scale))) {
      if (bad++ == 0) {
        std::ostringstream os;
        os << "[" << i << "] fd " << fd << " analytic " << grad[i];
        first = os.str();
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": finite differences disagree, first " << first;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// idx [N, K]: K distinct experts of E per token, like the gate produces
inline std::vector<int32_t> random_routes(int64_t N, int64_t K, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> idx(N * K);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<int32_t> all(E);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    for (int64_t k = 0; k < K; ++k) idx[n * K + k] = all[k];
  }
  return idx;
}

}  // namespace moetron::kernels::cpu::testing
