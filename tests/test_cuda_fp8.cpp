// The CUDA FP8 recipe against its CPU twin (kernels/cpu/fp8.h): the quantiser and the operand
// layouts bit for bit (codes, scales, dequantised values; NaN, inf, subnormal and zero tiles
// included), the Linear GEMMs (Fprop, Dgrad, Wgrad, their grouped forms) to fp32 summation order.
//
// The GEMMs run twice, once per implementation (MOETRON_FP8_GEMM, kernels/cuda/fp8_cuda.h):
//   kernel    the plain CUDA kernel: the recipe with exact products, so it agrees with the CPU to
//             fp32 summation order (rtol 1e-5 of the array's scale);
//   cublaslt  cuBLASLt's block-scaled GEMM where the shape allows (else the kernel): its 128-K
//             block partials come from Hopper's FP8 tensor cores, whose internal accumulation is
//             narrower than fp32 (DeepSeek-V3 §3.3.2), hence rtol 2e-3. The test also says whether
//             cuBLASLt actually ran for the shapes it supports (gemm_counts).
// Inputs have tile scales spread over 2^-5..2^3 (varied), so a scale read from the wrong tile
// (a layout error) moves results by O(1), far outside either tolerance. Skipped without a GPU.
#include <array>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/cuda/fp8_cuda.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

using fp8::cdiv;

constexpr double kRtolKernel = 1e-5, kRtolCublasLt = 2e-3;

// x [R,C] uniform in [-1,1) times 2^(e_block + e_row): e_block in [-3,3] per 128x128 block,
// e_row in [-2,0] per row and 128 columns, so 1x128, 128x128 and 128x1 scales all vary.
std::vector<float> varied(int64_t R, int64_t C, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> eb(-3, 3), er(-2, 0);
  const int64_t CB = cdiv(C, 128);
  std::vector<int> blk(static_cast<size_t>(cdiv(R, 128) * CB)), row(static_cast<size_t>(R * CB));
  for (int& e : blk) e = eb(rng);
  for (int& e : row) e = er(rng);
  std::vector<float> x(static_cast<size_t>(R * C));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      x[r * C + c] = std::ldexp(u(rng), blk[(r / 128) * CB + c / 128] + row[r * CB + c / 128]);
  return x;
}

// NaN of both signs, infinities, a subnormal, -0, huge values and an all-zero row segment.
void add_specials(std::vector<float>& x, int64_t C) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> v = {nan, -nan, inf, -inf, 1e-40f, -0.f, 1e30f, -3e38f, 672.f, 1e-7f};
  const size_t stride = std::max<size_t>(1, x.size() / (v.size() + 1));
  for (size_t i = 0; i < v.size() && i * stride < x.size(); ++i) x[i * stride + i % 3] = v[i];
  if (x.size() >= static_cast<size_t>(3 * C))
    for (int64_t c = 0; c < std::min<int64_t>(C, 200); ++c) x[2 * C + c] = 0.f;
}

// MOETRON_FP8_GEMM set for the scope of a test, the previous value restored after.
class PathSetting {
 public:
  explicit PathSetting(const char* value) {
    const char* old = std::getenv("MOETRON_FP8_GEMM");
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv("MOETRON_FP8_GEMM", value, 1);
  }
  ~PathSetting() {
    if (had_)
      setenv("MOETRON_FP8_GEMM", old_.c_str(), 1);
    else
      unsetenv("MOETRON_FP8_GEMM");
  }

 private:
  bool had_ = false;
  std::string old_;
};

struct Quantized {
  std::vector<uint8_t> q;
  std::vector<float> s;
};
Quantized cpu_quantize(const std::vector<float>& x, int64_t R, int64_t C, Tile t, bool pow2) {
  Quantized r;
  r.q.resize(static_cast<size_t>(R * C));
  r.s.resize(static_cast<size_t>(cdiv(R, t.rows) * cdiv(C, t.cols)));
  cpu::quantize(x.data(), R, C, t, pow2, r.q.data(), r.s.data());
  return r;
}
// G weights [R,C] of 128x128 blocks transposed, as a Linear's weight cache gives them to Dgrad
Quantized cpu_transpose(const Quantized& w, int64_t G, int64_t R, int64_t C) {
  Quantized t{std::vector<uint8_t>(w.q.size()), std::vector<float>(w.s.size())};
  cpu::transpose_e4m3_blocks(w.q.data(), w.s.data(), G, R, C, t.q.data(), t.s.data());
  return t;
}

// dY [off[G], N] of G row groups as the Wgrads read it (grouped_quantize_128x1_t): on the CPU, and
// on the GPU, checked bit for bit against the CPU's (codes and scales).
struct GradTiles {
  Quantized cpu;
  Buffer<uint8_t> q;
  Buffer<float> s;
};
GradTiles grad_tiles(const std::vector<float>& dY, const std::vector<int64_t>& off, int64_t N,
                     bool pow2, const std::string& what) {
  const int64_t G = static_cast<int64_t>(off.size()) - 1, rows = off.back();
  const int64_t ns = N * row_tile_offsets(off.data(), G).back();
  GradTiles t;
  t.cpu.q.resize(static_cast<size_t>(rows * N));
  t.cpu.s.resize(static_cast<size_t>(ns));
  cpu::grouped_quantize_128x1_t(off.data(), G, dY.data(), N, pow2, t.cpu.q.data(), t.cpu.s.data());
  Buffer<float> ddY = dev(dY);
  t.q = dev(std::vector<uint8_t>(static_cast<size_t>(rows * N)));  // rows before off[0]: no group's
  t.s = dev_garbage<float>(static_cast<size_t>(ns));
  kernels::grouped_quantize_128x1_t(gpu_exec(), off.data(), G, ddY.data(), N, pow2, t.q.data(),
                                    t.s.data());
  expect_equal(host(t.q, rows * N), t.cpu.q, what + ": dY's Wgrad codes");
  expect_equal(host(t.s, ns), t.cpu.s, what + ": dY's Wgrad scales");
  return t;
}

std::string tag(const std::string& op, int64_t a, int64_t b, int64_t c, bool pow2,
                const char* path) {
  return op + " " + std::to_string(a) + "x" + std::to_string(b) + "x" + std::to_string(c) +
         (pow2 ? " pow2" : " amax/448") + " path=" + path;
}

