// The CUDA emulator's streams (tests/cuda_emu/streams.cpp says how the emulated GPU orders the
// work the host enqueues): what runtime.cpp's launches, copies and frees, and the emulated CUB
// sort, enqueue through, and the schedule that also orders a grid's blocks and threads.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>

namespace cuda_emu {

// Keeps e (not cudaSuccess) as the runtime's last error; returns e (runtime.cpp).
cudaError_t set_error(cudaError_t e);

// Enqueues `work` on stream s (null or cudaStreamLegacy: the legacy default stream); it runs
// when the schedule says (streams.cpp), after everything s held before it.
void enqueue(cudaStream_t s, std::function<void()> work);
// Runs stream s's work up to now (the host waits for it); then every stream's.
void synchronize(cudaStream_t s);
void synchronize_all();

// Whether the schedule shuffles the order of a grid's blocks and of a block's threads between
// barriers (CUDA_EMU_SCHEDULE=shuffle:<seed>), and its random numbers in [0, n).
bool shuffling();
uint64_t draw(uint64_t n);

// Sets the schedule, as CUDA_EMU_SCHEDULE would: "lazy", "eager" or "shuffle:<seed>" (the
// emulator's own tests; runs what is pending first). False: not a schedule.
bool set_schedule(const char* spec);

}  // namespace cuda_emu
