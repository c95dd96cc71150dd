// bench_cuda_gemm: time of the CUDA backend's GEMM (moetron::kernels::gemm on Device::CUDA, i.e.
// cuBLASLt through kernels/cuda/gemm.cu) on DeepSeek-V3's shapes, BF16, FP32 and the FP8 recipe.
//
// Every shape is a linear layer's forward Y[M,N] = X[M,K] W[N,K]^T (the NT layout of the model's
// [out, in] weights). BF16 is the op as the model calls it: both fp32 inputs are rounded to bf16
// copies inside the op (those conversions are timed too), then a bf16 x bf16 -> fp32 cuBLASLt
// GEMM; "BF16, bf16 weight cached" is how a bf16 Linear calls it (gemm_bf16_weight: the weight's
// bf16 copy made once per step, only X converted per call); FP32 is true fp32 (no TF32). Timing:
// CUDA events on the compute stream around `runs` calls after `warmup` calls (3 + 10; --quick: 1 +
// 3 over a few shapes). TFLOP/s counts 2MNK per call; "% peak" is against the H200/H100 SXM dense
// BF16 peak, 989 TFLOP/s (for FP32 rows it only says how far plain fp32 is from the tensor-core
// peak). FP8 is the recipe's Fprop (kernels::fp8_fprop: E4M3 operands with 1x128 activation and
// 128x128 weight scales, quantised once before timing, cuBLASLt block scaling), against the dense
// FP8 peak, 1979 TFLOP/s.
//
// Shapes (M = tokens, 4096 unless --tokens): MLA q_a 7168->1536, kv_a 7168->576, q_b
// 1536->24576 (128 heads x 192), kv_b 512->32768 (128 x (128 + 128)), o_proj 16384->7168; dense
// MLP gate|up 7168->2x18432 and down 18432->7168; routed expert gate|up 7168->2x2048 and down
// 2048->7168 at M = 1024 rows (a 32k-token global batch routes 32768 x 8 / 256 = 1024 rows to
// each expert); the output head 7168->129280.
// Then the routed experts as the MoE layer runs them: the grouped ops (grouped_gemm_bf16_weight
// with the cached bf16 weights, grouped_fp8_fprop), one GEMM per expert over its rows, for every
// expert of a layer at once with the tokens routed evenly (tokens x K rows in all), beside one GEMM
// of the same total rows with one expert's weight. The two do the same FLOPs, so their ratio is
// what splitting the rows per expert costs — the measure for choosing a grouped kernel (a
// device-side grouped GEMM) over per-expert calls. Layers: the mid-size config's (64 experts of
// width 512, hidden 2048, K 8) and DeepSeek-V3's on an EP-8 rank (32 of its 256 experts of width
// 2048, hidden 7168, K 8).
// Last, the same layers' FP8 Fprop and Wgrad with ragged (random) routing, each expert's rows as
// they come and padded to 16 (precision.expert_row_align), with the GEMMs that fell back to the
// plain FP8 kernel counted: what the padding buys. Usage:
// bench_cuda_gemm [--quick] [--tokens M]. Without a GPU: "no usable CUDA device: <reason>", exit 0.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench/cuda_timer.h"
#include "kernels/buffer.h"
#include "kernels/cuda/runtime.h"
#include "kernels/ops.h"
#include "kernels/scalar.h"

namespace mk = moetron::kernels;
namespace gpu = moetron::kernels::gpu;
using moetron::Buffer;
using moetron::Device;
using moetron::Exec;
using moetron::bench::check;
using moetron::kernels::GemmPrecision;

