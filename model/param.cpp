// Deterministic per-parameter initialisation (see param.h).
#include "model/param.h"

namespace moetron {

uint64_t name_seed(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ seed;  // FNV-1a over the name, keyed by the seed
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

template <class T>
void init_normal(Param<T>& p, double std, uint64_t seed) {
  if (!p.value.raw()) return;  // Meta device
  std::mt19937_64 gen(name_seed(seed, p.name));
  std::normal_distribution<double> dist(0.0, std);
  T* w = p.w();
  for (int64_t i = 0; i < p.numel(); ++i) w[i] = static_cast<T>(dist(gen));
}

template <class T>
void init_constant(Param<T>& p, double value) {
  if (!p.value.raw()) return;  // Meta device
  T* w = p.w();
  for (int64_t i = 0; i < p.numel(); ++i) w[i] = static_cast<T>(value);
}

template void init_normal<float>(Param<float>&, double, uint64_t);
template void init_normal<double>(Param<double>&, double, uint64_t);
template void init_constant<float>(Param<float>&, double);
template void init_constant<double>(Param<double>&, double);

}  // namespace moetron
