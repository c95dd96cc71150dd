// The CUDA emulator's device side: what a kernels/cuda/*.cu file needs from nvcc, for the host
// compiler. tests/cuda_emu/cu_to_cpp.py rewrites each .cu file's launches and dynamic shared
// memory, and includes this header first.
//
// Why: no development or CI machine has a GPU, so until now the kernels were compiled but never
// run. Under the emulator every kernel runs on the CPU with CUDA's execution model — a grid of
// blocks, each block's threads as cooperatively scheduled fibers (tests/cuda_emu/runtime.cpp) —
// so that the GPU tests (tests/test_cuda_*.cpp) compare each kernel's indexing, tiling, shared
// memory use and synchronisation against its CPU twin, under ASan and UBSan, in every CI run. What
// it cannot check: the GPU's own arithmetic (its expf, fused multiply-adds, tensor cores' summation
// order), timing, races between threads that no barrier-to-barrier order exposes (a thread runs
// from one barrier to the next at once; the ThreadSanitizer build reports those), and cuBLASLt's
// and NCCL's own kernels (tests/cuda_emu/cublaslt.cpp: the heuristic finds no algorithm, so every
// GEMM takes the backend's own fallback kernel; tests/cuda_emu/nccl.cpp moves NCCL's bytes over
// MPI).
//
// The model: blocks run one after another (in order, or shuffled: tests/cuda_emu/streams.cpp's
// schedules, which also say when a stream's work runs); a block's threads run one at a time and
// switch only at a barrier (__syncthreads, __syncwarp, a shuffle, a wmma operation), which is one
// of the schedules CUDA's independent thread scheduling allows. Shared memory, static and dynamic,
// lives in one arena (runtime.cpp): cu_to_cpp.py turns each `__shared__` variable into a
// reference to its place there, and every byte of it is 0xff (NaN) when a block starts, as no
// value is carried from block to block on a GPU. In the ThreadSanitizer build (MOETRON_TSAN) each
// thread is a TSan fiber ordered with the others only by barriers that order memory, so races
// inside a barrier interval are reported too (runtime.cpp, "the race detector"). A barrier that
// cannot complete — threads of one block waiting at different barriers — stops the process with
// the kernel's name and the threads' states, as a hang on the GPU would stop it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

// nvcc's keywords: __global__, __device__, __host__ are empty for the host compiler already
// (crt/host_defines.h); cu_to_cpp.py rewrites every __shared__ declaration (one left is an error
// here), launch bounds are hints.
#undef __shared__
#define __launch_bounds__(...)

namespace cuda_emu {

// The running thread's coordinates, set by the scheduler before it resumes a thread.
extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;

// Barriers (runtime.cpp). A thread calls one and is resumed when every thread it names has
// called the same one: the block's live threads (syncthreads) or the live lanes of its warp in
// `mask` (syncwarp, and the exchange behind the shuffles: each lane posts `bytes` of its value,
// and gets lane `src`'s). Only __syncthreads and __syncwarp order memory between threads (for the
// race detector); a shuffle, or the barriers inside a wmma operation, order only what they pass.
void syncthreads(const char* what);
void syncwarp(unsigned mask, const char* what, bool orders_memory = true);
void warp_exchange(unsigned mask, const void* mine, void* theirs, size_t bytes, int src);

// The running thread's warp in its block, and a number that changes at each release of the
// warp's barriers and differs between blocks: lanes that see the same one are between the same
// two barriers (the wmma operations share one lane's work through it).
int warp_index();
int lane_index();
uint64_t warp_epoch();

// The launch's dynamic shared memory (runtime.cpp: sized by the launch, alignment checked).
void* dynamic_smem_bytes(size_t align);
template <class T>
T* dynamic_smem(size_t align) {
  return static_cast<T*>(dynamic_smem_bytes(align));
}
// A static __shared__ variable of type T: `key`, a static of its declaration, names it.
void* static_smem_bytes(const void* key, size_t bytes, size_t align);
template <class T>
T& static_smem(const void* key, size_t align = alignof(T)) {
  return *static_cast<T*>(static_smem_bytes(key, sizeof(T), std::max(align, alignof(T))));
}

// The race detector's (TSan's) blind spot around the emulator's own shortcuts.
#if defined(MOETRON_TSAN)
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
inline void ignore_accesses(bool on) {
  on ? __tsan_ignore_thread_begin() : __tsan_ignore_thread_end();
}
#else
inline void ignore_accesses(bool) {}
#endif

// Enqueues on `stream` a run of body() as every thread of every block of the grid (runtime.cpp;
// streams.cpp says when it runs). Sets the runtime's last error instead where the launch is
// invalid, as CUDA does: more than 1024 threads or too large a grid, or more dynamic shared memory
// than 48 KiB without cudaFuncSetAttribute's opt-in for `kernel` (or than the device's opt-in).
class Body {
 public:
  virtual ~Body() = default;
  virtual void operator()() = 0;
};
void launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, std::shared_ptr<Body> body);

