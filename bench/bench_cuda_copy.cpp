// bench_cuda_copy: the host <-> GPU copies of the CUDA backend, against the plain CUDA calls they
// replaced. Wall-clock time on the host from the call to the data being on the other side
// (mean of `runs` after `warmup`).
//
//   upload     kernels::copy_from_host (through the pinned staging ring, kernels/cuda/memory.cu)
//              vs cudaMemcpyAsync + cudaStreamSynchronize from the same pageable memory (the
//              previous copy_from_host) vs the same from pinned memory (the link's ceiling).
//   download   kernels::copy_to_host into a std::vector (pageable) vs into a PinnedVector (what
//              a checkpoint snapshot now copies into).
//   behind     the host time of a 64 KiB upload (a micro-batch's tokens) while ~20 ms of GEMMs
//              are queued on the stream: the ring returns at once, the synchronising copy waits
//              for the GEMMs.
// Sizes: 64 KiB, 4 MiB, 256 MiB (--quick: the first two).
// Usage: bench_cuda_copy [--quick]. Without a GPU: "no usable CUDA device: <reason>", exit 0.
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "bench/cuda_timer.h"
#include "kernels/buffer.h"
#include "kernels/cuda/runtime.h"
#include "kernels/ops.h"
#include "kernels/pinned.h"

namespace mk = moetron::kernels;
namespace gpu = moetron::kernels::gpu;
using moetron::bench::check;

namespace {

// Mean wall-clock seconds of f (which returns when its copy is complete).
template <class F>
double mean_s(int warmup, int runs, F&& f) {
  for (int i = 0; i < warmup; ++i) f();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < runs; ++i) f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / runs;
}

void row(const char* what, size_t bytes, const char* how, double s) {
  std::printf("| %s | %zu KiB | %s | %.1f us | %.2f GB/s |\n", what, bytes >> 10, how, s * 1e6,
              double(bytes) / s * 1e-9);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  if (!gpu::available()) {
    std::printf("no usable CUDA device: %s\n", gpu::unavailable_reason().c_str());
    return 0;
  }
  const moetron::Exec ex = gpu::exec();
  cudaStream_t s = gpu::compute_stream();
  std::printf("| copy | size | how | time | rate |\n|---|---:|---|---:|---:|\n");
  std::vector<size_t> sizes = {size_t(64) << 10, size_t(4) << 20};
  if (!quick) sizes.push_back(size_t(256) << 20);
  for (size_t bytes : sizes) {
    const int runs = bytes > (size_t(16) << 20) ? 5 : 50;
    std::vector<char> pageable(bytes, 1);
    moetron::PinnedVector<char> pinned(bytes, 1);
    moetron::Buffer<char> dev(moetron::Device::CUDA);
    dev.resize(bytes);
    row("upload", bytes, "copy_from_host (pinned ring)", mean_s(2, runs, [&] {
          mk::copy_from_host(ex, dev.data(), pageable.data(), bytes);
          gpu::synchronize(ex);
        }));
    row("upload", bytes, "cudaMemcpyAsync pageable + sync", mean_s(2, runs, [&] {
          check(cudaMemcpyAsync(dev.data(), pageable.data(), bytes, cudaMemcpyHostToDevice, s),
                "cudaMemcpyAsync");
          check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        }));
    row("upload", bytes, "cudaMemcpyAsync pinned + sync", mean_s(2, runs, [&] {
          check(cudaMemcpyAsync(dev.data(), pinned.data(), bytes, cudaMemcpyHostToDevice, s),
                "cudaMemcpyAsync");
          check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        }));
    row("download", bytes, "copy_to_host into std::vector",
        mean_s(2, runs, [&] { mk::copy_to_host(ex, pageable.data(), dev.data(), bytes); }));
    row("download", bytes, "copy_to_host into PinnedVector",
        mean_s(2, runs, [&] { mk::copy_to_host(ex, pinned.data(), dev.data(), bytes); }));
  }
  // the host time of a token upload with compute queued ahead of it
  const int64_t n = 4096;
  moetron::Buffer<float> a(moetron::Device::CUDA), c(moetron::Device::CUDA);
  mk::fill_zero(ex, a.resize(n * n), sizeof(float) * n * n);
  c.resize(n * n);
  std::vector<char> tokens(size_t(64) << 10, 1);
  moetron::Buffer<char> dtok(moetron::Device::CUDA);
  dtok.resize(tokens.size());
  auto queue_gemms = [&] {
    gpu::synchronize(ex);
    for (int i = 0; i < 8; ++i)
      mk::gemm<float>(ex, false, false, n, n, n, 1.f, a.data(), a.data(), 0.f, c.data());
  };
  auto host_time = [&](auto&& upload) {
    queue_gemms();
    const auto t0 = std::chrono::steady_clock::now();
    upload();
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    gpu::synchronize(ex);
    return t;
  };
  row("behind 8 GEMMs", tokens.size(), "copy_from_host (pinned ring)",
      host_time([&] { mk::copy_from_host(ex, dtok.data(), tokens.data(), tokens.size()); }));
  row("behind 8 GEMMs", tokens.size(), "cudaMemcpyAsync pageable + sync", host_time([&] {
        check(cudaMemcpyAsync(dtok.data(), tokens.data(), tokens.size(), cudaMemcpyHostToDevice, s),
              "cudaMemcpyAsync");
        check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
      }));
  return 0;
}
