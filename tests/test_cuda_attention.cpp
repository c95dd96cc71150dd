// The CUDA attention ops against their CPU twins (kernels/cpu/attention.cpp,
// kernels/cpu/latent_attention.cpp): causal attention forward (o and lse) and backward (dq, dk,
// dv, from the CPU's own o and lse so that only the backward is compared), and attention over a
// latent cache, at odd shapes (partial tiles of queries and keys), DeepSeek-V3's head dims
// (Dqk 192, Dv 128; latent 576 / 512), a single position, peaked softmaxes (large scores), and in
// float and double. Outputs start as NaN (dev_garbage), so an element the op fails to write shows.
// The backward is also run twice and must give the same bits (no atomics). The bf16 products (the
// tensor-core kernels of attention_bf16.cu) against the CPU's bf16 twin, which rounds at the same
// points: what is left between them is the order of the fp32 sums (and the rare P or dS element
// it moves across a bf16 rounding boundary). Skipped without a GPU.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

struct Shape {
  int64_t B, S, H, Dqk, Dv;
  double amp;  // inputs uniform in [-amp, amp]: larger means a more peaked softmax
};

std::string name_of(const Shape& s) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "B%lld S%lld H%lld Dqk%lld Dv%lld amp%g", (long long)s.B,
                (long long)s.S, (long long)s.H, (long long)s.Dqk, (long long)s.Dv, s.amp);
  return buf;
}

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> v = {
      {2, 37, 3, 24, 16, 1.0},     // odd: partial query and key tiles
      {1, 128, 2, 192, 128, 1.0},  // DeepSeek-V3's head dims
      {1, 1, 2, 24, 16, 1.0},      // a single position
      {2, 5, 1, 48, 40, 1.0},      // fewer positions than a tile
      {1, 300, 2, 64, 64, 3.0},    // many tiles, peaked softmax
      {1, 70, 3, 256, 256, 1.0},   // the widest supported heads
      {3, 33, 2, 7, 33, 2.0},      // dims not multiples of 32, Dv > Dqk
  };
  return v;
}

template <class T>
void check_forward(const Shape& sh, double rtol, uint64_t seed,
                   GemmPrecision prec = GemmPrecision::FP32) {
  const int64_t nq = sh.B * sh.S * sh.H * sh.Dqk, nv = sh.B * sh.S * sh.H * sh.Dv;
  const int64_t nl = sh.B * sh.H * sh.S;
  const auto q = rand_vec<T>(nq, seed, -sh.amp, sh.amp);
  const auto k = rand_vec<T>(nq, seed + 1, -sh.amp, sh.amp);
  const auto v = rand_vec<T>(nv, seed + 2);
  const T scale = T(1) / std::sqrt(T(sh.Dqk));
  std::vector<T> o(nv), lse(nl);
  cpu::attention_forward<T>(q.data(), k.data(), v.data(), sh.B, sh.S, sh.H, sh.Dqk, sh.Dv, scale,
                            o.data(), lse.data(), prec);
  Buffer<T> dq = dev(q), dk = dev(k), dv = dev(v);
  Buffer<T> go = dev_garbage<T>(nv), glse = dev_garbage<T>(nl);
  kernels::attention_forward<T>(gpu_exec(), dq.data(), dk.data(), dv.data(), sh.B, sh.S, sh.H,
                                sh.Dqk, sh.Dv, scale, go.data(), glse.data(), prec);
  expect_near_rel(host(go, nv), o, rtol, "attention_forward o, " + name_of(sh));
  expect_near_rel(host(glse, nl), lse, rtol, "attention_forward lse, " + name_of(sh));
}