namespace {

constexpr double kPeakBf16 = 989.0, kPeakFp8 = 1979.0;  // TFLOP/s, dense

struct Shape {
  const char* what;
  int64_t M, K, N;  // M < 0: the token count
  bool quick;
};

// n floats on the GPU, uniform in [-1, 1) (a 1M-element host pattern copied repeatedly: the
// head's weight is 0.9G elements).
Buffer<float> random_device(int64_t n, uint64_t seed) {
  static std::vector<float> pattern;
  if (pattern.empty()) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    pattern.resize(1 << 20);
    for (float& x : pattern) x = u(rng);
  }
  Buffer<float> b(Device::CUDA);
  b.resize(static_cast<size_t>(n));
  const Exec ex = gpu::exec();
  for (int64_t i = 0; i < n; i += int64_t(pattern.size())) {
    const int64_t c = std::min<int64_t>(int64_t(pattern.size()), n - i);
    mk::copy_from_host(ex, b.data() + i, pattern.data(), c * sizeof(float));
  }
  return b;
}

// A layer's routed experts: E experts, gate|up [2F, D] and down [D, F] each.
struct Experts {
  const char* what;
  int64_t E, D, F, K;
  bool quick;
};

// The layers of both expert tables: the mid-size config's, and DeepSeek-V3's on an EP-8 rank.
const Experts kLayers[] = {{"mid-size", 64, 2048, 512, 8, true},
                           {"V3, an EP-8 rank's 32 experts", 32, 7168, 2048, 8, false}};

// f(name, experts, rows, K, N) for each layer's gate|up and down projection over tokens x K rows
// (--quick: the mid-size layer only).
template <class F>
void each_projection(int64_t tokens, bool quick, F&& f) {
  for (const Experts& l : kLayers) {
    if (quick && !l.quick) continue;
    const int64_t rows = tokens * l.K;
    const std::string up = std::string(l.what) + " gate|up", down = std::string(l.what) + " down";
    f(up.c_str(), l.E, rows, l.D, 2 * l.F);
    f(down.c_str(), l.E, rows, l.F, l.D);
  }
}

// One grouped op over E even groups of `rows` total rows, [N, K] weights per group (NT), against
// one GEMM of the same rows with group 0's weight: BF16 (bf16 weights cached, as the model's
// Linear keeps them) and FP8 (the recipe's Fprop).
void grouped_rows(const char* what, int64_t E, int64_t rows, int64_t K, int64_t N, int warmup,
                  int runs, moetron::bench::CudaTimer& timer) {
  const Exec ex = gpu::exec();
  std::vector<int64_t> off(static_cast<size_t>(E + 1));
  for (int64_t g = 0; g <= E; ++g) off[g] = rows * g / E;
  Buffer<float> X = random_device(rows * K, 1), W = random_device(E * N * K, 2);
  Buffer<float> Y(Device::CUDA);
  Y.resize(static_cast<size_t>(rows * N));
  Buffer<uint16_t> W16(Device::CUDA);
  mk::narrow_to_bf16(ex, W.data(), E * N * K, W16.resize(E * N * K));
  const int64_t KB = (K + 127) / 128, NB = (N + 127) / 128;
  Buffer<uint8_t> qX(Device::CUDA), qW(Device::CUDA);
  Buffer<float> sX(Device::CUDA), sW(Device::CUDA);
  mk::quantize(ex, X.data(), rows, K, mk::kTile1x128, true, qX.resize(rows * K),
               sX.resize(rows * KB));
  qW.resize(E * N * K), sW.resize(E * NB * KB);
  for (int64_t g = 0; g < E; ++g)  // each expert's own 128x128 blocks
    mk::quantize(ex, W.data() + g * N * K, N, K, mk::kTile128x128, true, qW.data() + g * N * K,
                 sW.data() + g * NB * KB);
  auto time_ms = [&](auto&& f) { return timer.mean_ms(warmup, runs, f); };
  const double bf16_grouped = time_ms([&] {
    mk::grouped_gemm_bf16_weight(ex, off.data(), E, true, N, K, X.data(), W16.data(), Y.data());
  });
  const double bf16_one = time_ms([&] {
    mk::gemm_bf16_weight(ex, false, true, rows, N, K, 1.f, X.data(), W16.data(), 0.f, Y.data());
  });
  const double fp8_grouped = time_ms([&] {
    mk::grouped_fp8_fprop(ex, off.data(), E, qX.data(), sX.data(), qW.data(), sW.data(), N, K,
                          Y.data());
  });
  const double fp8_one = time_ms(
      [&] { mk::fp8_fprop(ex, qX.data(), sX.data(), qW.data(), sW.data(), rows, N, K, Y.data()); });
  const double flops = 2.0 * double(rows) * double(N) * double(K);
  auto tf = [&](double ms) { return flops / (ms * 1e-3) * 1e-12; };
  std::printf("| %s | %lld x %lld | %lld | %lld | BF16 | %.3f | %.1f | %.1f | %.2f |\n", what,
              static_cast<long long>(E), static_cast<long long>(rows / E),
              static_cast<long long>(K), static_cast<long long>(N), bf16_grouped, tf(bf16_grouped),
              tf(bf16_one), bf16_one / bf16_grouped);
  std::printf("| %s | %lld x %lld | %lld | %lld | FP8 | %.3f | %.1f | %.1f | %.2f |\n", what,
              static_cast<long long>(E), static_cast<long long>(rows / E),
              static_cast<long long>(K), static_cast<long long>(N), fp8_grouped, tf(fp8_grouped),
              tf(fp8_one), fp8_one / fp8_grouped);
  std::fflush(stdout);
}

