// Layout ops on the GPU: strided 2-D copies (column split and concat, row broadcast), their
// reduction over row groups, and the token shift that makes a micro-batch's inputs, targets and
// positions from its [B, S+1] tokens. Pure data movement and in-order sums: one output element
// per thread in a grid-stride loop, so results equal the CPU twin's (kernels/cpu/layout.cpp) bit
// for bit (sum_row_groups adds the groups in g order starting from zero, as the CPU does).
#include <stdexcept>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"

namespace moetron::kernels::gpu {

namespace {

// dst[r, c] (+)= src[r / repeat, c];  rows x cols, rows strided by src_ld / dst_ld elements
template <class T>
__global__ void copy_2d_kernel(const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows,
                               int64_t cols, int64_t repeat, bool accumulate) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    const T s = src[(r / repeat) * src_ld + c];
    T* d = dst + r * dst_ld + c;
    if (accumulate) {
      *d += s;
    } else {
      *d = s;
    }
  }
}

// dst[r, c] = sum_{g < group} src[r*group + g, c], in g order from zero
template <class T>
__global__ void sum_row_groups_kernel(const T* src, int64_t src_ld, T* dst, int64_t dst_ld,
                                      int64_t rows, int64_t cols, int64_t group) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    T acc = T(0);
    for (int64_t g = 0; g < group; ++g) acc += src[(r * group + g) * src_ld + c];
    dst[r * dst_ld + c] = acc;
  }
}

// tokens [B, S+1] -> ids, targets, pos [B, S] (pos may be null)
__global__ void shift_tokens_kernel(const int32_t* tokens, int64_t B, int64_t S, int64_t shift,
                                    int32_t* ids, int32_t* targets, int32_t* pos) {
  const int64_t n_all = B * S;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < n_all;
       n += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = n / S, s = n % S;
    const int32_t* row = tokens + b * (S + 1);
    ids[n] = s + shift <= S ? row[s + shift] : 0;
    targets[n] = s + shift + 1 <= S ? row[s + shift + 1] : -1;
    if (pos) pos[n] = static_cast<int32_t>(s);
  }
}

}  // namespace

template <class T>
void copy_2d(const Exec& ex, const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows,
             int64_t cols, int64_t repeat, bool accumulate) {
  if (rows <= 0 || cols <= 0) return;
  if (repeat < 1) throw std::invalid_argument("copy_2d: repeat must be >= 1");
  copy_2d_kernel<T><<<blocks_for(rows * cols), kThreads, 0, stream_of(ex)>>>(
      src, src_ld, dst, dst_ld, rows, cols, repeat, accumulate);
  MOETRON_CUDA_LAUNCHED("copy_2d");
}

template <class T>
void sum_row_groups(const Exec& ex, const T* src, int64_t src_ld, T* dst, int64_t dst_ld,
                    int64_t rows, int64_t cols, int64_t group) {
  if (rows <= 0 || cols <= 0) return;
  sum_row_groups_kernel<T><<<blocks_for(rows * cols), kThreads, 0, stream_of(ex)>>>(
      src, src_ld, dst, dst_ld, rows, cols, group);
  MOETRON_CUDA_LAUNCHED("sum_row_groups");
}

void shift_tokens(const Exec& ex, const int32_t* tokens, int64_t B, int64_t S, int64_t shift,
                  int32_t* ids, int32_t* targets, int32_t* pos) {
  if (B <= 0 || S <= 0) return;
  shift_tokens_kernel<<<blocks_for(B * S), kThreads, 0, stream_of(ex)>>>(tokens, B, S, shift, ids,
                                                                         targets, pos);
  MOETRON_CUDA_LAUNCHED("shift_tokens");
}

MOETRON_OPS_LAYOUT(float)
MOETRON_OPS_LAYOUT(double)

}  // namespace moetron::kernels::gpu
