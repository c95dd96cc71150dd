// The CUDA emulator's own tests (tests/cuda_emu/device.h): kernels written in CUDA, rewritten by
// cu_to_cpp.py like the backend's, run through it. What it runs right (reductions through
// shuffles and shared memory, wmma tiles, launches written over several lines, line numbers), and
// the faults it must stop or report as a GPU would: a missing __syncthreads (the threads of a block
// run in an order that exposes it; the other order under the shuffled schedule), a barrier that
// cannot complete, a shuffle from a lane outside the exchange, launches past the device's limits,
// dynamic shared memory past 48 KiB without the opt-in, a write past a device allocation (ASan
// builds); and CUDA's stream semantics (tests/cuda_emu/streams.cpp): work runs late, a stream
// that does not wait for another's event reads its results before they are written, a block freed
// on one stream while another's work still uses it is gone (ASan), copies from and into pageable
// memory, the legacy stream's waits for blocking streams; the emulated NCCL's check that an
// input is not written while its operation is pending. Shared memory: static and dynamic, every
// byte 0xff when a block starts (none of the last block's values), an access past a variable or
// past the dynamic size (ASan). In the ThreadSanitizer build (MOETRON_TSAN), the race detector: a
// race inside a barrier interval is reported, in shared or global memory, between warps or lanes,
// across a shuffle (which orders no memory) and across blocks; barriers, __syncwarp and atomics
// are not races.
#include <gtest/gtest.h>
#include <mma.h>
#include <nccl.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "tests/cuda_emu/streams.h"

namespace {

constexpr int kKernelLine = __LINE__ + 1;
__global__ void line_kernel(int* out) { out[0] = __LINE__; }

// Sum over the block: shuffles within each warp, then shared memory across warps.
__global__ void block_sum_kernel(const int* in, int n, int* out) {
  __shared__ int warp_sums[32];
  int v = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += in[i] * static_cast<int>(blockIdx.x + 1);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += warp_sums[w];
    out[blockIdx.x] = s;
  }
}

// out = reversed in, through dynamic shared memory; with or without the barrier between the
// writes and the reads.
template <bool kBarrier>
__global__ void reverse_kernel(const int* in, int* out) {
  extern __shared__ __align__(16) int tile[];
  const int t = threadIdx.x, n = blockDim.x;
  tile[t] = in[t];
  if (kBarrier) __syncthreads();
  out[t] = tile[n - 1 - t];
}

// Lanes 0-15 wait at __syncwarp for the whole warp, lanes 16-31 at __syncthreads: on a GPU, a hang.
__global__ void split_barrier_kernel(int* out) {
  if (threadIdx.x < 16)
    __syncwarp();
  else
    __syncthreads();
  out[threadIdx.x] = 1;
}

// Lanes 0-15 exchange among themselves but read lane 20, which is not in the exchange.
__global__ void bad_shuffle_kernel(int* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, int(threadIdx.x), 20);
}

__global__ void smem_kernel(int* out) {
  extern __shared__ __align__(16) unsigned char bytes[];
  bytes[threadIdx.x] = 7;
  out[threadIdx.x] = bytes[threadIdx.x];
}

[[maybe_unused]] __global__ void write_past_kernel(int* out, int n) { out[n + threadIdx.x] = 1; }

// Static shared memory: what the block finds there before writing, then its own values; `past`
// writes one element past the variable (or, for the dynamic kind, past its size).
__global__ void static_smem_kernel(int* found, int* out, int past) {
  __shared__ int a[32], b[32];
  const int t = threadIdx.x, blk = blockIdx.x;
  found[blk * 32 + t] = a[t];
  __syncthreads();
  a[t] = blk * 100 + t;
  b[t] = -a[t];
  int* pa = a;  // through a pointer: UBSan's bounds check would stop an a[32] itself
  if (past && t == 0) pa[31 + past] = 1;
  __syncthreads();
  out[blk * 32 + t] = a[31 - t] + b[t];
}
[[maybe_unused]] __global__ void dynamic_past_kernel(int n) {
  extern __shared__ __align__(16) int dyn[];
  dyn[n + threadIdx.x] = 1;
}

