// Precision policy: which GEMM recipe each component uses. A policy, not a code path
// (ARCHITECTURE contract 6): layers ask it once, at build time, and pass the answer to their
// Linear layers and GEMM kernels.
//
// Recipes (config `precision.recipe`):
//   fp32: every GEMM fp32.   bf16: every GEMM with bf16 inputs, fp32 accumulation.
//   fp8:  the Linear GEMMs (Fprop, Dgrad, Wgrad) of the attention projections (q_a/q_b or q,
//         kv_a, kv_b, o_proj), dense MLPs, shared and routed experts are block-scaled E4M3
//         (SPEC-deepseek-v3 §3: activations and activation gradients 1x128, weights 128x128,
//         Wgrad operands 128x1, fp32 accumulation with promotion every 128) and their inputs are
//         cached in FP8 for the backward; embedding, output head, gate, norms and the attention
//         core stay bf16/fp32 (the gate and head GEMMs run bf16, everything else is fp32).
// Per-component overrides (`precision.overrides`: attention_proj, dense_mlp, shared_expert,
// routed_expert -> fp32 | bf16 | fp8; gate, head -> fp32 | bf16) replace the recipe's choice for
// one component. Master weights and gradients are always fp32 (AdamW moments: optimizer.
// moment_dtype).
//
// Scales (`precision.fp8_pow2_scales`): "spec" (default) = SPEC §3.2/§3.3.3: amax/448 scales,
// except power-of-two (UE8M0) scales for the input of the Linear after attention (o_proj) and for
// the activation gradient entering the routed experts' down projection; "all" = power-of-two
// scales for every FP8 tensor (DeepSeek-V3.1 style; every FP8 GEMM then runs as one exact bf16
// GEMM on the CPU); "none" = amax/448 everywhere.
// `precision.fp8_dgrad_tile`: "1x128" (SPEC) or "128x128" — the experiment of SPEC App. B.2:
// activation gradients quantised in 128x128 blocks, which the V3 report found to diverge.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include "kernels/ops.h"

namespace moetron {

enum class Component { AttentionProj, DenseMlp, SharedExpert, RoutedExpert, Gate, Head };

enum class Recipe { FP32, BF16, FP8 };

// How one Linear (or one stack of expert Linears) runs its three GEMMs.
struct LinearPrecision {
  Recipe recipe = Recipe::FP32;
  bool pow2_x = false;         // 1x128 input activations (and their 128x1 re-quantisation)
  bool pow2_dy = false;        // output gradients (Dgrad 1x128, Wgrad 128x1)
  bool pow2_w = false;         // 128x128 weight blocks
  bool dgrad_128x128 = false;  // experiment: output gradients in 128x128 blocks for Dgrad
  // The non-FP8 GEMM precision (also what an FP8 component's non-Linear GEMMs would use).
  kernels::GemmPrecision gemm() const {
    return recipe == Recipe::FP32 ? kernels::GemmPrecision::FP32 : kernels::GemmPrecision::BF16;
  }
  bool fp8() const { return recipe == Recipe::FP8; }
};

struct PrecisionPolicy {
  std::string recipe = "fp32";
  std::map<std::string, std::string> overrides;  // component key -> recipe
  std::string pow2_scales = "spec";              // spec | all | none
  std::string dgrad_tile = "1x128";              // 1x128 | 128x128
  // FP8 weight cache: null = each Linear re-quantises its weight in every forward (always
  // correct). Non-null = a weight is re-quantised only when this counter differs from the value
  // it was quantised at; whoever changes weights (the optimizer step, a checkpoint load) must
  // then bump it (Model::weights_updated()).
  std::shared_ptr<uint64_t> weight_version;
  // Activation memory (config `activations`): recomputed in the backward instead of kept, with
  // the same ops on the same inputs, so the numbers are unchanged (SPEC §3.5: V3 recomputes the
  // RMSNorms and the MLA up-projections). norms: MLA's attn_norm/q_norm/kv_norm outputs;
  // mla_up: the per-head queries, keys and values (q_b and kv_b projections, RoPE, head split).
  bool recompute_norms = false, recompute_mla_up = false;
  // `activations.storage: bf16`: what the layers keep for the backward (Linear inputs, q/k/v/o,
  // the norm inputs and outputs, SwiGLU inputs and outputs) is stored in bf16 while the forward
  // computes in fp32 — about half the activation bytes. FP8-kept tensors stay FP8; the residual
  // stream, the per-token statistics (rstd, lse) and the routing state stay fp32.
  bool store_bf16 = false;

