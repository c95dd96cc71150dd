// The CUDA layout, token and embedding ops against their CPU twins: strided 2-D copies (split,
// concat, broadcast, accumulate), row-group sums, the token shift, and the embedding gather and
// scatter-add. All of them move data or add in the CPU's order, so the comparisons are bitwise.
// Skipped without a GPU.
#include <string>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

std::vector<int32_t> rand_ids(size_t n, int32_t hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, hi - 1);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = u(rng);
  return v;
}

// dst strided and pre-filled: the gaps between rows must survive, accumulate must add.
template <class T>
void check_copy_2d(int64_t rows, int64_t cols, int64_t repeat, int64_t src_ld, int64_t dst_ld,
                   bool accumulate) {
  const std::string what = "copy_2d rows " + std::to_string(rows) + " cols " +
                           std::to_string(cols) + " repeat " + std::to_string(repeat) +
                           (accumulate ? " accumulate" : "");
  const int64_t src_rows = (rows + repeat - 1) / repeat;
  const auto src = rand_vec<T>(src_rows * src_ld, 11 + rows);
  const auto dst0 = rand_vec<T>(rows * dst_ld, 12 + cols);
  Buffer<T> ds = dev(src), dd = dev(dst0);
  kernels::copy_2d<T>(gpu_exec(), ds.data(), src_ld, dd.data(), dst_ld, rows, cols, repeat,
                      accumulate);
  std::vector<T> want = dst0;
  cpu::copy_2d<T>(src.data(), src_ld, want.data(), dst_ld, rows, cols, repeat, accumulate);
  expect_equal(host(dd, want.size()), want, what);
}

// dense dst full of NaN: every element must be written
template <class T>
void check_copy_2d_writes_all(int64_t rows, int64_t cols, int64_t repeat) {
  const int64_t src_rows = (rows + repeat - 1) / repeat;
  const auto src = rand_vec<T>(src_rows * cols, 13);
  Buffer<T> ds = dev(src), dd = dev_garbage<T>(rows * cols);
  kernels::copy_2d<T>(gpu_exec(), ds.data(), cols, dd.data(), cols, rows, cols, repeat, false);
  std::vector<T> want(rows * cols);
  cpu::copy_2d<T>(src.data(), cols, want.data(), cols, rows, cols, repeat, false);
  expect_equal(host(dd, want.size()), want, "copy_2d into garbage");
}

template <class T>
void copy_2d_cases() {
  for (bool acc : {false, true}) {
    check_copy_2d<T>(1, 1, 1, 1, 1, acc);
    check_copy_2d<T>(37, 129, 1, 150, 131, acc);  // strided both sides
    check_copy_2d<T>(10, 70, 3, 70, 200, acc);    // broadcast, rows not a multiple of repeat
    check_copy_2d<T>(1000, 33, 1, 33, 33, acc);   // dense
    // DeepSeek-V3 MLA: the shared RoPE key (cols 512..575 of kv_a [T, 576]) broadcast to the 128
    // heads' [T, 128, 192] keys (cols 128..191): here over 16 tokens, pointers at the columns
    // are exercised by the ld (the column offset is the caller's pointer arithmetic).
    check_copy_2d<T>(16 * 128, 64, 128, 576, 192, acc);
  }
  check_copy_2d_writes_all<T>(37, 129, 1);
  check_copy_2d_writes_all<T>(100, 7, 4);
}

TEST(CudaLayout, Copy2dMatchesTheCpuExactly) {
  MOETRON_REQUIRE_GPU();
  copy_2d_cases<float>();
  copy_2d_cases<double>();
}

template <class T>
void check_sum_row_groups(int64_t rows, int64_t cols, int64_t group, int64_t src_ld,
                          int64_t dst_ld) {
  const std::string what = "sum_row_groups rows " + std::to_string(rows) + " cols " +
                           std::to_string(cols) + " group " + std::to_string(group);
  const auto src = rand_vec<T>(rows * group * src_ld, 21 + group);
  const auto dst0 = rand_vec<T>(rows * dst_ld, 22 + rows);
  Buffer<T> ds = dev(src), dd = dev(dst0);
  kernels::sum_row_groups<T>(gpu_exec(), ds.data(), src_ld, dd.data(), dst_ld, rows, cols, group);
  std::vector<T> want = dst0;
  cpu::sum_row_groups<T>(src.data(), src_ld, want.data(), dst_ld, rows, cols, group);
  // the same additions in the same order (g = 0.. from zero): bitwise for every group size
  expect_equal(host(dd, want.size()), want, what);

  if (dst_ld == cols) {  // every element written over garbage
    Buffer<T> dg = dev_garbage<T>(rows * cols);
    kernels::sum_row_groups<T>(gpu_exec(), ds.data(), src_ld, dg.data(), cols, rows, cols, group);
    expect_equal(host(dg, want.size()), want, what + " into garbage");
  }
}