template <class T>
void check_backward(const Shape& sh, double rtol, uint64_t seed,
                    GemmPrecision prec = GemmPrecision::FP32) {
  const int64_t nq = sh.B * sh.S * sh.H * sh.Dqk, nv = sh.B * sh.S * sh.H * sh.Dv;
  const int64_t nl = sh.B * sh.H * sh.S;
  const auto q = rand_vec<T>(nq, seed, -sh.amp, sh.amp);
  const auto k = rand_vec<T>(nq, seed + 1, -sh.amp, sh.amp);
  const auto v = rand_vec<T>(nv, seed + 2);
  const auto g = rand_vec<T>(nv, seed + 3);
  const T scale = T(1) / std::sqrt(T(sh.Dqk));
  std::vector<T> o(nv), lse(nl), wq(nq), wk(nq), wv(nv);
  cpu::attention_forward<T>(q.data(), k.data(), v.data(), sh.B, sh.S, sh.H, sh.Dqk, sh.Dv, scale,
                            o.data(), lse.data(), prec);
  cpu::attention_backward<T>(g.data(), q.data(), k.data(), v.data(), o.data(), lse.data(), sh.B,
                             sh.S, sh.H, sh.Dqk, sh.Dv, scale, wq.data(), wk.data(), wv.data(),
                             prec);
  Buffer<T> dq_in = dev(q), dk_in = dev(k), dv_in = dev(v), dg = dev(g), dev_o = dev(o),
            dlse = dev(lse);
  std::vector<T> first[3];
  for (int run = 0; run < 2; ++run) {
    Buffer<T> gq = dev_garbage<T>(nq), gk = dev_garbage<T>(nq), gv = dev_garbage<T>(nv);
    kernels::attention_backward<T>(gpu_exec(), dg.data(), dq_in.data(), dk_in.data(), dv_in.data(),
                                   dev_o.data(), dlse.data(), sh.B, sh.S, sh.H, sh.Dqk, sh.Dv,
                                   scale, gq.data(), gk.data(), gv.data(), prec);
    std::vector<T> hq = host(gq, nq), hk = host(gk, nq), hv = host(gv, nv);
    if (run == 0) {
      // With S = 1 every key has one query and dq = dk = 0 exactly (p = 1, dp = D): both
      // sides hold only round-off (the CPU 2e-17 in double, the GPU 0), measured against the
      // inputs' scale instead of their own.
      const double floor = sh.S == 1 ? sh.amp : 0;
      expect_near_rel(hq, wq, rtol, "attention_backward dq, " + name_of(sh), floor);
      expect_near_rel(hk, wk, rtol, "attention_backward dk, " + name_of(sh), floor);
      expect_near_rel(hv, wv, rtol, "attention_backward dv, " + name_of(sh));
      first[0] = hq, first[1] = hk, first[2] = hv;
    } else {
      expect_equal(hq, first[0], "attention_backward dq run to run, " + name_of(sh));
      expect_equal(hk, first[1], "attention_backward dk run to run, " + name_of(sh));
      expect_equal(hv, first[2], "attention_backward dv run to run, " + name_of(sh));
    }
  }
}

TEST(CudaAttention, ForwardMatchesTheCpuFloat) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 10;
  for (const Shape& s : shapes()) check_forward<float>(s, 1e-4, seed += 10);
}

TEST(CudaAttention, ForwardMatchesTheCpuDouble) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 20;
  for (const Shape& s : shapes()) check_forward<double>(s, 1e-10, seed += 10);
}

TEST(CudaAttention, BackwardMatchesTheCpuFloatAndIsDeterministic) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 30;
  for (const Shape& s : shapes()) check_backward<float>(s, 1e-4, seed += 10);
}

TEST(CudaAttention, BackwardMatchesTheCpuDoubleAndIsDeterministic) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 40;
  for (const Shape& s : shapes()) check_backward<double>(s, 1e-10, seed += 10);
}

TEST(CudaAttention, Bf16ForwardMatchesTheCpuTwin) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 50;
  for (const Shape& s : shapes()) check_forward<float>(s, 2e-3, seed += 10, GemmPrecision::BF16);
}

TEST(CudaAttention, Bf16BackwardMatchesTheCpuTwinAndIsDeterministic) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 60;
  for (const Shape& s : shapes()) check_backward<float>(s, 2e-3, seed += 10, GemmPrecision::BF16);
}

