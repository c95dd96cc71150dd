// bench_gemm: GFLOP/s of the GEMM backends on the shapes moetron actually runs.
//
// Columns: OpenBLAS cblas_sgemm, oneDNN dnnl_sgemm, oneDNN f32 matmul primitive, oneDNN bf16
// matmul primitive (bf16 x bf16 -> f32, inputs converted beforehand, not timed), and the
// project's moetron::kernels::gemm in FP32 and BF16 modes (BF16 includes converting both inputs),
// and kernels::gemm_bf16_weight, the BF16 GEMM of a Linear whose weight is already in bf16 (its
// cached copy, model/linear.h: only A is converted; same bits as the BF16 column) in the layouts
// whose B is a weight, NT (forward) and NN (input gradient).
// Rows: the tiny CPU model (M = 512 tokens, hidden 256; experts M ~ 128) and a 1B-class config
// (hidden 2048, M = 4096 tokens), each in the three layouts of a linear layer:
//   NN   C[M,N] = A[M,K] B[K,N]
//   TN   C[M,N] = A[K,M]^T B[K,N]      (weight gradient: dW = dY^T X)
//   NT   C[M,N] = A[M,K] B[N,K]^T      (forward with [out,in] weights: Y = X W^T)
// Usage: bench_gemm [--threads N] [--set tiny|1b|all] [--min-time SECONDS]
// The table is markdown, ready for docs/performance.md.
#include <cblas.h>
#include <dnnl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dnnl.hpp>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/ops.h"
#include "kernels/scalar.h"

namespace mk = moetron::kernels;

namespace {

struct Shape {
  const char* set;
  const char* what;
  int64_t M, K, N;
};

const Shape kShapes[] = {
    {"tiny", "q_a / wq_a", 512, 256, 96},
    {"tiny", "q_b", 512, 96, 320},
    {"tiny", "kv_a", 512, 256, 80},
    {"tiny", "kv_b", 512, 64, 256},
    {"tiny", "o_proj", 512, 128, 256},
    {"tiny", "dense up", 512, 256, 512},
    {"tiny", "dense down", 512, 512, 256},
    {"tiny", "expert gate|up", 128, 256, 256},
    {"tiny", "expert down", 128, 128, 256},
    {"tiny", "head chunk", 512, 256, 4096},
    {"tiny", "probe 1024^3", 1024, 1024, 1024},
    {"1b", "q", 4096, 2048, 1536},
    {"1b", "kv_b-like", 4096, 1536, 3072},
    {"1b", "expert-like", 4096, 2048, 2816},
    {"1b", "o / down", 4096, 4096, 2048},
    {"1b", "expert M=512", 512, 2048, 2816},
};

double now() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// GFLOP/s of fn: one warm-up call, then 5 timed blocks of >= min_time/5 seconds (>= 2 calls each);
// the best block counts, which filters out noise from other processes on a shared machine.
double gflops(int64_t M, int64_t N, int64_t K, double min_time, const std::function<void()>& fn) {
  fn();
  double best = 0;
  for (int block = 0; block < 5; ++block) {
    int reps = 0;
    const double t0 = now();
    double t = t0;
    while (reps < 2 || t - t0 < min_time / 5) {
      fn();
      ++reps;
      t = now();
    }
    best = std::max(best, 2.0 * M * N * K * reps / (t - t0) * 1e-9);
  }
  return best;
}

struct DnnlMatmul {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{eng};
  dnnl::matmul prim;
  dnnl::memory a, b, c;
  std::string impl;
  DnnlMatmul(bool bf16, bool ta, bool tb, int64_t M, int64_t N, int64_t K, void* A, void* B,
             float* C) {
    using dnnl::memory;
    auto dt = bf16 ? memory::data_type::bf16 : memory::data_type::f32;
    memory::desc ad({M, K}, dt, ta ? memory::dims{1, M} : memory::dims{K, 1});
    memory::desc bd({K, N}, dt, tb ? memory::dims{1, K} : memory::dims{N, 1});
    memory::desc cd({M, N}, memory::data_type::f32, memory::dims{N, 1});
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(ad, bd, cd), eng);
    impl = pd.impl_info_str();
    prim = dnnl::matmul(pd);
    a = memory(ad, eng, A);
    b = memory(bd, eng, B);
    c = memory(cd, eng, C);
  }
  void run() {
    prim.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    stream.wait();
  }
};

}  // namespace

