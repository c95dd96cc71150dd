// The CUDA emulator's NCCL (tests/cuda_emu/device.h): the calls parallel/comm_nccl.cpp makes, on
// the emulated streams (streams.cpp), over MPI between processes. In the emulated build it stands
// where libnccl.so does, so that the NCCL communicator — its groups, its communication stream and
// the event waits that order it against the compute stream — runs in every CI run: the one-rank
// GPU tests, and `moetron train` with run.device: cuda and parallel.device_comm: nccl on several
// emulated GPUs under mpirun (tests/cuda_emu/e2e_train.sh).
//
// An operation, or a group (ncclGroupStart/End) of them, is posted when called: its streams' work
// so far runs first (the inputs as the stream would have them), the inputs are copied, and the
// exchange starts (MPI's non-blocking calls; a one-rank communicator without MPI exchanges with
// itself). Its results land — are copied into the output buffers — when the stream gets to the
// operation, as late as streams.cpp's schedule runs it: compute work that reads them without an
// event wait on the communication stream reads the old bytes. The exchange starting when posted
// rather than when the stream gets there is what lets processes make progress without a device
// thread of their own. What a GPU's NCCL would read instead — the input when the stream gets
// there — is checked then: each input's bytes must still be those the post sent, before any
// output lands. A change means a write the operation does not wait for or that does not wait for
// the operation (a send buffer reused, or filled, on another stream without an event between
// them, or by the host): on a GPU NCCL would read either bytes. The process stops, naming the
// operation; whether the schedule shows it depends on the write running before the landing, as
// the lazy order runs an unwaited write enqueued before the stream's next wait.
//
// Reductions: every rank's contribution is gathered, then reduced in rank order, in the type's
// arithmetic (bf16: summed in float, rounded once), so every rank gets the same bits. Sends and
// receives match in order per peer, as NCCL's do. Communicators: ncclCommInitRankConfig over more
// than one rank splits MPI_COMM_WORLD by the unique id (every world rank must be creating one at
// the time, as moetron's bootstrap does for the world); ncclCommSplit is MPI_Comm_split.
// Not emulated: ncclCommInitRank without a config, NCCL's asynchronous errors (none arise), its
// SM budget (maxCTAs is accepted).
#include <cuda_bf16.h>
#include <mpi.h>
#include <nccl.h>

#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tests/cuda_emu/streams.h"

struct ncclComm {
  MPI_Comm mpi = MPI_COMM_NULL;  // null: one rank, no MPI
  int rank = 0, size = 1;
  std::string last_error;
};

namespace {

ncclResult_t error(ncclComm_t c, ncclResult_t r, const std::string& why) {
  if (c) c->last_error = "cuda_emu NCCL: " + why;
  return r;
}

size_t type_bytes(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
    case ncclFloat8e4m3:
    case ncclFloat8e5m2:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;
  }
}

// out[i] = op over the parts' i-th elements, in part order (parts: n_parts x count, stride apart).
template <class T, class Acc>
void reduce_as(const char* parts, size_t stride, int n_parts, size_t count, ncclRedOp_t op,
               void* out) {
  for (size_t i = 0; i < count; ++i) {
    Acc acc{};
    for (int p = 0; p < n_parts; ++p) {
      T v;
      std::memcpy(&v, parts + p * stride + i * sizeof(T), sizeof(T));
      Acc a;
      if constexpr (std::is_same_v<T, __nv_bfloat16>)
        a = __bfloat162float(v);
      else
        a = static_cast<Acc>(v);
      acc = p == 0 ? a : op == ncclSum ? acc + a : (a > acc ? a : acc);
    }
    T r;
    if constexpr (std::is_same_v<T, __nv_bfloat16>)
      r = __float2bfloat16_rn(acc);
    else
      r = static_cast<T>(acc);
    std::memcpy(static_cast<char*>(out) + i * sizeof(T), &r, sizeof(T));
  }
}

bool reduce(ncclDataType_t t, const char* parts, size_t stride, int n_parts, size_t count,
            ncclRedOp_t op, void* out) {
  switch (t) {
    case ncclFloat32:
      reduce_as<float, float>(parts, stride, n_parts, count, op, out);
      return true;
    case ncclFloat64:
      reduce_as<double, double>(parts, stride, n_parts, count, op, out);
      return true;
    case ncclBfloat16:
      reduce_as<__nv_bfloat16, float>(parts, stride, n_parts, count, op, out);
      return true;
    case ncclInt32:
      reduce_as<int32_t, int32_t>(parts, stride, n_parts, count, op, out);
      return true;
    case ncclInt64:
      reduce_as<int64_t, int64_t>(parts, stride, n_parts, count, op, out);
      return true;
    case ncclUint64:
      reduce_as<uint64_t, uint64_t>(parts, stride, n_parts, count, op, out);
      return true;
    default:
      return false;
  }
}