TEST(CudaAttention, Bf16OnDoubleTensorsIsRefused) {
  MOETRON_REQUIRE_GPU();
  Buffer<double> x = dev_garbage<double>(5 * 2 * 24);
  EXPECT_THROW(
      kernels::attention_forward<double>(gpu_exec(), x.data(), x.data(), x.data(), 1, 5, 2, 24, 16,
                                         1.0, x.data(), x.data(), GemmPrecision::BF16),
      std::invalid_argument);
}

TEST(CudaAttention, EmptyShapesLaunchNothing) {
  MOETRON_REQUIRE_GPU();
  Buffer<float> x = dev_garbage<float>(1);
  // B = 0 or S = 0: nothing to compute, nothing written, no error.
  kernels::attention_forward<float>(gpu_exec(), x.data(), x.data(), x.data(), 0, 5, 2, 24, 16, 1.f,
                                    x.data(), x.data());
  kernels::attention_backward<float>(gpu_exec(), x.data(), x.data(), x.data(), x.data(), x.data(),
                                     x.data(), 2, 0, 2, 24, 16, 1.f, x.data(), x.data(), x.data());
  kernels::latent_attention_forward<float>(gpu_exec(), x.data(), x.data(), 0, 3, 2, 24, 16, 1.f,
                                           x.data());
  synchronize(gpu_exec());
  EXPECT_TRUE(std::isnan(host(x, 1)[0]));
}

struct LatentShape {
  int64_t M, past, H, Dk, Dv;
};

template <class T>
void check_latent(const LatentShape& sh, double rtol, uint64_t seed) {
  const int64_t rows = sh.past + sh.M;
  const auto q = rand_vec<T>(sh.M * sh.H * sh.Dk, seed, -2.0, 2.0);
  const auto kv = rand_vec<T>(rows * sh.Dk, seed + 1, -2.0, 2.0);
  const T scale = T(1) / std::sqrt(T(sh.Dk));
  const int64_t no = sh.M * sh.H * sh.Dv;
  std::vector<T> o(no);
  cpu::latent_attention_forward<T>(q.data(), kv.data(), sh.M, sh.past, sh.H, sh.Dk, sh.Dv, scale,
                                   o.data());
  Buffer<T> dq = dev(q), dkv = dev(kv), go = dev_garbage<T>(no);
  kernels::latent_attention_forward<T>(gpu_exec(), dq.data(), dkv.data(), sh.M, sh.past, sh.H,
                                       sh.Dk, sh.Dv, scale, go.data());
  char what[128];
  std::snprintf(what, sizeof what, "latent_attention_forward M%lld past%lld H%lld Dk%lld Dv%lld",
                (long long)sh.M, (long long)sh.past, (long long)sh.H, (long long)sh.Dk,
                (long long)sh.Dv);
  expect_near_rel(host(go, no), o, rtol, what);
}

const std::vector<LatentShape>& latent_shapes() {
  static const std::vector<LatentShape> v = {
      {3, 0, 4, 24, 16},      // prefill of 3 tokens, empty cache
      {1, 0, 2, 24, 16},      // one token, one visible row
      {4, 37, 3, 24, 16},     // several new tokens over a cache
      {5, 9, 3, 40, 40},      // Dv == Dk, odd task count (a partial block)
      {2, 50, 16, 576, 512},  // DeepSeek-V3's latent widths (kv_lora_rank 512 + rope 64)
  };
  return v;
}

TEST(CudaLatentAttention, MatchesTheCpuFloat) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 50;
  for (const LatentShape& s : latent_shapes()) check_latent<float>(s, 5e-5, seed += 10);
}

TEST(CudaLatentAttention, MatchesTheCpuDouble) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 60;
  for (const LatentShape& s : latent_shapes()) check_latent<double>(s, 1e-12, seed += 10);
  // Wider than the default 48 KiB of shared memory per block: the kernel opts in.
  check_latent<double>({2, 3, 5, 1024, 1000}, 1e-12, 99);
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
