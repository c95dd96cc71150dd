// Communicator: the one interface every parallel component talks through.
//
// Point-to-point send/recv (single, and batched the way NCCL groups them), all-reduce,
// reduce-scatter, all-gather, all-to-all (fixed and variable counts), barrier, and non-blocking
// forms that return a Request to wait on or poll. The MPI implementation (comm_mpi.cpp) serves
// host buffers; an NCCL implementation for device buffers (bootstrapped over MPI) will implement
// the same interface. Collectives take an element type (CommDType: fp32, bf16, fp64, int64, bytes;
// bf16 values are uint16_t bit patterns); thin typed overloads (float*, double*, int64_t*) keep
// call sites short. Point-to-point and variable all-to-all move bytes.
//
// Determinism: for a fixed group size, the MPI backend's reductions are deterministic (same
// inputs -> same bits on every run and on every rank); different group sizes sum in different
// orders. bf16 sums add two bf16 values in fp32 and round to nearest even at each reduction step
// (as NCCL does): with two ranks that is the fp32 sum rounded once; with P ranks, up to P-1
// roundings, in an order fixed by the group size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
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

// Element type of a collective. BF16 elements are uint16_t bit patterns (kernels/scalar.h);
// Bytes can be gathered but not reduced.
enum class CommDType : uint8_t { F32, BF16, F64, I64, Bytes };
inline size_t comm_dtype_size(CommDType t) {
  switch (t) {
    case CommDType::F32:
      return 4;
    case CommDType::BF16:
      return 2;
    case CommDType::F64:
    case CommDType::I64:
      return 8;
    case CommDType::Bytes:
      break;
  }
  return 1;
}
inline const char* comm_dtype_name(CommDType t) {
  switch (t) {
    case CommDType::F32:
      return "fp32";
    case CommDType::BF16:
      return "bf16";
    case CommDType::F64:
      return "fp64";
    case CommDType::I64:
      return "int64";
    case CommDType::Bytes:
      break;
  }
  return "bytes";
}

// A pending non-blocking operation. wait() blocks until it is complete; test() says, without
// blocking, whether it is complete. Whichever first finds it complete runs its completion step
// (e.g. an unpack) exactly once; after that both return at once (test() returns true). A
// default-constructed Request is already complete. Destroying a pending Request waits for it;
// while an exception unwinds the stack that wait's own failure is dropped (a communicator that
// failed fails every wait), so the first error reaches main and the communicator is aborted there,
// instead of a second exception ending the process in std::terminate.
class Request {
 public:
  // progress(block): with block, waits for completion and returns true; without, returns whether
  // the operation is complete. It runs the completion step before returning true, and is not
  // called again after it has returned true (or thrown).
  using Progress = std::function<bool(bool block)>;
  Request() = default;
  explicit Request(Progress progress) : progress_(std::move(progress)) {}
  Request(Request&& o) noexcept : progress_(std::move(o.progress_)) { o.progress_ = nullptr; }
  // assigning over a pending Request waits for it first
  Request& operator=(Request&& o) {
    if (this != &o) {
      wait();
      progress_ = std::move(o.progress_);
      o.progress_ = nullptr;
    }
    return *this;
  }
  ~Request() {
    if (std::uncaught_exceptions() == 0) {
      wait();
      return;
    }
    try {
      wait();
    } catch (...) {
    }
  }
  void wait() {
    if (progress_) {
      auto f = std::move(progress_);
      progress_ = nullptr;
      f(true);
    }
  }
  bool test() {
    if (!progress_) return true;
    auto f = std::move(progress_);
    progress_ = nullptr;
    if (f(false)) return true;
    progress_ = std::move(f);
    return false;
  }

 private:
  Progress progress_;
};

// `inner`, then `done` once, by whichever wait or test first finds it complete (an unpack, a copy
// up from staging; a lambda capturing what must stay alive until then).
template <class F>
Request then(Request inner, F done) {
  auto r = std::make_shared<Request>(std::move(inner));
  return Request([r, done](bool block) {
    if (block)
      r->wait();
    else if (!r->test())
      return false;
    done();
    return true;
  });
}

// One operation of a batch_isend_irecv. buf is const for a Send (use P2pOp::send / P2pOp::recv).
struct P2pOp {
  enum Kind { Send, Recv } kind;
  void* buf;
  size_t bytes;
  int peer;
  int tag;
  static P2pOp send(const void* buf, size_t bytes, int peer, int tag) {
    return {Send, const_cast<void*>(buf), bytes, peer, tag};
  }
  static P2pOp recv(void* buf, size_t bytes, int peer, int tag) {
    return {Recv, buf, bytes, peer, tag};
  }
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
  // Posts all n sends and receives together; the one Request completes when all have (as
  // torch.distributed.batch_isend_irecv). n == 0 gives a complete Request. Every op is checked
  // (peer in range, tag >= 0) before any is posted, so a bad batch throws CommError and posts
  // nothing. MPI: one MPI_Isend / MPI_Irecv per op, in the order given, then MPI_Waitall /
  // MPI_Testall. NCCL: ncclGroupStart(); ncclSend / ncclRecv(buf, bytes, ncclUint8, peer) per op;
  // ncclGroupEnd() on the communication stream, and the Request holds an event recorded after it
  // (test() = cudaEventQuery, wait() = event synchronize). NCCL has no tags: it matches the k-th
  // send from A to B with the k-th receive on B from A. Portable callers therefore give, per
  // (peer, direction), their sends and receives in the same order on both sides, with matching
  // tags; MPI also uses the tags, NCCL ignores them. Buffers must stay valid until completion.
  virtual Request batch_isend_irecv(const P2pOp* ops, size_t n) = 0;
  Request batch_isend_irecv(const std::vector<P2pOp>& ops) {
    return batch_isend_irecv(ops.data(), ops.size());
  }
  // Whether point-to-point messages match by (peer, tag), so a receive may be posted after later
  // messages from the same peer (MPI: true). False where the k-th send matches the k-th receive
  // whatever the tags (NCCL): callers then post in the same order on both sides.
  virtual bool tags_match() const { return true; }

