// Expert-parallel token dispatch over the EP group (the MoE layer's dispatch/combine phases).
//
// The routed experts of every MoE layer are split evenly over the EP ranks: rank p holds global
// experts [p E/EP, (p+1) E/EP). Dispatch sends each token ONCE to every rank that holds one of
// its top-k experts, with its k local expert ids (-1 for slots served elsewhere) and weights:
// counts are exchanged first (all-to-all), then the rows (all-to-all-v). Each rank computes its
// experts on what it received and returns, per received token, the sum of its experts' weighted
// outputs; combine adds the returned rows into the origin tokens (a plain sum, in rank order, so
// the result is deterministic). Backward: the gradient of combine is a dispatch of dy along the
// same plan; the gradient of dispatch returns d x rows and per-slot d weights along the reverse.
// Every phase has start (post the non-blocking exchange) and wait, so compute can run between.
#pragma once

#include <vector>

#include "model/dispatch.h"
#include "parallel/comm.h"

namespace moetron {

template <class T>
class EpDispatcher final : public TokenDispatcher<T> {
 public:
  // node_of_peer[p]: the node of EP rank p (for the nodes-per-token measurement)
  EpDispatcher(Communicator& ep, std::vector<int> node_of_peer)
      : ep_(ep), node_of_peer_(std::move(node_of_peer)) {}
  int64_t first_expert(int64_t n_experts) const override {
    return ep_.rank() * (n_experts / ep_.size());
  }
  int64_t local_experts(int64_t n_experts) const override { return n_experts / ep_.size(); }

  void dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx, const T* w, int64_t N,
                      int64_t K, int64_t D, int64_t n_experts) override;
  void dispatch_wait(DispatchState<T>& st) override;
  void combine_start(DispatchState<T>& st) override;
  void combine_wait(DispatchState<T>& st, T* y) override;
  void combine_backward_start(DispatchState<T>& st, const T* dy) override;
  void combine_backward_wait(DispatchState<T>& st) override;
  void dispatch_backward_start(DispatchState<T>& st) override;
  void dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) override;

  // Bytes this process sent in dispatch payloads so far (for the FP8-dispatch report).
  int64_t bytes_sent() const { return bytes_sent_; }
  // The most nodes any one token was sent to since the last call (node-limited routing check).
  int64_t take_max_nodes_per_token() {
    const int64_t m = max_nodes_;
    max_nodes_ = 0;
    return m;
  }
  // Seconds spent blocked in the exchanges (counts and waits) since the last call; what the
  // overlap of a later schedule must hide.
  double take_comm_seconds() {
    const double s = comm_seconds_;
    comm_seconds_ = 0;
    return s;
  }

 private:
  // rows of `width` T's: send (grouped by peer, send_counts) -> recv (recv_counts), or reverse
  void exchange_start(DispatchState<T>& st, std::vector<T> send, int64_t width, bool reverse);
  void exchange_wait(DispatchState<T>& st);
  Communicator& ep_;
  std::vector<int> node_of_peer_;
  int64_t max_nodes_ = 0;
  int64_t bytes_sent_ = 0;
  double comm_seconds_ = 0;
};

}  // namespace moetron
