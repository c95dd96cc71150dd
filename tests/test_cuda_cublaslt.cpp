// cuBLASLt is opened when the CUDA backend first uses it, not when a process starts
// (kernels/cuda/cublaslt_api.h: its initialisers cost every process of a CUDA build 0.6 s and
// ~200 MB). Neither test needs a GPU: cuBLASLt opens and answers its version without one. The
// first runs this binary again as a fresh process with MOETRON_CUBLASLT_PROBE set, in which a
// static initialiser reports whether the library is mapped at start-up and after the first use.
// Also the cache of the heuristic's answers (kernels/cuda/gemm.cuh: LtAlgoCache), host code too.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "kernels/cuda/cublaslt_api.h"
#include "kernels/cuda/gemm.cuh"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu {
namespace {

bool cublaslt_mapped() {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);)
    if (line.find("libcublasLt.so") != std::string::npos) return true;
  return false;
}

// The probe: runs before main (after every linked library's initialisers), prints, exits.
[[maybe_unused]] const bool kProbed = [] {
  if (std::getenv("MOETRON_CUBLASLT_PROBE") == nullptr) return false;
  const bool before = cublaslt_mapped();
  const size_t version = cublaslt().GetVersion();
  std::printf("before=%d after=%d version=%zu\n", before, cublaslt_mapped(), version);
  std::fflush(stdout);
  std::_Exit(0);
}();

TEST(CublasLtLoader, OpensTheLibraryOnFirstUseNotAtStartUp) {
  if (testing::emulated())
    GTEST_SKIP() << "the CUDA emulator brings its own cuBLASLt (no library to open)";
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  FILE* p = popen(("MOETRON_CUBLASLT_PROBE=1 '" + self + "' 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  ASSERT_EQ(pclose(p), 0) << out;
  EXPECT_NE(out.find("before=0 after=1"), std::string::npos) << out;
  const size_t at = out.find("version=");
  ASSERT_NE(at, std::string::npos) << out;
  size_t version = 0;
  ASSERT_EQ(std::sscanf(out.c_str() + at, "version=%zu", &version), 1) << out;
  EXPECT_GE(version, static_cast<size_t>(CUBLAS_VER_MAJOR) * 10000) << "older than the headers";
}

TEST(CublasLtLoader, ResolvesEveryFunctionTheBackendCalls) {
  const CublasLt& lt = cublaslt();
#define MOETRON_CUBLASLT_CHECK(name) EXPECT_NE(reinterpret_cast<const void*>(lt.name), nullptr);
  MOETRON_CUBLASLT_FUNCTIONS(MOETRON_CUBLASLT_CHECK)
#undef MOETRON_CUBLASLT_CHECK
  // a host-only call that needs no device: a layout descriptor made and destroyed
  cublasLtMatrixLayout_t layout = nullptr;
  const cublasStatus_t made = lt.MatrixLayoutCreate(&layout, CUDA_R_32F, 4, 3, 4);
  ASSERT_EQ(made, CUBLAS_STATUS_SUCCESS) << lt.GetStatusString(made);
  EXPECT_EQ(lt.MatrixLayoutDestroy(layout), CUBLAS_STATUS_SUCCESS);
}

// "Never asked" is not "no algorithm"; an answer can be replaced (cublasLtMatmul refused the
// algorithm); the cache stays bounded, however many expert row counts a run brings.
TEST(LtAlgoCache, TellsUnaskedFromNoneReplacesAndStaysBounded) {
  LtAlgoCache<int> cache;
  EXPECT_FALSE(cache.find(1).has_value());
  cache.put(1, std::nullopt);
  ASSERT_TRUE(cache.find(1).has_value());
  EXPECT_FALSE(cache.find(1)->has_value());
  cublasLtMatmulAlgo_t algo{};
  algo.data[0] = 42;
  cache.put(2, algo);
  ASSERT_TRUE(cache.find(2).has_value() && cache.find(2)->has_value());
  EXPECT_EQ((**cache.find(2)).data[0], 42u);
  cache.put(2, std::nullopt);
  EXPECT_FALSE(cache.find(2)->has_value());
  for (int k = 3; k < 5000; ++k) cache.put(k, std::nullopt);
  EXPECT_FALSE(cache.find(1).has_value()) << "not bounded: the first key is still there";
  EXPECT_TRUE(cache.find(4999).has_value());
}

}  // namespace
}  // namespace moetron::kernels::gpu