// ---- quantiser ---------------------------------------------------------------------------------

void check_quantize(const std::vector<float>& x, int64_t R, int64_t C, Tile t, bool pow2,
                    const std::string& what) {
  const Quantized want = cpu_quantize(x, R, C, t, pow2);
  const size_t ns = want.s.size();
  Buffer<float> dx = dev(x);
  Buffer<uint8_t> q = dev_garbage<uint8_t>(x.size());
  Buffer<float> s = dev_garbage<float>(ns);
  kernels::quantize(gpu_exec(), dx.data(), R, C, t, pow2, q.data(), s.data());
  expect_equal(host(q, x.size()), want.q, what + " codes");
  expect_equal(host(s, ns), want.s, what + " scales");
  // dequantize the CPU's codes on both
  std::vector<float> back(x.size());
  cpu::dequantize(want.q.data(), want.s.data(), R, C, t, back.data());
  Buffer<uint8_t> dq = dev(want.q);
  Buffer<float> ds = dev(want.s), dback = dev_garbage<float>(x.size());
  kernels::dequantize(gpu_exec(), dq.data(), ds.data(), R, C, t, dback.data());
  expect_equal(host(dback, x.size()), back, what + " dequantize");
}

const Tile kTiles[] = {{1, 128}, {128, 128}, {128, 1}, {1, 7},
                       {3, 5},   {32, 64},   {1, 1},   {200, 300}};

TEST(CudaFp8, QuantizeAndDequantizeMatchTheCpuBitwise) {
  MOETRON_REQUIRE_GPU();
  const int64_t shapes[][2] = {{300, 200}, {1, 1}, {129, 257}, {256, 384}, {5, 1000}};
  uint64_t seed = 10;
  for (const auto& sh : shapes)
    for (const Tile t : kTiles)
      for (const bool pow2 : {false, true}) {
        const auto x = varied(sh[0], sh[1], ++seed);
        check_quantize(x, sh[0], sh[1], t, pow2,
                       "quantize " + std::to_string(sh[0]) + "x" + std::to_string(sh[1]) +
                           " tile " + std::to_string(t.rows) + "x" + std::to_string(t.cols) +
                           (pow2 ? " pow2" : ""));
      }
}

TEST(CudaFp8, QuantizeSpecialValuesMatchTheCpuBitwise) {
  MOETRON_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const Tile t : kTiles)
    for (const bool pow2 : {false, true}) {
      auto x = varied(300, 200, ++seed);
      add_specials(x, 200);
      check_quantize(x, 300, 200, t, pow2,
                     "quantize specials tile " + std::to_string(t.rows) + "x" +
                         std::to_string(t.cols) + (pow2 ? " pow2" : ""));
    }
}

// The routed experts' inputs quantised as they are gathered (-1: a pad row of zeros), specials
// included: the CPU's codes and scales.
TEST(CudaFp8, QuantizeGatheredMatchesTheCpuBitwise) {
  MOETRON_REQUIRE_GPU();
  const int64_t R = 300, C = 200, A = 517;
  for (const bool pow2 : {false, true}) {
    auto x = varied(R, C, pow2 ? 7 : 8);
    add_specials(x, C);
    std::mt19937 g(5);
    std::vector<int64_t> idx(A);
    for (auto& i : idx) i = g() % 6 == 0 ? -1 : static_cast<int64_t>(g() % R);
    const int64_t ns = A * cdiv(C, 128);
    std::vector<uint8_t> want_q(A * C);
    std::vector<float> want_s(ns);
    cpu::quantize_gathered(x.data(), idx.data(), A, C, pow2, want_q.data(), want_s.data());
    Buffer<float> dx = dev(x);
    Buffer<int64_t> didx = dev(idx);
    Buffer<uint8_t> q = dev_garbage<uint8_t>(A * C);
    Buffer<float> s = dev_garbage<float>(ns);
    kernels::quantize_gathered(gpu_exec(), dx.data(), didx.data(), A, C, pow2, q.data(), s.data());
    expect_equal(host(q, A * C), want_q,
                 std::string("quantize_gathered codes") + (pow2 ? " pow2" : ""));
    expect_equal(host(s, ns), want_s,
                 std::string("quantize_gathered scales") + (pow2 ? " pow2" : ""));
  }
}

TEST(CudaFp8, DequantizeAllCodesMatchesTheCpuBitwise) {
  MOETRON_REQUIRE_GPU();
  const int64_t R = 130, C = 260;
  std::mt19937_64 rng(7);
  std::vector<uint8_t> q(R * C);
  for (auto& c : q) c = static_cast<uint8_t>(rng());
  for (const Tile t : {kTile1x128, kTile128x128, kTile128x1, Tile{3, 5}}) {
    std::vector<float> s = rand_vec<float>(cdiv(R, t.rows) * cdiv(C, t.cols), 8, 1e-3, 4.0);
    s[0] = std::numeric_limits<float>::infinity();  // 0 * inf and NaN codes: x86 NaN bits
    if (s.size() > 1) s[1] = 0.f;
    std::vector<float> want(R * C);
    cpu::dequantize(q.data(), s.data(), R, C, t, want.data());
    Buffer<uint8_t> dq = dev(q);
    Buffer<float> ds = dev(s), dx = dev_garbage<float>(R * C);
    kernels::dequantize(gpu_exec(), dq.data(), ds.data(), R, C, t, dx.data());
    expect_equal(host(dx, R * C), want,
                 "dequantize tile " + std::to_string(t.rows) + "x" + std::to_string(t.cols));
  }
}