// Lanes write their slot, then read the next lane's: after __syncwarp (ordered), after a shuffle
// (its value only: the memory is not ordered) or after nothing.
template <int kHow>  // 0: __syncwarp, 1: a shuffle, 2: nothing
__global__ void lanes_kernel(int* out) {
  __shared__ int slot[32];
  const int l = threadIdx.x;
  slot[l] = l;
  int v = 0;
  if (kHow == 0) __syncwarp();
  if (kHow == 1) v = __shfl_xor_sync(0xffffffffu, l, 1);
  out[l] = slot[(l + 1) % 32] + v;
}

// Thread b of block b writes out[0]: two blocks' threads with nothing ordering them.
__global__ void blocks_write_kernel(int* out) {
  if (static_cast<int>(threadIdx.x) == static_cast<int>(blockIdx.x)) out[0] = blockIdx.x;
}
// Every thread of every block adds to one counter, atomically; the host reads it after the grid.
__global__ void atomic_count_kernel(unsigned long long* n, float* f) {
  atomicAdd(n, 1ull);
  atomicAdd(f, 1.0f);
  atomicMax(reinterpret_cast<unsigned long long*>(n + 1), 1ull + blockIdx.x);
}

__global__ void fill_kernel(int* out, int v) { out[threadIdx.x] = v; }
__global__ void copy_kernel(const int* in, int* out) { out[threadIdx.x] = in[threadIdx.x]; }

// Each thread reads its left neighbour's slot without a barrier after the writes; each block
// reads what the block before it wrote (blocks have no order): races the fixed order hides.
__global__ void left_neighbour_kernel(int* across, int* out) {
  extern __shared__ __align__(16) int slot[];
  const int t = threadIdx.x, b = blockIdx.x;
  slot[t] = t + 1;
  out[b * blockDim.x + t] = t ? slot[t - 1] : 0;
  if (t == 0) across[b + 1] = across[b] + 1;
}

namespace wmma = nvcuda::wmma;
// one 16x16x16 tile: C = A B + C, A row-major, B column-major
__global__ void wmma_kernel(const __nv_bfloat16* A, const __nv_bfloat16* B, float* C) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::load_matrix_sync(a, A, 16);
  wmma::load_matrix_sync(b, B, 16);
  wmma::load_matrix_sync(c, C, 16, wmma::mem_row_major);
  wmma::mma_sync(c, a, b, c);
  wmma::store_matrix_sync(C, c, 16, wmma::mem_row_major);
}

template <class T>
T* device(const std::vector<T>& h) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, h.size() * sizeof(T)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  return static_cast<T*>(p);
}
template <class T>
std::vector<T> back(const T* d, size_t n) {
  std::vector<T> h(n);
  EXPECT_EQ(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return h;
}

// Each test starts from the default schedule (the shuffled one changes the order these expect).
class CudaEmulator : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(cuda_emu::set_schedule("lazy")); }
  void TearDown() override { cuda_emu::set_schedule("lazy"); }
};
using CudaEmulatorDeathTest = CudaEmulator;

// The race detector's verdict on run(): in the TSan build a child process runs it and must stop at
// a race report whose stacks match `report`; elsewhere it runs here (what the caller checks).
#if defined(MOETRON_TSAN)
constexpr bool kRaceDetector = true;
void expect_race(const std::function<void()>& run, const std::string& report) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // a fresh process reads TSAN_OPTIONS
  const char* was = std::getenv("TSAN_OPTIONS");
  const std::string old = was ? was : "";
  setenv("TSAN_OPTIONS", (old + ":halt_on_error=1").c_str(), 1);
  EXPECT_DEATH(
      {
        run();
        cudaDeviceSynchronize();
      },
      "WARNING: ThreadSanitizer: data race.*" + report);
  if (was)
    setenv("TSAN_OPTIONS", old.c_str(), 1);
  else
    unsetenv("TSAN_OPTIONS");
}
#else
constexpr bool kRaceDetector = false;
void expect_race(const std::function<void()>& run, const std::string&) { run(); }
#endif

