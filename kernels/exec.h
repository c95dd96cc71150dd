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
//
// HostRead: a device-to-host read in flight (kernels::copy_to_host_start). wait() returns once the
// bytes are in host memory: on a GPU, once the stream has reached the copy, not once the work
// enqueued after it has run, so the host can enqueue more before it waits. Complete from the
// start on the host backends, whose copies are done at once. A read dropped before its wait is
// waited for by its destructor (errors ignored), so the host memory it writes — pinned blocks
// go back to a cache that hands them out again — is never freed under a copy still running;
// declare a HostRead after the buffer it fills. Move-only: one owner waits.
#pragma once

#include <cstdint>
#include <memory>

#include "kernels/buffer.h"
#include "kernels/device.h"

namespace moetron {

struct Exec {
  Device device = Device::CPU;
  void* stream = nullptr;
  Buffer<uint8_t>* workspace = nullptr;
  static Exec on(Device d) { return Exec{d, nullptr, nullptr}; }
};

class HostRead {
 public:
  HostRead() = default;  // complete
  // pending: the backend's marker of the copy (a CUDA event); wait_for blocks until it is reached
  HostRead(std::shared_ptr<void> pending, void (*wait_for)(void*))
      : pending_(std::move(pending)), wait_for_(wait_for) {}
  HostRead(HostRead&& o) noexcept = default;
  HostRead& operator=(HostRead&& o) noexcept {
    if (this != &o) {
      settle();
      pending_ = std::move(o.pending_), wait_for_ = o.wait_for_;
    }
    return *this;
  }
  HostRead(const HostRead&) = delete;
  HostRead& operator=(const HostRead&) = delete;
  ~HostRead() { settle(); }
  void wait() {
    if (pending_) wait_for_(pending_.get());
    pending_.reset();
  }
  bool pending() const { return pending_ != nullptr; }

 private:
  void settle() noexcept {
    try {
      wait();
    } catch (...) {  // a failed device: nothing left to protect
      pending_.reset();
    }
  }
  std::shared_ptr<void> pending_;
  void (*wait_for_)(void*) = nullptr;
};

}  // namespace moetron
