// NCCL implementation of the Communicator over device buffers (parallel/comm_nccl.h explains the
// stream ordering, Request semantics and determinism).
//
// Shape of every operation: check NCCL's asynchronous error state; validate the arguments (peers,
// tags, counts, null buffers, bytes that cannot be reduced) so a bad call throws CommError before
// anything is posted; make the communication stream wait for the compute stream; post the NCCL
// call(s) (p2p in one ncclGroupStart/End group, closed even when a call in it fails); then either
// order the compute stream after the communication stream (blocking ops) or record an event for a
// Request (non-blocking ops). Errors name the operation, the rank and, for p2p, the peer.
#include "parallel/comm_nccl.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <exception>
#include <string>
#include <thread>

#include "kernels/cuda/runtime.h"
#include "parallel/watchdog.h"

namespace moetron {

namespace gpu = kernels::gpu;

namespace {

[[noreturn]] void fail(ncclResult_t r, const char* what, int rank, int peer, ncclComm_t comm) {
  std::string msg = std::string("NCCL ") + what + " failed on rank " + std::to_string(rank);
  if (peer >= 0) msg += " (peer " + std::to_string(peer) + ")";
  msg += std::string(": ") + ncclGetErrorString(r);
  if (comm) {
    const char* last = ncclGetLastError(comm);
    if (last && *last) msg += std::string(" (") + last + ")";
  }
  throw CommError(msg);
}

void check(ncclResult_t r, const char* what, int rank, int peer = -1, ncclComm_t comm = nullptr) {
  if (r != ncclSuccess) fail(r, what, rank, peer, comm);
}

ncclDataType_t nccl_type(CommDType t) {
  switch (t) {
    case CommDType::F32:
      return ncclFloat32;
    case CommDType::BF16:
      return ncclBfloat16;
    case CommDType::F64:
      return ncclFloat64;
    case CommDType::I64:
      return ncclInt64;
    case CommDType::Bytes:
      break;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(CommDType t, ReduceOp op, const char* what, int rank) {
  if (t == CommDType::Bytes)
    throw CommError(std::string(what) + " on rank " + std::to_string(rank) +
                    ": bytes cannot be reduced (give an element type)");
  return op == ReduceOp::Sum ? ncclSum : ncclMax;
}

[[noreturn]] void invalid(const char* what, int rank, const std::string& why) {
  throw CommError(std::string(what) + " on rank " + std::to_string(rank) + ": " + why);
}

}  // namespace

// The NCCL communicator and what goes with it; shared by the NcclCommunicator and its pending
// Requests, so a Request outliving its communicator still has a live ncclComm_t to watch.
struct NcclHandle {
  ncclComm_t comm = nullptr;
  int rank = 0, size = 1;
  int* barrier_word = nullptr;  // one int32 on the device, zero: what barrier() all-reduces
  mutable std::atomic<bool> failed{false};  // an asynchronous error was seen: abort, not destroy
  // the group the watchdog names in a host wait: the communicator's name ("ep", "dp"...), set
  // before its first operation (set_name); "nccl" until then
  std::string group = "nccl";

  explicit NcclHandle(ncclComm_t c) : comm(c) {
    check(ncclCommUserRank(comm, &rank), "CommUserRank", rank, -1, comm);
    check(ncclCommCount(comm, &size), "CommCount", rank, -1, comm);
    MOETRON_CUDA_CHECK(cudaMalloc(&barrier_word, sizeof(int)));
    // on the stream barrier() all-reduces it on (a plain cudaMemset runs on the legacy stream,
    // which the non-blocking comm stream does not wait for)
    MOETRON_CUDA_CHECK(cudaMemsetAsync(barrier_word, 0, sizeof(int), gpu::comm_stream()));
  }
  // Errors are ignored: at process exit the CUDA runtime may already be gone. ncclCommDestroy
  // lets what was posted finish first (and may wait for the node's other ranks: destroy a
  // communicator on every rank alike). So a handle that saw an asynchronous error, or that dies
  // while an exception unwinds the stack (a failed op on this rank, which the others may never
  // join), is aborted instead: ncclCommAbort cancels what is pending and waits for no peer, so the
  // error reaches main and the job ends rather than hangs.
  ~NcclHandle() {
    if (comm && (failed.load() || std::uncaught_exceptions() > 0))
      ncclCommAbort(comm);
    else if (comm)
      ncclCommDestroy(comm);
    if (barrier_word && cudaFree(barrier_word) != cudaSuccess) cudaGetLastError();
  }
  NcclHandle(const NcclHandle&) = delete;
  NcclHandle& operator=(const NcclHandle&) = delete;

  // Throws CommError if NCCL has seen an asynchronous error on this communicator (a failed peer,
  // a network error): the communicator is then unusable.
  void check_async(const char* what) const {
    ncclResult_t async = ncclSuccess;
    check(ncclCommGetAsyncError(comm, &async), "CommGetAsyncError", rank, -1, comm);
    if (async != ncclSuccess && async != ncclInProgress) {
      failed.store(true);
      fail(async, what, rank, -1, comm);
    }
  }
  // Whether `ev` has completed, without blocking (CUDA errors throw; NCCL's async errors too).
  bool done(cudaEvent_t ev, const char* what) const {
    const cudaError_t e = cudaEventQuery(ev);
    if (e == cudaSuccess) return true;
    if (e != cudaErrorNotReady) gpu::check(e, "cudaEventQuery", __FILE__, __LINE__);
    cudaGetLastError();  // "not ready" is not an error: keep it out of later launch checks
    check_async(what);
    return false;
  }
  // Blocks the host until `ev` has completed, polling so that a failed peer throws, not hangs.
  // The wait is recorded for the hang watchdog (parallel/watchdog.h) as a wait on this group.
  void wait(cudaEvent_t ev, const char* what) const {
    const watchdog::WaitScope waiting(what, -1, group.c_str());
    while (!done(ev, what)) std::this_thread::yield();
  }
};

namespace {

// A CUDA event on the communication stream, recorded at construction, destroyed with it.
struct CommEvent {
  cudaEvent_t ev = nullptr;
  CommEvent() {
    cudaStream_t s = gpu::comm_stream();  // first: binds this thread to the process's device
    MOETRON_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    const cudaError_t e = cudaEventRecord(ev, s);
    if (e != cudaSuccess) cudaEventDestroy(ev);
    MOETRON_CUDA_CHECK(e);
  }
  ~CommEvent() {
    if (cudaEventDestroy(ev) != cudaSuccess) cudaGetLastError();
  }
  CommEvent(const CommEvent&) = delete;
  CommEvent& operator=(const CommEvent&) = delete;
};

// The communication stream starts after everything given to the compute stream so far (the data
// the caller just produced there).
void enter(const NcclHandle& h, const char* what) {
  h.check_async(what);
  gpu::stream_wait(gpu::comm_stream(), gpu::compute_stream());
}
// The compute stream continues after everything posted to the communication stream so far.
void leave() { gpu::stream_wait(gpu::compute_stream(), gpu::comm_stream()); }

// One ncclGroupStart/End section of byte sends and receives on the communication stream.
// Zero-byte ops post nothing. A failing call still closes the group (the next operation must not
// join a dangling group); the error names its peer.
class Group {
 public:
  Group(const NcclHandle& h, const char* what) : h_(h), what_(what), s_(gpu::comm_stream()) {
    check(ncclGroupStart(), what_, h_.rank, -1, h_.comm);
  }
  ~Group() {
    if (!ended_) ncclGroupEnd();
  }
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;
  void send(const void* buf, size_t bytes, int peer) {
    if (bytes == 0 || r_ != ncclSuccess) return;
    r_ = ncclSend(buf, bytes, ncclUint8, peer, h_.comm, s_);
    if (r_ != ncclSuccess) peer_ = peer;
  }
  void recv(void* buf, size_t bytes, int peer) {
    if (bytes == 0 || r_ != ncclSuccess) return;
    r_ = ncclRecv(buf, bytes, ncclUint8, peer, h_.comm, s_);
    if (r_ != ncclSuccess) peer_ = peer;
  }
  void end() {
    ended_ = true;
    const ncclResult_t e = ncclGroupEnd();
    check(r_, what_, h_.rank, peer_, h_.comm);
    check(e, what_, h_.rank, -1, h_.comm);
  }

 private:
  const NcclHandle& h_;
  const char* what_;
  cudaStream_t s_;
  ncclResult_t r_ = ncclSuccess;
  int peer_ = -1;
  bool ended_ = false;
};

void check_p2p(const P2pOp& o, int size, const char* what, int rank, const std::string& prefix) {
  if (o.kind != P2pOp::Send && o.kind != P2pOp::Recv) invalid(what, rank, prefix + "unknown kind");
  if (o.peer < 0 || o.peer >= size)
    invalid(what, rank,
            prefix + "peer " + std::to_string(o.peer) + " outside 0.." + std::to_string(size - 1));
  if (o.tag < 0) invalid(what, rank, prefix + "negative tag " + std::to_string(o.tag));
  if (o.bytes > 0 && o.buf == nullptr) invalid(what, rank, prefix + "null buffer");
}

}  // namespace

NcclCommunicator::NcclCommunicator(const ncclUniqueId& id, int nranks, int rank,
                                   const Options& options) {
  if (nranks < 1 || rank < 0 || rank >= nranks)
    throw CommError("NCCL communicator: rank " + std::to_string(rank) + " outside 0.." +
                    std::to_string(nranks - 1));
  if (options.max_ctas < 0)
    throw CommError("NCCL communicator: max_ctas " + std::to_string(options.max_ctas) +
                    " is negative (0: NCCL's default)");
  gpu::comm_stream();  // a usable GPU (else a clear error) and the streams, before NCCL binds
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 1;  // calls return when done, whatever NCCL_COMM_BLOCKING says (no InProgress)
  if (options.max_ctas > 0) config.maxCTAs = options.max_ctas;
  ncclComm_t c = nullptr;
  check(ncclCommInitRankConfig(&c, nranks, id, rank, &config), "CommInitRankConfig", rank);
  try {
    h_ = std::make_shared<NcclHandle>(c);
  } catch (...) {
    ncclCommAbort(c);
    throw;
  }
}

NcclCommunicator::NcclCommunicator(std::shared_ptr<NcclHandle> h) : h_(std::move(h)) {}

NcclCommunicator::~NcclCommunicator() = default;

ncclUniqueId NcclCommunicator::unique_id() {
  ncclUniqueId id{};
  check(ncclGetUniqueId(&id), "GetUniqueId", 0);
  return id;
}

ncclComm_t NcclCommunicator::native() const { return h_->comm; }
int NcclCommunicator::rank() const { return h_->rank; }
int NcclCommunicator::size() const { return h_->size; }

// ---- point to point ----

// Validates every op, then posts them all as one group on the communication stream.
void NcclCommunicator::post_p2p(const P2pOp* ops, size_t n, const char* what, bool batch) {
  for (size_t i = 0; i < n; ++i)
    check_p2p(ops[i], h_->size, what, h_->rank, batch ? "op " + std::to_string(i) + ": " : "");
  enter(*h_, what);
  Group g(*h_, what);
  for (size_t i = 0; i < n; ++i) {
    if (ops[i].kind == P2pOp::Send)
      g.send(ops[i].buf, ops[i].bytes, ops[i].peer);
    else
      g.recv(ops[i].buf, ops[i].bytes, ops[i].peer);
  }
  g.end();
}

// A Request completing with everything posted to the communication stream so far.
Request NcclCommunicator::pending(const char* what) {
  auto ev = std::make_shared<CommEvent>();
  std::shared_ptr<NcclHandle> h = h_;
  return Request([ev, h, what](bool block) {
    if (!block) return h->done(ev->ev, what);
    h->wait(ev->ev, what);
    return true;
  });
}

void NcclCommunicator::send(const void* buf, size_t bytes, int peer, int tag) {
  std::lock_guard<std::mutex> lk(mu_);
  const P2pOp op = P2pOp::send(buf, bytes, peer, tag);
  post_p2p(&op, 1, "send", false);
  leave();
}

void NcclCommunicator::recv(void* buf, size_t bytes, int peer, int tag) {
  std::lock_guard<std::mutex> lk(mu_);
  const P2pOp op = P2pOp::recv(buf, bytes, peer, tag);
  post_p2p(&op, 1, "recv", false);
  leave();
}

Request NcclCommunicator::isend(const void* buf, size_t bytes, int peer, int tag) {
  std::lock_guard<std::mutex> lk(mu_);
  const P2pOp op = P2pOp::send(buf, bytes, peer, tag);
  post_p2p(&op, 1, "isend", false);
  return pending("isend");
}

Request NcclCommunicator::irecv(void* buf, size_t bytes, int peer, int tag) {
  std::lock_guard<std::mutex> lk(mu_);
  const P2pOp op = P2pOp::recv(buf, bytes, peer, tag);
  post_p2p(&op, 1, "irecv", false);
  return pending("irecv");
}

Request NcclCommunicator::batch_isend_irecv(const P2pOp* ops, size_t n) {
  if (n == 0) return Request();
  std::lock_guard<std::mutex> lk(mu_);
  post_p2p(ops, n, "batch_isend_irecv", true);
  return pending("batch_isend_irecv");
}

// ---- collectives (count == 0: nothing posted, on every rank alike) ----

void NcclCommunicator::all_reduce(void* d, size_t n, CommDType t, ReduceOp op) {
  const ncclRedOp_t o = nccl_op(t, op, "all_reduce", h_->rank);
  if (n == 0) return;
  if (d == nullptr) invalid("all_reduce", h_->rank, "null buffer");
  std::lock_guard<std::mutex> lk(mu_);
  enter(*h_, "all_reduce");
  check(ncclAllReduce(d, d, n, nccl_type(t), o, h_->comm, gpu::comm_stream()), "all_reduce",
        h_->rank, -1, h_->comm);
  leave();
}

// Posts ncclReduceScatter on the communication stream; false when there is nothing to post.
bool NcclCommunicator::post_reduce_scatter(const void* in, void* out, size_t count, CommDType t,
                                           ReduceOp op) {
  const ncclRedOp_t o = nccl_op(t, op, "reduce_scatter", h_->rank);
  if (count == 0) return false;
  if (in == nullptr || out == nullptr) invalid("reduce_scatter", h_->rank, "null buffer");
  enter(*h_, "reduce_scatter");
  check(ncclReduceScatter(in, out, count, nccl_type(t), o, h_->comm, gpu::comm_stream()),
        "reduce_scatter", h_->rank, -1, h_->comm);
  return true;
}

void NcclCommunicator::reduce_scatter(const void* in, void* out, size_t count, CommDType t,
                                      ReduceOp op) {
  std::lock_guard<std::mutex> lk(mu_);
  if (post_reduce_scatter(in, out, count, t, op)) leave();
}

Request NcclCommunicator::ireduce_scatter(const void* in, void* out, size_t count, CommDType t,
                                          ReduceOp op) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!post_reduce_scatter(in, out, count, t, op)) return Request();
  return pending("ireduce_scatter");
}

// In place when in == out + rank * count: NCCL recognises that layout itself.
void NcclCommunicator::all_gather(const void* in, void* out, size_t count, CommDType t) {
  if (count == 0) return;
  if (in == nullptr || out == nullptr) invalid("all_gather", h_->rank, "null buffer");
  std::lock_guard<std::mutex> lk(mu_);
  enter(*h_, "all_gather");
  check(ncclAllGather(in, out, count, nccl_type(t), h_->comm, gpu::comm_stream()), "all_gather",
        h_->rank, -1, h_->comm);
  leave();
}

// Grouped send/recv per peer; this rank's own block by a copy on the communication stream.
void NcclCommunicator::all_to_all(const int64_t* in, int64_t* out, size_t count) {
  if (count == 0) return;
  if (in == nullptr || out == nullptr) invalid("all_to_all", h_->rank, "null buffer");
  std::lock_guard<std::mutex> lk(mu_);
  enter(*h_, "all_to_all");
  const size_t bytes = count * sizeof(int64_t);
  const int me = h_->rank;
  MOETRON_CUDA_CHECK(cudaMemcpyAsync(out + me * count, in + me * count, bytes,
                                     cudaMemcpyDeviceToDevice, gpu::comm_stream()));
  Group g(*h_, "all_to_all");
  for (int p = 0; p < h_->size; ++p) {
    if (p == me) continue;
    g.send(in + p * count, bytes, p);
    g.recv(out + p * count, bytes, p);
  }
  g.end();
  leave();
}

Request NcclCommunicator::iall_to_all_v(const void* send, const std::vector<size_t>& send_bytes,
                                        void* recv, const std::vector<size_t>& recv_bytes) {
  const int me = h_->rank, n = h_->size;
  if (send_bytes.size() != static_cast<size_t>(n) || recv_bytes.size() != send_bytes.size())
    invalid("all_to_all_v", me, "need " + std::to_string(n) + " counts per side");
  size_t send_total = 0, recv_total = 0;
  for (int p = 0; p < n; ++p) send_total += send_bytes[p], recv_total += recv_bytes[p];
  if ((send_total > 0 && send == nullptr) || (recv_total > 0 && recv == nullptr))
    invalid("all_to_all_v", me, "null buffer");
  if (send_bytes[me] != recv_bytes[me])
    invalid("all_to_all_v", me,
            "sends " + std::to_string(send_bytes[me]) + " bytes to itself but expects " +
                std::to_string(recv_bytes[me]));
  std::lock_guard<std::mutex> lk(mu_);
  enter(*h_, "all_to_all_v");
  const char* s = static_cast<const char*>(send);
  char* r = static_cast<char*>(recv);
  size_t send_off = 0, recv_off = 0;  // of peer p's blocks
  for (int p = 0; p < me; ++p) send_off += send_bytes[p], recv_off += recv_bytes[p];
  if (send_bytes[me] > 0)
    MOETRON_CUDA_CHECK(cudaMemcpyAsync(r + recv_off, s + send_off, send_bytes[me],
                                       cudaMemcpyDeviceToDevice, gpu::comm_stream()));
  send_off = recv_off = 0;
  Group g(*h_, "all_to_all_v");
  for (int p = 0; p < n; ++p) {
    if (p != me) {
      g.send(s + send_off, send_bytes[p], p);
      g.recv(r + recv_off, recv_bytes[p], p);
    }
    send_off += send_bytes[p], recv_off += recv_bytes[p];
  }
  g.end();
  return pending("all_to_all_v");
}

// A one-int all-reduce, then a host wait: returns once every rank has entered the barrier and
// this rank's earlier work on both streams (the all-reduce waits for the compute stream) is done.
void NcclCommunicator::barrier() {
  std::lock_guard<std::mutex> lk(mu_);
  enter(*h_, "barrier");
  check(ncclAllReduce(h_->barrier_word, h_->barrier_word, 1, ncclInt32, ncclSum, h_->comm,
                      gpu::comm_stream()),
        "barrier", h_->rank, -1, h_->comm);
  CommEvent ev;
  h_->wait(ev.ev, "barrier");
}

std::unique_ptr<Communicator> NcclCommunicator::split(int color, int key) {
  std::lock_guard<std::mutex> lk(mu_);
  h_->check_async("split");
  ncclComm_t c = nullptr;
  // config null: the new communicator inherits this one's (max_ctas included)
  check(ncclCommSplit(h_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &c, nullptr), "split",
        h_->rank, -1, h_->comm);
  if (c == nullptr) return nullptr;
  std::shared_ptr<NcclHandle> h;
  try {
    h = std::make_shared<NcclHandle>(c);
  } catch (...) {
    ncclCommAbort(c);
    throw;
  }
  std::unique_ptr<Communicator> sub(new NcclCommunicator(std::move(h)));
  sub->set_name(name());  // a copy of a group is named as it (comm.h)
  return sub;
}

void NcclCommunicator::set_name(std::string name) {
  std::lock_guard<std::mutex> lk(mu_);
  h_->group = name.empty() ? "nccl" : name;
  Communicator::set_name(std::move(name));
}

}  // namespace moetron
