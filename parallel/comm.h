// Communicator: the one interface every parallel component talks through.
//
// Point-to-point send/recv, all-reduce, reduce-scatter, all-gather, all-to-all (fixed and
// variable counts), barrier, and non-blocking forms that return a Request to wait on. The MPI
// implementation (comm_mpi.cpp) serves host buffers; an NCCL implementation for device buffers
// (bootstrapped over MPI) will implement the same interface. Element types are explicit
// (float, double, int64_t); variable all-to-all moves bytes.
//
// Determinism: for a fixed group size, the MPI backend's reductions are deterministic (same
// inputs -> same bits on every run); different group sizes sum in different orders.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetron {

struct CommError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class ReduceOp { Sum, Max };

// A pending non-blocking operation. wait() completes it (and runs its completion step, e.g. an
// unpack); a default-constructed Request is already complete.
class Request {
 public:
  Request() = default;
  explicit Request(std::function<void()> wait_fn) : wait_(std::move(wait_fn)) {}
  Request(Request&&) = default;
  Request& operator=(Request&&) = default;
  ~Request() {
    if (wait_) wait_();
  }
  void wait() {
    if (wait_) {
      auto f = std::move(wait_);
      wait_ = nullptr;
      f();
    }
  }

 private:
  std::function<void()> wait_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // ---- point to point (blocking, and non-blocking) ----
  virtual void send(const void* buf, size_t bytes, int peer, int tag) = 0;
  virtual void recv(void* buf, size_t bytes, int peer, int tag) = 0;
  virtual Request isend(const void* buf, size_t bytes, int peer, int tag) = 0;
  virtual Request irecv(void* buf, size_t bytes, int peer, int tag) = 0;

  // ---- collectives (in place where it makes sense) ----
  virtual void all_reduce(float* data, size_t count, ReduceOp op = ReduceOp::Sum) = 0;
  virtual void all_reduce(double* data, size_t count, ReduceOp op = ReduceOp::Sum) = 0;
  virtual void all_reduce(int64_t* data, size_t count, ReduceOp op = ReduceOp::Sum) = 0;
  // in [size * count] -> out [count]: block r of the element-wise sum goes to rank r
  virtual void reduce_scatter(const float* in, float* out, size_t count) = 0;
  // in [count] -> out [size * count], rank r's block at r * count
  virtual void all_gather(const float* in, float* out, size_t count) = 0;
  // in [size * count] -> out [size * count]: block p goes to rank p
  virtual void all_to_all(const int64_t* in, int64_t* out, size_t count) = 0;
  // bytes per peer; per-peer blocks contiguous in rank order on both sides
  virtual Request iall_to_all_v(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                                const std::vector<size_t>& recv_bytes) = 0;
  void all_to_all_v(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                    const std::vector<size_t>& recv_bytes) {
    iall_to_all_v(send, send_bytes, recv, recv_bytes).wait();
  }
  virtual void barrier() = 0;

  // A sub-communicator: every rank of this communicator calls it (collectively); ranks with the
  // same color form one group, ordered by key. color < 0: no group (returns null).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

// The process-wide MPI world: initialised on first use (MPI_THREAD_MULTIPLE, so a progress
// thread can drive communication later), finalised at exit. Works without mpirun (one rank).
Communicator& world();
// Prints "moetron: error: rank R: message" and aborts every rank of the job (no hang).
[[noreturn]] void abort_all(const std::string& message);

}  // namespace moetron
