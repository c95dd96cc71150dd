// The staged communicator (see comm_staged.h): device bytes down to pinned host memory, the
// wrapped communicator's operation there, the results back up.
#include "parallel/comm_staged.h"

#include <numeric>
#include <utility>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pinned.h"

namespace moetron {

namespace {

using Host = PinnedVector<uint8_t>;

size_t total(const std::vector<size_t>& v) {
  return std::accumulate(v.begin(), v.end(), size_t{0});
}

class Staged final : public WrappedCommunicator {
 public:
  Staged(std::unique_ptr<Communicator> own, Communicator& host, Device d)
      : WrappedCommunicator(std::move(own), host), ex_(Exec::on(d)) {}

  void send(const void* buf, size_t bytes, int peer, int tag) override {
    const Host h = down(buf, bytes);
    c_.send(h.data(), bytes, peer, tag);
  }
  void recv(void* buf, size_t bytes, int peer, int tag) override {
    Host h(bytes);
    c_.recv(h.data(), bytes, peer, tag);
    up(buf, h.data(), bytes);
  }
  Request isend(const void* buf, size_t bytes, int peer, int tag) override {
    auto h = std::make_shared<Host>(down(buf, bytes));
    return then(c_.isend(h->data(), bytes, peer, tag), [h] {});
  }
  Request irecv(void* buf, size_t bytes, int peer, int tag) override {
    auto h = std::make_shared<Host>(bytes);
    return then(c_.irecv(h->data(), bytes, peer, tag),
                [ex = ex_, h, buf, bytes] { up(ex, buf, h->data(), bytes); });
  }
  // Each op's bytes in one host block per op (sends copied down now); the receives copied up at
  // completion.
  Request batch_isend_irecv(const P2pOp* ops, size_t n) override {
    auto hs = std::make_shared<std::vector<Host>>();
    hs->reserve(n);
    std::vector<P2pOp> host_ops(ops, ops + n);
    for (size_t i = 0; i < n; ++i) {
      hs->push_back(ops[i].kind == P2pOp::Send ? down(ops[i].buf, ops[i].bytes)
                                               : Host(ops[i].bytes));
      host_ops[i].buf = ops[i].bytes ? hs->back().data() : ops[i].buf;
    }
    std::vector<P2pOp> dev_ops(ops, ops + n);
    return then(c_.batch_isend_irecv(host_ops), [ex = ex_, hs, dev_ops] {
      for (size_t i = 0; i < dev_ops.size(); ++i)
        if (dev_ops[i].kind == P2pOp::Recv)
          up(ex, dev_ops[i].buf, (*hs)[i].data(), dev_ops[i].bytes);
    });
  }
  bool tags_match() const override { return c_.tags_match(); }

  void all_reduce(void* data, size_t count, CommDType t, ReduceOp op) override {
    const size_t bytes = count * comm_dtype_size(t);
    Host h = down(data, bytes);
    c_.all_reduce(h.data(), count, t, op);
    up(data, h.data(), bytes);
  }
  Request ireduce_scatter(const void* in, void* out, size_t count, CommDType t,
                          ReduceOp op) override {
    const size_t bytes = count * comm_dtype_size(t);
    auto hin = std::make_shared<Host>(down(in, bytes * static_cast<size_t>(size())));
    auto hout = std::make_shared<Host>(bytes);
    return then(c_.ireduce_scatter(hin->data(), hout->data(), count, t, op),
                [ex = ex_, hin, hout, out, bytes] { up(ex, out, hout->data(), bytes); });
  }
  void all_gather(const void* in, void* out, size_t count, CommDType t) override {
    const size_t bytes = count * comm_dtype_size(t), r = static_cast<size_t>(rank());
    Host h(bytes * static_cast<size_t>(size()));
    if (bytes) kernels::copy_to_host(ex_, h.data() + r * bytes, in, bytes);
    c_.all_gather(h.data() + r * bytes, h.data(), count, t);  // in place
    up(out, h.data(), h.size());
  }
  void all_to_all(const int64_t* in, int64_t* out, size_t count) override {
    const size_t bytes = count * sizeof(int64_t) * static_cast<size_t>(size());
    const Host hin = down(in, bytes);
    Host hout(bytes);
    c_.all_to_all(reinterpret_cast<const int64_t*>(hin.data()),
                  reinterpret_cast<int64_t*>(hout.data()), count);
    up(out, hout.data(), bytes);
  }
  Request iall_to_all_v(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes) override {
    auto hs = std::make_shared<Host>(down(send, total(send_bytes)));
    auto hr = std::make_shared<Host>(total(recv_bytes));
    return then(c_.iall_to_all_v(hs->data(), send_bytes, hr->data(), recv_bytes),
                [ex = ex_, hs, hr, recv] { up(ex, recv, hr->data(), hr->size()); });
  }
  void barrier() override { c_.barrier(); }
  void poke() override { c_.poke(); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    std::unique_ptr<Communicator> s = c_.split(color, key);
    if (!s) return nullptr;
    Communicator& host = *s;
    return std::make_unique<Staged>(std::move(s), host, ex_.device);
  }

 private:
  // A host copy of `bytes` device bytes (waits for the stream up to the copy).
  Host down(const void* dev, size_t bytes) const {
    Host h(bytes);
    if (bytes) kernels::copy_to_host(ex_, h.data(), dev, bytes);
    return h;
  }
  static void up(const Exec& ex, void* dev, const void* host, size_t bytes) {
    if (bytes) kernels::copy_from_host(ex, dev, host, bytes);
  }
  void up(void* dev, const void* host, size_t bytes) const { up(ex_, dev, host, bytes); }
  Exec ex_;
};

}  // namespace

std::unique_ptr<Communicator> staged_communicator(Communicator& host, Device device) {
  return std::make_unique<Staged>(nullptr, host, device);
}

}  // namespace moetron
