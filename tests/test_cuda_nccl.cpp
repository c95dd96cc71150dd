// The NCCL communicator (parallel/comm_nccl.h) on one GPU: every test builds a one-rank
// communicator directly from a unique id (no MPI: the GPU test machine has none). What one rank
// can show: the collectives move the bytes (a one-rank all-reduce, reduce-scatter or all-gather is
// a copy, bit for bit); sends and receives to this rank itself inside a group (batch_isend_irecv)
// and the variable all-to-all deliver; Requests complete through test() and wait(); split gives a
// working communicator (or null for a negative color); bad arguments throw CommError before
// anything is posted; max_ctas is accepted; and the streams are ordered: data produced on the
// compute stream is what the communicator sends, and compute work after a blocking operation sees
// its results.
//
// Not testable here: several ranks. NCCL refuses two ranks on one device and the machine has one
// GPU, so reductions across ranks, their order and bf16 rounding, peer matching and the MPI
// bootstrap (make_nccl_communicator) need a multi-GPU run under mpirun (the CUDA emulator's NCCL
// runs them: tests/cuda_emu/e2e_train.sh). A single blocking send or recv to this rank itself is
// not tested either: outside a group it waits for its match, which never comes (comm_nccl.h).
// Skipped without a GPU; on the emulator they run against its NCCL.
#include <cstdlib>
#include <memory>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "parallel/comm_nccl.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

// One rank: a unique id of our own. Bootstrap over the loopback interface unless the environment
// names one (the test machine may have no other network interface).
std::unique_ptr<NcclCommunicator> one_rank(const NcclOptions& options = {}) {
  setenv("NCCL_SOCKET_IFNAME", "lo", 0);
  return std::make_unique<NcclCommunicator>(NcclCommunicator::unique_id(), 1, 0, options);
}
// Shared by most tests (NCCL's start-up is slow); never destroyed, like the streams: tearing NCCL
// down at exit would race the CUDA runtime's own teardown.
NcclCommunicator& comm() {
  static NcclCommunicator* c = one_rank().release();
  return *c;
}

// n values exactly representable after any bf16 narrowing and summing of small counts
std::vector<float> small_ints(size_t n, uint64_t seed) {
  std::vector<float> v = rand_vec<float>(n, seed, -4.0, 4.0);
  for (float& x : v) x = std::nearbyint(x);
  return v;
}

std::vector<int64_t> rand_i64(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> v(n);
  for (int64_t& x : v) x = static_cast<int64_t>(rng());
  return v;
}

std::vector<uint8_t> rand_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& x : v) x = static_cast<uint8_t>(rng());
  return v;
}

TEST(CudaNccl, OneRankCommunicator) {
  MOETRON_REQUIRE_GPU();
  EXPECT_EQ(comm().rank(), 0);
  EXPECT_EQ(comm().size(), 1);
  EXPECT_NE(comm().native(), nullptr);
  comm().barrier();
}

template <class T>
void check_all_reduce_unchanged(const std::vector<T>& h, CommDType t, const std::string& name) {
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max}) {
    Buffer<T> d = dev(h);
    comm().all_reduce(d.data(), h.size(), t, op);
    expect_equal(host(d, h.size()), h,
                 name + (op == ReduceOp::Sum ? " sum" : " max") + " n=" + std::to_string(h.size()));
  }
}

TEST(CudaNccl, AllReduceOnOneRankLeavesDataUnchanged) {
  MOETRON_REQUIRE_GPU();
  for (size_t n : {size_t(1), size_t(1000), size_t((1 << 20) + 3)}) {
    check_all_reduce_unchanged(rand_vec<float>(n, n + 1), CommDType::F32, "fp32");
    check_all_reduce_unchanged(rand_vec<double>(n, n + 2), CommDType::F64, "fp64");
    check_all_reduce_unchanged(rand_i64(n, n + 3), CommDType::I64, "int64");
    std::vector<uint16_t> b(n);
    const std::vector<float> f = rand_vec<float>(n, n + 4, -1e3, 1e3);
    for (size_t i = 0; i < n; ++i) b[i] = f32_to_bf16(f[i]);
    check_all_reduce_unchanged(b, CommDType::BF16, "bf16");
  }
  // the typed overload
  const std::vector<float> h = rand_vec<float>(77, 5);
  Buffer<float> d = dev(h);
  comm().all_reduce(d.data(), h.size());
  expect_equal(host(d, h.size()), h, "typed fp32 all_reduce");
}

