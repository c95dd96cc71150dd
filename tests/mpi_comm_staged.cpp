// mpi-ranks: 2 4
// The staged communicator (parallel/comm_staged.h) on real ranks: every operation on guard-device
// buffers (the GPU's stand-in: memory only ops and the communicator may touch) through
// staged_communicator(world, Guard) gives the bytes the MPI world gives on host copies of the same
// values — reductions in fp32, bf16, fp64 and int64, reduce-scatter (waited and polled), gathers
// in place and not, fixed and variable all-to-all with empty blocks, blocking, non-blocking and
// batched point-to-point rings, and a split. The device results arrive by the ops' copies.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/buffer.h"
#include "kernels/ops.h"
#include "parallel/comm.h"
#include "parallel/comm_staged.h"

using namespace moetron;

namespace {

const Exec kGuard = Exec::on(Device::Guard);

template <class T>
std::vector<T> values(int rank, size_t n, unsigned salt) {
  std::mt19937 gen(77u + 131u * static_cast<unsigned>(rank) + salt);
  std::uniform_int_distribution<int> u(-1000, 1000);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(u(gen)) / static_cast<T>(sizeof(T) == 8 ? 7 : 3);
  return v;
}
std::vector<uint16_t> bf16_bits(int rank, size_t n) {
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint16_t>(0x3f00 + (rank * 37 + i * 11) % 255);
  return v;
}

template <class T>
Buffer<T> on_guard(const std::vector<T>& h) {
  Buffer<T> b(Device::Guard);
  b.resize(h.size());
  kernels::copy_from_host(kGuard, b.data(), h.data(), h.size() * sizeof(T));
  return b;
}
template <class T>
std::vector<T> back(const Buffer<T>& b, size_t n) {
  std::vector<T> h(n);
  kernels::copy_to_host(kGuard, h.data(), b.data(), n * sizeof(T));
  return h;
}
template <class T>
void expect_same_bytes(const std::vector<T>& a, const std::vector<T>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(T)), 0) << what;
}

TEST(StagedComm, CollectivesGiveTheHostCommunicatorsBytes) {
  Communicator& w = world();
  const auto s = staged_communicator(w, Device::Guard);
  const int r = w.rank(), P = w.size();
  const size_t n = 1001;
  {  // all-reduce: fp32 sum, bf16 sum, fp64 max, int64 sum
    std::vector<float> f = values<float>(r, n, 1);
    Buffer<float> df = on_guard(f);
    s->all_reduce(df.data(), n, CommDType::F32, ReduceOp::Sum);
    w.all_reduce(f.data(), n, CommDType::F32, ReduceOp::Sum);
    expect_same_bytes(back(df, n), f, "all_reduce fp32");
    std::vector<uint16_t> h = bf16_bits(r, n);
    Buffer<uint16_t> dh = on_guard(h);
    s->all_reduce(dh.data(), n, CommDType::BF16, ReduceOp::Sum);
    w.all_reduce(h.data(), n, CommDType::BF16, ReduceOp::Sum);
    expect_same_bytes(back(dh, n), h, "all_reduce bf16");
    std::vector<double> d = values<double>(r, n, 2);
    Buffer<double> dd = on_guard(d);
    s->all_reduce(dd.data(), n, CommDType::F64, ReduceOp::Max);
    w.all_reduce(d.data(), n, CommDType::F64, ReduceOp::Max);
    expect_same_bytes(back(dd, n), d, "all_reduce fp64 max");
    std::vector<int64_t> i = {r + 1, -r, 7};
    Buffer<int64_t> di = on_guard(i);
    s->all_reduce(di.data(), 3, CommDType::I64, ReduceOp::Sum);
    w.all_reduce(i.data(), 3, CommDType::I64, ReduceOp::Sum);
    expect_same_bytes(back(di, 3), i, "all_reduce int64");
  }
  {  // reduce-scatter, waited and polled
    const std::vector<float> in = values<float>(r, n * P, 3);
    std::vector<float> out(n);
    Buffer<float> din = on_guard(in), dout(Device::Guard);
    dout.resize(n);
    s->reduce_scatter(din.data(), dout.data(), n, CommDType::F32);
    w.reduce_scatter(in.data(), out.data(), n, CommDType::F32);
    expect_same_bytes(back(dout, n), out, "reduce_scatter");
    Buffer<float> dout2(Device::Guard);
    dout2.resize(n);
    Request q = s->ireduce_scatter(din.data(), dout2.data(), n, CommDType::F32);
    while (!q.test()) {
    }
    expect_same_bytes(back(dout2, n), out, "ireduce_scatter polled");
  }
  {  // all-gather: separate buffers, in place, bytes
    const std::vector<float> in = values<float>(r, n, 4);
    std::vector<float> out(n * P);
    w.all_gather(in.data(), out.data(), n, CommDType::F32);
    Buffer<float> din = on_guard(in), dout(Device::Guard);
    dout.resize(n * P);
    s->all_gather(din.data(), dout.data(), n, CommDType::F32);
    expect_same_bytes(back(dout, n * P), out, "all_gather");
    std::vector<float> place(n * P, -1.f);
    std::copy(in.begin(), in.end(), place.begin() + r * n);
    Buffer<float> dplace = on_guard(place);
    s->all_gather(dplace.data() + r * n, dplace.data(), n, CommDType::F32);
    expect_same_bytes(back(dplace, n * P), out, "all_gather in place");
    const std::vector<uint8_t> bytes = {uint8_t(r), uint8_t(r * 3), 9};
    std::vector<uint8_t> bout(3 * P);
    w.all_gather(bytes.data(), bout.data(), 3, CommDType::Bytes);
    Buffer<uint8_t> db = on_guard(bytes), dbout(Device::Guard);
    dbout.resize(3 * P);
    s->all_gather(db.data(), dbout.data(), 3, CommDType::Bytes);
    expect_same_bytes(back(dbout, 3 * P), bout, "all_gather bytes");
  }
}

