// The CUDA backend: one implementation per op of kernels/ops.h, the same signatures (the
// execution context first: its stream, its workspace), in namespace kernels::gpu. The dispatcher
// (kernels/dispatch.cpp) calls these for Device::CUDA; tests/test_cuda_*.cpp run each against its
// CPU twin (kernels/cpu/ops_cpu.h, where the semantics of every op are written). Pointers are
// device memory unless ops.h says host. Per-element math comes from kernels/scalar.h, compiled for
// the device, so the CPU tests cover the arithmetic the GPU runs.
//
// Files: runtime (streams, allocator), memory.cu, elementwise.cu, norm_rope.cu, ... one family of
// ops per file, as in kernels/cpu/.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/exec.h"
#include "kernels/op_types.h"

namespace moetron::kernels::gpu {
#include "kernels/op_signatures.inc"  // the declarations of kernels/ops.h, here in gpu::

}  // namespace moetron::kernels::gpu
