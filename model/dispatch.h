// Token dispatch: how a MoE layer's routed tokens reach the experts and come back.
//
// The MoE layer decides, per token, K (expert, weight) pairs; a TokenDispatcher moves each token
// once to every process that holds one of its experts and brings the weighted expert outputs
// back as a plain sum (the gate weight is folded into the experts' SwiGLU). The model only sees
// this interface: LocalDispatcher (here) keeps everything in the process; the expert-parallel
// dispatcher (parallel/) implements it with an all-to-all over the EP group. Every operation is
// split into start and wait, so an executor can run another micro-batch's compute in between;
// progress() lets what is in flight move meanwhile.
//
// Backward: the backward of dispatch is a combine of gradients and the backward of combine is a
// dispatch, reusing the forward's plan (no new routing decision).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/exec.h"
#include "model/buffers.h"
#include "model/pool.h"

namespace moetron {

// One MoE layer's dispatch for one micro-batch: the received side and the dispatcher's plan.
template <class T>
struct DispatchState {
  int64_t N = 0, K = 0, D = 0;  // origin tokens, top-k, width
  int64_t R = 0;                // tokens received here
  // The [R, D] rows: the MoE layer lends each only for the one call that writes or reads it
  // (dispatch_wait writes rx, combine_start reads ry, combine_backward_wait writes rdy,
  // dispatch_backward_start reads rdx), all four from one buffer that a process's model chunks
  // share (MoE::Scratch::rows); no dispatcher may keep them past that call.
  Buffer<T> rx;          // [R, D] received token rows
  Buffer<int32_t> ridx;  // [R, K] LOCAL expert id per slot, -1 where the expert is elsewhere
  Buffer<T> rw;          // [R, K] gate weight per slot
  Buffer<T> ry;          // [R, D] sum of this process's weighted expert outputs
  Buffer<T> rdy, rdx;    // backward: [R, D] each
  Buffer<T> rdw;         // [R, K] (lent for the backward program)
  // the dispatcher's own plan and in-flight communication (opaque to the model)
  std::shared_ptr<void> plan;
};

template <class T>
class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // The contiguous block of global expert ids held by this process.
  virtual int64_t first_expert(int64_t n_experts) const = 0;
  virtual int64_t local_experts(int64_t n_experts) const = 0;

  // Plans ahead: dispatch_start needs the plan's per-peer counts on the host, and the plan is made
  // on the device (EP on a GPU). Then a forward calls dispatch_plan first, which enqueues the plan
  // and starts reading its counts back, and lets other work be enqueued before dispatch_start,
  // which waits for the counts only (not for that work) and posts the exchange. Without the split
  // the host would wait for everything enqueued so far, draining the GPU at every dispatch.
  virtual bool plans_ahead() const { return false; }
  // idx [N,K] global expert ids. dispatch_start makes the plan itself when none was made.
  virtual void dispatch_plan(DispatchState<T>& /*st*/, const int32_t* /*idx*/, int64_t /*N*/,
                             int64_t /*K*/, int64_t /*n_experts*/) {}
  // forward: x [N,D], idx [N,K] global expert ids, w [N,K] -> st.R, st.rx, st.ridx, st.rw
  virtual void dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx, const T* w,
                              int64_t N, int64_t K, int64_t D, int64_t n_experts) = 0;
  virtual void dispatch_wait(DispatchState<T>& st) = 0;
  // After dispatch_wait: the received (token, slot) pairs per local expert as offsets [El+1], on
  // the host, where the dispatcher has them without reading the device (an EP exchange's counts
  // carry them, as DeepEP's notify does); null otherwise, and the layer reads its own.
  virtual const int64_t* expert_offsets(const DispatchState<T>& /*st*/) const { return nullptr; }
  // forward: st.ry [R,D] -> y [N,D] += sum over the processes each token went to
  virtual void combine_start(DispatchState<T>& st) = 0;
  virtual void combine_wait(DispatchState<T>& st, T* y) = 0;
  // backward of combine: dy [N,D] -> st.rdy [R,D]
  virtual void combine_backward_start(DispatchState<T>& st, const T* dy) = 0;
  virtual void combine_backward_wait(DispatchState<T>& st) = 0;
  // backward of dispatch: st.rdx [R,D], st.rdw [R,K] -> dx [N,D] += ..., dw [N,K] (write)
  virtual void dispatch_backward_start(DispatchState<T>& st) = 0;
  virtual void dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) = 0;
  // Lets the exchanges in flight move without blocking (a communication library without a
  // progress thread moves large messages only inside its calls); an executor that overlaps
  // micro-batches calls it between pieces of work. Nothing to do where nothing is in flight.
  virtual void progress() {}
};

// All experts in this process: received = sent. Like an exchange it carries what crosses a
// call in a wire of its own (the rows are lent for one call): dispatch_start notes x and
// dispatch_wait copies it into rx (x, the layer's input, lives until its program ends, as dy
// does in the backward); combine_start and dispatch_backward_start copy ry and rdx into a pooled
// wire that the waits add from and give back (at most one per program in flight).
// On a device it plans ahead too, though it exchanges nothing: dispatch_plan counts the (token,
// slot) pairs per expert and starts reading them back, the layer enqueues its shared expert, and
// dispatch_wait waits for that read only, so the grouped GEMMs' host offsets cost no stream drain
// (the GPU runs the shared expert meanwhile). On the CPU the layer reads its own, a memcpy.
template <class T>
class LocalDispatcher final : public TokenDispatcher<T> {
 public:
  explicit LocalDispatcher(const Exec& ex = Exec{}) : ex_(ex) {}
  int64_t first_expert(int64_t) const override { return 0; }
  int64_t local_experts(int64_t n_experts) const override { return n_experts; }
  bool plans_ahead() const override { return ex_.device != Device::CPU; }
  void dispatch_plan(DispatchState<T>& st, const int32_t* idx, int64_t N, int64_t K,
                     int64_t n_experts) override;
  void dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx, const T* w, int64_t N,
                      int64_t K, int64_t D, int64_t n_experts) override;
  void dispatch_wait(DispatchState<T>& st) override;
  const int64_t* expert_offsets(const DispatchState<T>& st) const override;
  void combine_start(DispatchState<T>& st) override;
  void combine_wait(DispatchState<T>& st, T* y) override;
  void combine_backward_start(DispatchState<T>& st, const T* dy) override;
  void combine_backward_wait(DispatchState<T>& st) override;
  void dispatch_backward_start(DispatchState<T>& st) override;
  void dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) override;

 private:
  Exec ex_;
  Pool<Buffer<T>> wires_;  // [N, D] each: taken at a start, given back at its wait
  void post_rows(DispatchState<T>& st, const T* rows);
  void add_rows(DispatchState<T>& st, T* out);
};

}  // namespace moetron
