// The host-wait counter: a process-wide count of the blocking device-to-host reads the ops made
// (kernels::copy_to_host from device memory: the CUDA backend's and the guard device's). On a GPU
// each one waits for everything enqueued on the stream before it, so the GPU runs dry until the
// host has enqueued the next work: the reads a step makes are the stream drains it pays for.
// Not counted: reads that wait for their copy only (copy_to_host_start), copies on the CPU device
// (a memcpy), and a communicator's waits (on NCCL an event of the communication stream, which
// follows the compute enqueued before the post, not after it). The guard device counts as a GPU
// does, so CPU tests can pin how many drains a training step makes (tests/mpi_GuardDevice.cpp); the
// trainer reports the step's pipeline count in metrics.jsonl (host_waits) on any device but the
// CPU.
#pragma once

#include <atomic>
#include <cstdint>

namespace moetron::kernels::host_waits {

namespace detail {
inline std::atomic<int64_t> count{0};
}  // namespace detail

inline void add() { detail::count.fetch_add(1, std::memory_order_relaxed); }
inline void reset() { detail::count.store(0, std::memory_order_relaxed); }
inline int64_t read() { return detail::count.load(std::memory_order_relaxed); }

}  // namespace moetron::kernels::host_waits