// Whether reduce() knows type t (asked with nothing to reduce): checked when an operation is
// called, so a landing never finds a type it cannot reduce.
bool reducible(ncclDataType_t t) { return reduce(t, nullptr, 0, 0, 0, ncclSum, nullptr); }

// One call inside a group.
struct Op {
  enum Kind { Send, Recv, AllGather, AllReduce, ReduceScatter } kind;
  const void* in = nullptr;
  void* out = nullptr;
  size_t count = 0;  // elements: sent or received; per rank (all-gather, reduce-scatter output)
  ncclDataType_t type = ncclUint8;
  ncclRedOp_t op = ncclSum;
  int peer = -1;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
};

const char* name(Op::Kind k) {
  constexpr const char* kNames[] = {"a send", "a receive", "an all-gather", "an all-reduce",
                                    "a reduce-scatter"};
  return kNames[k];
}

size_t digest(const void* at, size_t bytes) {
  return std::hash<std::string_view>{}(std::string_view(static_cast<const char*>(at), bytes));
}

// An operation's input as its post read it.
struct Input {
  const void* at;
  size_t bytes;
  size_t digest;
  Op::Kind kind;
};

// Stops the process if an input has changed since the post (see the header).
void check_unchanged(const std::vector<Input>& inputs) {
  for (const Input& in : inputs) {
    if (digest(in.at, in.bytes) == in.digest) continue;
    std::fprintf(stderr,
                 "cuda_emu NCCL: the input of %s (%zu bytes at %p) changed between the call that "
                 "posted it and its stream reaching it: a write not ordered with the operation by "
                 "an event (on a GPU NCCL reads either bytes)\n",
                 name(in.kind), in.bytes, in.at);
    std::abort();
  }
}

// A posted group: its exchanges in flight, and what lands where when the stream gets to it.
struct Posted {
  std::vector<MPI_Request> requests;
  std::vector<Input> inputs;
  struct Landing {
    std::vector<char> bytes;  // what was received or gathered
    Op op;
    int size = 1, rank = 0;  // the communicator's, at the post
  };
  std::vector<std::unique_ptr<Landing>> landings;
  std::vector<std::vector<char>> sent;  // send buffers, alive until the requests complete
  void land() {
    check_unchanged(inputs);
    if (!requests.empty())
      MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
    for (const auto& l : landings) {
      const Op& o = l->op;
      const size_t eb = type_bytes(o.type);
      switch (o.kind) {
        case Op::Recv:
        case Op::AllGather:
          std::memcpy(o.out, l->bytes.data(), l->bytes.size());
          break;
        case Op::AllReduce:
          reduce(o.type, l->bytes.data(), o.count * eb, l->size, o.count, o.op, o.out);
          break;
        case Op::ReduceScatter:
          reduce(o.type, l->bytes.data() + size_t(l->rank) * o.count * eb, o.count * eb * l->size,
                 l->size, o.count, o.op, o.out);
          break;
        case Op::Send:
          break;
      }
    }
  }
};

thread_local int group_depth = 0;
thread_local std::vector<Op> group_ops;

int mpi_count(size_t bytes) { return bytes > size_t(INT_MAX) ? -1 : static_cast<int>(bytes); }

// Starts a gather of `bytes` from every rank into l.bytes (rank order).
ncclResult_t gather(Posted& p, Posted::Landing& l, const void* in, size_t bytes) {
  const Op& o = l.op;
  l.bytes.resize(bytes * size_t(o.comm->size));
  if (o.comm->mpi == MPI_COMM_NULL) {
    std::memcpy(l.bytes.data(), in, bytes);
    return ncclSuccess;
  }
  const int n = mpi_count(bytes);
  if (n < 0) return error(o.comm, ncclInvalidArgument, "more than 2 GiB in one operation");
  p.sent.emplace_back(static_cast<const char*>(in), static_cast<const char*>(in) + bytes);
  p.requests.emplace_back();
  MPI_Iallgather(p.sent.back().data(), n, MPI_BYTE, l.bytes.data(), n, MPI_BYTE, o.comm->mpi,
                 &p.requests.back());
  return ncclSuccess;
}

