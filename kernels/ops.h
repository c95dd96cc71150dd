// The math ops of moetron: one declaration per op, every op taking the execution context first
// (kernels/exec.h) and dispatching on its device to a backend: kernels/cpu/ (ops_cpu.h, the same
// signatures without the context) and, when built, kernels/cuda/. Layers (model/) are made only of
// these calls and pointer arithmetic; pointers are to memory of exec.device unless a comment says
// host.
//
// Conventions (llm.c style): row-major, contiguous, raw pointers plus sizes. T is float (training)
// or double (gradient checks against finite differences). "Accumulate" means the op adds into its
// output (+=); otherwise it writes. Shapes: N rows/tokens, D width, V vocab, H heads, S sequence,
// E experts, K top-k, G groups (experts of a grouped GEMM). The semantics of each op are written
// once, next to its CPU implementation's declaration in kernels/cpu/ops_cpu.h; here: the order of
// arguments and what is host memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "kernels/exec.h"
#include "kernels/op_types.h"

namespace moetron::kernels {
// The op signatures, written once (also the CUDA backend's: kernels/cuda/ops_cuda.h).
#include "kernels/op_signatures.inc"  // IWYU pragma: export

// The block-scaled FP8 GEMMs this process ran on the GPU so far, by implementation
// (Fp8GemmPaths, kernels/op_types.h). Zeros in a build without the CUDA backend.
Fp8GemmPaths fp8_gemm_paths();
// How many of moetron's own kernels this process launched on the GPU so far (not cuBLASLt's, CUB's
// or NCCL's; kernels/cuda/runtime.h). Zero in a build without the CUDA backend.
int64_t gpu_kernel_launches();
// The same launches by kernel (the name each launch site gives); empty without the backend.
std::map<std::string, int64_t> gpu_kernel_launches_by_name();

}  // namespace moetron::kernels
