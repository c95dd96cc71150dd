// bench_cuda_attention: time of the CUDA backend's causal attention (kernels::attention_forward and
// attention_backward on Device::CUDA), the fp32 kernels (attention.cu, the parity path) beside the
// bf16 tensor-core kernels (attention_bf16.cu, the bf16 and fp8 recipes' attention core), on
// DeepSeek-V3's head shapes (Dqk 192 = 128 + 64 RoPE, Dv 128).
//
// Shapes: the mid-size config (configs/deepseek-v3-mid.yaml: 16 heads, 4K sequences) and V3's
// 128 heads at 4K. FLOPs per call are the causal ones the model's FLOP count uses: forward
// 2 * B * H * S (S + 1) / 2 * (Dqk + Dv), backward 2.5x that (dK, dV and dQ; the dQ kernel's
// recomputation of the scores is not counted). TFLOP/s against the dense BF16 peak, 989.
// Timing: CUDA events on the compute stream around `runs` calls after `warmup` calls (2 + 5;
// --quick: 1 + 2, the mid-size shape only).
// Usage: bench_cuda_attention [--quick]. Without a GPU: "no usable CUDA device: <reason>", exit 0.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_timer.h"
#include "kernels/buffer.h"
#include "kernels/cuda/runtime.h"
#include "kernels/ops.h"

namespace mk = moetron::kernels;
namespace gpu = moetron::kernels::gpu;
using moetron::Buffer;
using moetron::Device;
using moetron::Exec;
using moetron::kernels::GemmPrecision;

namespace {

struct Shape {
  const char* name;
  int64_t B, S, H;
  bool quick;
};

Buffer<float> random_device(int64_t n, uint64_t seed, float amp) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-amp, amp);
  std::vector<float> h(static_cast<size_t>(n));
  for (float& x : h) x = u(rng);
  Buffer<float> b(Device::CUDA);
  b.resize(h.size());
  mk::copy_from_host(gpu::exec(), b.data(), h.data(), h.size() * sizeof(float));
  return b;
}

Buffer<float> device(int64_t n) {
  Buffer<float> b(Device::CUDA);
  b.resize(static_cast<size_t>(n));
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: bench_cuda_attention [--quick]\n");
      return 2;
    }
  }
  if (!gpu::available()) {
    std::printf("no usable CUDA device: %s\n", gpu::unavailable_reason().c_str());
    return 0;
  }
  const int64_t Dqk = 192, Dv = 128;
  const Shape shapes[] = {{"mid-size (16 heads)", 2, 4096, 16, true},
                          {"V3 (128 heads)", 1, 4096, 128, false}};
  const int warmup = quick ? 1 : 2, runs = quick ? 2 : 5;
  const Exec ex = gpu::exec();
  moetron::bench::CudaTimer timer(gpu::compute_stream());
  std::printf("bench_cuda_attention: causal, Dqk %lld, Dv %lld, %d warm-up + %d timed runs\n\n",
              (long long)Dqk, (long long)Dv, warmup, runs);
  std::printf("| shape | B | S | H | products | pass | ms | TFLOP/s | of 989 |\n");
  std::printf("|---|---:|---:|---:|---|---|---:|---:|---:|\n");
  for (const Shape& sh : shapes) {
    if (quick && !sh.quick) continue;
    const int64_t nq = sh.B * sh.S * sh.H * Dqk, nv = sh.B * sh.S * sh.H * Dv;
    const int64_t nl = sh.B * sh.H * sh.S;
    Buffer<float> q = random_device(nq, 1, 1.f), k = random_device(nq, 2, 1.f);
    Buffer<float> v = random_device(nv, 3, 1.f), g = random_device(nv, 4, 1.f);
    Buffer<float> o = device(nv), lse = device(nl), dq = device(nq), dk = device(nq),
                  dv = device(nv);
    const float scale = 1.f / std::sqrt(float(Dqk));
    const double fwd_flops =
        2.0 * double(sh.B * sh.H) * double(sh.S) * double(sh.S + 1) / 2 * double(Dqk + Dv);
    auto time_ms = [&](auto&& f) { return timer.mean_ms(warmup, runs, f); };
    for (GemmPrecision prec : {GemmPrecision::FP32, GemmPrecision::BF16}) {
      const char* pname = prec == GemmPrecision::BF16 ? "bf16 (tensor cores)" : "fp32";
      const double f_ms = time_ms([&] {
        mk::attention_forward<float>(ex, q.data(), k.data(), v.data(), sh.B, sh.S, sh.H, Dqk, Dv,
                                     scale, o.data(), lse.data(), prec);
      });
      const double b_ms = time_ms([&] {
        mk::attention_backward<float>(ex, g.data(), q.data(), k.data(), v.data(), o.data(),
                                      lse.data(), sh.B, sh.S, sh.H, Dqk, Dv, scale, dq.data(),
                                      dk.data(), dv.data(), prec);
      });
      const double fwd_t = fwd_flops / (f_ms * 1e-3) / 1e12;
      const double bwd_t = 2.5 * fwd_flops / (b_ms * 1e-3) / 1e12;
      std::printf("| %s | %lld | %lld | %lld | %s | forward | %.3f | %.1f | %.1f%% |\n", sh.name,
                  (long long)sh.B, (long long)sh.S, (long long)sh.H, pname, f_ms, fwd_t,
                  100 * fwd_t / 989);
      std::printf("| %s | %lld | %lld | %lld | %s | backward | %.3f | %.1f | %.1f%% |\n", sh.name,
                  (long long)sh.B, (long long)sh.S, (long long)sh.H, pname, b_ms, bwd_t,
                  100 * bwd_t / 989);
    }
  }
  return 0;
}
