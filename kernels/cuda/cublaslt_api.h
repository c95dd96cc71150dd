// cuBLASLt's entry points, opened with dlopen when the CUDA backend first uses them instead of
// linked. Linking libcublasLt.so.13 runs its static initialisers in every process at start-up:
// 0.6 s of CPU and about 200 MB of resident memory, measured with `perf` on `moetron --help`
// (78% of the start-up in cuBLASLt's initialisers). Every CPU run, every MPI rank and every test
// process of a CUDA build paid it without touching a GPU. The backend calls cublaslt().Matmul(...)
// where it called cublasLtMatmul(...); the pointer types are the header's own (decltype), so the
// signatures are not written again here.
#pragma once

#include <cublasLt.h>

namespace moetron::kernels::gpu {

// The functions the backend calls, without their "cublasLt" prefix: the one list of them.
// clang-format off
#define MOETRON_CUBLASLT_FUNCTIONS(X)                                          \
  X(GetVersion) X(GetStatusString) X(Create)                                   \
  X(MatmulDescCreate) X(MatmulDescDestroy) X(MatmulDescSetAttribute)           \
  X(MatrixLayoutCreate) X(MatrixLayoutDestroy)                                 \
  X(MatmulPreferenceCreate) X(MatmulPreferenceDestroy)                         \
  X(MatmulPreferenceSetAttribute) X(MatmulAlgoGetHeuristic) X(Matmul)
// clang-format on

struct CublasLt {
#define MOETRON_CUBLASLT_MEMBER(name) decltype(&::cublasLt##name) name;
  MOETRON_CUBLASLT_FUNCTIONS(MOETRON_CUBLASLT_MEMBER)
#undef MOETRON_CUBLASLT_MEMBER
};

// The library's functions. The first call opens libcublasLt.so.<major of the headers> (the
// loader's search path: LD_LIBRARY_PATH, the binary's RUNPATH, ld.so.conf), else the one of the
// toolkit this was built with; it throws, naming the library, when neither opens or one of the
// functions is missing, and again on every later call.
const CublasLt& cublaslt();

}  // namespace moetron::kernels::gpu