TEST(CudaNccl, ReduceScatterAndAllGatherCopyOnOneRank) {
  MOETRON_REQUIRE_GPU();
  const size_t n = 4099;
  const std::vector<float> f = rand_vec<float>(n, 6);
  Buffer<float> in = dev(f), out = dev_garbage<float>(n);
  comm().reduce_scatter(in.data(), out.data(), n, CommDType::F32, ReduceOp::Sum);
  expect_equal(host(out, n), f, "reduce_scatter fp32");
  comm().reduce_scatter(in.data(), out.data(), n, CommDType::F32, ReduceOp::Max);
  expect_equal(host(out, n), f, "reduce_scatter fp32 max");

  const std::vector<double> g = rand_vec<double>(n, 7);
  Buffer<double> gin = dev(g), gout = dev_garbage<double>(n);
  comm().all_gather(gin.data(), gout.data(), n, CommDType::F64);
  expect_equal(host(gout, n), g, "all_gather fp64");
  comm().all_gather(gin.data(), gin.data(), n, CommDType::F64);  // in place: in == out + 0 * n
  expect_equal(host(gin, n), g, "all_gather fp64 in place");

  const std::vector<uint8_t> b = rand_bytes(1001, 8);
  Buffer<uint8_t> bin = dev(b), bout = dev_garbage<uint8_t>(b.size());
  comm().all_gather(bin.data(), bout.data(), b.size(), CommDType::Bytes);  // bytes gather
  expect_equal(host(bout, b.size()), b, "all_gather bytes");
}

TEST(CudaNccl, AllToAllOnOneRankCopies) {
  MOETRON_REQUIRE_GPU();
  const std::vector<int64_t> h = rand_i64(13, 9);
  Buffer<int64_t> in = dev(h), out = dev_garbage<int64_t>(h.size());
  comm().all_to_all(in.data(), out.data(), h.size());
  expect_equal(host(out, h.size()), h, "all_to_all int64");
  comm().all_to_all(in.data(), out.data(), 0);  // nothing to move
}

// Sends and receives to this rank itself in one group: NCCL matches the k-th send to a peer with
// the k-th receive from it, so (a -> ra, b -> rb); the zero-byte pair posts nothing.
TEST(CudaNccl, BatchSendRecvToSelfMovesTheBytes) {
  MOETRON_REQUIRE_GPU();
  const std::vector<uint8_t> a = rand_bytes(100003, 10), b = rand_bytes(37, 11);
  Buffer<uint8_t> da = dev(a), db = dev(b);
  Buffer<uint8_t> ra = dev_garbage<uint8_t>(a.size()), rb = dev_garbage<uint8_t>(b.size());
  const std::vector<P2pOp> ops = {
      P2pOp::send(da.data(), a.size(), 0, 1), P2pOp::recv(ra.data(), a.size(), 0, 1),
      P2pOp::send(nullptr, 0, 0, 2),          P2pOp::recv(nullptr, 0, 0, 2),
      P2pOp::send(db.data(), b.size(), 0, 3), P2pOp::recv(rb.data(), b.size(), 0, 3)};
  Request r = comm().batch_isend_irecv(ops);
  r.wait();
  EXPECT_TRUE(r.test());  // complete stays complete
  expect_equal(host(ra, a.size()), a, "self send/recv a");
  expect_equal(host(rb, b.size()), b, "self send/recv b");

  // the same through test() until complete
  Buffer<uint8_t> rc = dev_garbage<uint8_t>(a.size());
  const std::vector<P2pOp> ops2 = {P2pOp::recv(rc.data(), a.size(), 0, 0),
                                   P2pOp::send(da.data(), a.size(), 0, 0)};
  Request r2 = comm().batch_isend_irecv(ops2);
  while (!r2.test()) {
  }
  EXPECT_TRUE(r2.test());
  r2.wait();
  expect_equal(host(rc, a.size()), a, "self recv/send through test()");

  Request empty = comm().batch_isend_irecv(nullptr, 0);  // n == 0: complete
  EXPECT_TRUE(empty.test());
  comm().isend(nullptr, 0, 0, 0).wait();  // zero bytes: nothing posted, completes
  comm().irecv(nullptr, 0, 0, 0).wait();
}