  // Config keys of the components, in Component order.
  static const char* key(Component c) {
    static const char* k[] = {"attention_proj", "dense_mlp", "shared_expert",
                              "routed_expert",  "gate",      "head"};
    return k[static_cast<int>(c)];
  }
  static bool linear_component(Component c) { return c != Component::Gate && c != Component::Head; }

  Recipe recipe_of(Component c) const {
    auto it = overrides.find(key(c));
    const std::string& r = it == overrides.end() ? recipe : it->second;
    if (r == "fp32") return Recipe::FP32;
    if (r == "bf16") return Recipe::BF16;
    // fp8: only the Linear layers; the gate and head keep bf16 (SPEC §3.1)
    return linear_component(c) ? Recipe::FP8 : Recipe::BF16;
  }
  kernels::GemmPrecision gemm(Component c) const {
    return recipe_of(c) == Recipe::FP32 ? kernels::GemmPrecision::FP32
                                        : kernels::GemmPrecision::BF16;
  }
  // The recipe of a Linear of component c; o_proj: the Linear after attention (SPEC §3.3.3);
  // expert_down: a routed expert's down projection (its output gradient is the combine-backward
  // payload, power-of-two scaled in the SPEC).
  LinearPrecision linear(Component c, bool o_proj = false, bool expert_down = false) const {
    LinearPrecision lp;
    lp.recipe = recipe_of(c);
    if (lp.recipe != Recipe::FP8) return lp;
    const bool all = pow2_scales == "all", spec = pow2_scales == "spec";
    lp.pow2_x = all || (spec && o_proj);
    lp.pow2_dy = all || (spec && expert_down);
    lp.pow2_w = all;
    lp.dgrad_128x128 = dgrad_tile == "128x128";
    return lp;
  }
  bool any_fp8() const {
    for (int c = 0; c < 6; ++c)
      if (recipe_of(static_cast<Component>(c)) == Recipe::FP8) return true;
    return false;
  }

  // The recipe alone, defaults elsewhere.
  static PrecisionPolicy from(const std::string& recipe) {
    return from(recipe, {}, "spec", "1x128");
  }
  // Validates every setting (std::invalid_argument with the offending key and value).
  static PrecisionPolicy from(const std::string& recipe,
                              const std::map<std::string, std::string>& overrides,
                              const std::string& pow2_scales, const std::string& dgrad_tile) {
    auto valid = [](const std::string& r) { return r == "fp32" || r == "bf16" || r == "fp8"; };
    if (!valid(recipe))
      throw std::invalid_argument("precision recipe '" + recipe +
                                  "' is not one of fp32, bf16, fp8");
    for (const auto& [k, v] : overrides) {
      int found = -1;
      for (int c = 0; c < 6; ++c)
        if (k == key(static_cast<Component>(c))) found = c;
      if (found < 0)
        throw std::invalid_argument("precision override '" + k +
                                    "' is not a component (attention_proj, dense_mlp, "
                                    "shared_expert, routed_expert, gate, head)");
      if (!valid(v))
        throw std::invalid_argument("precision override " + k + ": '" + v +
                                    "' is not one of fp32, bf16, fp8");
      if (v == "fp8" && !linear_component(static_cast<Component>(found)))
        throw std::invalid_argument("precision override " + k + ": fp8 is not allowed, the " + k +
                                    " stays in higher precision (fp32 or bf16; SPEC §3.1)");
    }
    if (pow2_scales != "spec" && pow2_scales != "all" && pow2_scales != "none")
      throw std::invalid_argument("fp8_pow2_scales '" + pow2_scales +
                                  "' is not one of spec, all, none");
    if (dgrad_tile != "1x128" && dgrad_tile != "128x128")
      throw std::invalid_argument("fp8_dgrad_tile '" + dgrad_tile +
                                  "' is not one of 1x128, 128x128");
    PrecisionPolicy p;
    p.recipe = recipe;
    p.overrides = overrides;
    p.pow2_scales = pow2_scales;
    p.dgrad_tile = dgrad_tile;
    return p;
  }
};

}  // namespace moetron