// A stream (non-blocking unless flags say), destroyed with the object.
class Stream {
 public:
  explicit Stream(unsigned flags = cudaStreamNonBlocking) {
    EXPECT_EQ(cudaStreamCreateWithFlags(&s_, flags), cudaSuccess);
  }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  operator cudaStream_t() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

TEST_F(CudaEmulator, RewritesLaunchesAndKeepsLineNumbers) {
  int* d = device(std::vector<int>(1, 0));
  const int before = __LINE__;
  // clang-format off
  line_kernel<<<1,
                1>>>(
      d);
  // clang-format on
  EXPECT_EQ(__LINE__, before + 6);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(back(d, 1)[0], kKernelLine);
  cudaFree(d);
}

TEST_F(CudaEmulator, ShufflesAndSharedMemoryReduceEveryBlock) {
  std::vector<int> in(1000);
  std::iota(in.begin(), in.end(), 1);
  int* d_in = device(in);
  int* d_out = device(std::vector<int>(3, 0));
  block_sum_kernel<<<3, 128, 0, nullptr>>>(d_in, 1000, d_out);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(back(d_out, 3), (std::vector<int>{500500, 2 * 500500, 3 * 500500}));
  cudaFree(d_in);
  cudaFree(d_out);
}

TEST_F(CudaEmulator, AMissingBarrierShowsInTheResult) {
  std::vector<int> in(64);
  std::iota(in.begin(), in.end(), 0);
  std::vector<int> want(in.rbegin(), in.rend());
  int* d_in = device(in);
  int* d_out = device(std::vector<int>(64, 0));
  reverse_kernel<true><<<1, 64, 64 * sizeof(int)>>>(d_in, d_out);
  EXPECT_EQ(back(d_out, 64), want);
  // without the barrier thread 0 reads tile[63] before thread 63 wrote it: the fill (0xff bytes);
  // the race detector reports it whatever the order
  expect_race([&] { reverse_kernel<false><<<1, 64, 64 * sizeof(int)>>>(d_in, d_out); },
              "reverse_kernel<false>");
  if (!kRaceDetector) {
    const std::vector<int> got = back(d_out, 64);
    EXPECT_EQ(got[0], -1);
    EXPECT_NE(got, want);
  }
  cudaFree(d_in);
  cudaFree(d_out);
}

TEST_F(CudaEmulatorDeathTest, ABarrierThatCannotCompleteStopsTheProcess) {
  int* d = device(std::vector<int>(32, 0));
  EXPECT_DEATH(
      {
        split_barrier_kernel<<<1, 32>>>(d);
        cudaDeviceSynchronize();
      },
      "split_barrier_kernel.*hangs");
  cudaFree(d);
}

TEST_F(CudaEmulatorDeathTest, AShuffleFromALaneOutsideTheExchangeStopsTheProcess) {
  int* d = device(std::vector<int>(32, 0));
  EXPECT_DEATH(
      {
        bad_shuffle_kernel<<<1, 32>>>(d);
        cudaDeviceSynchronize();
      },
      "shuffles from lane 20.*not in the exchange");
  cudaFree(d);
}

TEST_F(CudaEmulator, LaunchesPastTheLimitsFailAsOnTheDevice) {
  int* d = device(std::vector<int>(2048, 0));
  (void)cudaGetLastError();
  smem_kernel<<<1, 1025>>>(d);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  // 64 KiB of dynamic shared memory: refused until the kernel opts in, then run
  smem_kernel<<<1, 32, 64 * 1024>>>(d);
  EXPECT_NE(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(
      cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024),
      cudaSuccess);
  smem_kernel<<<1, 32, 64 * 1024>>>(d);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(back(d, 32), std::vector<int>(32, 7));
  // past the device's opt-in limit (227 KiB): refused even so
  EXPECT_NE(
      cudaFuncSetAttribute(smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
      cudaSuccess);
  cudaFree(d);
}

TEST_F(CudaEmulatorDeathTest, AWritePastAnAllocationIsCaughtUnderASan) {
#if defined(__SANITIZE_ADDRESS__)
  int* d = device(std::vector<int>(100, 0));
  EXPECT_DEATH(
      {
        write_past_kernel<<<1, 4>>>(d, 99);
        cudaDeviceSynchronize();
      },
      "heap-buffer-overflow");
  cudaFree(d);
#else
  GTEST_SKIP() << "an ASan build catches it (scripts/test.sh's sanitizer build)";
#endif
}

TEST_F(CudaEmulator, WmmaTileIsTheProduct) {
  std::vector<__nv_bfloat16> A(256), B(256);
  std::vector<float> C(256), want(256);
  for (int i = 0; i < 256; ++i) {
    A[i] = __float2bfloat16(static_cast<float>(i % 7) - 3.f);
    B[i] = __float2bfloat16(static_cast<float>(i % 5) * 0.5f);
    C[i] = static_cast<float>(i % 3);
  }
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      float s = C[r * 16 + c];
      for (int k = 0; k < 16; ++k)
        s += __bfloat162float(A[r * 16 + k]) * __bfloat162float(B[c * 16 + k]);  // B col-major
      want[r * 16 + c] = s;
    }
  __nv_bfloat16 *dA = device(A), *dB = device(B);
  float* dC = device(C);
  wmma_kernel<<<1, 32>>>(dA, dB, dC);
  EXPECT_EQ(back(dC, 256), want);
  cudaFree(dA);
  cudaFree(dB);
  cudaFree(dC);
}

// Two non-blocking streams: a's fill, then b's copy of it. Without an event nothing orders them,
// and the emulated GPU runs b's copy first (only what the host waits for runs); with the event the
// copy runs after the fill. The legacy stream's copies (cudaMemcpy) do not wait for either.
TEST_F(CudaEmulator, AStreamThatDoesNotWaitForAnothersEventReadsBeforeTheWrite) {
  const Stream a, b;
  int* x = device(std::vector<int>(32, 0));
  int* y = device(std::vector<int>(32, 0));
  fill_kernel<<<1, 32, 0, a>>>(x, 5);
  copy_kernel<<<1, 32, 0, b>>>(x, y);
  EXPECT_EQ(cudaStreamQuery(b), cudaErrorNotReady);  // then it ran
  EXPECT_EQ(cudaGetLastError(), cudaErrorNotReady);  // kept as the last error, as CUDA does
  EXPECT_EQ(cudaStreamQuery(b), cudaSuccess);
  EXPECT_EQ(back(y, 32), std::vector<int>(32, 0));  // b read x before a wrote it
  EXPECT_EQ(back(x, 32), std::vector<int>(32, 0));  // nor has the legacy stream's copy waited
  ASSERT_EQ(cudaStreamSynchronize(a), cudaSuccess);
  EXPECT_EQ(back(x, 32), std::vector<int>(32, 5));

  cudaEvent_t ev;
  ASSERT_EQ(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(ev), cudaSuccess);  // never recorded: complete
  fill_kernel<<<1, 32, 0, a>>>(x, 7);
  ASSERT_EQ(cudaEventRecord(ev, a), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(b, ev, 0), cudaSuccess);
  ASSERT_EQ(cudaEventDestroy(ev), cudaSuccess);  // the wait keeps its record
  copy_kernel<<<1, 32, 0, b>>>(x, y);
  ASSERT_EQ(cudaStreamSynchronize(b), cudaSuccess);
  EXPECT_EQ(back(y, 32), std::vector<int>(32, 7));
  cudaFree(x);
  cudaFree(y);
}

TEST_F(CudaEmulator, EventsCompleteWhenTheirStreamGetsThere) {
  const Stream a;
  int* x = device(std::vector<int>(32, 0));
  cudaEvent_t first, second;
  ASSERT_EQ(cudaEventCreate(&first), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&second), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(first, a), cudaSuccess);
  fill_kernel<<<1, 32, 0, a>>>(x, 3);
  ASSERT_EQ(cudaEventRecord(second, a), cudaSuccess);
  float ms = 0;
  EXPECT_EQ(cudaEventElapsedTime(&ms, first, second), cudaErrorNotReady);
  (void)cudaGetLastError();
  ASSERT_EQ(cudaEventSynchronize(first), cudaSuccess);  // the stream up to `first` only
  EXPECT_EQ(cudaEventQuery(second), cudaErrorNotReady);
  (void)cudaGetLastError();
  EXPECT_EQ(cudaEventQuery(second), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, first, second), cudaSuccess);
  EXPECT_GE(ms, 0.f);
  EXPECT_EQ(back(x, 32), std::vector<int>(32, 3));
  cudaEventDestroy(first);
  cudaEventDestroy(second);
  cudaFree(x);
}