TEST(CudaFp8, TokenMajorLayoutsMatchTheCpuBitwise) {
  MOETRON_REQUIRE_GPU();
  cudaStream_t st = stream_of(gpu_exec());
  const int64_t shapes[][2] = {{300, 200}, {128, 32}, {1000, 70}, {1, 1}, {257, 129}};
  uint64_t seed = 200;
  for (const auto& sh : shapes)
    for (const bool pow2 : {false, true})
      for (const bool specials : {false, true}) {
        const int64_t R = sh[0], C = sh[1], RB = cdiv(R, 128);
        const std::string what = std::to_string(R) + "x" + std::to_string(C) +
                                 (pow2 ? " pow2" : "") + (specials ? " specials" : "");
        auto x = varied(R, C, ++seed);
        if (specials) add_specials(x, C);
        // quantize_128x1_t
        std::vector<uint8_t> qT(R * C);
        std::vector<float> sT(C * RB);
        cpu::quantize_128x1_t(x.data(), R, C, pow2, qT.data(), sT.data());
        Buffer<float> dx = dev(x);
        Buffer<uint8_t> gq = dev_garbage<uint8_t>(R * C);
        Buffer<float> gs = dev_garbage<float>(C * RB);
        fp8::quantize_128x1_t(st, dx.data(), R, C, pow2, gq.data(), gs.data());
        expect_equal(host(gq, R * C), qT, "quantize_128x1_t codes " + what);
        expect_equal(host(gs, C * RB), sT, "quantize_128x1_t scales " + what);
        // requantize_1x128_to_128x1 of the 1x128 FP8 (inf scales, NaN codes with specials)
        const Quantized a = cpu_quantize(x, R, C, kTile1x128, pow2);
        cpu::requantize_1x128_to_128x1(a.q.data(), a.s.data(), R, C, pow2, qT.data(), sT.data());
        Buffer<uint8_t> aq = dev(a.q);
        Buffer<float> as = dev(a.s);
        Buffer<uint8_t> rq = dev_garbage<uint8_t>(R * C);
        Buffer<float> rs = dev_garbage<float>(C * RB);
        fp8::requantize_1x128_to_128x1(st, aq.data(), as.data(), R, C, pow2, rq.data(), rs.data());
        expect_equal(host(rq, R * C), qT, "requantize codes " + what);
        expect_equal(host(rs, C * RB), sT, "requantize scales " + what);
        // transpose_e4m3_blocks of the 128x128 FP8
        const Quantized w = cpu_quantize(x, R, C, kTile128x128, pow2);
        const int64_t nsb = cdiv(R, 128) * cdiv(C, 128);
        std::vector<uint8_t> wq(R * C);
        std::vector<float> ws(nsb);
        cpu::transpose_e4m3_blocks(w.q.data(), w.s.data(), R, C, wq.data(), ws.data());
        Buffer<uint8_t> wdq = dev(w.q);
        Buffer<float> wds = dev(w.s);
        Buffer<uint8_t> tq = dev_garbage<uint8_t>(R * C);
        Buffer<float> ts = dev_garbage<float>(nsb);
        fp8::transpose_e4m3_blocks(st, wdq.data(), wds.data(), 1, R, C, tq.data(), ts.data());
        expect_equal(host(tq, R * C), wq, "transpose_e4m3_blocks codes " + what);
        expect_equal(host(ts, nsb), ws, "transpose_e4m3_blocks scales " + what);
      }
}

// ---- GEMMs -------------------------------------------------------------------------------------

struct Shape {
  int64_t M, N, K;
};
// V3-like (an expert's up projection 7168 -> 2048 over 256 tokens), a tidy one, an odd one, and
// one cuBLASLt takes (multiples of 16) whose three reductions (400, 144, 272) each end in a part of
// a 128-block: a routed expert's Wgrad over its tokens looks like that
const Shape kShapes[] = {{256, 384, 512}, {100, 130, 200}, {256, 2048, 7168}, {272, 144, 400}};
// the V3 shape is left to a GPU under the emulator (test_cuda_util.h)
bool skipped(const Shape& s) { return emulated() && s.K == 7168; }

// cuBLASLt can take D [rows, cols] = A B^T reducing over red (fp8_gemm.cu's requirements)
bool lt_eligible(int64_t rows, int64_t cols, int64_t red) {
  return rows % 8 == 0 && cols % 8 == 0 && red % 16 == 0;
}

// Runs f under MOETRON_FP8_GEMM=path and checks which implementation ran: never cuBLASLt for
// "kernel"; cuBLASLt for "cublaslt" when the GEMM is eligible.
template <class F>
void on_path(const char* path, bool eligible, const std::string& what, F&& f) {
  PathSetting setting(path);
  const fp8::GemmCounts before = fp8::gemm_counts();
  f();
  const fp8::GemmCounts after = fp8::gemm_counts();
  if (std::string(path) == "kernel") {
    EXPECT_EQ(after.cublaslt, before.cublaslt) << what << ": cuBLASLt ran on the kernel path";
    EXPECT_GT(after.kernel, before.kernel) << what;
  } else if (eligible) {
    EXPECT_GT(after.cublaslt, before.cublaslt)
        << what
        << ": cuBLASLt did not run for a shape it supports (cuBLAS < 12.9, or its heuristic "
           "found no block-scaled FP8 algorithm): the kernel path ran instead";
  }
}

double rtol_of(const char* path) {
  return std::string(path) == "kernel" ? kRtolKernel : kRtolCublasLt;
}

void fprop_case(const Shape& s, bool pow2, const char* path) {
  const std::string what = tag("fp8_fprop", s.M, s.N, s.K, pow2, path);
  const auto X = varied(s.M, s.K, 1000 + s.K), W = varied(s.N, s.K, 2000 + s.N);
  const Quantized qx = cpu_quantize(X, s.M, s.K, kTile1x128, pow2);
  const Quantized qw = cpu_quantize(W, s.N, s.K, kTile128x128, pow2);
  std::vector<float> want(s.M * s.N);
  cpu::fp8_fprop(qx.q.data(), qx.s.data(), qw.q.data(), qw.s.data(), s.M, s.N, s.K, want.data());
  Buffer<uint8_t> dqx = dev(qx.q), dqw = dev(qw.q);
  Buffer<float> dsx = dev(qx.s), dsw = dev(qw.s), Y = dev_garbage<float>(s.M * s.N);
  on_path(path, lt_eligible(s.M, s.N, s.K), what, [&] {
    kernels::fp8_fprop(gpu_exec(), dqx.data(), dsx.data(), dqw.data(), dsw.data(), s.M, s.N, s.K,
                       Y.data());
  });
  const std::vector<float> got = host(Y, s.M * s.N);
  expect_near_rel(got, want, rtol_of(path), what);
  // run to run: the same bits (owner-computes kernel; cuBLASLt's algorithms are deterministic)
  Buffer<float> Y2 = dev_garbage<float>(s.M * s.N);
  {
    PathSetting setting(path);
    kernels::fp8_fprop(gpu_exec(), dqx.data(), dsx.data(), dqw.data(), dsw.data(), s.M, s.N, s.K,
                       Y2.data());
  }
  expect_equal(host(Y2, s.M * s.N), got, what + " (second run)");
}