int main(int argc, char** argv) {
  int threads = mk::num_threads();
  std::string set = "all";
  double min_time = 0.3;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--set" && i + 1 < argc) {
      set = argv[++i];
    } else if (a == "--min-time" && i + 1 < argc) {
      min_time = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--threads N] [--set tiny|1b|all] [--min-time S]\n", argv[0]);
      return 2;
    }
  }
  mk::set_num_threads(threads);
  std::printf("bench_gemm: threads=%d, set=%s, min-time=%.2fs, GFLOP/s (higher is better)\n\n",
              threads, set.c_str(), min_time);
  std::printf(
      "| set | op | M | K | N | layout | OpenBLAS sgemm | oneDNN sgemm | oneDNN f32 matmul | "
      "oneDNN bf16 matmul | moetron FP32 | moetron BF16 | moetron BF16, bf16 weight |\n");
  std::printf("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");

  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  double logsum[7] = {0, 0, 0, 0, 0, 0, 0}, logsum_w[2] = {0, 0};
  int rows = 0, rows_w = 0;
  std::string impl_f32, impl_bf16;
  for (const Shape& s : kShapes) {
    if (set != "all" && set != s.set) continue;
    const int64_t M = s.M, N = s.N, K = s.K;
    std::vector<float> A(M * K), B(K * N), C(M * N, 0.f);
    for (float& x : A) x = dist(rng);
    for (float& x : B) x = dist(rng);
    std::vector<uint16_t> A16(A.size()), B16(B.size());
    for (size_t i = 0; i < A.size(); ++i) A16[i] = moetron::f32_to_bf16(A[i]);
    for (size_t i = 0; i < B.size(); ++i) B16[i] = moetron::f32_to_bf16(B[i]);
    const char* layouts[] = {"NN", "TN", "NT"};
    for (int l = 0; l < 3; ++l) {
      const bool ta = l == 1, tb = l == 2;
      const int64_t lda = ta ? M : K, ldb = tb ? K : N;
      // The OpenMP-based columns run first and OpenBLAS last, followed by a pause: OpenBLAS's
      // pthread workers busy-wait for ~0.1 s after a call and, on a machine with few cores, steal
      // them from the OpenMP team that runs next (measured: 2 GFLOP/s instead of 200). On one
      // thread OpenBLAS has no workers and needs no pause.
      double g[7];
      DnnlMatmul f32(false, ta, tb, M, N, K, A.data(), B.data(), C.data());
      DnnlMatmul bf(true, ta, tb, M, N, K, A16.data(), B16.data(), C.data());
      g[1] = gflops(M, N, K, min_time, [&] {
        dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                   C.data(), N);
      });
      g[2] = gflops(M, N, K, min_time, [&] { f32.run(); });
      g[3] = gflops(M, N, K, min_time, [&] { bf.run(); });
      g[4] = gflops(M, N, K, min_time, [&] {
        mk::gemm<float>(moetron::Exec{}, ta, tb, M, N, K, 1.f, A.data(), B.data(), 0.f, C.data(),
                        mk::GemmPrecision::FP32);
      });
      g[5] = gflops(M, N, K, min_time, [&] {
        mk::gemm<float>(moetron::Exec{}, ta, tb, M, N, K, 1.f, A.data(), B.data(), 0.f, C.data(),
                        mk::GemmPrecision::BF16);
      });
      const bool weight_b = l != 1;  // NN, NT: B is a weight
      if (weight_b)
        g[6] = gflops(M, N, K, min_time, [&] {
          mk::gemm_bf16_weight(moetron::Exec{}, ta, tb, M, N, K, 1.f, A.data(), B16.data(), 0.f,
                               C.data());
        });
      g[0] = gflops(M, N, K, min_time, [&] {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    M, N, K, 1.f, A.data(), lda, B.data(), ldb, 0.f, C.data(), N);
      });
      if (threads > 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
      impl_f32 = f32.impl;
      impl_bf16 = bf.impl;
      std::printf("| %s | %s | %lld | %lld | %lld | %s |", s.set, s.what, (long long)M,
                  (long long)K, (long long)N, layouts[l]);
      for (int c = 0; c < 6; ++c) {
        std::printf(" %.1f |", g[c]);
        logsum[c] += std::log(g[c]);
      }
      if (weight_b) {
        std::printf(" %.1f |", g[6]);
        logsum_w[0] += std::log(g[5]), logsum_w[1] += std::log(g[6]);
        ++rows_w;
      } else {
        std::printf(" - |");
      }
      std::printf("\n");
      std::fflush(stdout);
      ++rows;
    }
  }
  std::printf("| **geomean** | | | | | |");
  for (int c = 0; c < 6; ++c) std::printf(" **%.1f** |", std::exp(logsum[c] / std::max(rows, 1)));
  std::printf(" - |\n");
  std::printf(
      "\nNN and NT rows (B a weight), geomean: moetron BF16 %.1f, with the bf16 weight %.1f\n",
      std::exp(logsum_w[0] / std::max(rows_w, 1)), std::exp(logsum_w[1] / std::max(rows_w, 1)));
  std::printf("\noneDNN implementations (last shape): f32 matmul = %s, bf16 matmul = %s\n",
              impl_f32.c_str(), impl_bf16.c_str());
  return 0;
}
