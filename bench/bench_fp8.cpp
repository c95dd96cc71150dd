// bench_fp8: what the FP8 recipe (SPEC-deepseek-v3 §3) costs on CPU next to fp32 and bf16 GEMMs.
//
// Per Linear shape X [M,K] -> Y [M,N] (W [N,K]) and per GEMM of the layer, microseconds per call:
//   fp32  moetron::kernels::gemm, GemmPrecision::FP32
//   bf16  moetron::kernels::gemm, GemmPrecision::BF16 (includes rounding both inputs to bf16)
//   fp8   everything the FP8 path pays for that GEMM (kernels/fp8.h): "quant" (quantisation and
//         re-quantisation), "gemm" (fp8_fprop / fp8_dgrad / fp8_wgrad, default path Auto),
//         "total" (both back to back), then the total with each explicit path: "deq" (Dequant:
//         dequantise both operands + one kernels::gemm, bf16 when all scales are powers of two,
//         else fp32) and "b16" (Bf16Blocks: per-128-block bf16 partials + fp32 promotion):
//     Fprop  Y  = X W^T      quantise X (1x128) and W (128x128 blocks); fp8_fprop
//     Dgrad  dX = dY W       quantise dY (1x128); fp8_dgrad (W's codes from Fprop)
//     Wgrad  dW += dY^T X    requantise the cached 1x128 X to 128x1 (token-major), quantise dY
//                            to 128x1 (token-major); fp8_wgrad accumulating into fp32 dW
//   x/bf16  the ratio of an fp8 total to bf16 (target: <= ~1.5).
// Scales: --pow2 makes activation and gradient scales powers of two (UE8M0), --pow2-weights the
// weights' too (with both, Auto is one bf16 GEMM); by default all are amax/448.
// The last rows sum the times over every shape (tiny-model step mix).
// Usage: bench_fp8 [--threads N] [--min-time SECONDS] [--gemm fprop|all] [--pow2]
// The table is markdown, ready for docs/performance.md.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops_cpu.h"

namespace mk = moetron::kernels::cpu;

