// The CUDA emulator's cuBLASLt (tests/cuda_emu/device.h): in place of kernels/cuda/
// cublaslt_api.cpp, which opens the real library. Descriptors are made and set as the real
// library's, and the heuristic answers that it has no algorithm, which is a case the backend
// handles on a GPU too: every GEMM (BF16/FP32 and block-scaled FP8) then runs the backend's own
// fallback kernel, so that the emulated GPU tests cover those kernels and the code around the
// calls. cuBLASLt's own kernels are not emulated; cublasLtMatmul is never reached.
#include <cublasLt.h>

#include "kernels/cuda/cublaslt_api.h"

namespace {
struct Object {
  int kind;
};
cublasStatus_t make(void** p, int kind) {
  *p = new Object{kind};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t destroy(void* p) {
  delete static_cast<Object*>(p);
  return CUBLAS_STATUS_SUCCESS;
}
}  // namespace

extern "C" {
size_t cublasLtGetVersion() { return CUBLAS_VERSION; }
const char* cublasLtGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS (emulated)";
}
cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) { return make(reinterpret_cast<void**>(h), 0); }
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t,
                                        cudaDataType_t) {
  return make(reinterpret_cast<void**>(d), 1);
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { return destroy(d); }
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t, const void* buf,
                                              size_t n) {
  return d && buf && n ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* l, cudaDataType, uint64_t,
                                          uint64_t, int64_t) {
  return make(reinterpret_cast<void**>(l), 2);
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) { return destroy(l); }
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  return make(reinterpret_cast<void**>(p), 3);
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { return destroy(p); }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t,
                                                    const void* buf, size_t n) {
  return p && buf && n ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                              cublasLtMatmulPreference_t, int,
                                              cublasLtMatmulHeuristicResult_t*, int* count) {
  *count = 0;
  return CUBLAS_STATUS_NOT_SUPPORTED;
}
cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t, const void*, const void*,
                              cublasLtMatrixLayout_t, const void*, cublasLtMatrixLayout_t,
                              const void*, const void*, cublasLtMatrixLayout_t, void*,
                              cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t*, void*, size_t,
                              cudaStream_t) {
  return CUBLAS_STATUS_NOT_SUPPORTED;
}
}  // extern "C"

namespace moetron::kernels::gpu {
const CublasLt& cublaslt() {
  static const CublasLt api{
#define MOETRON_CUBLASLT_EMULATED(name) &::cublasLt##name,
      MOETRON_CUBLASLT_FUNCTIONS(MOETRON_CUBLASLT_EMULATED)
#undef MOETRON_CUBLASLT_EMULATED
  };
  return api;
}
}  // namespace moetron::kernels::gpu
