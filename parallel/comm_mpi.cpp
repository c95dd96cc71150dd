// MPI implementation of the Communicator (host buffers). See comm.h.
//
// Errors return (MPI_ERRORS_RETURN) and become CommError naming the operation and rank.
// Counts above INT_MAX elements are split into several calls where the operation allows it
// (all-reduce); all-to-all-v uses byte displacements, so one call moves up to 2 GiB per peer.
// MPI has no bf16: bf16 travels as MPI_UINT16_T and is reduced by two user-defined, commutative
// ops (sum in fp32 rounded to nearest even, and max), created at start-up. Requests keep their
// MPI_Request(s) and complete through MPI_Wait(all) or MPI_Test(all). Start-up checks that MPI
// provides MPI_THREAD_MULTIPLE.
//
// Sleeping waits (set_sleeping_waits): Open MPI's blocking waits poll the progress engine (with
// sched_yield in the loop where oversubscribed). With more ranks than cores a polling waiter
// still takes core time from the ranks that compute, and how much varies run to run with the
// scheduler. A sleeping wait tests its requests and sleeps kWaitSleep between tests, leaving the
// core to the ranks that compute; a blocking collective first waits, sleeping, on an Ibarrier of
// its group (so the collective itself runs once every rank has arrived, with the algorithm and
// so the bits it always had). Send and recv post Isend / Irecv and wait the same way.
//
// Hang detection: every call that blocks (send, recv, the collectives, barrier, split, and a
// Request's blocking wait) holds a watchdog::WaitScope naming the operation, the peer's world
// rank or the group's world ranks, and the communicator's name (parallel/watchdog.h). It records;
// it does not change which MPI calls run.
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <utility>

#include "kernels/device.h"
#include "kernels/scalar.h"
#include "parallel/comm.h"
#include "parallel/watchdog.h"

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

// ---- bf16 reductions (user-defined ops; MPI calls them as inout[i] = in[i] op inout[i]) ----
MPI_Op g_bf16_sum = MPI_OP_NULL, g_bf16_max = MPI_OP_NULL;

void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}
// Symmetric in its arguments, so every rank gets the same bits whatever the pairing: a NaN
// operand gives the canonical quiet NaN, and max(-0, +0) = +0.
void bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) {
    const float x = bf16_to_f32(a[i]), y = bf16_to_f32(b[i]);
    if (x != x || y != y)
      b[i] = 0x7fc0;
    else if (x == y)
      b[i] = static_cast<uint16_t>(a[i] & b[i]);
    else if (x > y)
      b[i] = a[i];
  }
}