// From pageable memory a copy takes the bytes when called; from page-locked memory when it runs
// (the caller must not reuse it before: what kernels/cuda/memory.cu's staging ring waits for);
// into pageable memory it returns once done.
TEST_F(CudaEmulator, CopiesFromAndIntoHostMemoryAsCudaDoes) {
  const Stream a;
  int* x = device(std::vector<int>(32, 0));
  std::vector<int> pageable(32, 1);
  ASSERT_EQ(cudaMemcpyAsync(x, pageable.data(), 128, cudaMemcpyHostToDevice, a), cudaSuccess);
  std::fill(pageable.begin(), pageable.end(), 2);
  ASSERT_EQ(cudaStreamSynchronize(a), cudaSuccess);
  EXPECT_EQ(back(x, 32), std::vector<int>(32, 1));
  int* pinned = nullptr;
  ASSERT_EQ(cudaHostAlloc(reinterpret_cast<void**>(&pinned), 128, 0), cudaSuccess);
  std::fill(pinned, pinned + 32, 3);
  ASSERT_EQ(cudaMemcpyAsync(x, pinned, 128, cudaMemcpyHostToDevice, a), cudaSuccess);
  std::fill(pinned, pinned + 32, 4);
  ASSERT_EQ(cudaStreamSynchronize(a), cudaSuccess);
  EXPECT_EQ(back(x, 32), std::vector<int>(32, 4));
  fill_kernel<<<1, 32, 0, a>>>(x, 9);
  ASSERT_EQ(cudaMemcpyAsync(pageable.data(), x, 128, cudaMemcpyDeviceToHost, a), cudaSuccess);
  EXPECT_EQ(pageable, std::vector<int>(32, 9));  // no synchronisation needed
  fill_kernel<<<1, 32, 0, a>>>(x, 10);
  ASSERT_EQ(cudaMemcpyAsync(pinned, x, 128, cudaMemcpyDeviceToHost, a), cudaSuccess);
  EXPECT_EQ(pinned[0], 4);  // not yet
  ASSERT_EQ(cudaStreamSynchronize(a), cudaSuccess);
  EXPECT_EQ(pinned[0], 10);
  cudaFreeHost(pinned);
  cudaFree(x);
}

