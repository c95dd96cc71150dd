// run_host_tasks (kernels/host_tasks.h): an OpenMP loop with dynamic scheduling; exceptions are
// caught inside the parallel region (they must not cross it) and the first is rethrown after.
#include "kernels/host_tasks.h"

#include <exception>
#include <mutex>

namespace moetron::kernels {

void run_host_tasks(const std::vector<std::function<void()>>& tasks) {
  std::exception_ptr first;
  std::mutex mu;
  const int64_t n = static_cast<int64_t>(tasks.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    try {
      tasks[static_cast<size_t>(i)]();
    } catch (...) {
      const std::lock_guard<std::mutex> lk(mu);
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace moetron::kernels
