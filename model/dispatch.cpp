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
  kernels::copy(ex_, sized(st.rx, N * D), x, sizeof(T) * N * D);
  kernels::copy(ex_, sized(st.ridx, N * K), idx, sizeof(int32_t) * N * K);
  kernels::copy(ex_, sized(st.rw, N * K), w, sizeof(T) * N * K);
}

// The counts' read: the stream up to the plan, not the work enqueued since (the shared expert).
template <class T>
void LocalDispatcher<T>::dispatch_wait(DispatchState<T>& st) {
  if (!st.plan) return;
  LocalPlan& pl = plan_of(st, ex_.device);
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

template <class T>
void LocalDispatcher<T>::combine_wait(DispatchState<T>& st, T* y) {
  kernels::add_inplace<T>(ex_, y, st.ry.data(), st.N * st.D);
}

template <class T>
void LocalDispatcher<T>::combine_backward_start(DispatchState<T>& st, const T* dy) {
  kernels::copy(ex_, sized(st.rdy, st.N * st.D), dy, sizeof(T) * st.N * st.D);
}

template <class T>
void LocalDispatcher<T>::dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) {
  kernels::add_inplace<T>(ex_, dx, st.rdx.data(), st.N * st.D);
  kernels::copy(ex_, dw, st.rdw.data(), sizeof(T) * st.N * st.K);
}

template class LocalDispatcher<float>;
template class LocalDispatcher<double>;

}  // namespace moetron
