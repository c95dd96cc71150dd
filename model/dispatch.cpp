// LocalDispatcher: the single-process token dispatch (see dispatch.h).
#include "model/dispatch.h"

#include <algorithm>

#include "kernels/ops.h"

namespace moetron {

template <class T>
void LocalDispatcher<T>::dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx,
                                        const T* w, int64_t N, int64_t K, int64_t D, int64_t) {
  st.N = N, st.K = K, st.D = D, st.R = N;
  std::copy(x, x + N * D, sized(st.rx, N * D));
  st.ridx.assign(idx, idx + N * K);
  std::copy(w, w + N * K, sized(st.rw, N * K));
}

template <class T>
void LocalDispatcher<T>::combine_wait(DispatchState<T>& st, T* y) {
  kernels::add_inplace<T>(y, st.ry.data(), st.N * st.D);
}

template <class T>
void LocalDispatcher<T>::combine_backward_start(DispatchState<T>& st, const T* dy) {
  std::copy(dy, dy + st.N * st.D, sized(st.rdy, st.N * st.D));
}

template <class T>
void LocalDispatcher<T>::dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) {
  kernels::add_inplace<T>(dx, st.rdx.data(), st.N * st.D);
  std::copy(st.rdw.begin(), st.rdw.begin() + st.N * st.K, dw);
}

template class LocalDispatcher<float>;
template class LocalDispatcher<double>;

}  // namespace moetron