// A stream made without cudaStreamNonBlocking is ordered with the legacy default stream.
TEST_F(CudaEmulator, TheLegacyStreamWaitsForBlockingStreams) {
  const Stream c(cudaStreamDefault);
  int* x = device(std::vector<int>(32, 0));
  fill_kernel<<<1, 32, 0, c>>>(x, 6);
  EXPECT_EQ(back(x, 32), std::vector<int>(32, 6));
  cudaFree(x);
}

// cudaFreeAsync on one stream while another still has work that reads the block, with no event
// between them: the free runs first, and the read is ASan's heap-use-after-free.
TEST_F(CudaEmulatorDeathTest, AFreeOnOneStreamWhileAnotherStillReadsIsCaughtUnderASan) {
#if defined(__SANITIZE_ADDRESS__)
  const Stream a, b;
  int* y = device(std::vector<int>(32, 0));
  const auto use_then_free = [&](bool with_event) {
    int* x = nullptr;
    ASSERT_EQ(cudaMallocAsync(reinterpret_cast<void**>(&x), 128, a), cudaSuccess);
    fill_kernel<<<1, 32, 0, a>>>(x, 1);
    cudaEvent_t ev;
    ASSERT_EQ(cudaEventCreate(&ev), cudaSuccess);
    ASSERT_EQ(cudaEventRecord(ev, a), cudaSuccess);
    ASSERT_EQ(cudaStreamWaitEvent(b, ev, 0), cudaSuccess);
    copy_kernel<<<1, 32, 0, b>>>(x, y);
    if (with_event) {
      ASSERT_EQ(cudaEventRecord(ev, b), cudaSuccess);
      ASSERT_EQ(cudaStreamWaitEvent(a, ev, 0), cudaSuccess);
    }
    ASSERT_EQ(cudaFreeAsync(x, a), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(a), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(b), cudaSuccess);
    cudaEventDestroy(ev);
  };
  use_then_free(true);
  EXPECT_EQ(back(y, 32), std::vector<int>(32, 1));
  EXPECT_DEATH(use_then_free(false), "heap-use-after-free");
  cudaFree(y);
#else
  GTEST_SKIP() << "an ASan build catches it (scripts/test.sh's sanitizer build)";
#endif
}

