// The MoE gate of DeepSeek-V3 on the GPU (kernels/cpu/gate.cpp is the reference and says the math):
// sigmoid scores, the bias used for selection only, group-limited top-k with every tie going to
// the lower index, weights renormalised over the chosen experts times route_scale; and the
// backward through the normalisation and the sigmoid.
//
// Shapes: logits, scores, dlogits [N, E]; bias [E] (may be null); idx, weights, dweights [N, K].
// One thread per token, doing exactly the CPU's serial selection (argmax passes over a bitmask of
// allowed experts, first index on ties), so the choice is the CPU's whenever the scores are: the
// sigmoid is scalar.h's (CUDA's expf may differ from glibc's by an ulp; nothing else does). The
// biased score s + bias is recomputed from the scores row this thread wrote instead of being kept
// in a per-thread array, so the only per-thread state is two small bitmasks and the group scores
// (limits: E <= kMaxExperts, n_group <= kMaxGroups; DeepSeek-V3 has 256 and 8). A token costs
// O(K E) compares; the gate is a tiny part of a layer next to its GEMMs.
#include <stdexcept>
#include <string>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int64_t kMaxExperts = 1024;  // bits of the per-thread masks
constexpr int64_t kMaxGroups = 64;     // group scores kept per thread
constexpr int kGateThreads = 128;

// The parameter checks of every backend (check_gate_params), plus this kernel's size limits.
void check_params(const GateParams& p) {
  check_gate_params(p);
  if (p.n_experts > kMaxExperts || p.n_group > kMaxGroups)
    throw std::invalid_argument("gate: the CUDA gate supports at most " +
                                std::to_string(kMaxExperts) + " experts and " +
                                std::to_string(kMaxGroups) + " groups");
}

__device__ __forceinline__ bool bit(const uint32_t* m, int64_t i) {
  return (m[i >> 5] >> (i & 31)) & 1u;
}
__device__ __forceinline__ void set_bit(uint32_t* m, int64_t i) { m[i >> 5] |= 1u << (i & 31); }
__device__ __forceinline__ void clear_bit(uint32_t* m, int64_t i) {
  m[i >> 5] &= ~(1u << (i & 31));
}

// s + bias for expert e: the CPU's sb[e], the bias rounded through fp32 as there.
template <class T>
__device__ __forceinline__ T biased(const T* s, const T* bias, int64_t e) {
  return s[e] + (bias ? static_cast<T>(static_cast<float>(bias[e])) : T(0));
}

// Index of the largest biased score among the allowed experts of [lo, hi) (the first one on ties),
// or -1: the CPU's argmax_allowed, comparison for comparison.
template <class T>
__device__ int64_t argmax_biased(const T* s, const T* bias, const uint32_t* allowed, int64_t lo,
                                 int64_t hi) {
  int64_t best = -1;
  T vbest = T(0);
  for (int64_t i = lo; i < hi; ++i) {
    if (!bit(allowed, i)) continue;
    const T v = biased(s, bias, i);
    if (best < 0 || v > vbest) best = i, vbest = v;
  }
  return best;
}

// One thread per token n < N: scores row, selection, weights.
template <class T>
__global__ void gate_forward_kernel(const T* logits, const T* bias, int64_t N, GateParams p,
                                    T* scores, int32_t* idx, T* weights) {
  const int64_t E = p.n_experts, K = p.topk, G = p.n_group, gsize = E / G;
  const int64_t gk = G > 1 ? K / p.topk_group : 0;  // biased scores summed per group
  const T c = static_cast<T>(p.route_scale);
  uint32_t allowed[kMaxExperts / 32];
  const int64_t words = (E + 31) / 32;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * blockDim.x) {
    const T* lg = logits + n * E;
    T* s = scores + n * E;
    for (int64_t e = 0; e < E; ++e) s[e] = sigmoid(lg[e]);
    for (int64_t w = 0; w < words; ++w) allowed[w] = 0;
    if (G > 1) {
      T gscore[kMaxGroups];
      for (int64_t g = 0; g < G; ++g) {  // group score: sum of its top-gk biased scores
        const int64_t lo = g * gsize, hi = lo + gsize;
        for (int64_t e = lo; e < hi; ++e) set_bit(allowed, e);  // the CPU's tmp mask
        T sum = 0;
        for (int64_t j = 0; j < gk; ++j) {
          const int64_t b = argmax_biased(s, bias, allowed, lo, hi);
          sum += biased(s, bias, b);
          clear_bit(allowed, b);
        }
        for (int64_t e = lo; e < hi; ++e) clear_bit(allowed, e);
        gscore[g] = sum;
      }
      uint64_t gtaken = 0;                          // bit g: group g already kept (G <= 64)
      for (int64_t j = 0; j < p.topk_group; ++j) {  // keep the topk_group best groups
        int64_t best = -1;
        for (int64_t g = 0; g < G; ++g)
          if (!((gtaken >> g) & 1u) && (best < 0 || gscore[g] > gscore[best])) best = g;
        gtaken |= uint64_t(1) << best;
        for (int64_t e = best * gsize; e < (best + 1) * gsize; ++e) set_bit(allowed, e);
      }
    } else {
      for (int64_t e = 0; e < E; ++e) set_bit(allowed, e);
    }
    int32_t* id = idx + n * K;
    T sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      int64_t b = argmax_biased(s, bias, allowed, 0, E);
      if (b < 0) b = 0;  // unreachable with valid params, as on the CPU
      id[k] = static_cast<int32_t>(b);
      clear_bit(allowed, b);
      sum += s[b];
    }
    const T inv = sum > T(0) ? c / sum : T(0);
    for (int64_t k = 0; k < K; ++k) weights[n * K + k] = s[id[k]] * inv;
  }
}

// One thread per token: dlogits row (write), nonzero only at the chosen experts.
template <class T>
__global__ void gate_backward_kernel(const T* dweights, const T* scores, const int32_t* idx,
                                     int64_t N, int64_t E, int64_t K, T c, T* dlogits) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * blockDim.x) {
    const T* s = scores + n * E;
    const int32_t* id = idx + n * K;
    const T* dw = dweights + n * K;
    T* dl = dlogits + n * E;
    for (int64_t e = 0; e < E; ++e) dl[e] = T(0);
    gate_backward_row(s, id, dw, K, c, dl);  // kernels/scalar.h: the CPU's row
  }
}

}  // namespace

template <class T>
void gate_forward(const Exec& ex, const T* logits, const T* bias, int64_t N, const GateParams& p,
                  T* scores, int32_t* idx, T* weights) {
  check_params(p);
  if (N <= 0) return;
  gate_forward_kernel<T><<<blocks_for(N, kGateThreads), kGateThreads, 0, stream_of(ex)>>>(
      logits, bias, N, p, scores, idx, weights);
  MOETRON_CUDA_LAUNCHED("gate_forward");
}

template <class T>
void gate_backward(const Exec& ex, const T* dweights, const T* scores, const int32_t* idx,
                   const T* weights, int64_t N, const GateParams& p, T* dlogits) {
  check_params(p);
  (void)weights;  // recomputed from scores, as on the CPU
  if (N <= 0) return;
  gate_backward_kernel<T><<<blocks_for(N, kGateThreads), kGateThreads, 0, stream_of(ex)>>>(
      dweights, scores, idx, N, p.n_experts, p.topk, static_cast<T>(p.route_scale), dlogits);
  MOETRON_CUDA_LAUNCHED("gate_backward");
}

MOETRON_OPS_GATE(float)
MOETRON_OPS_GATE(double)

}  // namespace moetron::kernels::gpu
