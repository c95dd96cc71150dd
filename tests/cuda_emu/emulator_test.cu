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
// memory, the legacy stream's waits for blocking streams.
#include <gtest/gtest.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
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

__global__ void write_past_kernel(int* out, int n) { out[n + threadIdx.x] = 1; }

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
  // without the barrier thread 0 reads tile[63] before thread 63 wrote it: the fill (0xff bytes)
  reverse_kernel<false><<<1, 64, 64 * sizeof(int)>>>(d_in, d_out);
  const std::vector<int> got = back(d_out, 64);
  EXPECT_EQ(got[0], -1);
  EXPECT_NE(got, want);
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

}  // namespace