  // ---- collectives (in place where it makes sense) ----
  // count is in elements of t (bytes for Bytes). Bytes cannot be reduced (CommError).
  virtual void all_reduce(void* data, size_t count, CommDType t, ReduceOp op = ReduceOp::Sum) = 0;
  // in [size * count] -> out [count]: block r of the element-wise reduction goes to rank r; in
  // place when out is in + rank * count (the result where this rank's block was; the other
  // blocks of in are then undefined). Non-blocking: both buffers stay untouched by the caller until
  // the Request completes (ZeRO-1 starts a bucket's reduction while the backward computes the
  // next). Every rank of the group posts its non-blocking collectives in the same order.
  virtual Request ireduce_scatter(const void* in, void* out, size_t count, CommDType t,
                                  ReduceOp op = ReduceOp::Sum) = 0;
  // Blocking: the non-blocking form waited for (a device communicator orders it on its streams
  // instead of waiting on the host).
  virtual void reduce_scatter(const void* in, void* out, size_t count, CommDType t,
                              ReduceOp op = ReduceOp::Sum) {
    ireduce_scatter(in, out, count, t, op).wait();
  }
  // in [count] -> out [size * count], rank r's block at r * count; in place when in is
  // out + rank * count (this rank's block is already where it belongs)
  virtual void all_gather(const void* in, void* out, size_t count, CommDType t) = 0;
  // typed forms (bf16 has none: a uint16_t pointer does not say it holds bf16)
  void all_reduce(float* d, size_t n, ReduceOp op = ReduceOp::Sum) {
    all_reduce(d, n, CommDType::F32, op);
  }
  void all_reduce(double* d, size_t n, ReduceOp op = ReduceOp::Sum) {
    all_reduce(d, n, CommDType::F64, op);
  }
  void all_reduce(int64_t* d, size_t n, ReduceOp op = ReduceOp::Sum) {
    all_reduce(d, n, CommDType::I64, op);
  }
  void reduce_scatter(const float* in, float* out, size_t count) {
    reduce_scatter(in, out, count, CommDType::F32, ReduceOp::Sum);
  }
  void all_gather(const float* in, float* out, size_t count) {
    all_gather(in, out, count, CommDType::F32);
  }
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
  // Lets the library advance the operations in flight, without waiting for any (MPI: one
  // MPI_Iprobe, which runs the progress engine); callable from another thread
  // (parallel/progress_thread.h). A no-op where the transport progresses by itself (NCCL).
  virtual void poke() {}

  // A sub-communicator: every rank of this communicator calls it (collectively); ranks with the
  // same color form one group, ordered by key. color < 0: no group (returns null).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // A short name for messages ("world", "pp", "dp", "ep", ...; "" until set): the hang watchdog
  // (parallel/watchdog.h) says which group a stalled wait is in. Set it before the first wait;
  // split() gives the new communicator this one's name.
  virtual void set_name(std::string name) { name_ = std::move(name); }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
};

// A Communicator over another one, owned or not, forwarding what a wrapper does not change
// (comm_checked.h, comm_stream.h). A name set on it names the wrapped one too.
class WrappedCommunicator : public Communicator {
 public:
  WrappedCommunicator(std::unique_ptr<Communicator> own, Communicator& c)
      : own_(std::move(own)), c_(c) {
    Communicator::set_name(c.name());
  }
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  void set_name(std::string name) override {
    c_.set_name(name);
    Communicator::set_name(std::move(name));
  }

 private:
  std::unique_ptr<Communicator> own_;

 protected:
  Communicator& c_;  // the wrapped communicator
};

// The process-wide MPI world: initialised on first use, finalised at exit. Works without mpirun
// (one rank). Requires MPI_THREAD_MULTIPLE (the checkpoint thread communicates while training
// does, and a progress thread will): if the MPI library provides less, it prints what it provided
// and what is needed, and aborts the job.
Communicator& world();
// This process's rank among the world's ranks on its node (MPI_Comm_split_type, shared memory):
// which of the node's GPUs it takes. Collective over the world on its first call.
int node_local_rank();
// How many of the world's ranks share this node (collective over the world on its first call).
int node_ranks();
// MPI's blocking waits (a Request's wait, send, recv, the blocking collectives): polling (off,
// the default) or sleeping (on): test, sleep 50 us, test again — a waiting rank leaves its core
// to the ranks that compute, for nodes with more ranks than cores (parallel.wait). The same MPI
// operations and algorithms either way: the data and its bits do not change.
void set_sleeping_waits(bool on);
bool sleeping_waits();
// Prints "moetron: error: rank R: message" and aborts every rank of the job (no hang).
[[noreturn]] void abort_all(const std::string& message);

}  // namespace moetron
