// cuBLASLt opened on first use (kernels/cuda/cublaslt_api.h says why it is not linked).
#include "kernels/cuda/cublaslt_api.h"

#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace moetron::kernels::gpu {

namespace {

// A function, not a namespace-scope string: a static initialiser elsewhere may be first to call.
std::string soname() { return "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR); }

void* open_library(std::string* why) {
  for (const std::string& path :
       {soname(), std::string(MOETRON_CUDA_LIBRARY_DIR) + "/" + soname()}) {
    if (void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    const char* e = dlerror();
    *why += std::string(why->empty() ? "" : "; ") + (e ? e : path + ": cannot open");
  }
  return nullptr;
}

template <class F>
void resolve(void* lib, const char* name, F* f) {
  *f = reinterpret_cast<F>(dlsym(lib, name));
  if (*f == nullptr)
    throw std::runtime_error("cuBLASLt: " + soname() + " has no " + name +
                             " (a cuBLAS older than the headers this was built with?)");
}

CublasLt load() {
  std::string why;
  void* lib = open_library(&why);  // never closed: the process keeps it, as a linked one
  if (lib == nullptr) throw std::runtime_error("cuBLASLt: cannot open " + soname() + ": " + why);
  CublasLt a{};
#define MOETRON_CUBLASLT_RESOLVE(name) resolve(lib, "cublasLt" #name, &a.name);
  MOETRON_CUBLASLT_FUNCTIONS(MOETRON_CUBLASLT_RESOLVE)
#undef MOETRON_CUBLASLT_RESOLVE
  return a;
}

}  // namespace

const CublasLt& cublaslt() {
  static const CublasLt api = load();  // a throw leaves it unset: the next call tries again
  return api;
}

}  // namespace moetron::kernels::gpu
