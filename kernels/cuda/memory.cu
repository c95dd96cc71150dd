// Memory ops on the GPU: copies (device, host to device, device to host) and zero fills, all on
// the context's stream (kernels/cuda/runtime.h: copy_to_host waits for it, since its caller reads
// the host memory next; copy_from_host waits too, since the host memory may be reused at once).
#include "kernels/cuda/ops_cuda.h"

namespace moetron::kernels::gpu {

void copy_from_host(const Exec& ex, void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t s = stream_of(ex);
  MOETRON_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s));
  MOETRON_CUDA_CHECK(cudaStreamSynchronize(s));
}

void copy_to_host(const Exec& ex, void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t s = stream_of(ex);
  MOETRON_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s));
  MOETRON_CUDA_CHECK(cudaStreamSynchronize(s));
}

void copy(const Exec& ex, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  MOETRON_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(ex)));
}

void fill_zero(const Exec& ex, void* p, size_t bytes) {
  if (bytes == 0) return;
  MOETRON_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_of(ex)));
}

}  // namespace moetron::kernels::gpu