// kernel<<<grid, block, smem, stream>>>(args) becomes Launch(grid, block, smem, stream,
// "kernel")(kernel, args): the arguments are converted to the kernel's parameter types and copied
// once, as a launch copies them to the device (they live with the enqueued launch).
class Launch {
 public:
  Launch(dim3 grid, dim3 block, const char* name) : Launch(grid, block, 0, nullptr, name) {}
  Launch(dim3 grid, dim3 block, size_t smem, const char* name)
      : Launch(grid, block, smem, nullptr, name) {}
  Launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const char* name)
      : grid_(grid), block_(block), smem_(smem), stream_(stream), name_(name) {}

  template <class... P, class... A>
  void operator()(void (*kernel)(P...), A&&... args) const {
    static_assert(sizeof...(P) == sizeof...(A), "a kernel launched with the wrong argument count");
    struct Call final : Body {
      void (*k)(P...);
      std::tuple<std::decay_t<P>...> a;
      Call(void (*kk)(P...), A&&... aa) : k(kk), a(static_cast<std::decay_t<P>>(aa)...) {}
      void operator()() override { std::apply(k, a); }
    };
    launch(name_, reinterpret_cast<const void*>(kernel), grid_, block_, smem_, stream_,
           std::make_shared<Call>(kernel, std::forward<A>(args)...));
  }

 private:
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
  const char* name_;
};

}  // namespace cuda_emu

#define threadIdx (::cuda_emu::thread_idx)
#define blockIdx (::cuda_emu::block_idx)
#define blockDim (::cuda_emu::block_dim)
#define gridDim (::cuda_emu::grid_dim)
inline constexpr int warpSize = 32;

// cuda_runtime.h's typed overload (declared for nvcc only)
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

inline void __syncthreads() { ::cuda_emu::syncthreads("__syncthreads"); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::cuda_emu::syncwarp(mask, "__syncwarp"); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  int src = lane ^ lane_mask;
  if (src / width != lane / width) src = lane;  // outside the lane's segment: its own value
  T out;
  ::cuda_emu::warp_exchange(mask, &v, &out, sizeof(T), src);
  return out;
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int src = lane / width * width + src_lane % width;
  T out;
  ::cuda_emu::warp_exchange(mask, &v, &out, sizeof(T), src);
  return out;
}

// Rounded arithmetic intrinsics: IEEE operations in float (the build does not contract a * b + c)
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __saturatef(float a) { return a < 0.f ? 0.f : (a > 1.f ? 1.f : a); }
inline int __float_as_int(float a) { return std::bit_cast<int>(a); }
inline unsigned __float_as_uint(float a) { return std::bit_cast<unsigned>(a); }
inline float __int_as_float(int i) { return std::bit_cast<float>(i); }
inline float __uint_as_float(unsigned i) { return std::bit_cast<float>(i); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
template <class T>
T __ldg(const T* p) {
  return *p;
}

// Atomics: relaxed, as CUDA's are (they order nothing else: the race detector sees them as
// atomic, and a plain access to the same word beside them as a race).
namespace cuda_emu {
template <class T, class F>
T atomic_update(T* p, F f) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T want = f(old);
  while (!__atomic_compare_exchange(p, &old, &want, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
    want = f(old);
  return old;
}
}  // namespace cuda_emu
template <class T>
T atomicAdd(T* p, T v) {
  if constexpr (std::is_integral_v<T>)
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
  else
    return ::cuda_emu::atomic_update(p, [v](T old) { return old + v; });
}
template <class T>
T atomicMax(T* p, T v) {
  return ::cuda_emu::atomic_update(p, [v](T old) { return old < v ? v : old; });
}
template <class T>
T atomicMin(T* p, T v) {
  return ::cuda_emu::atomic_update(p, [v](T old) { return v < old ? v : old; });
}

// CUDA's global math overloads for device code.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::max;
using std::min;

// nvcuda::wmma (the warp-level tensor-core tiles), for the 16x16x16 shapes the backend uses:
// each lane holds the whole tile (the GPU spreads it over the warp; kernels may touch a fragment
// only through these functions or element-wise, which this layout preserves). Every operation is
// warp-collective, as on the GPU: a warp barrier first, then the lane's own copy of the work.
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];  // row-major tile
};

