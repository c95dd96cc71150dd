// Precision policy: which GEMM recipe each component uses. A policy, not a code path
// (ARCHITECTURE contract 6): layers ask it and pass the answer to the GEMM kernel.
//   fp32: everything fp32.   bf16: every GEMM with bf16 inputs, fp32 accumulation.
//   fp8 (later issue): Linear GEMMs of attention projections and MLPs/experts block-scaled E4M3;
//   embedding, output head, gate, norms and attention core stay bf16/fp32.
#pragma once

#include <stdexcept>
#include <string>

#include "kernels/ops.h"

namespace moetron {

enum class Component { AttentionProj, DenseMlp, SharedExpert, RoutedExpert, Gate, Head };

struct PrecisionPolicy {
  std::string recipe = "fp32";
  kernels::GemmPrecision gemm(Component) const {
    return recipe == "fp32" ? kernels::GemmPrecision::FP32 : kernels::GemmPrecision::BF16;
  }
  static PrecisionPolicy from(const std::string& recipe) {
    if (recipe != "fp32" && recipe != "bf16")
      throw std::invalid_argument("precision recipe '" + recipe +
                                  "' is not available in this build (fp32, bf16)");
    return PrecisionPolicy{recipe};
  }
};

}  // namespace moetron
