// Independent pieces of host work run on the host's threads: what the model's initialisation uses
// to draw its parameters in parallel (model/ holds no OpenMP, so the threads live here).
#pragma once

#include <functional>
#include <vector>

namespace moetron::kernels {

// Runs every task once, in parallel on the host's OpenMP threads, handed out one at a time in
// the given order to the next free thread (put the longest first). Tasks must not depend on each
// other. The first exception a task throws is rethrown once all have ended.
void run_host_tasks(const std::vector<std::function<void()>>& tasks);

}  // namespace moetron::kernels