// The fixed order runs thread t - 1 before thread t and block b - 1 before block b, which hides
// both races of left_neighbour_kernel; the shuffled schedule shows them.
TEST_F(CudaEmulator, TheShuffledScheduleShowsRacesTheFixedOrderHides) {
  constexpr int kBlocks = 16, kThreads = 64;
  std::vector<int> want(kBlocks * kThreads), across_want(kBlocks + 1);
  for (int i = 0; i < kBlocks * kThreads; ++i) want[i] = i % kThreads;
  std::iota(across_want.begin(), across_want.end(), 0);
  const auto run = [&](std::vector<int>& across) {
    int* d_across = device(std::vector<int>(kBlocks + 1, 0));
    int* d_out = device(std::vector<int>(kBlocks * kThreads, 0));
    left_neighbour_kernel<<<kBlocks, kThreads, kThreads * sizeof(int)>>>(d_across, d_out);
    std::vector<int> out = back(d_out, want.size());
    across = back(d_across, kBlocks + 1);
    cudaFree(d_across);
    cudaFree(d_out);
    return out;
  };
  std::vector<int> across;
  // the race detector reports the threads' race in the fixed order already (not the blocks': the
  // same thread of each block writes `across`, one fiber, which it cannot tell apart)
  expect_race([&] { run(across); }, "left_neighbour_kernel");
  if (kRaceDetector) return;
  EXPECT_EQ(run(across), want);
  EXPECT_EQ(across, across_want);
  ASSERT_TRUE(cuda_emu::set_schedule("shuffle:1"));
  EXPECT_NE(run(across), want);
  EXPECT_NE(across, across_want);
  EXPECT_FALSE(cuda_emu::set_schedule("shuffle:"));
  EXPECT_FALSE(cuda_emu::set_schedule("sorted"));
}

TEST_F(CudaEmulator, TheEagerScheduleRunsEachOperationWhenEnqueued) {
  ASSERT_TRUE(cuda_emu::set_schedule("eager"));
  const Stream a, b;
  int* x = device(std::vector<int>(32, 0));
  int* y = device(std::vector<int>(32, 0));
  fill_kernel<<<1, 32, 0, a>>>(x, 5);
  copy_kernel<<<1, 32, 0, b>>>(x, y);
  EXPECT_EQ(cudaStreamQuery(b), cudaSuccess);
  EXPECT_EQ(back(y, 32), std::vector<int>(32, 5));
  cudaFree(x);
  cudaFree(y);
}

// Static shared memory: each variable its own place, every byte 0xff when each block starts (the
// GPU keeps nothing for the next block: a kernel that read the last block's values would pass here
// by luck otherwise), its values the block's own.
TEST_F(CudaEmulator, StaticSharedMemoryIsTheBlocksOwnAndStartsAsNaN) {
  constexpr int kBlocks = 3;
  int* found = device(std::vector<int>(kBlocks * 32, 0));
  int* out = device(std::vector<int>(kBlocks * 32, 0));
  static_smem_kernel<<<kBlocks, 32>>>(found, out, 0);
  EXPECT_EQ(back(found, kBlocks * 32), std::vector<int>(kBlocks * 32, -1));
  std::vector<int> want(kBlocks * 32);
  for (int b = 0; b < kBlocks; ++b)
    for (int t = 0; t < 32; ++t) want[b * 32 + t] = (31 - t) - t;
  EXPECT_EQ(back(out, kBlocks * 32), want);
  cudaFree(found);
  cudaFree(out);
}

TEST_F(CudaEmulatorDeathTest, AnAccessPastSharedMemoryIsCaughtUnderASan) {
#if defined(__SANITIZE_ADDRESS__)
  int* found = device(std::vector<int>(32, 0));
  int* out = device(std::vector<int>(32, 0));
  EXPECT_DEATH(
      {
        static_smem_kernel<<<1, 32>>>(found, out, 1);
        cudaDeviceSynchronize();
      },
      "use-after-poison.*static_smem_kernel");
  EXPECT_DEATH(
      {
        dynamic_past_kernel<<<1, 4, 64 * sizeof(int)>>>(62);
        cudaDeviceSynchronize();
      },
      "use-after-poison.*dynamic_past_kernel");
  dynamic_past_kernel<<<1, 4, 64 * sizeof(int)>>>(60);  // the last four: in bounds
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaFree(found);
  cudaFree(out);
#else
  GTEST_SKIP() << "an ASan build catches it (scripts/test.sh's sanitizer build)";
#endif
}

