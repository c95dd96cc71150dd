// The memory-checking Communicator (see comm_checked.h): every call checks its buffers, then
// forwards to the wrapped communicator unchanged.
#include "parallel/comm_checked.h"

#include "kernels/device.h"

namespace moetron {

namespace {

class CheckedCommunicator final : public WrappedCommunicator {
 public:
  CheckedCommunicator(std::unique_ptr<Communicator> own, Communicator& c, MemoryKind kind)
      : WrappedCommunicator(std::move(own), c), kind_(kind) {}

  void send(const void* buf, size_t bytes, int peer, int tag) override {
    check(buf, bytes, "send");
    c_.send(buf, bytes, peer, tag);
  }
  void recv(void* buf, size_t bytes, int peer, int tag) override {
    check(buf, bytes, "recv");
    c_.recv(buf, bytes, peer, tag);
  }
  Request isend(const void* buf, size_t bytes, int peer, int tag) override {
    check(buf, bytes, "isend");
    return c_.isend(buf, bytes, peer, tag);
  }
  Request irecv(void* buf, size_t bytes, int peer, int tag) override {
    check(buf, bytes, "irecv");
    return c_.irecv(buf, bytes, peer, tag);
  }
  using Communicator::batch_isend_irecv;
  Request batch_isend_irecv(const P2pOp* ops, size_t n) override {
    for (size_t i = 0; i < n; ++i) check(ops[i].buf, ops[i].bytes, "batch_isend_irecv");
    return c_.batch_isend_irecv(ops, n);
  }
  bool tags_match() const override { return c_.tags_match(); }

  using Communicator::all_gather;
  using Communicator::all_reduce;
  using Communicator::reduce_scatter;
  void all_reduce(void* data, size_t count, CommDType t, ReduceOp op) override {
    check(data, count * comm_dtype_size(t), "all_reduce");
    c_.all_reduce(data, count, t, op);
  }
  Request ireduce_scatter(const void* in, void* out, size_t count, CommDType t,
                          ReduceOp op) override {
    reduce_scatter_checks(in, out, count, t);
    return c_.ireduce_scatter(in, out, count, t, op);
  }
  void reduce_scatter(const void* in, void* out, size_t count, CommDType t, ReduceOp op) override {
    reduce_scatter_checks(in, out, count, t);
    c_.reduce_scatter(in, out, count, t, op);
  }
  void all_gather(const void* in, void* out, size_t count, CommDType t) override {
    check(in, count * comm_dtype_size(t), "all_gather");
    check(out, count * comm_dtype_size(t) * static_cast<size_t>(size()), "all_gather");
    c_.all_gather(in, out, count, t);
  }
  void all_to_all(const int64_t* in, int64_t* out, size_t count) override {
    const size_t bytes = sizeof(int64_t) * count * static_cast<size_t>(size());
    check(in, bytes, "all_to_all"), check(out, bytes, "all_to_all");
    c_.all_to_all(in, out, count);
  }
  Request iall_to_all_v(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes) override {
    check(send, sum(send_bytes), "all_to_all_v"), check(recv, sum(recv_bytes), "all_to_all_v");
    return c_.iall_to_all_v(send, send_bytes, recv, recv_bytes);
  }
  void barrier() override { c_.barrier(); }
  void poke() override { c_.poke(); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    std::unique_ptr<Communicator> sub = c_.split(color, key);
    if (!sub) return nullptr;
    Communicator& inner = *sub;
    return std::make_unique<CheckedCommunicator>(std::move(sub), inner, kind_);
  }

 private:
  void check(const void* p, size_t bytes, const char* op) const {
    if (bytes == 0) return;
    const bool device = is_guard_memory(p);
    if (device == (kind_ == MemoryKind::Device)) return;
    throw CommError("communicator " + (name().empty() ? std::string("(unnamed)") : name()) + ": " +
                    op + " on rank " + std::to_string(rank()) + " was given " +
                    (device ? "device (guard) memory; this group carries host data"
                            : "host memory; this group carries device data"));
  }
  void reduce_scatter_checks(const void* in, void* out, size_t count, CommDType t) const {
    check(in, count * comm_dtype_size(t) * static_cast<size_t>(size()), "reduce_scatter");
    check(out, count * comm_dtype_size(t), "reduce_scatter");
  }
  static size_t sum(const std::vector<size_t>& v) {
    size_t s = 0;
    for (size_t x : v) s += x;
    return s;
  }
  MemoryKind kind_;
};

}  // namespace

std::unique_ptr<Communicator> checked_communicator(std::unique_ptr<Communicator> inner,
                                                   MemoryKind kind) {
  Communicator& c = *inner;
  return std::make_unique<CheckedCommunicator>(std::move(inner), c, kind);
}

std::unique_ptr<Communicator> checked_communicator(Communicator& inner, MemoryKind kind) {
  return std::make_unique<CheckedCommunicator>(nullptr, inner, kind);
}

}  // namespace moetron
