// Intra-op thread count: one knob for every parallel library in the process.
//
// The kernels parallelise with OpenMP, OpenBLAS runs its own thread pool and oneDNN (built with
// the OpenMP runtime) reads omp_get_max_threads() when it executes. set_num_threads keeps the
// three in step so that a rank never oversubscribes its cores. The host race check's build
// (MOETRON_TSAN_HOST) keeps one: libgomp's barriers are invisible to ThreadSanitizer, so its
// workers would show as races with each other and with the thread that waits for them.
#include <cblas.h>
#include <omp.h>

#include "kernels/cpu/ops_cpu.h"

namespace moetron::kernels {

void set_num_threads(int n) {
  if (n < 1) n = 1;
#if defined(MOETRON_TSAN_HOST)
  n = 1;
#endif
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace moetron::kernels