// __syncwarp orders the lanes' shared-memory accesses; a shuffle passes its value and orders
// nothing else (CUDA's memory model), so reading another lane's slot after it is a race, as after
// nothing at all (the fixed order runs lane 0 to its read before lane 1 writes: -1).
TEST_F(CudaEmulator, SyncwarpOrdersLanesAndAShuffleDoesNot) {
  int* out = device(std::vector<int>(32, 0));
  std::vector<int> want(32);
  for (int l = 0; l < 32; ++l) want[l] = (l + 1) % 32;
  lanes_kernel<0><<<1, 32>>>(out);
  EXPECT_EQ(back(out, 32), want);
  expect_race([&] { lanes_kernel<1><<<1, 32>>>(out); }, "lanes_kernel<1>");
  expect_race([&] { lanes_kernel<2><<<1, 32>>>(out); }, "lanes_kernel<2>");
  if (!kRaceDetector) {
    EXPECT_EQ(back(out, 32)[0], -1);
  }
  cudaFree(out);
}

// Two blocks writing one word: a race on a GPU (blocks are not ordered), which the fixed order
// hides (the last block's value), and the race detector reports.
TEST_F(CudaEmulator, TwoBlocksWritingOneWordRace) {
  int* out = device(std::vector<int>(1, 0));
  expect_race([&] { blocks_write_kernel<<<2, 32>>>(out); }, "blocks_write_kernel");
  if (!kRaceDetector) {
    EXPECT_EQ(back(out, 1)[0], 1);
  }
  cudaFree(out);
}

// Atomics from every thread of every block are not races; the host reads the sums after the grid.
TEST_F(CudaEmulator, AtomicsAreNotRaces) {
  unsigned long long* n = device(std::vector<unsigned long long>(2, 0));
  float* f = device(std::vector<float>(1, 0.f));
  atomic_count_kernel<<<4, 96>>>(n, f);
  EXPECT_EQ(back(n, 2), (std::vector<unsigned long long>{4 * 96, 4}));
  EXPECT_EQ(back(f, 1)[0], 4.f * 96);
  cudaFree(n);
  cudaFree(f);
}

// The emulated NCCL (nccl.cpp) reads an operation's input when it is posted and checks, when the
// stream gets to it, that the bytes are still those: a GPU's NCCL reads them then. Reusing a send
// buffer on another stream after an event recorded behind the operation is right; without the
// event the write may run first, and the process stops naming the operation.
TEST_F(CudaEmulatorDeathTest, AnInputWrittenWhileItsOperationIsPendingStopsTheProcess) {
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  ncclComm_t comm = nullptr;
  ASSERT_EQ(ncclCommInitRankConfig(&comm, 1, id, 0, &config), ncclSuccess);
  const Stream compute, communication;
  int* x = device(std::vector<int>(32, 3));
  int* y = device(std::vector<int>(32, 0));
  cudaEvent_t done;
  ASSERT_EQ(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), cudaSuccess);
  const auto all_reduce_then_reuse = [&](bool wait, int refill) {
    ASSERT_EQ(ncclAllReduce(x, y, 32, ncclInt32, ncclSum, comm, communication), ncclSuccess);
    ASSERT_EQ(cudaEventRecord(done, communication), cudaSuccess);
    if (wait) {
      ASSERT_EQ(cudaStreamWaitEvent(compute, done, 0), cudaSuccess);
    }
    fill_kernel<<<1, 32, 0, compute>>>(x, refill);  // the send buffer reused
    ASSERT_EQ(cudaStreamSynchronize(compute), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(communication), cudaSuccess);
  };
  all_reduce_then_reuse(true, 5);
  EXPECT_EQ(back(y, 32), std::vector<int>(32, 3));
  EXPECT_EQ(back(x, 32), std::vector<int>(32, 5));
  EXPECT_DEATH(all_reduce_then_reuse(false, 7),
               "cuda_emu NCCL: the input of an all-reduce \\(128 bytes at .*\\) changed between");
  cudaEventDestroy(done);
  ncclCommDestroy(comm);
  cudaFree(x);
  cudaFree(y);
}

}  // namespace