// Sends and receives of a one-rank communicator without MPI: the k-th send matched with the k-th
// receive, their sizes equal.
ncclResult_t match_locally(Posted& p, const std::vector<Op>& ops) {
  std::vector<const Op*> sends;
  for (const Op& o : ops)
    if (o.kind == Op::Send && o.comm->mpi == MPI_COMM_NULL) sends.push_back(&o);
  size_t next = 0;
  for (auto& l : p.landings) {
    if (l->op.kind != Op::Recv || l->op.comm->mpi != MPI_COMM_NULL) continue;
    if (next == sends.size() ||
        sends[next]->count * type_bytes(sends[next]->type) != l->bytes.size())
      return error(l->op.comm, ncclInvalidUsage, "a receive from this rank without its send");
    std::memcpy(l->bytes.data(), sends[next++]->in, l->bytes.size());
  }
  if (next != sends.size())
    return error(sends[next]->comm, ncclInvalidUsage, "a send to this rank without its receive");
  return ncclSuccess;
}

// Starts one call's exchange.
ncclResult_t start(Posted& p, const Op& o) {
  const size_t eb = type_bytes(o.type), bytes = o.count * eb;
  if (eb == 0) return error(o.comm, ncclInvalidArgument, "data type");
  auto l = std::make_unique<Posted::Landing>();
  l->op = o;
  l->size = o.comm->size;
  l->rank = o.comm->rank;
  ncclResult_t r = ncclSuccess;
  const int n = mpi_count(bytes);
  if (n < 0) return error(o.comm, ncclInvalidArgument, "more than 2 GiB in one operation");
  if (o.kind != Op::Recv) {
    const size_t in_bytes = o.kind == Op::ReduceScatter ? bytes * size_t(o.comm->size) : bytes;
    p.inputs.push_back({o.in, in_bytes, digest(o.in, in_bytes), o.kind});
  }
  switch (o.kind) {
    case Op::Send:
      if (o.comm->mpi != MPI_COMM_NULL) {
        p.sent.emplace_back(static_cast<const char*>(o.in), static_cast<const char*>(o.in) + bytes);
        p.requests.emplace_back();
        MPI_Isend(p.sent.back().data(), n, MPI_BYTE, o.peer, 0, o.comm->mpi, &p.requests.back());
      }
      return ncclSuccess;
    case Op::Recv:
      l->bytes.resize(bytes);
      if (o.comm->mpi != MPI_COMM_NULL) {
        p.requests.emplace_back();
        MPI_Irecv(l->bytes.data(), n, MPI_BYTE, o.peer, 0, o.comm->mpi, &p.requests.back());
      }
      break;
    case Op::AllGather:
    case Op::AllReduce:
      r = gather(p, *l, o.in, bytes);
      break;
    case Op::ReduceScatter:
      r = gather(p, *l, o.in, bytes * size_t(o.comm->size));
      break;
  }
  p.landings.push_back(std::move(l));
  return r;
}

// Posts a group: the streams' work so far, then every exchange; the results land in the stream's
// order. (One stream per group: moetron posts on its communication stream.)
ncclResult_t post(std::vector<Op> ops) {
  if (ops.empty()) return ncclSuccess;
  const cudaStream_t s = ops[0].stream;
  for (const Op& o : ops)
    if (o.stream != s) return error(o.comm, ncclInvalidUsage, "a group on several streams");
  cuda_emu::synchronize(s);
  auto p = std::make_shared<Posted>();
  for (const Op& o : ops)
    if (const ncclResult_t r = start(*p, o); r != ncclSuccess) return r;
  if (const ncclResult_t r = match_locally(*p, ops); r != ncclSuccess) return r;
  cuda_emu::enqueue(s, [p] { p->land(); });
  return ncclSuccess;
}