namespace {

struct Shape {
  const char* what;
  int64_t M, K, N;
};

// The tiny model (configs/tiny.yaml, hidden 256) at 1024 tokens per micro-batch, and its routed
// experts at ~256 tokens each.
const Shape kShapes[] = {
    {"q_a", 1024, 256, 96},         {"q_b", 1024, 96, 320},       {"kv_a", 1024, 256, 80},
    {"kv_b", 1024, 64, 256},        {"o_proj", 1024, 128, 256},   {"dense up", 1024, 256, 768},
    {"dense down", 1024, 768, 256}, {"expert up", 256, 256, 256}, {"expert down", 256, 128, 256},
};

double now() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// Seconds per call of fn: one warm-up call, then 5 blocks of >= min_time/5 s (>= 3 calls each);
// the best block counts (filters out noise from other jobs on a shared machine).
double seconds(double min_time, const std::function<void()>& fn) {
  fn();
  double best = 1e30;
  for (int block = 0; block < 5; ++block) {
    int reps = 0;
    const double t0 = now();
    double t = t0;
    while (reps < 3 || t - t0 < min_time / 5) {
      fn();
      ++reps;
      t = now();
    }
    best = std::min(best, (t - t0) / reps);
  }
  return best;
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int main(int argc, char** argv) {
  int threads = moetron::kernels::num_threads();
  double min_time = 0.2;
  bool all = true, pow2 = false, pow2w = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--min-time" && i + 1 < argc) {
      min_time = std::atof(argv[++i]);
    } else if (a == "--gemm" && i + 1 < argc) {
      all = std::string(argv[++i]) != "fprop";
    } else if (a == "--pow2") {
      pow2 = true;
    } else if (a == "--pow2-weights") {
      pow2w = true;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--threads N] [--min-time S] [--gemm fprop|all] [--pow2] "
                   "[--pow2-weights]\n",
                   argv[0]);
      return 2;
    }
  }
  moetron::kernels::set_num_threads(threads);
  std::printf(
      "bench_fp8: threads=%d, min-time=%.2fs, activation/gradient scales %s, weight scales %s, "
      "microseconds per call\n\n",
      threads, min_time, pow2 ? "pow2" : "amax/448", pow2w ? "pow2" : "amax/448");
  std::printf(
      "| shape | M | K | N | GEMM | fp32 | bf16 | fp8 quant | fp8 gemm | fp8 total | total deq | "
      "total b16 | fp8/bf16 | deq/bf16 | b16/bf16 |\n");
  std::printf("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");

  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  const char* names[3] = {"Fprop", "Dgrad", "Wgrad"};
  constexpr int kCols = 7;  // fp32, bf16, fp8 quant, fp8 gemm, fp8 total, total deq, total b16
  double sum[3][kCols] = {};
  for (const Shape& s : kShapes) {
    const int64_t M = s.M, K = s.K, N = s.N;
    const int64_t KB = cdiv(K, 128), NB = cdiv(N, 128), MB = cdiv(M, 128);
    std::vector<float> X(M * K), W(N * K), dY(M * N), Y(M * N), dX(M * K), dW(N * K, 0.f);
    for (float& v : X) v = nd(rng);
    for (float& v : W) v = 0.05f * nd(rng);
    for (float& v : dY) v = 1e-3f * nd(rng);
    // FP8 operands (and their scales) of the three GEMMs
    std::vector<uint8_t> qX(M * K), qW(N * K), qdY(M * N), qXt(K * M), qdYt(N * M);
    std::vector<float> sX(M * KB), sW(NB * KB), sdY(M * NB), sXt(K * MB), sdYt(N * MB);
    mk::quantize(X.data(), M, K, mk::kTile1x128, pow2, qX.data(), sX.data());  // cached X
    mk::quantize(W.data(), N, K, mk::kTile128x128, pow2w, qW.data(), sW.data());
    for (int g = 0; g < (all ? 3 : 1); ++g) {
      std::function<void()> quant;
      std::function<void(mk::Fp8Gemm)> gemm8;
      std::function<void(mk::GemmPrecision)> hp;  // the fp32 / bf16 GEMM
      if (g == 0) {
        hp = [&](mk::GemmPrecision p) {
          mk::gemm<float>(false, true, M, N, K, 1.f, X.data(), W.data(), 0.f, Y.data(), p);
        };
        quant = [&] {
          mk::quantize(X.data(), M, K, mk::kTile1x128, pow2, qX.data(), sX.data());
          mk::quantize(W.data(), N, K, mk::kTile128x128, pow2w, qW.data(), sW.data());
        };
        gemm8 = [&](mk::Fp8Gemm p) {
          mk::fp8_fprop(qX.data(), sX.data(), qW.data(), sW.data(), M, N, K, Y.data(), p);
        };
      } else if (g == 1) {
        hp = [&](mk::GemmPrecision p) {
          mk::gemm<float>(false, false, M, K, N, 1.f, dY.data(), W.data(), 0.f, dX.data(), p);
        };
        quant = [&] {
          mk::quantize(dY.data(), M, N, mk::kTile1x128, pow2, qdY.data(), sdY.data());
        };
        gemm8 = [&](mk::Fp8Gemm p) {
          mk::fp8_dgrad(qdY.data(), sdY.data(), qW.data(), sW.data(), M, N, K, dX.data(), p);
        };
      } else {
        hp = [&](mk::GemmPrecision p) {
          mk::gemm<float>(true, false, N, K, M, 1.f, dY.data(), X.data(), 1.f, dW.data(), p);
        };
        quant = [&] {
          mk::requantize_1x128_to_128x1(qX.data(), sX.data(), M, K, pow2, qXt.data(), sXt.data());
          mk::quantize_128x1_t(dY.data(), M, N, pow2, qdYt.data(), sdYt.data());
        };
        gemm8 = [&](mk::Fp8Gemm p) {
          mk::fp8_wgrad(qdYt.data(), sdYt.data(), qXt.data(), sXt.data(), M, N, K, dW.data(), p);
        };
      }
      double t[kCols];
      t[0] = seconds(min_time, [&] { hp(mk::GemmPrecision::FP32); });
      t[1] = seconds(min_time, [&] { hp(mk::GemmPrecision::BF16); });
      t[2] = seconds(min_time, [&] { quant(); });
      t[3] = seconds(min_time, [&] { gemm8(mk::Fp8Gemm::Auto); });
      t[4] = seconds(min_time, [&] { quant(), gemm8(mk::Fp8Gemm::Auto); });
      t[5] = seconds(min_time, [&] { quant(), gemm8(mk::Fp8Gemm::Dequant); });
      t[6] = seconds(min_time, [&] { quant(), gemm8(mk::Fp8Gemm::Bf16Blocks); });
      std::printf("| %s | %lld | %lld | %lld | %s |", s.what, (long long)M, (long long)K,
                  (long long)N, names[g]);
      for (int c = 0; c < kCols; ++c) std::printf(" %.1f |", t[c] * 1e6);
      std::printf(" %.2f | %.2f | %.2f |\n", t[4] / t[1], t[5] / t[1], t[6] / t[1]);
      std::fflush(stdout);
      for (int c = 0; c < kCols; ++c) sum[g][c] += t[c];
    }
  }
  double tot[kCols] = {};
  auto row = [&](const char* what, const double* v) {
    std::printf("| **sum** | | | | %s |", what);
    for (int c = 0; c < kCols; ++c) std::printf(" %.1f |", v[c] * 1e6);
    std::printf(" **%.2f** | **%.2f** | **%.2f** |\n", v[4] / v[1], v[5] / v[1], v[6] / v[1]);
  };
  for (int g = 0; g < (all ? 3 : 1); ++g) {
    row(names[g], sum[g]);
    for (int c = 0; c < kCols; ++c) tot[c] += sum[g][c];
  }
  if (all) row("all three", tot);
  return 0;
}