void dgrad_case(const Shape& s, bool pow2, bool blocks128, bool accumulate, const char* path) {
  const std::string what = tag("fp8_linear_dgrad", s.M, s.N, s.K, pow2, path) +
                           (blocks128 ? " blocks128" : "") + (accumulate ? " accumulate" : "");
  const auto dY = varied(s.M, s.N, 3000 + s.N), W = varied(s.N, s.K, 4000 + s.K);
  const Quantized qw = cpu_transpose(cpu_quantize(W, s.N, s.K, kTile128x128, pow2), 1, s.N, s.K);
  const auto dX0 = rand_vec<float>(s.M * s.K, 5);
  std::vector<float> want = dX0;
  cpu::fp8_linear_dgrad(dY.data(), s.M, s.N, s.K, qw.q.data(), qw.s.data(), pow2, blocks128,
                        want.data(), accumulate);
  Buffer<float> ddY = dev(dY), dsw = dev(qw.s);
  Buffer<uint8_t> dqw = dev(qw.q);
  Buffer<float> dX = accumulate ? dev(dX0) : dev_garbage<float>(s.M * s.K);
  on_path(path, lt_eligible(s.M, s.K, s.N), what, [&] {
    kernels::fp8_linear_dgrad(gpu_exec(), ddY.data(), s.M, s.N, s.K, dqw.data(), dsw.data(), pow2,
                              blocks128, dX.data(), accumulate);
  });
  expect_near_rel(host(dX, s.M * s.K), want, rtol_of(path), what);
}

void wgrad_case(const Shape& s, bool pow2_dy, bool pow2_x, bool from_f32, const char* path) {
  const std::string what =
      tag(from_f32 ? "fp8_linear_wgrad_f32" : "fp8_linear_wgrad", s.M, s.N, s.K, pow2_dy, path) +
      (pow2_x ? " pow2_x" : " amax/448_x");
  const auto dY = varied(s.M, s.N, 5000 + s.M), X = varied(s.M, s.K, 6000 + s.K);
  const Quantized qx = cpu_quantize(X, s.M, s.K, kTile1x128, pow2_x);
  const auto dW0 = rand_vec<float>(s.N * s.K, 9);  // accumulated into
  std::vector<float> want = dW0;
  const GradTiles g = grad_tiles(dY, {0, s.M}, s.N, pow2_dy, what);
  if (from_f32)
    cpu::fp8_linear_wgrad_f32(g.cpu.q.data(), g.cpu.s.data(), X.data(), s.M, s.N, s.K, pow2_x,
                              want.data());
  else
    cpu::fp8_linear_wgrad(g.cpu.q.data(), g.cpu.s.data(), qx.q.data(), qx.s.data(), s.M, s.N, s.K,
                          pow2_x, want.data());
  Buffer<float> dX = dev(X), dsx = dev(qx.s), dW = dev(dW0);
  Buffer<uint8_t> dqx = dev(qx.q);
  on_path(path, lt_eligible(s.N, s.K, s.M), what, [&] {
    if (from_f32)
      kernels::fp8_linear_wgrad_f32(gpu_exec(), g.q.data(), g.s.data(), dX.data(), s.M, s.N, s.K,
                                    pow2_x, dW.data());
    else
      kernels::fp8_linear_wgrad(gpu_exec(), g.q.data(), g.s.data(), dqx.data(), dsx.data(), s.M,
                                s.N, s.K, pow2_x, dW.data());
  });
  expect_near_rel(host(dW, s.N * s.K), want, rtol_of(path), what);
}

void fprop_all(const char* path) {
  for (const Shape& s : kShapes)
    for (const bool pow2 : {false, true})
      if (!skipped(s)) fprop_case(s, pow2, path);
}
void dgrad_all(const char* path) {
  for (const Shape& s : kShapes)
    for (const bool pow2 : {false, true})
      if (!skipped(s)) dgrad_case(s, pow2, false, false, path);
  for (const Shape& s : {kShapes[0], kShapes[1]}) {
    dgrad_case(s, true, true, false, path);
    dgrad_case(s, false, false, true, path);
    dgrad_case(s, true, true, true, path);
  }
}
void wgrad_all(const char* path) {
  for (const Shape& s : kShapes)
    for (const bool pow2 : {false, true}) {
      if (skipped(s)) continue;
      wgrad_case(s, pow2, pow2, false, path);
      wgrad_case(s, pow2, pow2, true, path);
    }
  wgrad_case(kShapes[0], true, false, false, path);
  wgrad_case(kShapes[1], false, true, true, path);
}

TEST(CudaFp8, FpropKernelPathMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  fprop_all("kernel");
}
TEST(CudaFp8, FpropCublasLtPathMatchesTheCpu) {
  MOETRON_REQUIRE_REAL_GPU("cuBLASLt's FP8 GEMMs");
  fprop_all("cublaslt");
}
TEST(CudaFp8, DgradKernelPathMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  dgrad_all("kernel");
}
TEST(CudaFp8, DgradCublasLtPathMatchesTheCpu) {
  MOETRON_REQUIRE_REAL_GPU("cuBLASLt's FP8 GEMMs");
  dgrad_all("cublaslt");
}
TEST(CudaFp8, WgradKernelPathMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  wgrad_all("kernel");
}
TEST(CudaFp8, WgradCublasLtPathMatchesTheCpu) {
  MOETRON_REQUIRE_REAL_GPU("cuBLASLt's FP8 GEMMs");
  wgrad_all("cublaslt");
}

// ---- grouped -----------------------------------------------------------------------------------