ncclResult_t call(const Op& o) {
  if (!o.comm) return ncclInvalidArgument;
  if ((o.kind == Op::Send || o.kind == Op::Recv) && (o.peer < 0 || o.peer >= o.comm->size))
    return error(o.comm, ncclInvalidArgument, "peer " + std::to_string(o.peer));
  if (o.count == 0) return ncclSuccess;
  if (group_depth > 0) {
    group_ops.push_back(o);
    return ncclSuccess;
  }
  return post({o});
}

}  // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::random_device rd;
  for (char& c : id->internal) c = static_cast<char>(rd());
  return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank,
                                    ncclConfig_t*) {
  *comm = nullptr;
  if (nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
  auto c = std::make_unique<ncclComm>();
  c->rank = rank;
  c->size = nranks;
  if (nranks > 1) {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) return ncclSystemError;  // several ranks need MPI between the processes
    uint32_t color = 0;
    for (const char ch : id.internal) color = color * 31 + static_cast<unsigned char>(ch);
    MPI_Comm_split(MPI_COMM_WORLD, static_cast<int>(color & 0x3fffffff), rank, &c->mpi);
    int size = 0;
    MPI_Comm_size(c->mpi, &size);
    if (size != nranks) return ncclInvalidUsage;
  }
  *comm = c.release();
  return ncclSuccess;
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm,
                           ncclConfig_t*) {
  *newcomm = nullptr;
  if (!comm) return ncclInvalidArgument;
  if (comm->mpi == MPI_COMM_NULL) {
    if (color != NCCL_SPLIT_NOCOLOR) *newcomm = new ncclComm;
    return ncclSuccess;
  }
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_Comm_split(comm->mpi, color == NCCL_SPLIT_NOCOLOR ? MPI_UNDEFINED : color, key, &sub);
  if (sub == MPI_COMM_NULL) return ncclSuccess;
  auto c = std::make_unique<ncclComm>();
  c->mpi = sub;
  MPI_Comm_rank(sub, &c->rank);
  MPI_Comm_size(sub, &c->size);
  *newcomm = c.release();
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  *rank = comm->rank;
  return ncclSuccess;
}
ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  *count = comm->size;
  return ncclSuccess;
}
// Posted exchanges complete on their own (their requests and buffers live with them).
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm && comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&comm->mpi);
  delete comm;
  return ncclSuccess;
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  delete comm;         // its MPI communicator is left: freeing it would wait for nothing, but
  return ncclSuccess;  // an abort must not depend on the peers
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* async) {
  *async = ncclSuccess;
  return ncclSuccess;
}
const char* ncclGetErrorString(ncclResult_t r) {
  switch (r) {
    case ncclSuccess:
      return "no error";
    case ncclSystemError:
      return "unhandled system error (emulated NCCL: several ranks need MPI)";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    default:
      return "error (emulated NCCL)";
  }
}
const char* ncclGetLastError(ncclComm_t comm) { return comm ? comm->last_error.c_str() : ""; }

ncclResult_t ncclGroupStart() {
  ++group_depth;
  return ncclSuccess;
}
ncclResult_t ncclGroupEnd() {
  if (group_depth == 0) return ncclInvalidUsage;
  if (--group_depth > 0) return ncclSuccess;
  std::vector<Op> ops;
  ops.swap(group_ops);
  return post(std::move(ops));
}

ncclResult_t ncclSend(const void* in, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t s) {
  return call(Op{Op::Send, in, nullptr, count, t, ncclSum, peer, comm, s});
}
ncclResult_t ncclRecv(void* out, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                      cudaStream_t s) {
  return call(Op{Op::Recv, nullptr, out, count, t, ncclSum, peer, comm, s});
}
ncclResult_t ncclAllGather(const void* in, void* out, size_t count, ncclDataType_t t,
                           ncclComm_t comm, cudaStream_t s) {
  return call(Op{Op::AllGather, in, out, count, t, ncclSum, -1, comm, s});
}
ncclResult_t ncclAllReduce(const void* in, void* out, size_t count, ncclDataType_t t,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t s) {
  if (op != ncclSum && op != ncclMax) return error(comm, ncclInvalidArgument, "reduction");
  if (!reducible(t)) return error(comm, ncclInvalidArgument, "a type it cannot reduce");
  return call(Op{Op::AllReduce, in, out, count, t, op, -1, comm, s});
}
ncclResult_t ncclReduceScatter(const void* in, void* out, size_t count, ncclDataType_t t,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t s) {
  if (op != ncclSum && op != ncclMax) return error(comm, ncclInvalidArgument, "reduction");
  if (!reducible(t)) return error(comm, ncclInvalidArgument, "a type it cannot reduce");
  return call(Op{Op::ReduceScatter, in, out, count, t, op, -1, comm, s});
}

}  // extern "C"
