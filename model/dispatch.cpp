// LocalDispatcher: the single-process token dispatch (see dispatch.h).
#include "model/dispatch.h"

#include "kernels/ops.h"

namespace moetron {

template <class T>
void LocalDispatcher<T>::dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx,
                                        const T* w, int64_t N, int64_t K, int64_t D, int64_t) {
  st.N = N, st.K = K, st.D = D, st.R = N;
  kernels::copy(ex_, sized(st.rx, N * D), x, sizeof(T) * N * D);
  kernels::copy(ex_, sized(st.ridx, N * K), idx, sizeof(int32_t) * N * K);
  kernels::copy(ex_, sized(st.rw, N * K), w, sizeof(T) * N * K);
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