void grouped_case(bool pow2, const char* path) {
  // group sizes 128, 0 (empty), 100, 64: cuBLASLt-eligible and odd groups side by side; the
  // groups start at row 20 (the rows before are no group's: left as they are)
  const std::vector<int64_t> off = {20, 148, 148, 248, 312};
  const int64_t G = 4, T = off[G], N = 256, K = 384;
  const int64_t NB = cdiv(N, 128), KB = cdiv(K, 128);
  const std::string what =
      std::string("grouped N=256 K=384") + (pow2 ? " pow2" : "") + " path=" + path;
  const auto X = varied(T, K, 71), dY = varied(T, N, 72);
  const auto W = varied(G * N, K, 73);  // G weights [N,K] stacked (N a multiple of 128)
  const Quantized qx = cpu_quantize(X, T, K, kTile1x128, pow2);
  const Quantized qw = cpu_quantize(W, G * N, K, kTile128x128, pow2);
  ASSERT_EQ(qw.s.size(), static_cast<size_t>(G * NB * KB));
  Buffer<uint8_t> dqx = dev(qx.q), dqw = dev(qw.q);
  Buffer<float> dsx = dev(qx.s), dsw = dev(qw.s), dX32 = dev(X), ddY = dev(dY);
  const bool eligible = true;  // the 128-row group is, for every GEMM
  {                            // Fprop
    std::vector<float> want(T * N);
    cpu::grouped_fp8_fprop(off.data(), G, qx.q.data(), qx.s.data(), qw.q.data(), qw.s.data(), N, K,
                           want.data());
    Buffer<float> Y = dev(std::vector<float>(T * N));
    on_path(path, eligible, what + " fprop", [&] {
      kernels::grouped_fp8_fprop(gpu_exec(), off.data(), G, dqx.data(), dsx.data(), dqw.data(),
                                 dsw.data(), N, K, Y.data());
    });
    expect_near_rel(host(Y, T * N), want, rtol_of(path), what + " fprop");
  }
  const Quantized qwt = cpu_transpose(qw, G, N, K);
  Buffer<uint8_t> dqwt = dev(qwt.q);
  Buffer<float> dswt = dev(qwt.s);
  for (const bool blocks : {false, true}) {  // Dgrad
    std::vector<float> want(T * K);
    cpu::grouped_fp8_linear_dgrad(off.data(), G, dY.data(), N, K, qwt.q.data(), qwt.s.data(), pow2,
                                  blocks, want.data());
    Buffer<float> dX = dev(std::vector<float>(T * K));
    on_path(path, eligible, what + " dgrad", [&] {
      kernels::grouped_fp8_linear_dgrad(gpu_exec(), off.data(), G, ddY.data(), N, K, dqwt.data(),
                                        dswt.data(), pow2, blocks, dX.data());
    });
    expect_near_rel(host(dX, T * K), want, rtol_of(path),
                    what + " dgrad" + (blocks ? " blocks128" : ""));
  }
  const GradTiles g = grad_tiles(dY, off, N, pow2, what);
  for (const bool from_f32 : {false, true}) {  // Wgrad (the empty group's dW stays as it was)
    const auto dW0 = rand_vec<float>(G * N * K, 74);
    std::vector<float> want = dW0;
    if (from_f32)
      cpu::grouped_fp8_linear_wgrad_f32(off.data(), G, g.cpu.q.data(), g.cpu.s.data(), X.data(), N,
                                        K, pow2, want.data());
    else
      cpu::grouped_fp8_linear_wgrad(off.data(), G, g.cpu.q.data(), g.cpu.s.data(), qx.q.data(),
                                    qx.s.data(), N, K, pow2, want.data());
    Buffer<float> dW = dev(dW0);
    on_path(path, eligible, what + " wgrad", [&] {
      if (from_f32)
        kernels::grouped_fp8_linear_wgrad_f32(gpu_exec(), off.data(), G, g.q.data(), g.s.data(),
                                              dX32.data(), N, K, pow2, dW.data());
      else
        kernels::grouped_fp8_linear_wgrad(gpu_exec(), off.data(), G, g.q.data(), g.s.data(),
                                          dqx.data(), dsx.data(), N, K, pow2, dW.data());
    });
    const std::vector<float> got = host(dW, G * N * K);
    expect_near_rel(got, want, rtol_of(path), what + (from_f32 ? " wgrad_f32" : " wgrad"));
    expect_equal(std::vector<float>(got.begin() + N * K, got.begin() + 2 * N * K),
                 std::vector<float>(dW0.begin() + N * K, dW0.begin() + 2 * N * K),
                 what + " wgrad: the empty group's dW is untouched");
  }
}

TEST(CudaFp8, GroupedKernelPathMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  for (const bool pow2 : {false, true}) grouped_case(pow2, "kernel");
}
TEST(CudaFp8, GroupedCublasLtPathMatchesTheCpu) {
  MOETRON_REQUIRE_REAL_GPU("cuBLASLt's FP8 GEMMs");
  for (const bool pow2 : {false, true}) grouped_case(pow2, "cublaslt");
}