TEST(CudaNccl, AllToAllVToSelf) {
  MOETRON_REQUIRE_GPU();
  const std::vector<uint8_t> h = rand_bytes(65537, 12);
  Buffer<uint8_t> in = dev(h), out = dev_garbage<uint8_t>(h.size());
  Request r = comm().iall_to_all_v(in.data(), {h.size()}, out.data(), {h.size()});
  while (!r.test()) {
  }
  expect_equal(host(out, h.size()), h, "all_to_all_v to self (test)");

  Buffer<uint8_t> out2 = dev_garbage<uint8_t>(h.size());
  comm().all_to_all_v(in.data(), {h.size()}, out2.data(), {h.size()});  // wait()
  expect_equal(host(out2, h.size()), h, "all_to_all_v to self (wait)");
  comm().all_to_all_v(nullptr, {0}, nullptr, {0});  // nothing to move

  EXPECT_THROW(comm().iall_to_all_v(in.data(), {10, 10}, out.data(), {10, 10}), CommError);
  EXPECT_THROW(comm().iall_to_all_v(in.data(), {10}, out.data(), {9}), CommError);
  EXPECT_THROW(comm().iall_to_all_v(nullptr, {10}, out.data(), {10}), CommError);
}

TEST(CudaNccl, SplitGivesAWorkingCommunicatorOrNull) {
  MOETRON_REQUIRE_GPU();
  std::unique_ptr<Communicator> sub = comm().split(0, 0);
  ASSERT_NE(sub, nullptr);
  EXPECT_EQ(sub->rank(), 0);
  EXPECT_EQ(sub->size(), 1);
  const std::vector<float> h = rand_vec<float>(513, 13);
  Buffer<float> d = dev(h);
  sub->all_reduce(d.data(), h.size(), CommDType::F32, ReduceOp::Sum);
  expect_equal(host(d, h.size()), h, "all_reduce on the split communicator");
  sub->barrier();
  EXPECT_EQ(comm().split(-1, 0), nullptr);
}

TEST(CudaNccl, BytesCannotBeReduced) {
  MOETRON_REQUIRE_GPU();
  Buffer<uint8_t> d = dev(rand_bytes(16, 14)), o = dev_garbage<uint8_t>(16);
  EXPECT_THROW(comm().all_reduce(d.data(), 16, CommDType::Bytes, ReduceOp::Sum), CommError);
  EXPECT_THROW(comm().all_reduce(d.data(), 0, CommDType::Bytes, ReduceOp::Max), CommError);
  EXPECT_THROW(comm().reduce_scatter(d.data(), o.data(), 16, CommDType::Bytes, ReduceOp::Sum),
               CommError);
}

// A batch with one bad op throws and posts nothing: its valid receive is not performed (the
// buffer keeps its garbage), and the communicator works afterwards (no group left open).
TEST(CudaNccl, BadArgumentsThrowBeforePosting) {
  MOETRON_REQUIRE_GPU();
  const std::vector<uint8_t> a = rand_bytes(4096, 15);
  Buffer<uint8_t> da = dev(a), ra = dev_garbage<uint8_t>(a.size());
  const std::vector<uint8_t> garbage = host(ra, a.size());
  for (const P2pOp& bad : {P2pOp::send(da.data(), 8, 1, 0), P2pOp::send(da.data(), 8, -1, 0),
                           P2pOp::recv(ra.data(), 8, 0, -5), P2pOp::recv(nullptr, 8, 0, 0)}) {
    const std::vector<P2pOp> ops = {P2pOp::send(da.data(), a.size(), 0, 0),
                                    P2pOp::recv(ra.data(), a.size(), 0, 0), bad};
    EXPECT_THROW(comm().batch_isend_irecv(ops), CommError);
  }
  comm().barrier();
  expect_equal(host(ra, a.size()), garbage, "nothing posted by a bad batch");

  EXPECT_THROW(comm().send(da.data(), 8, 1, 0), CommError);
  EXPECT_THROW(comm().recv(ra.data(), 8, 0, -1), CommError);
  EXPECT_THROW(comm().isend(nullptr, 8, 0, 0), CommError);
  EXPECT_THROW(comm().irecv(ra.data(), 8, 7, 0), CommError);
  EXPECT_THROW(comm().all_reduce(nullptr, 8, CommDType::F32, ReduceOp::Sum), CommError);

  // still usable
  const std::vector<P2pOp> ok = {P2pOp::send(da.data(), a.size(), 0, 0),
                                 P2pOp::recv(ra.data(), a.size(), 0, 0)};
  comm().batch_isend_irecv(ok).wait();
  expect_equal(host(ra, a.size()), a, "a good batch after the bad ones");
}