TEST(StagedComm, AllToAllAndPointToPointGiveTheHostCommunicatorsBytes) {
  Communicator& w = world();
  const auto s = staged_communicator(w, Device::Guard);
  const int r = w.rank(), P = w.size();
  {  // fixed all-to-all of int64
    std::vector<int64_t> in(4 * P), out(4 * P);
    for (size_t i = 0; i < in.size(); ++i) in[i] = r * 100 + static_cast<int64_t>(i);
    w.all_to_all(in.data(), out.data(), 4);
    Buffer<int64_t> din = on_guard(in), dout(Device::Guard);
    dout.resize(4 * P);
    s->all_to_all(din.data(), dout.data(), 4);
    expect_same_bytes(back(dout, 4 * P), out, "all_to_all");
  }
  {  // variable all-to-all: peer p gets (r + p) % 3 * 5 bytes from r (some empty)
    std::vector<size_t> sb(P), rb(P);
    for (int p = 0; p < P; ++p) sb[p] = (r + p) % 3 * 5, rb[p] = (p + r) % 3 * 5;
    size_t ns = 0, nr = 0;
    for (int p = 0; p < P; ++p) ns += sb[p], nr += rb[p];
    std::vector<uint8_t> in(ns), out(nr);
    for (size_t i = 0; i < ns; ++i) in[i] = static_cast<uint8_t>(r * 16 + i);
    w.all_to_all_v(in.data(), sb, out.data(), rb);
    Buffer<uint8_t> din = on_guard(in), dout(Device::Guard);
    dout.resize(nr);
    s->all_to_all_v(din.data(), sb, dout.data(), rb);
    expect_same_bytes(back(dout, nr), out, "all_to_all_v");
  }
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  const std::vector<float> mine = values<float>(r, 257, 5), want = values<float>(prev, 257, 5);
  Buffer<float> dmine = on_guard(mine);
  {  // blocking ring (even ranks send first)
    Buffer<float> got(Device::Guard);
    got.resize(257);
    if (r % 2 == 0) {
      s->send(dmine.data(), 257 * 4, next, 3);
      s->recv(got.data(), 257 * 4, prev, 3);
    } else {
      s->recv(got.data(), 257 * 4, prev, 3);
      s->send(dmine.data(), 257 * 4, next, 3);
    }
    expect_same_bytes(back(got, 257), want, "send/recv ring");
  }
  {  // non-blocking ring
    Buffer<float> got(Device::Guard);
    got.resize(257);
    Request rr = s->irecv(got.data(), 257 * 4, prev, 4);
    Request sr = s->isend(dmine.data(), 257 * 4, next, 4);
    rr.wait(), sr.wait();
    expect_same_bytes(back(got, 257), want, "isend/irecv ring");
  }
  {  // batched, with a zero-byte pair
    Buffer<float> got(Device::Guard);
    got.resize(257);
    const std::vector<P2pOp> ops = {
        P2pOp::recv(got.data(), 257 * 4, prev, 5), P2pOp::send(dmine.data(), 257 * 4, next, 5),
        P2pOp::recv(nullptr, 0, prev, 6), P2pOp::send(nullptr, 0, next, 6)};
    s->batch_isend_irecv(ops).wait();
    expect_same_bytes(back(got, 257), want, "batch_isend_irecv ring");
  }
  {  // a split: the even and the odd ranks
    const auto half = s->split(r % 2, r);
    ASSERT_NE(half, nullptr);
    std::vector<float> f = values<float>(r, 33, 6);
    const auto whalf = w.split(r % 2, r);
    Buffer<float> df = on_guard(f);
    half->all_reduce(df.data(), 33, CommDType::F32, ReduceOp::Sum);
    whalf->all_reduce(f.data(), 33, CommDType::F32, ReduceOp::Sum);
    expect_same_bytes(back(df, 33), f, "split all_reduce");
    EXPECT_EQ(half->size(), whalf->size());
    EXPECT_EQ(s->split(-1, r), nullptr);
    EXPECT_EQ(w.split(-1, r), nullptr);
  }
}

}  // namespace
