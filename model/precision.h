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
//         core stay bf16/fp32 (the gate and head GEMMs and the attention core's products run
//         bf16, everything else is fp32).
// Per-component overrides (`precision.overrides`: attention_proj, dense_mlp, shared_expert,
// routed_expert -> fp32 | bf16 | fp8; gate, head, attention_core -> fp32 | bf16) replace the
// recipe's choice for one component. Master weights and gradients are always fp32 (AdamW moments:
// optimizer.moment_dtype). kComponents is the one list of the components (config keys, and
// whether FP8 may apply); recipes, scale rules and Dgrad tiles are enums with their config words
// next to them (kernels/enum_words.h), read once by the config.
//
// Scales (`precision.fp8_pow2_scales`): "spec" (default) = SPEC §3.2/§3.3.3: amax/448 scales,
// except power-of-two (UE8M0) scales for the input of the Linear after attention (o_proj) and for
// the activation gradient entering the routed experts' down projection; "all" = power-of-two
// scales for every FP8 tensor (DeepSeek-V3.1 style; every FP8 GEMM then runs as one exact bf16
// GEMM on the CPU); "none" = amax/448 everywhere.
// `precision.fp8_dgrad_tile`: "1x128" (SPEC) or "128x128" — the experiment of SPEC App. B.2:
// activation gradients quantised in 128x128 blocks, which the V3 report found to diverge.
// `precision.fp8_weight_transpose`: "cached" (default) or "per_call" — where Dgrad's W^T lives
// (WeightTranspose below; model/linear.h).
#pragma once

#include <array>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <span>

#include "kernels/enum_words.h"
#include "kernels/ops.h"