TEST(CudaNccl, OptionsAndRanksAreChecked) {
  MOETRON_REQUIRE_GPU();
  NcclOptions twenty;
  twenty.max_ctas = 20;  // DeepSeek-V3's communication SM budget
  std::unique_ptr<NcclCommunicator> c = one_rank(twenty);
  const std::vector<double> h = rand_vec<double>(100000, 16);
  Buffer<double> d = dev(h);
  c->all_reduce(d.data(), h.size());
  expect_equal(host(d, h.size()), h, "all_reduce with max_ctas = 20");
  c->barrier();
  c.reset();  // destroyed cleanly

  NcclOptions negative;
  negative.max_ctas = -1;
  const ncclUniqueId id = NcclCommunicator::unique_id();
  EXPECT_THROW(std::make_unique<NcclCommunicator>(id, 1, 0, negative), CommError);
  EXPECT_THROW(std::make_unique<NcclCommunicator>(id, 1, 1), CommError);
  EXPECT_THROW(std::make_unique<NcclCommunicator>(id, 0, 0), CommError);
}

// Long compute-stream work writes y; the communicator reads it (the communication stream must wait
// for it) and writes z; compute-stream work after the blocking call reads z (the compute stream
// must wait for the communication stream). Out of place, so a missing wait either way shows up as
// partial sums (40 adds of 64 MB take milliseconds; an unordered copy would start at once; on the
// emulator 4099 floats: its streams run work only when needed, so a missing wait shows at any
// size).
TEST(CudaNccl, StreamsAreOrderedAroundOperations) {
  MOETRON_REQUIRE_GPU();
  const size_t n = emulated() ? 4099 : size_t(1) << 24;
  const int reps = 40;
  const std::vector<float> x = small_ints(n, 17);
  Buffer<float> dx = dev(x), y(Device::CUDA), z = dev_garbage<float>(n), w = dev_garbage<float>(n);
  const Exec ex = gpu_exec();
  auto produce = [&] {
    kernels::fill_zero(ex, y.resize(n), n * sizeof(float));
    for (int i = 0; i < reps; ++i) kernels::add_inplace<float>(ex, y.data(), dx.data(), n);
  };
  auto times = [&](float k) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = k * x[i] + 0.f;  // + 0: the GPU's sums of -0 give +0
    return v;
  };

  produce();
  comm().all_gather(y.data(), z.data(), n, CommDType::F32);  // blocking: a copy on one rank
  kernels::add_inplace<float>(ex, z.data(), dx.data(), n);
  expect_equal(host(z, n), times(reps + 1), "all_gather between compute work");

  produce();
  comm().all_reduce(y.data(), n, CommDType::F32, ReduceOp::Sum);
  kernels::add_inplace<float>(ex, y.data(), dx.data(), n);
  expect_equal(host(y, n), times(reps + 1), "all_reduce between compute work");

  produce();
  Request r = comm().iall_to_all_v(y.data(), {n * sizeof(float)}, w.data(), {n * sizeof(float)});
  r.wait();  // complete on the host: compute work enqueued from here on runs after it
  kernels::add_inplace<float>(ex, w.data(), dx.data(), n);
  expect_equal(host(w, n), times(reps + 1), "all_to_all_v between compute work");

  produce();
  const std::vector<P2pOp> ops = {P2pOp::send(y.data(), n * sizeof(float), 0, 0),
                                  P2pOp::recv(z.data(), n * sizeof(float), 0, 0)};
  comm().batch_isend_irecv(ops).wait();
  expect_equal(host(z, n), times(reps), "batch_isend_irecv after compute work");
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