MPI_Datatype mpi_type(CommDType t) {
  switch (t) {
    case CommDType::F32:
      return MPI_FLOAT;
    case CommDType::BF16:
      return MPI_UINT16_T;
    case CommDType::F64:
      return MPI_DOUBLE;
    case CommDType::I64:
      return MPI_INT64_T;
    case CommDType::Bytes:
      break;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(CommDType t, ReduceOp op, const char* what, int rank) {
  if (t == CommDType::Bytes)
    throw CommError(std::string(what) + " on rank " + std::to_string(rank) +
                    ": bytes cannot be reduced (give an element type)");
  if (t == CommDType::BF16) return op == ReduceOp::Sum ? g_bf16_sum : g_bf16_max;
  return op == ReduceOp::Sum ? MPI_SUM : MPI_MAX;
}

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "an unknown thread level";
}

// ---- sleeping waits ----
constexpr auto kWaitSleep = std::chrono::microseconds(50);
std::atomic<bool> g_sleeping_waits{false};

void wait_all(int n, MPI_Request* rs, const char* what, int rank) {
  if (!g_sleeping_waits.load(std::memory_order_relaxed)) {
    check(n == 1 ? MPI_Wait(rs, MPI_STATUS_IGNORE) : MPI_Waitall(n, rs, MPI_STATUSES_IGNORE), what,
          rank);
    return;
  }
  for (int done = 0;;) {
    check(MPI_Testall(n, rs, &done, MPI_STATUSES_IGNORE), what, rank);
    if (done) return;
    std::this_thread::sleep_for(kWaitSleep);
  }
}

// Before a blocking collective: with sleeping waits, wait (sleeping) until every rank of the
// group has arrived.
void arrive(MPI_Comm comm, const char* what, int rank) {
  if (!g_sleeping_waits.load(std::memory_order_relaxed)) return;
  MPI_Request r;
  check(MPI_Ibarrier(comm, &r), what, rank);
  wait_all(1, &r, what, rank);
}

// Who a Request's blocking wait waits on, for the watchdog: one peer (world rank) or ranks (a
// collective's group, borrowed from the communicator; or a batch's peers, owned).
struct Waited {
  int peer = -1;
  const char* group = nullptr;
  const int* ranks = nullptr;
  int n_ranks = 0;
  std::vector<int> own;
};

// A Request over MPI requests that complete together; keep holds what must outlive them (count
// arrays of a non-blocking collective).
// guard: Guard-device memory stays accessible while the requests are in flight (MPI reads and
// writes the buffers during progress); released on completion.
Request mpi_request(std::vector<MPI_Request> reqs, std::shared_ptr<void> keep, const char* what,
                    int rank, std::shared_ptr<GuardAccess> guard, Waited on) {
  return Request(
      [rs = std::move(reqs), keep, what, rank, guard, on = std::move(on)](bool block) mutable {
        int done = 1;
        const int n = static_cast<int>(rs.size());
        const bool own = !on.own.empty();
        watchdog::WaitScope waiting(block ? what : nullptr, on.peer, on.group,
                                    own ? on.own.data() : on.ranks,
                                    own ? static_cast<int>(on.own.size()) : on.n_ranks);
        if (block)
          wait_all(n, rs.data(), what, rank);
        else if (n == 1)
          check(MPI_Test(rs.data(), &done, MPI_STATUS_IGNORE), what, rank);
        else
          check(MPI_Testall(n, rs.data(), &done, MPI_STATUSES_IGNORE), what, rank);
        if (done) guard.reset();
        return done != 0;
      });
}

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
    // the world rank of each rank of this communicator (the watchdog names world ranks)
    MPI_Group g, wg;
    MPI_Comm_group(comm_, &g);
    MPI_Comm_group(MPI_COMM_WORLD, &wg);
    std::vector<int> mine(size_);
    for (int i = 0; i < size_; ++i) mine[i] = i;
    world_ranks_.resize(size_);
    MPI_Group_translate_ranks(g, size_, mine.data(), wg, world_ranks_.data());
    MPI_Group_free(&g);
    MPI_Group_free(&wg);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void send(const void* buf, size_t bytes, int peer, int tag) override {
    GuardAccess guard;  // buffers may be Guard-device memory
    const auto waiting = p2p("send", peer);
    MPI_Request r;
    check(MPI_Isend(buf, to_int(bytes, "send"), MPI_BYTE, peer, tag, comm_, &r), "send", rank_);
    wait_all(1, &r, "send", rank_);
  }
  void recv(void* buf, size_t bytes, int peer, int tag) override {
    GuardAccess guard;  // buffers may be Guard-device memory
    const auto waiting = p2p("recv", peer);
    MPI_Request r;
    check(MPI_Irecv(buf, to_int(bytes, "recv"), MPI_BYTE, peer, tag, comm_, &r), "recv", rank_);
    wait_all(1, &r, "recv", rank_);
  }
  Request isend(const void* buf, size_t bytes, int peer, int tag) override {
    auto guard = std::make_shared<GuardAccess>();
    MPI_Request r;
    check(MPI_Isend(buf, to_int(bytes, "isend"), MPI_BYTE, peer, tag, comm_, &r), "isend", rank_);
    return mpi_request({r}, nullptr, "isend", rank_, guard, on_peer(peer));
  }
  Request irecv(void* buf, size_t bytes, int peer, int tag) override {
    auto guard = std::make_shared<GuardAccess>();
    MPI_Request r;
    check(MPI_Irecv(buf, to_int(bytes, "irecv"), MPI_BYTE, peer, tag, comm_, &r), "irecv", rank_);
    return mpi_request({r}, nullptr, "irecv", rank_, guard, on_peer(peer));
  }
  Request batch_isend_irecv(const P2pOp* ops, size_t n) override {
    for (size_t i = 0; i < n; ++i) {
      const P2pOp& o = ops[i];
      auto fail = [&](const std::string& why) {
        throw CommError("batch_isend_irecv on rank " + std::to_string(rank_) + ": op " +
                        std::to_string(i) + ": " + why);
      };
      if (o.kind != P2pOp::Send && o.kind != P2pOp::Recv) fail("unknown kind");
      if (o.peer < 0 || o.peer >= size_)
        fail("peer " + std::to_string(o.peer) + " outside 0.." + std::to_string(size_ - 1));
      if (o.tag < 0) fail("negative tag " + std::to_string(o.tag));
      if (o.bytes > 0 && o.buf == nullptr) fail("null buffer");
      to_int(o.bytes, "batch_isend_irecv");
    }
    if (n == 0) return Request();
    auto guard = std::make_shared<GuardAccess>();
    std::vector<MPI_Request> reqs(n, MPI_REQUEST_NULL);
    for (size_t i = 0; i < n; ++i) {
      const P2pOp& o = ops[i];
      const int c = static_cast<int>(o.bytes);
      if (o.kind == P2pOp::Send)
        check(MPI_Isend(o.buf, c, MPI_BYTE, o.peer, o.tag, comm_, &reqs[i]), "batch isend", rank_);
      else
        check(MPI_Irecv(o.buf, c, MPI_BYTE, o.peer, o.tag, comm_, &reqs[i]), "batch irecv", rank_);
    }
    Waited on = on_group();  // the batch's peers (one: named as the peer)
    on.ranks = nullptr, on.n_ranks = 0;
    for (size_t i = 0; i < n; ++i)
      if (std::find(on.own.begin(), on.own.end(), world_ranks_[ops[i].peer]) == on.own.end())
        on.own.push_back(world_ranks_[ops[i].peer]);
    if (on.own.size() == 1) on.peer = on.own[0], on.own.clear();
    return mpi_request(std::move(reqs), nullptr, "batch_isend_irecv", rank_, guard, std::move(on));
  }

  using Communicator::all_gather;
  using Communicator::all_reduce;
  using Communicator::batch_isend_irecv;
  using Communicator::reduce_scatter;

  void all_reduce(void* d, size_t n, CommDType t, ReduceOp op) override {
    GuardAccess guard;  // buffers may be Guard-device memory
    const auto waiting = collective("all_reduce");
    arrive(comm_, "all_reduce", rank_);
    const MPI_Op o = mpi_op(t, op, "all_reduce", rank_);
    const MPI_Datatype type = mpi_type(t);
    const size_t esize = comm_dtype_size(t);
    for (size_t off = 0; off < n; off += INT_MAX) {
      const int c = static_cast<int>(std::min<size_t>(n - off, INT_MAX));
      check(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(d) + off * esize, c, type, o, comm_),
            "all_reduce", rank_);
    }
  }
  Request ireduce_scatter(const void* in, void* out, size_t count, CommDType t,
                          ReduceOp op) override {
    const MPI_Op o = mpi_op(t, op, "reduce_scatter", rank_);
    auto guard = std::make_shared<GuardAccess>();  // buffers may be Guard-device memory
    // In place (out = in + rank * count): MPI_IN_PLACE takes the input from the receive buffer
    // and leaves the result at its start, so this rank's block moves to its place on completion.
    const size_t bytes = count * comm_dtype_size(t);
    const bool in_place = out == static_cast<const char*>(in) + static_cast<size_t>(rank_) * bytes;
    MPI_Request r;
    check(MPI_Ireduce_scatter_block(in_place ? MPI_IN_PLACE : in,
                                    in_place ? const_cast<void*>(in) : out,
                                    to_int(count, "reduce_scatter"), mpi_type(t), o, comm_, &r),
          "reduce_scatter", rank_);
    Request req = mpi_request({r}, nullptr, "reduce_scatter", rank_, guard, on_group());
    if (!in_place || rank_ == 0 || bytes == 0) return req;
    return then(std::move(req), [in, out, bytes] {
      GuardAccess g;
      std::memcpy(out, in, bytes);  // (disjoint: rank >= 1)
    });
  }
  void all_gather(const void* in, void* out, size_t count, CommDType t) override {
    GuardAccess guard;  // buffers may be Guard-device memory
    const auto waiting = collective("all_gather");
    arrive(comm_, "all_gather", rank_);
    const int c = to_int(count, "all_gather");
    const bool in_place = in == static_cast<const char*>(out) + rank_ * count * comm_dtype_size(t);
    check(MPI_Allgather(in_place ? MPI_IN_PLACE : in, c, mpi_type(t), out, c, mpi_type(t), comm_),
          "all_gather", rank_);
  }
  void all_to_all(const int64_t* in, int64_t* out, size_t count) override {
    GuardAccess guard;  // buffers may be Guard-device memory
    const auto waiting = collective("all_to_all");
    arrive(comm_, "all_to_all", rank_);
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
    auto guard = std::make_shared<GuardAccess>();
    MPI_Request r;
    check(MPI_Ialltoallv(send, sc, sd, MPI_BYTE, recv, rc, rd, MPI_BYTE, comm_, &r), "all_to_all_v",
          rank_);
    return mpi_request({r}, counts, "all_to_all_v", rank_, guard, on_group());
  }
  void barrier() override {
    const auto waiting = collective("barrier");
    arrive(comm_, "barrier", rank_);
    check(MPI_Barrier(comm_), "barrier", rank_);
  }
  void poke() override {  // errors are left to the operations' own waits
    int flag = 0;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, MPI_STATUS_IGNORE);
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm c;
    const auto waiting = collective("split");
    check(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &c), "split", rank_);
    if (c == MPI_COMM_NULL) return nullptr;
    auto sub = std::make_unique<MpiCommunicator>(c, true);
    sub->set_name(name());  // a copy of a group is named as it (the EP dispatcher's own)
    return sub;
  }

 private:
  const char* group() const { return name().empty() ? nullptr : name().c_str(); }
  int world_rank(int peer) const { return peer >= 0 && peer < size_ ? world_ranks_[peer] : peer; }
  watchdog::WaitScope p2p(const char* op, int peer) const {
    return watchdog::WaitScope(op, world_rank(peer), group());
  }
  watchdog::WaitScope collective(const char* op) const {
    return watchdog::WaitScope(op, -1, group(), world_ranks_.data(), size_);
  }
  Waited on_peer(int peer) const { return {world_rank(peer), group(), nullptr, 0, {}}; }
  Waited on_group() const { return {-1, group(), world_ranks_.data(), size_, {}}; }

  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::vector<int> world_ranks_;  // of this communicator's ranks
};