namespace detail {
inline void warp_sync(const char* what) { ::cuda_emu::syncwarp(0xffffffffu, what, false); }
template <class T>
float to_float(T v) {
  return static_cast<float>(v);
}
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
// Loads: every lane reads the whole tile (it holds all of it), but for the race detector only its
// share, every 32nd element, as store_matrix_sync writes (the GPU's lanes each load a part).
template <class T>
void load_tile(T* x, int rows, int cols, const T* p, unsigned ldm, bool row) {
  ::cuda_emu::ignore_accesses(true);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) x[r * cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
  ::cuda_emu::ignore_accesses(false);
  for (int e = ::cuda_emu::lane_index(); e < rows * cols; e += 32) {
    const int r = e / cols, c = e % cols;
    x[e] = row ? p[r * ldm + c] : p[c * ldm + r];  // the same value, read as the lane
  }
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class L, class V>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, V v) {
  detail::warp_sync("wmma::fill_fragment");
  for (auto& e : f.x) e = static_cast<T>(v);
}
// matrix_a / matrix_b, with the layout in the type
template <class Use, int M, int N, int K, class T, class L>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  static_assert(std::is_same_v<L, row_major> || std::is_same_v<L, col_major>);
  detail::warp_sync("wmma::load_matrix_sync");
  using F = fragment<Use, M, N, K, T, L>;
  detail::load_tile(f.x, F::rows, F::cols, p, ldm, std::is_same_v<L, row_major>);
  detail::warp_sync("wmma::load_matrix_sync");  // no lane overwrites the tile before all read it
}
// accumulator, with the layout as an argument
template <int M, int N, int K, class T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ldm, layout_t l) {
  detail::warp_sync("wmma::load_matrix_sync");
  detail::load_tile(f.x, M, N, p, ldm, l == mem_row_major);
  detail::warp_sync("wmma::load_matrix_sync");
}
// each lane writes its share of the tile (every 32nd element), as the GPU's lanes each hold part
template <int M, int N, int K, class T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t l) {
  detail::warp_sync("wmma::store_matrix_sync");
  for (int e = ::cuda_emu::lane_index(); e < M * N; e += 32) {
    const int r = e / N, c = e % N;
    (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[e];
  }
  detail::warp_sync("wmma::store_matrix_sync");  // the whole tile written on return
}
// d = a b + c with fp32 accumulation (products of the inputs exact in fp32: bf16 or half inputs)
template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, TC>& c) {
  detail::warp_sync("wmma::mma_sync");
  // the warp's first lane here computes the tile, the others take its result: every lane holds
  // the same fragments, and this was most of the emulated bf16 attention's time
  struct Slot {
    uint64_t epoch = 0;
    TC out[M * N];
  };
  static Slot slots[32];
  Slot& slot = slots[::cuda_emu::warp_index()];
  ::cuda_emu::ignore_accesses(true);  // the slot is the emulator's, not the kernel's memory
  if (slot.epoch != ::cuda_emu::warp_epoch()) {
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        float s = c.x[i * N + j];
        for (int k = 0; k < K; ++k)
          s += detail::to_float(a.x[i * K + k]) * detail::to_float(b.x[k * N + j]);
        slot.out[i * N + j] = s;
      }
    slot.epoch = ::cuda_emu::warp_epoch();
  }
  std::memcpy(d.x, slot.out, sizeof(slot.out));
  ::cuda_emu::ignore_accesses(false);
}
}  // namespace nvcuda::wmma