void grouped_table(int64_t tokens, bool quick, int warmup, int runs,
                   moetron::bench::CudaTimer& timer) {
  std::printf(
      "\nRouted experts, one grouped op per projection (%lld tokens x K rows, even "
      "routing) vs one GEMM of the same rows:\n\n",
      static_cast<long long>(tokens));
  std::printf(
      "| layer, projection | experts x rows | K | N | precision | grouped ms | grouped "
      "TFLOP/s | one GEMM TFLOP/s | grouped / one GEMM |\n");
  std::printf("|---|---:|---:|---:|---|---:|---:|---:|---:|\n");
  each_projection(tokens, quick,
                  [&](const char* what, int64_t E, int64_t rows, int64_t K, int64_t N) {
                    grouped_rows(what, E, rows, K, N, warmup, runs, timer);
                  });
}

// Rows per expert of `rows` (token, expert) pairs routed at random (seeded, each pair to a uniform
// expert: ragged counts, as real routing makes them).
std::vector<int64_t> random_counts(int64_t E, int64_t rows, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> count(static_cast<size_t>(E), 0);
  for (int64_t i = 0; i < rows; ++i) ++count[rng() % E];
  return count;
}
// Row offsets of those groups, each rounded up to a multiple of `align` (as the MoE layer pads).
std::vector<int64_t> offsets_of(const std::vector<int64_t>& count, int64_t align) {
  std::vector<int64_t> off(count.size() + 1, 0);
  for (size_t g = 0; g < count.size(); ++g)
    off[g + 1] = off[g] + moetron::round_up(count[g], align);
  return off;
}