// Every group's rows a multiple of 16, as the MoE layer pads them on a GPU (PrecisionPolicy::
// expert_row_align): every non-empty group's Fprop, Dgrad and Wgrad runs on cuBLASLt, none on the
// kernel, and the results match the CPU's.
TEST(CudaFp8, GroupsAlignedTo16AllRunOnCublasLt) {
  MOETRON_REQUIRE_REAL_GPU("cuBLASLt's FP8 GEMMs");
  const std::vector<int64_t> off = {0, 128, 128, 240, 304, 320};  // 128, 0, 112, 64, 16 rows
  const int64_t G = 5, T = off[G], N = 256, K = 384, groups = 4;
  const auto X = varied(T, K, 81), dY = varied(T, N, 82), W = varied(G * N, K, 83);
  const Quantized qx = cpu_quantize(X, T, K, kTile1x128, false);
  const Quantized qw = cpu_quantize(W, G * N, K, kTile128x128, false);
  Buffer<uint8_t> dqx = dev(qx.q), dqw = dev(qw.q);
  Buffer<float> dsx = dev(qx.s), dsw = dev(qw.s), ddY = dev(dY);
  PathSetting setting("cublaslt");
  const auto counted = [&](const char* what, auto&& f) {
    const fp8::GemmCounts before = fp8::gemm_counts();
    f();
    const fp8::GemmCounts after = fp8::gemm_counts();
    EXPECT_EQ(after.cublaslt - before.cublaslt, groups) << what;
    EXPECT_EQ(after.kernel, before.kernel) << what << ": a group fell back to the kernel";
  };
  std::vector<float> want(T * N);
  cpu::grouped_fp8_fprop(off.data(), G, qx.q.data(), qx.s.data(), qw.q.data(), qw.s.data(), N, K,
                         want.data());
  Buffer<float> Y = dev_garbage<float>(T * N);
  counted("fprop", [&] {
    kernels::grouped_fp8_fprop(gpu_exec(), off.data(), G, dqx.data(), dsx.data(), dqw.data(),
                               dsw.data(), N, K, Y.data());
  });
  expect_near_rel(host(Y, T * N), want, kRtolCublasLt, "aligned groups fprop");
  std::vector<float> want_dx(T * K);
  const Quantized qwt = cpu_transpose(qw, G, N, K);
  cpu::grouped_fp8_linear_dgrad(off.data(), G, dY.data(), N, K, qwt.q.data(), qwt.s.data(), false,
                                false, want_dx.data());
  Buffer<float> dX = dev_garbage<float>(T * K), dswt = dev(qwt.s);
  Buffer<uint8_t> dqwt = dev(qwt.q);
  counted("dgrad", [&] {
    kernels::grouped_fp8_linear_dgrad(gpu_exec(), off.data(), G, ddY.data(), N, K, dqwt.data(),
                                      dswt.data(), false, false, dX.data());
  });
  expect_near_rel(host(dX, T * K), want_dx, kRtolCublasLt, "aligned groups dgrad");
  const auto dW0 = rand_vec<float>(G * N * K, 84);
  std::vector<float> want_dw = dW0;
  const GradTiles g = grad_tiles(dY, off, N, false, "aligned groups");
  cpu::grouped_fp8_linear_wgrad(off.data(), G, g.cpu.q.data(), g.cpu.s.data(), qx.q.data(),
                                qx.s.data(), N, K, false, want_dw.data());
  Buffer<float> dW = dev(dW0);
  counted("wgrad", [&] {
    kernels::grouped_fp8_linear_wgrad(gpu_exec(), off.data(), G, g.q.data(), g.s.data(), dqx.data(),
                                      dsx.data(), N, K, false, dW.data());
  });
  expect_near_rel(host(dW, G * N * K), want_dw, kRtolCublasLt, "aligned groups wgrad");
}

// ---- cuBLASLt's scale layouts, and the launches per group ---------------------------------------

// The layouts cuBLASLt reads (its docs, "scaling factor layouts"), written out on the host: an
// operand [R, K] in 1x128 tiles (our scales at s + src, [R, KB]) as [KB, round_up(R, 4)]; one of
// RB x CB 128x128 blocks (ours [RB, CB]) as [RB, round_up(CB, 4)]; padding 1.
std::vector<float> doc_vec_layout(const std::vector<float>& s, int64_t src, int64_t R, int64_t K) {
  const int64_t KB = cdiv(K, 128), Rp = (R + 3) / 4 * 4;
  std::vector<float> out(KB * Rp);
  for (int64_t kb = 0; kb < KB; ++kb)
    for (int64_t r = 0; r < Rp; ++r) out[kb * Rp + r] = r < R ? s[src + r * KB + kb] : 1.f;
  return out;
}
std::vector<float> doc_blk_layout(const std::vector<float>& s, int64_t RB, int64_t CB) {
  const int64_t CBp = (CB + 3) / 4 * 4;
  std::vector<float> out(RB * CBp);
  for (int64_t rb = 0; rb < RB; ++rb)
    for (int64_t cb = 0; cb < CBp; ++cb) out[rb * CBp + cb] = cb < CB ? s[rb * CB + cb] : 1.f;
  return out;
}
std::vector<float> slice(const std::vector<float>& v, int64_t at, int64_t n) {
  return std::vector<float>(v.begin() + at, v.begin() + at + n);
}

