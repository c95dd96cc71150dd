// MPI implementation of the Communicator (host buffers). See comm.h.
//
// Errors return (MPI_ERRORS_RETURN) and become CommError naming the operation and rank.
// Counts above INT_MAX elements are split into several calls where the operation allows it
// (reductions); all-to-all-v uses byte displacements, so one call moves up to 2 GiB per peer.
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "parallel/comm.h"

namespace moetron {

namespace {

void check(int rc, const char* what, int rank) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw CommError(std::string("MPI ") + what + " failed on rank " + std::to_string(rank) + ": " +
                  std::string(msg, len));
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX; }

int to_int(size_t n, const char* what) {
  if (n > static_cast<size_t>(INT_MAX))
    throw CommError(std::string("MPI ") + what + ": count " + std::to_string(n) +
                    " exceeds INT_MAX");
  return static_cast<int>(n);
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void send(const void* buf, size_t bytes, int peer, int tag) override {
    check(MPI_Send(buf, to_int(bytes, "send"), MPI_BYTE, peer, tag, comm_), "send", rank_);
  }
  void recv(void* buf, size_t bytes, int peer, int tag) override {
    check(MPI_Recv(buf, to_int(bytes, "recv"), MPI_BYTE, peer, tag, comm_, MPI_STATUS_IGNORE),
          "recv", rank_);
  }
  Request isend(const void* buf, size_t bytes, int peer, int tag) override {
    MPI_Request r;
    check(MPI_Isend(buf, to_int(bytes, "isend"), MPI_BYTE, peer, tag, comm_, &r), "isend", rank_);
    return wait_request(r, "isend");
  }
  Request irecv(void* buf, size_t bytes, int peer, int tag) override {
    MPI_Request r;
    check(MPI_Irecv(buf, to_int(bytes, "irecv"), MPI_BYTE, peer, tag, comm_, &r), "irecv", rank_);
    return wait_request(r, "irecv");
  }

  void all_reduce(float* d, size_t n, ReduceOp op) override { reduce(d, n, MPI_FLOAT, op); }
  void all_reduce(double* d, size_t n, ReduceOp op) override { reduce(d, n, MPI_DOUBLE, op); }
  void all_reduce(int64_t* d, size_t n, ReduceOp op) override { reduce(d, n, MPI_INT64_T, op); }

  void reduce_scatter(const float* in, float* out, size_t count) override {
    check(MPI_Reduce_scatter_block(in, out, to_int(count, "reduce_scatter"), MPI_FLOAT, MPI_SUM,
                                   comm_),
          "reduce_scatter", rank_);
  }
  void all_gather(const float* in, float* out, size_t count) override {
    check(MPI_Allgather(in, to_int(count, "all_gather"), MPI_FLOAT, out, static_cast<int>(count),
                        MPI_FLOAT, comm_),
          "all_gather", rank_);
  }
  void all_to_all(const int64_t* in, int64_t* out, size_t count) override {
    check(MPI_Alltoall(in, to_int(count, "all_to_all"), MPI_INT64_T, out, static_cast<int>(count),
                       MPI_INT64_T, comm_),
          "all_to_all", rank_);
  }
  Request iall_to_all_v(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes) override {
    if (send_bytes.size() != static_cast<size_t>(size_) || recv_bytes.size() != send_bytes.size())
      throw CommError("all_to_all_v on rank " + std::to_string(rank_) + ": need " +
                      std::to_string(size_) + " counts per side");
    auto counts = std::make_shared<std::vector<int>>(4 * size_);
    int* sc = counts->data();
    int* sd = sc + size_;
    int* rc = sd + size_;
    int* rd = rc + size_;
    size_t so = 0, ro = 0;
    for (int p = 0; p < size_; ++p) {
      sc[p] = to_int(send_bytes[p], "all_to_all_v"), sd[p] = to_int(so, "all_to_all_v");
      rc[p] = to_int(recv_bytes[p], "all_to_all_v"), rd[p] = to_int(ro, "all_to_all_v");
      so += send_bytes[p], ro += recv_bytes[p];
    }
    MPI_Request r;
    check(MPI_Ialltoallv(send, sc, sd, MPI_BYTE, recv, rc, rd, MPI_BYTE, comm_, &r), "all_to_all_v",
          rank_);
    const int rank = rank_;
    return Request([r, counts, rank]() mutable {
      check(MPI_Wait(&r, MPI_STATUS_IGNORE), "all_to_all_v wait", rank);
    });
  }
  void barrier() override { check(MPI_Barrier(comm_), "barrier", rank_); }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm c;
    check(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &c), "split", rank_);
    if (c == MPI_COMM_NULL) return nullptr;
    return std::make_unique<MpiCommunicator>(c, true);
  }

 private:
  template <class T>
  void reduce(T* d, size_t n, MPI_Datatype t, ReduceOp op) {
    for (size_t off = 0; off < n; off += INT_MAX) {
      const int c = static_cast<int>(std::min<size_t>(n - off, INT_MAX));
      check(MPI_Allreduce(MPI_IN_PLACE, d + off, c, t, mpi_op(op), comm_), "all_reduce", rank_);
    }
  }
  Request wait_request(MPI_Request r, const char* what) {
    const int rank = rank_;
    return Request(
        [r, what, rank]() mutable { check(MPI_Wait(&r, MPI_STATUS_IGNORE), what, rank); });
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

struct Runtime {
  std::unique_ptr<MpiCommunicator> world;
  Runtime() {
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    world = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
  }
  ~Runtime() {
    world.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
};

}  // namespace

Communicator& world() {
  static Runtime rt;
  return *rt.world;
}

void abort_all(const std::string& message) {
  int init = 0;
  MPI_Initialized(&init);
  int rank = 0;
  if (init) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr, "moetron: error: rank %d: %s\n", rank, message.c_str());
  std::fflush(stderr);
  if (init) MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

}  // namespace moetron
