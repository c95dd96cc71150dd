// NCCL implementation of the Communicator (parallel/comm.h) over device buffers.
//
// Every buffer is GPU memory of this process's current device. Every operation is enqueued on the
// communication stream (kernels/cuda/runtime.h: gpu::comm_stream()) after that stream has been
// made to wait for the compute stream, so the data the caller just produced there is ready.
//
//   blocking ops     send, recv, all_reduce, reduce_scatter, all_gather, all_to_all: when the call
//                    returns, the operation is enqueued (not finished) and the compute stream is
//                    ordered after it (an event wait, no host synchronisation). Whatever the
//                    caller enqueues next on the compute stream sees the results, and a host read
//                    through kernels::copy_to_host (compute stream; it waits) sees them too. Only
//                    barrier() waits on the host: when it returns, every rank has entered it and
//                    this rank's earlier work on both streams has finished.
//   non-blocking     isend, irecv, batch_isend_irecv, iall_to_all_v return a Request holding an
//                    event recorded on the communication stream after the operation. test() =
//                    the event has completed (cudaEventQuery). wait() blocks the host until the
//                    event has completed: comm.h defines wait() as "complete", and the EP
//                    dispatcher reads received counts on the host after it. Once the host has seen
//                    the event complete, anything enqueued later on any stream runs after the
//                    operation, so no extra stream wait is needed. Until then the compute stream
//                    is NOT ordered after the operation: do not touch its buffers (or free them)
//                    before the Request completes.
//   waiting          the host waits by polling the event and NCCL's asynchronous error state
//                    (ncclCommGetAsyncError), so a failed peer or link surfaces as a CommError
//                    instead of a hang. Every call also checks that state before posting.
//
// Point to point: NCCL has no tags (comm.h: the k-th send from A to B matches the k-th receive on
// B from A); tags are validated (>= 0) and ignored. A single send/recv/isend/irecv is a group of
// one ncclSend/ncclRecv, which occupies the communication stream until its peer matches it: two
// ranks that each isend() then irecv() to each other deadlock for large messages (MPI would not).
// Post exchanges with batch_isend_irecv, whose ops form one ncclGroupStart/End group and progress
// together (sends and receives to this rank itself included: NCCL matches them inside a group).
// Zero-byte ops post nothing (on both sides, so the matching of the others is unchanged).
// All-to-all (fixed and variable): grouped ncclSend/ncclRecv per peer; this rank's own block is a
// cudaMemcpyAsync on the communication stream.
//
// One communication stream per process: the operations of every NcclCommunicator of the process
// (world, EP group, PP group, splits) run on it in the order posted, so every rank must post the
// operations of different communicators in a consistent order (as the schedules do), or a rank
// waiting in one communicator can block another's progress. NCCL communicators are not
// thread-safe: each NcclCommunicator serialises its own posting with a mutex.
//
// Determinism: NCCL's ring and tree all-reduce and reduce-scatter sum in an order fixed by the
// algorithm, the protocol and the channel count, which NCCL chooses from the topology, the rank
// count and the message size. For a fixed machine topology, rank count, NCCL version and
// environment (NCCL_ALGO, NCCL_PROTO, NCCL_MAX_CTAS...), the same inputs give the same bits on
// every run and on every rank (each element is reduced once, then the result is broadcast). NVLS
// (the reduction in the NVSwitch of H100/H200 systems) documents no such order: where bitwise
// reproducibility matters, NCCL_ALGO=Ring (or NCCL_NVLS_ENABLE=0) and NCCL_PROTO=Simple pin the
// choice. A different rank count or topology sums in a different order, and the order differs
// from the MPI backend's, so CPU and GPU runs agree to rounding only (bit for bit on one rank: a
// one-rank reduction is a copy). bf16 sums add in fp32 and round to bf16 per step (comm.h). Max
// is exact in any order.
//
// SM budget: Options::max_ctas caps the CTAs (hence SMs) an NCCL kernel uses (ncclConfig_t's
// maxCTAs); DeepSeek-V3 reserved 20 of 132 SMs for communication. 0 leaves NCCL's default. Split
// communicators inherit the parent's configuration. The cap is on the channels; NCCL's topology
// code rounds the point-to-point channel count (the EP all-to-all, the PP sends) to a power of
// two, so a cap that is not one (20) may let those kernels take more CTAs (up to 32) in some NCCL
// versions: prefer a power of two, and check with NCCL_DEBUG=INFO on the first multi-GPU run.
#pragma once

#include <nccl.h>

#include <memory>
#include <mutex>

#include "parallel/comm.h"

namespace moetron {

struct NcclOptions {
  int max_ctas = 0;  // ncclConfig_t::maxCTAs; 0: NCCL's default
};

struct NcclHandle;  // the ncclComm_t, shared by a communicator and its pending Requests

class NcclCommunicator final : public Communicator {
 public:
  using Options = NcclOptions;
  // Collective over the nranks processes given the same id: each calls it with its rank. The
  // process's GPU must already be selected (cudaSetDevice before the first CUDA call); one rank
  // per GPU (NCCL refuses two ranks on one device).
  NcclCommunicator(const ncclUniqueId& id, int nranks, int rank, const Options& options = {});
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  // ncclGetUniqueId, checked: the id rank 0 creates and hands to the others.
  static ncclUniqueId unique_id();
  ncclComm_t native() const;

  int rank() const override;
  int size() const override;

  void send(const void* buf, size_t bytes, int peer, int tag) override;
  void recv(void* buf, size_t bytes, int peer, int tag) override;
  Request isend(const void* buf, size_t bytes, int peer, int tag) override;
  Request irecv(void* buf, size_t bytes, int peer, int tag) override;
  Request batch_isend_irecv(const P2pOp* ops, size_t n) override;
  bool tags_match() const override { return false; }  // no tags: in-order matching

  using Communicator::all_gather;
  using Communicator::all_reduce;
  using Communicator::batch_isend_irecv;
  using Communicator::reduce_scatter;
  void all_reduce(void* data, size_t count, CommDType t, ReduceOp op) override;
  void reduce_scatter(const void* in, void* out, size_t count, CommDType t, ReduceOp op) override;
  Request ireduce_scatter(const void* in, void* out, size_t count, CommDType t,
                          ReduceOp op) override;
  void all_gather(const void* in, void* out, size_t count, CommDType t) override;
  void all_to_all(const int64_t* in, int64_t* out, size_t count) override;
  Request iall_to_all_v(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes) override;
  void barrier() override;
  // ncclCommSplit: color < 0 -> NCCL_SPLIT_NOCOLOR (returns null); the new one has this name
  std::unique_ptr<Communicator> split(int color, int key) override;
  // also the group the hang watchdog names in this communicator's host waits
  void set_name(std::string name) override;

 private:
  explicit NcclCommunicator(std::shared_ptr<NcclHandle> h);
  void post_p2p(const P2pOp* ops, size_t n, const char* what, bool batch);
  Request pending(const char* what);
  bool post_reduce_scatter(const void* in, void* out, size_t count, CommDType t, ReduceOp op);

  std::shared_ptr<NcclHandle> h_;
  std::mutex mu_;  // one thread posts at a time (NCCL communicators are not thread-safe)
};

// The NCCL communicator of an MPI group (parallel/comm_nccl_mpi.cpp, in moetron_parallel): rank 0
// creates the unique id, the group's all-gather carries it to every rank, and every rank
// constructs its NcclCommunicator (collective over the group). Ranks keep their group ranks.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& mpi_group,
                                                     const NcclOptions& options = {});

}  // namespace moetron
