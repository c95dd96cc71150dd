// Exec: the execution context every op takes — which device runs it, on which stream, with which
// scratch. Ops dispatch on exec.device (kernels/dispatch.cpp), so a CPU and a CUDA implementation
// of one op live in one binary and can be tested against each other.
//   device     CPU and Guard run the CPU backend (Guard with its memory unlocked for the op);
//              CUDA the CUDA backend; Meta runs nothing (an op on it is an error).
//   stream     the backend's queue (cudaStream_t on CUDA); null on the CPU, whose ops complete
//              before they return.
//   workspace  scratch the backend may grow and reuse across ops of this stream (cuBLASLt's
//              workspace); null: the backend keeps its own (the CPU backend uses per-thread
//              scratch).
#pragma once

#include <cstdint>

#include "kernels/buffer.h"
#include "kernels/device.h"

namespace moetron {

struct Exec {
  Device device = Device::CPU;
  void* stream = nullptr;
  Buffer<uint8_t>* workspace = nullptr;
  static Exec on(Device d) { return Exec{d, nullptr, nullptr}; }
};

}  // namespace moetron