template <class T>
void sum_row_groups_cases() {
  check_sum_row_groups<T>(1, 1, 1, 1, 1);
  check_sum_row_groups<T>(37, 129, 1, 150, 131);
  check_sum_row_groups<T>(10, 70, 3, 70, 70);
  check_sum_row_groups<T>(5, 33, 7, 40, 50);
  // DeepSeek-V3 MLA backward: 128 heads' RoPE-key gradients summed into the shared key
  check_sum_row_groups<T>(16, 64, 128, 192, 576);
}

TEST(CudaLayout, SumRowGroupsMatchesTheCpuExactly) {
  MOETRON_REQUIRE_GPU();
  sum_row_groups_cases<float>();
  sum_row_groups_cases<double>();
}

void check_shift(int64_t B, int64_t S, int64_t shift, bool with_pos) {
  const std::string what = "shift_tokens B " + std::to_string(B) + " S " + std::to_string(S) +
                           " shift " + std::to_string(shift) + (with_pos ? " pos" : "");
  const auto tokens = rand_ids(B * (S + 1), 1000, 31 + shift);
  Buffer<int32_t> dt = dev(tokens);
  Buffer<int32_t> ids = dev_garbage<int32_t>(B * S), tg = dev_garbage<int32_t>(B * S),
                  pos = dev_garbage<int32_t>(B * S);
  kernels::shift_tokens(gpu_exec(), dt.data(), B, S, shift, ids.data(), tg.data(),
                        with_pos ? pos.data() : nullptr);
  std::vector<int32_t> wi(B * S), wt(B * S), wp(B * S);
  cpu::shift_tokens(tokens.data(), B, S, shift, wi.data(), wt.data(),
                    with_pos ? wp.data() : nullptr);
  expect_equal(host(ids, B * S), wi, what + " ids");
  expect_equal(host(tg, B * S), wt, what + " targets");
  if (with_pos) expect_equal(host(pos, B * S), wp, what + " pos");
  if (shift >= 1) {  // the last `shift` targets are past the end: -1
    const auto t = host(tg, B * S);
    for (int64_t b = 0; b < B; ++b) EXPECT_EQ(t[b * S + S - 1], -1) << what;
  }
}

TEST(CudaTokens, ShiftTokensMatchesTheCpuExactly) {
  MOETRON_REQUIRE_GPU();
  for (int64_t shift : {0, 1, 3}) {
    check_shift(3, 17, shift, true);
    check_shift(3, 17, shift, false);
  }
  check_shift(1, 1, 0, true);
  check_shift(4, 4096, 1, true);  // a DeepSeek-V3 sequence length, MTP depth 1
}

template <class T>
void check_embedding(int64_t V, int64_t N, int64_t D) {
  const std::string what =
      "embedding V " + std::to_string(V) + " N " + std::to_string(N) + " D " + std::to_string(D);
  const auto ids = rand_ids(N, static_cast<int32_t>(V), 41 + N);  // N > V: repeated ids
  const auto table = rand_vec<T>(V * D, 42);
  Buffer<int32_t> di = dev(ids);
  Buffer<T> dtab = dev(table), out = dev_garbage<T>(N * D);
  kernels::embedding_forward<T>(gpu_exec(), di.data(), N, dtab.data(), D, out.data());
  std::vector<T> want(N * D);
  cpu::embedding_forward<T>(ids.data(), N, table.data(), D, want.data());
  expect_equal(host(out, want.size()), want, what + " forward");

  // backward accumulates into an existing gradient; per row the tokens are added in order
  // n = 0..N-1 on both sides (the GPU's sort by id is stable), so the sums are bitwise equal even
  // with repeated ids
  const auto dout = rand_vec<T>(N * D, 43);
  const auto dtable0 = rand_vec<T>(V * D, 44);
  Buffer<T> dd = dev(dout), dgrad = dev(dtable0);
  kernels::embedding_backward<T>(gpu_exec(), di.data(), N, dd.data(), D, dgrad.data());
  std::vector<T> wgrad = dtable0;
  cpu::embedding_backward<T>(ids.data(), N, dout.data(), D, wgrad.data());
  expect_equal(host(dgrad, wgrad.size()), wgrad, what + " backward");
}

template <class T>
void embedding_cases() {
  check_embedding<T>(1, 1, 1);
  check_embedding<T>(50, 300, 1);
  check_embedding<T>(50, 300, 129);
  check_embedding<T>(7, 1000, 33);       // heavy repetition
  check_embedding<T>(1000, 64, 7168);    // DeepSeek-V3's hidden size
  check_embedding<T>(5000, 4096, 2048);  // a mid-size micro-batch: runs of every length
}

TEST(CudaEmbedding, ForwardAndBackwardMatchTheCpuExactly) {
  MOETRON_REQUIRE_GPU();
  embedding_cases<float>();
  embedding_cases<double>();
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