struct Runtime {
  std::unique_ptr<MpiCommunicator> world;
  Runtime() {
    int init = 0, provided = MPI_THREAD_SINGLE;
    MPI_Initialized(&init);
    if (init)
      MPI_Query_thread(&provided);
    else
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    if (provided < MPI_THREAD_MULTIPLE)
      abort_all(std::string("the MPI library provides thread support ") +
                thread_level_name(provided) + ", moetron needs MPI_THREAD_MULTIPLE (the " +
                "checkpoint writer communicates from its own thread); use an MPI built with " +
                "thread-multiple support");
    MPI_Op_create(&bf16_sum, 1, &g_bf16_sum);
    MPI_Op_create(&bf16_max, 1, &g_bf16_max);
    world = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
    world->set_name("world");
  }
  ~Runtime() {
    world.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    MPI_Op_free(&g_bf16_sum);
    MPI_Op_free(&g_bf16_max);
    MPI_Finalize();
  }
};

}  // namespace

Communicator& world() {
  static Runtime rt;
  return *rt.world;
}

void set_sleeping_waits(bool on) { g_sleeping_waits.store(on, std::memory_order_relaxed); }
bool sleeping_waits() { return g_sleeping_waits.load(std::memory_order_relaxed); }

// This process's rank among its node's ranks, and their number (MPI_Comm_split_type, shared
// memory): collective over the world on the first call.
static std::pair<int, int> node_rank_and_size() {
  static const std::pair<int, int> rs = [] {
    world();  // MPI is initialised
    MPI_Comm node;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
          "comm_split_type", world().rank());
    int r = 0, n = 1;
    MPI_Comm_rank(node, &r);
    MPI_Comm_size(node, &n);
    MPI_Comm_free(&node);
    return std::make_pair(r, n);
  }();
  return rs;
}

int node_ranks() { return node_rank_and_size().second; }
int node_local_rank() { return node_rank_and_size().first; }

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
