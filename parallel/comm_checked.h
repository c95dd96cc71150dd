// A Communicator that checks where its buffers live before it hands them to the one it wraps: the
// seam between host and device data, proven on the CPU.
//
// A GPU run moves two kinds of data between ranks. Host memory — losses, counts, clocks, the
// gradient norm, the text samples — travels over MPI, which here is not CUDA-aware; device
// memory — activations, EP rows, gradients, parameters, expert loads — over NCCL, which reads
// only GPU memory. The trainer keeps the two on two sets of groups (process_groups.h). A guard run
// (kernels/device.h: the GPU's stand-in, memory that faults outside ops) wraps both sets: a host
// group refuses Guard memory, a device group refuses any other. A call site that sends device
// data through a host group, or the reverse, fails on the CPU with the group and the operation
// named, where on a GPU it would fault or read garbage. Zero-byte buffers are not checked.
#pragma once

#include <memory>

#include "parallel/comm.h"

namespace moetron {

enum class MemoryKind { Host, Device };

// `inner` wrapped (owned); split() wraps the inner split the same way.
std::unique_ptr<Communicator> checked_communicator(std::unique_ptr<Communicator> inner,
                                                   MemoryKind kind);
// The same over a communicator that outlives the wrapper (the world).
std::unique_ptr<Communicator> checked_communicator(Communicator& inner, MemoryKind kind);

}  // namespace moetron