// A grouped op makes the layouts of all its groups in a launch or two (fp8_gemm.cu): 70 operands
// of odd row counts and widths (two launches of 64 and 6), and three weights' blocks and their
// transposes, each layout 256-byte aligned and equal to the documented one, padding included; the
// quantisers' own cuBLASLt layouts likewise, and their refusal of layouts they cannot write.
TEST(CudaFp8, CublasLtScaleLayoutsOfManyOperandsMatchItsDocs) {
  MOETRON_REQUIRE_GPU();
  std::vector<fp8::LtVecOperand> ops;
  int64_t floats = 0;
  for (int64_t j = 0; j < 70; ++j) {
    const int64_t R = 1 + (j * 37) % 150, K = 16 * (1 + (j * 11) % 30);
    ops.push_back({floats, R, K});
    floats += R * cdiv(K, 128);
  }
  const std::vector<float> s = rand_vec<float>(floats, 91);
  const std::vector<int64_t> at = fp8::lt_vec_offsets(ops);
  ASSERT_EQ(at.size(), ops.size() + 1);
  Buffer<float> ds = dev(s), out = dev_garbage<float>(at.back());
  fp8::lt_vec_scales(stream_of(gpu_exec()), ds.data(), ops, out.data());
  const std::vector<float> got = host(out, at.back());
  for (size_t j = 0; j < ops.size(); ++j) {
    EXPECT_EQ(at[j] % 64, 0) << "operand " << j << " not 256-byte aligned";
    const std::vector<float> want = doc_vec_layout(s, ops[j].src, ops[j].rows, ops[j].K);
    expect_equal(slice(got, at[j], static_cast<int64_t>(want.size())), want,
                 "1x128 layout of operand " + std::to_string(j));
  }
  // the quantisers' second output: the scales they write, in cuBLASLt's layout
  {
    const int64_t R = 64, C = 300;  // 1x128 tiles of x [R, C]; 128x1 ones of x^T [C, R]
    const auto x = varied(R, C, 93);
    Buffer<float> dx = dev(x), sc = dev_garbage<float>(R * cdiv(C, 128));
    Buffer<float> lt = dev_garbage<float>(R * cdiv(C, 128));
    Buffer<uint8_t> q = dev_garbage<uint8_t>(R * C);
    fp8::quantize(stream_of(gpu_exec()), dx.data(), R, C, kTile1x128, false, q.data(), sc.data(),
                  lt.data());
    expect_equal(host(lt, R * cdiv(C, 128)), doc_vec_layout(host(sc, R * cdiv(C, 128)), 0, R, C),
                 "quantize's cuBLASLt layout");
    const int64_t Rt = 192, Ct = 96;  // q, sc read as [Rt, Ct]: requantised into x^T [Ct, Rt]
    Buffer<float> st = dev_garbage<float>(Ct * cdiv(Rt, 128)),
                  lt2 = dev_garbage<float>(Ct * cdiv(Rt, 128));
    Buffer<uint8_t> qt = dev_garbage<uint8_t>(Rt * Ct);
    fp8::requantize_1x128_to_128x1(stream_of(gpu_exec()), q.data(), sc.data(), Rt, Ct, true,
                                   qt.data(), st.data(), lt2.data());
    expect_equal(host(lt2, Ct * cdiv(Rt, 128)),
                 doc_vec_layout(host(st, Ct * cdiv(Rt, 128)), 0, Ct, Rt),
                 "requantize's cuBLASLt layout");
    fp8::quantize_128x1_t(stream_of(gpu_exec()), dx.data(), Rt / 4, Ct, false, qt.data(), st.data(),
                          lt2.data());
    expect_equal(host(lt2, Ct * cdiv(Rt / 4, 128)),
                 doc_vec_layout(host(st, Ct * cdiv(Rt / 4, 128)), 0, Ct, Rt / 4),
                 "quantize_128x1_t's cuBLASLt layout");
    // refused: a layout of other tiles, of rows % 4 != 0 (1x128: cuBLASLt's rows unpadded here),
    // of columns % 4 != 0 (the transposing ones: their rows are x's columns)
    cudaStream_t s0 = stream_of(gpu_exec());
    EXPECT_THROW(
        fp8::quantize(s0, dx.data(), R, C, kTile128x128, false, q.data(), sc.data(), lt.data()),
        std::invalid_argument);
    EXPECT_THROW(
        fp8::quantize(s0, dx.data(), R - 2, C, kTile1x128, false, q.data(), sc.data(), lt.data()),
        std::invalid_argument);
    EXPECT_THROW(fp8::quantize_128x1_t(s0, dx.data(), Rt / 4, Ct - 2, false, qt.data(), st.data(),
                                       lt2.data()),
                 std::invalid_argument);
    EXPECT_THROW(fp8::requantize_1x128_to_128x1(s0, q.data(), sc.data(), Rt, Ct - 1, true,
                                                qt.data(), st.data(), lt2.data()),
                 std::invalid_argument);
  }
  const int64_t G = 3, RB = 3, CB = 5;
  const std::vector<float> w = rand_vec<float>(G * RB * CB, 92);
  Buffer<float> dw = dev(w);
  const int64_t slot = fp8::lt_blk_slot(RB, CB);
  EXPECT_EQ(slot % 64, 0);
  Buffer<float> o = dev_garbage<float>(G * slot);
  fp8::lt_blk_scales(stream_of(gpu_exec()), dw.data(), G, RB, CB, o.data());
  const std::vector<float> got_w = host(o, G * slot);
  for (int64_t g = 0; g < G; ++g) {
    const std::vector<float> want = doc_blk_layout(slice(w, g * RB * CB, RB * CB), RB, CB);
    expect_equal(slice(got_w, g * slot, static_cast<int64_t>(want.size())), want,
                 "128x128 layout of weight " + std::to_string(g));
  }
}

// A Linear's G weights quantised in one launch (quantize_batched: each matrix's 128x128 blocks from
// its own first row; 1x128 tiles too), bit for bit against the CPU's quantize per matrix: 300-row
// matrices (partial blocks at each matrix's end), a single row, whole blocks.
TEST(CudaFp8, QuantizeBatchedMatchesTheCpuPerMatrixInOneLaunch) {
  MOETRON_REQUIRE_GPU();
  for (const auto& [G, R, C] : {std::array<int64_t, 3>{5, 300, 200}, {3, 1, 129}, {2, 128, 256}})
    for (const Tile t : {kTile128x128, kTile1x128})
      for (const bool pow2 : {false, true}) {
        const std::vector<float> x = varied(G * R, C, 91);
        const int64_t n = cdiv(R, t.rows) * cdiv(C, t.cols);
        Quantized want{std::vector<uint8_t>(G * R * C), std::vector<float>(G * n)};
        for (int64_t g = 0; g < G; ++g)
          cpu::quantize(x.data() + g * R * C, R, C, t, pow2, want.q.data() + g * R * C,
                        want.s.data() + g * n);
        Buffer<float> dx = dev(x), ds = dev_garbage<float>(G * n);
        Buffer<uint8_t> dq = dev_garbage<uint8_t>(G * R * C);
        const int64_t k0 = kernel_launches();
        kernels::quantize_batched(gpu_exec(), dx.data(), G, R, C, t, pow2, dq.data(), ds.data());
        EXPECT_EQ(kernel_launches() - k0, 1);
        const std::string what = "quantize_batched " + std::to_string(G) + " x " +
                                 std::to_string(R) + " x " + std::to_string(C) + " tile " +
                                 std::to_string(t.rows) + (pow2 ? " pow2" : "");
        expect_equal(host(dq, G * R * C), want.q, what + " codes");
        expect_equal(host(ds, G * n), want.s, what + " scales");
      }
}

// The weights' transposes that Dgrad reads, made once per weight version by a Linear's cache: G
// matrices (odd sizes: 300 x 200 codes, 3 x 2 blocks, and one matrix of a single row) bit for bit
// against the CPU, codes and scales, in two launches whatever G.
TEST(CudaFp8, WeightTransposeOfManyMatricesMatchesTheCpuInTwoLaunches) {
  MOETRON_REQUIRE_GPU();
  for (const auto& [G, R, C] : {std::array<int64_t, 3>{5, 300, 200}, {3, 1, 129}, {1, 128, 256}}) {
    const Quantized w =
        cpu_quantize(varied(G * R, C, 93), G * R, C, kTile128x128, false);  // R % 128: any codes
    Quantized ws{w.q, rand_vec<float>(G * cdiv(R, 128) * cdiv(C, 128), 94)};
    const Quantized want = cpu_transpose(ws, G, R, C);
    Buffer<uint8_t> dq = dev(ws.q), dqt = dev_garbage<uint8_t>(G * R * C);
    Buffer<float> ds = dev(ws.s), dst = dev_garbage<float>(ws.s.size());
    const int64_t k0 = kernel_launches();
    kernels::transpose_e4m3_blocks(gpu_exec(), dq.data(), ds.data(), G, R, C, dqt.data(),
                                   dst.data());
    EXPECT_EQ(kernel_launches() - k0, 2);
    const std::string what =
        "transpose of " + std::to_string(G) + " x " + std::to_string(R) + " x " + std::to_string(C);
    expect_equal(host(dqt, G * R * C), want.q, what + " codes");
    expect_equal(host(dst, static_cast<int64_t>(ws.s.size())), want.s, what + " scales");
  }
}