// The routed experts' FP8 Fprop and Wgrad with ragged groups, unpadded (most groups fall back to
// the plain kernel: cuBLASLt needs rows % 8, and % 16 for Wgrad's reduction) and padded with zero
// rows to 16 (precision.expert_row_align on a GPU). TFLOP/s count the real rows only, so the
// padded figure includes what the zero rows cost. Wgrad reads dY already in its 128x1 tiles (a
// Linear makes them in its backward_input): the timed op re-quantises X and runs the GEMMs.
void ragged_rows(const char* what, int64_t E, int64_t rows, int64_t K, int64_t N, int warmup,
                 int runs, moetron::bench::CudaTimer& timer) {
  const Exec ex = gpu::exec();
  const std::vector<int64_t> count = random_counts(E, rows, 7);
  const std::vector<int64_t> ragged = offsets_of(count, 1), padded = offsets_of(count, 16);
  const int64_t R = padded[E], KB = (K + 127) / 128, NB = (N + 127) / 128;
  Buffer<float> X = random_device(R * K, 1), W = random_device(E * N * K, 2);
  Buffer<float> dY = random_device(R * N, 3), Y(Device::CUDA), dW(Device::CUDA);
  Y.resize(static_cast<size_t>(R * N)), dW.resize(static_cast<size_t>(E * N * K));
  Buffer<uint8_t> qX(Device::CUDA), qW(Device::CUDA);
  Buffer<float> sX(Device::CUDA), sW(Device::CUDA);
  mk::quantize(ex, X.data(), R, K, mk::kTile1x128, false, qX.resize(R * K), sX.resize(R * KB));
  qW.resize(E * N * K), sW.resize(E * NB * KB);
  for (int64_t g = 0; g < E; ++g)
    mk::quantize(ex, W.data() + g * N * K, N, K, mk::kTile128x128, false, qW.data() + g * N * K,
                 sW.data() + g * NB * KB);
  // ms of `runs` calls, and how many of one call's FP8 GEMMs ran on the fallback kernel
  auto timed = [&](auto&& f) {
    const mk::Fp8GemmPaths before = mk::fp8_gemm_paths();
    f();
    const int64_t on_kernel = mk::fp8_gemm_paths().kernel - before.kernel;
    return std::pair<double, int64_t>(timer.mean_ms(warmup, runs, f), on_kernel);
  };
  auto fprop = [&](const std::vector<int64_t>& off) {
    return timed([&] {
      mk::grouped_fp8_fprop(ex, off.data(), E, qX.data(), sX.data(), qW.data(), sW.data(), N, K,
                            Y.data());
    });
  };
  Buffer<uint8_t> qdY(Device::CUDA);
  Buffer<float> sdY(Device::CUDA);
  auto wgrad = [&](const std::vector<int64_t>& off) {  // dY's tiles as a Linear keeps them
    mk::grouped_quantize_128x1_t(ex, off.data(), E, dY.data(), N, false, qdY.resize(R * N),
                                 sdY.resize(N * mk::row_tile_offsets(off.data(), E).back()));
    return timed([&] {
      mk::grouped_fp8_linear_wgrad(ex, off.data(), E, qdY.data(), sdY.data(), qX.data(), sX.data(),
                                   N, K, false, dW.data());
    });
  };
  const double flops = 2.0 * double(rows) * double(N) * double(K);
  auto tf = [&](double ms) { return flops / (ms * 1e-3) * 1e-12; };
  for (const char* op : {"Fprop", "Wgrad"}) {
    const bool f = op[0] == 'F';
    const auto [ms_r, k_r] = f ? fprop(ragged) : wgrad(ragged);
    const auto [ms_p, k_p] = f ? fprop(padded) : wgrad(padded);
    std::printf(
        "| %s | %s | %lld / %lld | %.3f (%.0f, %lld on kernel) | %.3f (%.0f, %lld) | %.2f |\n",
        what, op, static_cast<long long>(rows), static_cast<long long>(R), ms_r, tf(ms_r),
        static_cast<long long>(k_r), ms_p, tf(ms_p), static_cast<long long>(k_p), ms_r / ms_p);
    std::fflush(stdout);
  }
}

