// LocalDispatcher: the single-process token dispatch (see dispatch.h).
#include "model/dispatch.h"

#include <stdexcept>

#include "kernels/ops.h"
#include "kernels/pinned.h"

namespace moetron {

namespace {
// The rows-per-expert read of one (layer, micro-batch), kept in DispatchState::plan.
struct LocalPlan {
  explicit LocalPlan(Device d) : counts(d) {}
  Buffer<int64_t> counts;               // [E] (token, slot) pairs per expert, on the device
  PinnedVector<int64_t> counts_host;    // [E] read back
  HostRead read;                        // that read, until dispatch_wait waits (after counts_host)
  PinnedVector<int64_t> offsets;        // [E+1] the counts as offsets (host)
  int64_t pairs = 0;                    // N * K: every pair has its expert here
  bool planned = false, ready = false;  // read started; offsets made for this forward
  const void* x = nullptr;              // dispatch_start's x (T), copied by dispatch_wait
  const void* dy = nullptr;             // combine_backward_start's dy, copied by its wait
  int wire = -1;                        // the pooled wire of the exchange in flight
};

template <class T>
LocalPlan& plan_of(DispatchState<T>& st, Device d) {
  if (!st.plan) st.plan = std::make_shared<LocalPlan>(d);
  return *static_cast<LocalPlan*>(st.plan.get());
}
}  // namespace

template <class T>
void LocalDispatcher<T>::dispatch_plan(DispatchState<T>& st, const int32_t* idx, int64_t N,
                                       int64_t K, int64_t n_experts) {
  LocalPlan& pl = plan_of(st, ex_.device);
  const int64_t E = n_experts;
  pl.pairs = N * K;
  kernels::expert_histogram(ex_, idx, N * K, N * K, N * K, E, sized(pl.counts, E),
                            /*accumulate=*/false);
  pl.read.wait();  // a read still in flight into counts_host (a plan never waited for) first
  pl.counts_host.resize(static_cast<size_t>(E));
  pl.read = kernels::copy_to_host_start(ex_, pl.counts_host.data(), pl.counts.data(),
                                        sizeof(int64_t) * E);
  pl.planned = true, pl.ready = false;
}

template <class T>
void LocalDispatcher<T>::dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx,
                                        const T* w, int64_t N, int64_t K, int64_t D, int64_t) {
  st.N = N, st.K = K, st.D = D, st.R = N;
  plan_of(st, ex_.device).x = x;
  kernels::copy(ex_, sized(st.ridx, N * K), idx, sizeof(int32_t) * N * K);
  kernels::copy(ex_, sized(st.rw, N * K), w, sizeof(T) * N * K);
}

// The counts' read: the stream up to the plan, not the work enqueued since (the shared expert).
template <class T>
void LocalDispatcher<T>::dispatch_wait(DispatchState<T>& st) {
  LocalPlan& pl = plan_of(st, ex_.device);
  const int64_t ND = st.N * st.D;
  kernels::copy(ex_, sized(st.rx, ND), static_cast<const T*>(pl.x), sizeof(T) * ND);
  if (!pl.planned) return;
  pl.planned = false;
  pl.read.wait();
  const size_t E = pl.counts_host.size();
  pl.offsets.resize(E + 1);
  pl.offsets[0] = 0;
  for (size_t e = 0; e < E; ++e) pl.offsets[e + 1] = pl.offsets[e] + pl.counts_host[e];
  // the histogram skips ids outside [0, E), which the gate never makes; the layer's routing op
  // would refuse them on the CPU
  if (pl.offsets[E] != pl.pairs) throw std::out_of_range("local dispatch: expert id out of range");
  pl.ready = true;
}

template <class T>
const int64_t* LocalDispatcher<T>::expert_offsets(const DispatchState<T>& st) const {
  const auto* pl = static_cast<const LocalPlan*>(st.plan.get());
  return pl && pl->ready ? pl->offsets.data() : nullptr;
}

// An exchange within the process: its start copies the [N, D] rows into a pooled wire, its wait
// adds the wire into `out` and gives it back.
template <class T>
void LocalDispatcher<T>::post_rows(DispatchState<T>& st, const T* rows) {
  LocalPlan& pl = plan_of(st, ex_.device);
  const int64_t ND = st.N * st.D;
  pl.wire = wires_.take(ex_.device);
  kernels::copy(ex_, sized(wires_[pl.wire], ND), rows, sizeof(T) * ND);
}

template <class T>
void LocalDispatcher<T>::add_rows(DispatchState<T>& st, T* out) {
  LocalPlan& pl = plan_of(st, ex_.device);
  kernels::add_inplace<T>(ex_, out, wires_[pl.wire].data(), st.N * st.D);
  wires_.give(pl.wire);
  pl.wire = -1;
}

template <class T>
void LocalDispatcher<T>::combine_start(DispatchState<T>& st) {
  post_rows(st, st.ry.data());
}

template <class T>
void LocalDispatcher<T>::combine_wait(DispatchState<T>& st, T* y) {
  add_rows(st, y);
}

template <class T>
void LocalDispatcher<T>::combine_backward_start(DispatchState<T>& st, const T* dy) {
  plan_of(st, ex_.device).dy = dy;
}

template <class T>
void LocalDispatcher<T>::combine_backward_wait(DispatchState<T>& st) {
  const int64_t ND = st.N * st.D;
  kernels::copy(ex_, sized(st.rdy, ND), static_cast<const T*>(plan_of(st, ex_.device).dy),
                sizeof(T) * ND);
}

template <class T>
void LocalDispatcher<T>::dispatch_backward_start(DispatchState<T>& st) {
  post_rows(st, st.rdx.data());
}

template <class T>
void LocalDispatcher<T>::dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) {
  add_rows(st, dx);
  kernels::copy(ex_, dw, st.rdw.data(), sizeof(T) * st.N * st.K);
}

template class LocalDispatcher<float>;
template class LocalDispatcher<double>;

}  // namespace moetron