// The launches of a grouped op with n groups with rows (moetron's kernels, kernel_launches, and
// cuBLASLt's GEMMs, gemm_counts): per group only the GEMM. Around them, with cuBLASLt allowed,
// Fprop 2 (the layouts of every group's scales: X's, W's), Dgrad 3 (dY of every group quantised
// at once, the layouts of its scales and of every W^T's; W^T comes made), Wgrad 3 (X^T of every
// group requantised at once, the layouts of dY^T's and X^T's scales); on the kernel path 0, 1
// and 1. Each expert's GEMM is microseconds of GPU time, so these are the routed experts' host
// cost (per group they were 3, 6 and 4, then 1, 3 and 2).
TEST(CudaFp8, GroupedOpsLaunchFewKernelsPerGroup) {
  MOETRON_REQUIRE_GPU();
  const std::vector<int64_t> off = {0, 128, 128, 192, 208, 240, 240, 288};  // 5 with rows, 2 empty
  const int64_t G = 7, n = 5, T = off[G], N = 256, K = 384;
  const auto X = varied(T, K, 95), dY = varied(T, N, 96), W = varied(G * N, K, 97);
  const Quantized qx = cpu_quantize(X, T, K, kTile1x128, false);
  const Quantized qw = cpu_quantize(W, G * N, K, kTile128x128, false);
  Buffer<uint8_t> dqx = dev(qx.q), dqw = dev(qw.q);
  Buffer<float> dsx = dev(qx.s), dsw = dev(qw.s), ddY = dev(dY), Y = dev_garbage<float>(T * N);
  Buffer<float> dX = dev_garbage<float>(T * K), dW = dev(rand_vec<float>(G * N * K, 98));
  const GradTiles g = grad_tiles(dY, off, N, false, "launch count");
  const auto launches = [](auto&& f) {
    const int64_t k0 = kernel_launches(), l0 = fp8::gemm_counts().cublaslt;
    f();
    return kernel_launches() - k0 + fp8::gemm_counts().cublaslt - l0;
  };
  for (const char* path : {"cublaslt", "kernel"}) {
    PathSetting setting(path);
    const bool lt = std::string(path) == "cublaslt";
    EXPECT_EQ(launches([&] {
                kernels::grouped_fp8_fprop(gpu_exec(), off.data(), G, dqx.data(), dsx.data(),
                                           dqw.data(), dsw.data(), N, K, Y.data());
              }),
              lt ? n + 2 : n)
        << path << " fprop";
    EXPECT_EQ(launches([&] {
                kernels::grouped_fp8_linear_dgrad(gpu_exec(), off.data(), G, ddY.data(), N, K,
                                                  dqw.data(), dsw.data(), false, false, dX.data());
              }),
              lt ? n + 3 : n + 1)
        << path << " dgrad";
    EXPECT_EQ(launches([&] {
                kernels::grouped_fp8_linear_wgrad(gpu_exec(), off.data(), G, g.q.data(), g.s.data(),
                                                  dqx.data(), dsx.data(), N, K, false, dW.data());
              }),
              lt ? n + 3 : n + 1)
        << path << " wgrad";
  }
  synchronize(gpu_exec());
}

// The Wgrads' token-major dY of many experts: 150 groups (32 empty, some of more than 128 rows,
// 200 columns: not a multiple of the kernel's 32) bit for bit against the CPU, in one launch per
// 64 groups with rows (a group table as the kernel's argument; one launch per group before).
TEST(CudaFp8, GroupedTokenMajorQuantiserTakesOneLaunchPer64Groups) {
  MOETRON_REQUIRE_GPU();
  const int64_t G = 150, N = 200;
  std::vector<int64_t> off = {0};
  int64_t with_rows = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t rows = g % 13 == 5 || g % 7 == 2 ? 0 : (g * 37) % 300 + 1;
    off.push_back(off.back() + rows);
    with_rows += rows > 0;
  }
  ASSERT_EQ(with_rows, 118);
  const auto dY = varied(off.back(), N, 99);
  for (bool pow2 : {false, true}) {
    const int64_t k0 = kernel_launches();
    grad_tiles(dY, off, N, pow2, pow2 ? "150 groups pow2" : "150 groups");
    EXPECT_EQ(kernel_launches() - k0, (with_rows + 63) / 64);
  }
}

// ---- edges --------------------------------------------------------------------------------------

TEST(CudaFp8, EmptySizesAndThePathSetting) {
  MOETRON_REQUIRE_GPU();
  // K = 0: Y is an empty sum, written as zeros
  Buffer<uint8_t> q = dev(std::vector<uint8_t>(16, 0x38));
  Buffer<float> s = dev(std::vector<float>(16, 1.f)), Y = dev_garbage<float>(15);
  kernels::fp8_fprop(gpu_exec(), q.data(), s.data(), q.data(), s.data(), 3, 5, 0, Y.data());
  expect_equal(host(Y, 15), std::vector<float>(15, 0.f), "fp8_fprop K=0");
  // empty quantize / dequantize / GEMMs launch nothing and do not fail
  kernels::quantize(gpu_exec(), s.data(), 0, 7, kTile1x128, true, q.data(), s.data());
  kernels::dequantize(gpu_exec(), q.data(), s.data(), 7, 0, kTile128x128, Y.data());
  kernels::fp8_linear_wgrad(gpu_exec(), q.data(), s.data(), q.data(), s.data(), 0, 4, 4, true,
                            Y.data());
  synchronize(gpu_exec());
  // an unknown MOETRON_FP8_GEMM is an error, not a silent default
  PathSetting bad("fast");
  Buffer<float> Y2 = dev_garbage<float>(16);
  EXPECT_THROW(
      kernels::fp8_fprop(gpu_exec(), q.data(), s.data(), q.data(), s.data(), 4, 4, 4, Y2.data()),
      std::invalid_argument);
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
