// The CUDA runtime side of the backend: whether a GPU can be used, the per-process streams, the
// device allocator, and the error check every CUDA call goes through.
//
//   streams    one compute stream and one communication stream per process (created on first
//              use, non-blocking with respect to the legacy default stream). An op whose Exec has
//              no stream runs on the compute stream; the communicator and the overlapped pairs
//              order the two with events (stream_wait).
//   allocator  stream-ordered and caching: cudaMallocAsync / cudaFreeAsync on the compute stream
//              from the device's default memory pool, whose release threshold is raised to
//              "never", so freed blocks are reused by later allocations without a device
//              synchronisation or a trip to the driver (what PyTorch's caching allocator does by
//              hand; here CUDA's own pool does it).
//   pinned     page-locked host memory (cudaHostAlloc), cached by size: cudaHostAlloc pins page
//              by page and cudaFreeHost synchronises the device, so neither belongs in a step.
//              What pinned_allocator() (kernels/pinned.h) hands out once this process uses a GPU.
//
// Semantics of the CUDA ops: asynchronous on their stream. copy_to_host waits for the stream
// (its caller reads the host memory next); copy_from_host does not: it copies the source into a
// pinned staging slot on the host (so the caller may reuse its memory at once) and enqueues the
// upload from there (kernels/cuda/memory.cu); copy_to_host_start waits, when asked, for the copy
// only. The grouped GEMMs take their row offsets in host memory, so no op waits by itself.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <string>

#include "kernels/device.h"
#include "kernels/exec.h"

namespace moetron::kernels::gpu {

// A CUDA device is present and usable by this process (false on a machine without a GPU or
// driver: the reason says which).
bool available();
const std::string& unavailable_reason();

// Throws std::runtime_error naming the call, the CUDA error and where it happened.
void check(cudaError_t e, const char* what, const char* file, int line);
#define MOETRON_CUDA_CHECK(call) ::moetron::kernels::gpu::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: counts it (kernel_launches) and throws the launch error, if any.
void launched(const char* what, const char* file, int line);
#define MOETRON_CUDA_LAUNCHED(name) ::moetron::kernels::gpu::launched(name, __FILE__, __LINE__)
// How many of moetron's own kernels this process has launched (each MOETRON_CUDA_LAUNCHED; not
// cuBLASLt's, CUB's or NCCL's, nor memsets and copies). A launch costs the host microseconds, and
// the routed experts' GEMMs are microseconds of GPU time each, so launches per expert are what
// the grouped ops keep few (tests/test_cuda_fp8.cpp counts them).
int64_t kernel_launches();
// The same launches by the name their MOETRON_CUDA_LAUNCHED gives.
std::map<std::string, int64_t> launch_tally();

// Whether this process uses a GPU: a device was selected or the streams exist. Until then
// nothing of CUDA's is made on the host's behalf (a CPU run on a GPU machine makes no context).
bool in_use();

// Selects device local_rank mod the visible count for this process (cudaSetDevice), before the
// streams and the pool are made; throws, naming the reason, when no GPU is usable, or when the
// streams were already made on another device.
void select_device(int local_rank);

// Makes the process's device (select_device's, or the one its streams were made on) current on
// the calling thread, once per thread. The CUDA runtime's current device is per thread: another
// thread would otherwise make its events and pinned memory on device 0 (a context on GPU 0 for
// every rank of a node) and fail to record them on this device's streams. Called by stream_of and
// every entry below that makes an event, a stream or memory; cheap after the first call.
void bind_thread();

cudaStream_t compute_stream();
cudaStream_t comm_stream();
// The stream an op of `ex` runs on (the calling thread bound to the process's device).
inline cudaStream_t stream_of(const Exec& ex) {
  if (!ex.stream) return compute_stream();
  bind_thread();
  return static_cast<cudaStream_t>(ex.stream);
}
// The execution context of the compute stream (what Exec::on(Device::CUDA) means).
Exec exec();
// `waiter` runs nothing more until everything enqueued on `producer` so far has finished.
void stream_wait(cudaStream_t waiter, cudaStream_t producer);
// Blocks the host until the stream of `ex` is idle.
void synchronize(const Exec& ex);

// The host's waits for the device: every blocking wait of the backend goes through these two. They
// poll (cudaEventQuery) inside a hang-watchdog wait scope (parallel/watchdog.h) named `what` on
// group "gpu": a stream stuck behind an NCCL kernel whose peer has stopped then shows in the rank's
// heartbeat and ends the job after run.comm_timeout_s, where cudaStreamSynchronize would block
// unseen. wait_stream: until everything enqueued on `s` so far has run (an event recorded there,
// one per thread, reused).
void wait_event(cudaEvent_t ev, const char* what);
void wait_stream(cudaStream_t s, const char* what);

// The op profile's events (kernels/op_profile.h), as void* (a cudaEvent_t) so the profile needs no
// CUDA header: a timing event from a pool, recorded now on `s`; the seconds from `start` to `end`
// (waiting for `end`: wait_event); an event back to the pool.
void* timing_event(cudaStream_t s);
double timing_seconds(void* start, void* end);
void release_timing_event(void* ev);

// The caching, stream-ordered device allocator (installed as allocator(Device::CUDA)).
Allocator& device_allocator();

// The caching page-locked host allocator (device() == CPU; see "pinned" above).
// pinned_cached_bytes(): what it holds freed, ready for reuse.
Allocator& pinned_host_allocator();
size_t pinned_cached_bytes();

// The most blocks a grid-stride loop is launched with (launch.cuh's blocks_for): 65535 x 8, or
// MOETRON_GPU_MAX_BLOCKS when set (read once). The GPU tests set a small cap in one of their
// passes (scripts/test.sh): at test sizes one round of a loop covers everything, and with the cap
// every loop runs several rounds (a block's second tile, its shared memory and barriers reused)
// and a kernel launched by blocks_for that is not a loop shows. parse_max_grid_blocks: the cap a
// value of the variable names (null: the default); std::invalid_argument naming the variable and
// what it expects otherwise.
int64_t max_grid_blocks();
int64_t parse_max_grid_blocks(const char* value);

// Enough scratch in the context's workspace (or the stream's own when ex.workspace is null),
// device memory, grown only: the bf16 operand copies of a GEMM, cuBLASLt's workspace.
void* workspace(const Exec& ex, size_t bytes);

}  // namespace moetron::kernels::gpu
