// A Communicator for device data over a host one (parallel.device_comm: mpi): each operation
// copies its device inputs into pinned host memory, runs the wrapped communicator's operation on
// those copies (MPI), and copies the results back onto the device. What NCCL does on the GPU,
// done through the host.
//
// Why: NCCL refuses two ranks on one GPU, so without this a machine with one GPU cannot run the
// multi-rank layouts (PP, EP, DP, DualPipe) on its kernels at all; with it, several processes
// share the GPU and every device exchange goes through MPI — the layouts' GPU path tested end to
// end except NCCL itself. It also trains where NCCL is missing or is the suspect (a debugging
// fallback, as PyTorch's gloo is for CUDA tensors).
//
// Semantics, those of the wrapped communicator on the same bytes (so the same results bit for
// bit): blocking operations return with the results enqueued on the device (in the stream's
// order, before anything the caller enqueues next); a send, or a collective's input, is copied to
// the host when posted, which waits for the device's stream up to it (a stream drain: slower than
// NCCL, which this does not try to match); a non-blocking operation's results are copied onto the
// device by whichever wait or test first finds it complete. tags_match() is the wrapped one's.
// The staging buffers live as long as their operation (Requests own theirs). `device`: where the
// data lives (CUDA; the guard device in CPU tests).
#pragma once

#include <memory>

#include "kernels/device.h"
#include "parallel/comm.h"

namespace moetron {

// `host` wrapped (not owned: it must outlive the result, e.g. the world); split() wraps the
// host's split the same way, owned.
std::unique_ptr<Communicator> staged_communicator(Communicator& host, Device device);

}  // namespace moetron