namespace moetron {

enum class Component {
  AttentionProj,
  DenseMlp,
  SharedExpert,
  RoutedExpert,
  Gate,
  Head,
  AttentionCore
};

// The components in Component order: config key (`precision.overrides.<key>`), and whether it is
// made of Linear layers, the only ones FP8 applies to (the gate, the head and the attention core
// stay in higher precision, SPEC §3.1). attention_core is softmax(Q K^T) V and its backward:
// under bf16 its products take bf16 operands (Q, K, V, dO, P, dS) with fp32 accumulation and an
// fp32 softmax, as FlashAttention does; under fp32 everything is fp32.
struct ComponentInfo {
  Component id;
  const char* key;
  bool linear;
};
inline constexpr ComponentInfo kComponents[] = {
    {Component::AttentionProj, "attention_proj", true},
    {Component::DenseMlp, "dense_mlp", true},
    {Component::SharedExpert, "shared_expert", true},
    {Component::RoutedExpert, "routed_expert", true},
    {Component::Gate, "gate", false},
    {Component::Head, "head", false},
    {Component::AttentionCore, "attention_core", false}};
inline constexpr size_t kNumComponents = std::size(kComponents);
constexpr const ComponentInfo& component_info(Component c) {
  return kComponents[static_cast<size_t>(c)];
}

enum class Recipe { FP32, BF16, FP8 };
inline constexpr EnumWord<Recipe> kRecipeWords[] = {
    {Recipe::FP32, "fp32"}, {Recipe::BF16, "bf16"}, {Recipe::FP8, "fp8"}};
constexpr auto enum_words(Recipe) { return std::span(kRecipeWords); }

// Which FP8 scales are powers of two (UE8M0): see the header note.
enum class Pow2Scales { Spec, All, None };
inline constexpr EnumWord<Pow2Scales> kPow2ScalesWords[] = {
    {Pow2Scales::Spec, "spec"}, {Pow2Scales::All, "all"}, {Pow2Scales::None, "none"}};
constexpr auto enum_words(Pow2Scales) { return std::span(kPow2ScalesWords); }

// The block shape of the activation gradients quantised for Dgrad: 1x128 (SPEC) or 128x128.
enum class DgradTile { Tile1x128, Tile128x128 };
inline constexpr EnumWord<DgradTile> kDgradTileWords[] = {{DgradTile::Tile1x128, "1x128"},
                                                          {DgradTile::Tile128x128, "128x128"}};
constexpr auto enum_words(DgradTile) { return std::span(kDgradTileWords); }

// Where Dgrad's transposed FP8 weights live (`precision.fp8_weight_transpose`): cached = made once
// per weight version and kept beside the FP8 copy (one more byte per FP8 weight element; what
// Transformer Engine does), per_call = made at every Dgrad into the Linears' shared scratch (the
// largest one weight's bytes, for the micro-batches' transposes over and over).
enum class WeightTranspose { Cached, PerCall };
inline constexpr EnumWord<WeightTranspose> kWeightTransposeWords[] = {
    {WeightTranspose::Cached, "cached"}, {WeightTranspose::PerCall, "per_call"}};
constexpr auto enum_words(WeightTranspose) { return std::span(kWeightTransposeWords); }
// A recipe per component; unset = the policy's recipe.
struct RecipeOverrides {
  std::array<std::optional<Recipe>, kNumComponents> of{};
  std::optional<Recipe>& operator[](Component c) { return of[static_cast<size_t>(c)]; }
  const std::optional<Recipe>& operator[](Component c) const { return of[static_cast<size_t>(c)]; }
  bool operator==(const RecipeOverrides&) const = default;
};

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
  Recipe recipe = Recipe::FP32;
  RecipeOverrides overrides;
  Pow2Scales pow2_scales = Pow2Scales::Spec;
  DgradTile dgrad_tile = DgradTile::Tile1x128;
  WeightTranspose weight_transpose = WeightTranspose::Cached;
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
  // `activations.attention_output: e5m6`: the attention output (o_proj's input, which the
  // attention backward reads too) kept in E5M6, 1.5 bytes an element (kernels/scalar.h), as
  // DeepSeek-V3 keeps it (report §3.3.3); the forward's o_proj reads the fp32 output as under
  // bf16 storage, the backward the E5M6 values. (A float model; otherwise as storage says.)
  bool attn_out_e5m6 = false;
  // `activations.block_input: storage` (with bf16 storage, a float model): every block keeps its
  // input — the residual stream where the block reads it, which attn_norm's backward reads
  // again — in bf16, and the stream itself runs through one fp32 buffer per model chunk
  // (Block::Own::x) instead of one per block in every micro-batch (model/model.h). The forward
  // is unchanged (each block reads the fp32 stream); attn_norm's backward, and its recompute
  // under recompute_norms, read the bf16 values, as ffn_norm's read the bf16-kept h_mid.
  bool block_input_bf16 = false;
  // `precision.expert_row_align`: each routed expert's rows are padded with zero rows to a
  // multiple of this (>= 1), so every expert's GEMMs start and end on it (model/moe.h). 16 lets
  // cuBLASLt run every routed expert's block-scaled FP8 GEMMs: Fprop and Dgrad need rows % 8,
  // Wgrad reduces over the rows and needs % 16 (kernels/cuda/fp8_gemm.cu); with ragged groups
  // most of them fall back to the plain kernel. Zero rows change no value of the FP8 recipe
  // (their products are zeros, their 1x128 tiles their own, and a 128x1 tile's amax is unmoved);
  // they cost at most align - 1 rows of GEMM per expert. Megatron-LM pads the same way
  // (moe_router_padding_for_fp8).
  int64_t expert_row_align = 1;

  // Config key of a component (precision.overrides.<key>).
  static const char* key(Component c) { return component_info(c).key; }
  static bool linear_component(Component c) { return component_info(c).linear; }

  // FP8 only for the Linear layers: a non-Linear component under fp8 (the recipe's or its own)
  // runs bf16 (SPEC §3.1).
  Recipe recipe_of(Component c) const {
    const Recipe r = overrides[c].value_or(recipe);
    return r == Recipe::FP8 && !linear_component(c) ? Recipe::BF16 : r;
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
    const bool all = pow2_scales == Pow2Scales::All, spec = pow2_scales == Pow2Scales::Spec;
    lp.pow2_x = all || (spec && o_proj);
    lp.pow2_dy = all || (spec && expert_down);
    lp.pow2_w = all;
    lp.dgrad_128x128 = dgrad_tile == DgradTile::Tile128x128;
    return lp;
  }
  bool any_fp8() const {
    for (const ComponentInfo& c : kComponents)
      if (recipe_of(c.id) == Recipe::FP8) return true;
    return false;
  }

  // The recipe alone, defaults elsewhere.
  static PrecisionPolicy from(Recipe recipe) {
    PrecisionPolicy p;
    p.recipe = recipe;
    return p;
  }
};

}  // namespace moetron
