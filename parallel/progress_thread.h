// An optional MPI progress thread (parallel.progress_poll_us > 0).
//
// MPI moves a non-blocking operation — an expert exchange's rows, a ZeRO-1 bucket's
// reduce-scatter (Open MPI's libnbc runs a collective as rounds) — only inside MPI calls. The
// executor calls progress between the pieces of the model's programs, which is enough where
// pieces are short; a long piece (a large GEMM) leaves the network idle until it ends. This
// thread pokes the library's progress engine every `period` (Communicator::poke: an MPI_Iprobe)
// so operations in flight advance while the main thread computes. It touches no application
// state: the dispatcher's own bookkeeping (posting row receives once counts arrive) stays on the
// main thread, in its progress(). Needs MPI_THREAD_MULTIPLE, which the runtime already requires
// (parallel/comm.h: world() aborts with a clear message where it is not provided). Off by
// default: on a box with fewer cores than ranks the thread competes with compute.
#pragma once

#include <atomic>
#include <chrono>
#include <thread>

#include "parallel/comm.h"

namespace moetron {

class ProgressThread {
 public:
  ProgressThread(Communicator& comm, std::chrono::microseconds period);
  ~ProgressThread();  // stops and joins
  ProgressThread(const ProgressThread&) = delete;
  ProgressThread& operator=(const ProgressThread&) = delete;
  int64_t pokes() const { return pokes_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> pokes_{0};
  std::thread thread_;
};

}  // namespace moetron
