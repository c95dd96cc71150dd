// The NCCL-ordered communicator (see comm_stream.h): one FIFO of operations per process, run by
// one worker thread on the wrapped MPI communicators.
#include "parallel/comm_stream.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace moetron {

namespace {

std::atomic<bool> g_guard_nccl_order{false};

// One posted operation: its work, and its completion as the worker saw it.
struct Task {
  std::function<void()> run;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  void wait() {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return done; });
    if (error) std::rethrow_exception(error);
  }
  bool test() {
    std::lock_guard<std::mutex> lk(mu);
    if (done && error) std::rethrow_exception(error);
    return done;
  }
};

// The process's stream: operations run in the order posted, one at a time.
class Stream {
 public:
  Stream() : worker_([this] { loop(); }) {}
  ~Stream() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  std::shared_ptr<Task> post(std::function<void()> f) {
    auto t = std::make_shared<Task>();
    t->run = std::move(f);
    {
      std::lock_guard<std::mutex> lk(mu_);
      queue_.push_back(t);
    }
    cv_.notify_all();
    return t;
  }
  static std::shared_ptr<Stream> process() {
    static std::mutex mu;
    static std::weak_ptr<Stream> one;
    std::lock_guard<std::mutex> lk(mu);
    std::shared_ptr<Stream> s = one.lock();
    if (!s) one = s = std::make_shared<Stream>();
    return s;
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<Task> t;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        t = queue_.front();
        queue_.pop_front();
      }
      std::exception_ptr error;
      try {
        t->run();
      } catch (...) {
        error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lk(t->mu);
        t->done = true, t->error = error;
      }
      t->cv.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Task>> queue_;
  bool stop_ = false;
  std::thread worker_;
};

class OrderedCommunicator final : public WrappedCommunicator {
 public:
  OrderedCommunicator(std::unique_ptr<Communicator> own, Communicator& c, std::shared_ptr<Stream> s)
      : WrappedCommunicator(std::move(own), c), stream_(std::move(s)) {}
  bool tags_match() const override { return false; }

  void send(const void* buf, size_t bytes, int peer, int) override {
    run([=, this] { c_.send(buf, bytes, peer, 0); });
  }
  void recv(void* buf, size_t bytes, int peer, int) override {
    run([=, this] { c_.recv(buf, bytes, peer, 0); });
  }
  Request isend(const void* buf, size_t bytes, int peer, int) override {
    return pending([=, this] { c_.send(buf, bytes, peer, 0); });
  }
  Request irecv(void* buf, size_t bytes, int peer, int) override {
    return pending([=, this] { c_.recv(buf, bytes, peer, 0); });
  }
  using Communicator::batch_isend_irecv;
  Request batch_isend_irecv(const P2pOp* ops, size_t n) override {
    std::vector<P2pOp> v(ops, ops + n);
    for (P2pOp& op : v) op.tag = 0;
    return pending([v = std::move(v), this] { c_.batch_isend_irecv(v).wait(); });
  }

  using Communicator::all_gather;
  using Communicator::all_reduce;
  using Communicator::reduce_scatter;
  void all_reduce(void* data, size_t count, CommDType t, ReduceOp op) override {
    run([=, this] { c_.all_reduce(data, count, t, op); });
  }
  Request ireduce_scatter(const void* in, void* out, size_t count, CommDType t,
                          ReduceOp op) override {
    return pending([=, this] { c_.reduce_scatter(in, out, count, t, op); });
  }
  void all_gather(const void* in, void* out, size_t count, CommDType t) override {
    run([=, this] { c_.all_gather(in, out, count, t); });
  }
  void all_to_all(const int64_t* in, int64_t* out, size_t count) override {
    run([=, this] { c_.all_to_all(in, out, count); });
  }
  Request iall_to_all_v(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                        const std::vector<size_t>& recv_bytes) override {
    return pending([=, this] { c_.iall_to_all_v(send, send_bytes, recv, recv_bytes).wait(); });
  }
  void barrier() override {
    run([this] { c_.barrier(); });
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    std::unique_ptr<Communicator> sub;
    run([&] { sub = c_.split(color, key); });
    if (!sub) return nullptr;
    Communicator& inner = *sub;
    return std::make_unique<OrderedCommunicator>(std::move(sub), inner, stream_);
  }

 private:
  void run(std::function<void()> f) { stream_->post(std::move(f))->wait(); }
  Request pending(std::function<void()> f) {
    std::shared_ptr<Task> t = stream_->post(std::move(f));
    return Request([t](bool block) {
      if (block) return t->wait(), true;
      return t->test();
    });
  }
  std::shared_ptr<Stream> stream_;
};

}  // namespace

std::unique_ptr<Communicator> nccl_ordered_communicator(Communicator& mpi) {
  std::unique_ptr<Communicator> own = mpi.split(0, mpi.rank());  // the worker's alone
  Communicator& c = *own;
  return std::make_unique<OrderedCommunicator>(std::move(own), c, Stream::process());
}

bool guard_nccl_order() { return g_guard_nccl_order.load(); }
void set_guard_nccl_order(bool on) { g_guard_nccl_order = on; }

}  // namespace moetron