void ragged_table(int64_t tokens, bool quick, int warmup, int runs,
                  moetron::bench::CudaTimer& timer) {
  std::printf(
      "\nRouted experts' FP8 GEMMs with random (ragged) routing of %lld tokens x K: unpadded vs "
      "each expert's rows padded to 16 (ms, TFLOP/s of the real rows, GEMMs on the fallback "
      "kernel):\n\n",
      static_cast<long long>(tokens));
  std::printf(
      "| layer, projection | GEMM | rows real / padded | ragged | padded to 16 | ragged / "
      "padded |\n");
  std::printf("|---|---|---:|---:|---:|---:|\n");
  each_projection(tokens, quick,
                  [&](const char* what, int64_t E, int64_t rows, int64_t K, int64_t N) {
                    ragged_rows(what, E, rows, K, N, warmup, runs, timer);
                  });
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int64_t tokens = 4096;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc) {
      tokens = std::atoll(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: bench_cuda_gemm [--quick] [--tokens M]\n");
      return 2;
    }
  }
  if (!gpu::available()) {
    std::printf("no usable CUDA device: %s\n", gpu::unavailable_reason().c_str());
    return 0;
  }
  const Shape shapes[] = {
      {"q_a (wq_a)", -1, 7168, 1536, true},     {"kv_a (wkv_a)", -1, 7168, 576, false},
      {"q_b (wq_b)", -1, 1536, 24576, false},   {"kv_b (wkv_b)", -1, 512, 32768, false},
      {"o_proj", -1, 16384, 7168, true},        {"dense gate|up", -1, 7168, 36864, false},
      {"dense down", -1, 18432, 7168, false},   {"expert gate|up", 1024, 7168, 4096, true},
      {"expert down", 1024, 2048, 7168, false}, {"lm head", -1, 7168, 129280, false},
  };
  const int warmup = quick ? 1 : 3, runs = quick ? 3 : 10;
  const Exec ex = gpu::exec();
  moetron::bench::CudaTimer timer(gpu::compute_stream());
  cudaDeviceProp prop;
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("bench_cuda_gemm on %s: Y[M,N] = X[M,K] W[N,K]^T, %d warm-up + %d timed runs\n\n",
              prop.name, warmup, runs);
  std::printf("| shape | M | K | N | precision | ms | TFLOP/s | of peak |\n");
  std::printf("|---|---:|---:|---:|---|---:|---:|---:|\n");
  for (const Shape& sh : shapes) {
    if (quick && !sh.quick) continue;
    const int64_t M = sh.M < 0 ? tokens : sh.M, K = sh.K, N = sh.N;
    Buffer<float> X = random_device(M * K, 1), W = random_device(N * K, 2);
    Buffer<float> Y(Device::CUDA);
    Y.resize(static_cast<size_t>(M * N));
    auto time_ms = [&](auto&& f) { return timer.mean_ms(warmup, runs, f); };
    auto row = [&](const char* precision, double ms, double peak) {
      const double tflops = 2.0 * double(M) * double(N) * double(K) / (ms * 1e-3) * 1e-12;
      std::printf("| %s | %lld | %lld | %lld | %s | %.3f | %.1f | %.1f%% of %.0f |\n", sh.what,
                  static_cast<long long>(M), static_cast<long long>(K), static_cast<long long>(N),
                  precision, ms, tflops, 100.0 * tflops / peak, peak);
      std::fflush(stdout);
    };
    for (GemmPrecision prec : {GemmPrecision::BF16, GemmPrecision::FP32}) {
      const double ms = time_ms([&] {
        mk::gemm<float>(ex, false, true, M, N, K, 1.f, X.data(), W.data(), 0.f, Y.data(), prec);
      });
      row(prec == GemmPrecision::BF16 ? "BF16" : "FP32", ms, kPeakBf16);
    }
    {  // as a bf16 Linear runs it: its weight's bf16 copy cached, only X converted per call
      Buffer<uint16_t> W16(Device::CUDA);
      mk::narrow_to_bf16(ex, W.data(), N * K, W16.resize(N * K));
      const double ms = time_ms([&] {
        mk::gemm_bf16_weight(ex, false, true, M, N, K, 1.f, X.data(), W16.data(), 0.f, Y.data());
      });
      row("BF16, bf16 weight cached", ms, kPeakBf16);
    }
    const int64_t KB = (K + 127) / 128;
    Buffer<uint8_t> qX(Device::CUDA), qW(Device::CUDA);
    Buffer<float> sX(Device::CUDA), sW(Device::CUDA);
    mk::quantize(ex, X.data(), M, K, mk::kTile1x128, true, qX.resize(M * K), sX.resize(M * KB));
    mk::quantize(ex, W.data(), N, K, mk::kTile128x128, true, qW.resize(N * K),
                 sW.resize((N + 127) / 128 * KB));
    const double ms = time_ms(
        [&] { mk::fp8_fprop(ex, qX.data(), sX.data(), qW.data(), sW.data(), M, N, K, Y.data()); });
    row("FP8 (1x128 / 128x128 scales)", ms, kPeakFp8);
  }
  grouped_table(tokens, quick, warmup, runs, timer);
  ragged_table(tokens, quick, warmup, runs, timer);
  return 0;
}
