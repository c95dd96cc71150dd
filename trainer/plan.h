// `moetron plan`: what a layout needs on every device, before anything is allocated — parameters
// (total, activated per token, the MTP modules', each rank's) and each rank's memory by term —
// counted from the real model code built on the meta device (kernels/device.h: every parameter
// with its name and shape, no memory), the analytic activation bytes of model/memory.h times the
// micro-batches the pipeline schedule keeps in flight, and the buffers of the EP dispatcher, the
// pipeline executor and ZeRO-1 estimated from their shapes; then checked against the device's
// memory (hardware.memory_gib). `moetron train` runs the same check before it allocates and stops
// with the same message. Every term and how it is counted: docs/design.md "Planning a run".
//
// Ranks differ only by pipeline rank: the DP and EP ranks of a stage hold equal shares. The
// figures are per device and assume the parameters, gradients and optimizer state live on it
// (on the CPU backend they are host memory).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace moetron {

struct MemoryTerms {
  int64_t weights = 0;            // fp32 weights held whole (all but those sharded as masters)
  int64_t gradients = 0;          // fp32 gradients of the same (ZeRO-1's gradient arena)
  int64_t grad_staging = 0;       // ZeRO-1, grad_reduce_dtype bf16: the buckets' bf16 staging
  int64_t master_shard = 0;       // ZeRO-1, shard_master_weights: owned fp32 master weights
  int64_t optimizer_moments = 0;  // AdamW m and v of the owned elements (optimizer.moment_dtype)
  int64_t fp8_weight_cache = 0;   // E4M3 copies of the FP8 Linears' weights and of their
                                  // transposes, + 128x128 scales
  int64_t bf16_weight_cache = 0;  // bf16 copies of the BF16 Linears' weights (Bf16WeightCache)
  int64_t ep_buffers = 0;         // expert-parallel dispatch plans, wires and received rows
  int64_t pp_messages = 0;        // pipeline activations and gradients on the wire
  int64_t activations = 0;        // micro-batch slots in flight + gradient sets (model/memory.h)
  int64_t moe_scratch = 0;        // the MoE layers' shared scratch, one per stage (MoE::Scratch)
  int64_t layer_scratch = 0;  // the other layers' shared scratch, one per stage (MLA, Mlp, Linear)
  int64_t total() const;
};

// The terms in report order: JSON key, table heading.
struct MemoryTermInfo {
  const char* key;
  const char* heading;
  int64_t MemoryTerms::*bytes;
};
inline constexpr std::array<MemoryTermInfo, 12> kMemoryTerms{{
    {"weights", "weights", &MemoryTerms::weights},
    {"gradients", "grads", &MemoryTerms::gradients},
    {"grad_staging", "grad-stage", &MemoryTerms::grad_staging},
    {"master_shard", "masters", &MemoryTerms::master_shard},
    {"optimizer_moments", "moments", &MemoryTerms::optimizer_moments},
    {"fp8_weight_cache", "fp8-cache", &MemoryTerms::fp8_weight_cache},
    {"bf16_weight_cache", "bf16-cache", &MemoryTerms::bf16_weight_cache},
    {"ep_buffers", "ep-bufs", &MemoryTerms::ep_buffers},
    {"pp_messages", "pp-msgs", &MemoryTerms::pp_messages},
    {"activations", "activations", &MemoryTerms::activations},
    {"moe_scratch", "moe-scratch", &MemoryTerms::moe_scratch},
    {"layer_scratch", "layer-scratch", &MemoryTerms::layer_scratch},
}};

// One pipeline rank (any of its DP x EP ranks).
struct RankPlan {
  int pp_rank = 0;
  std::vector<int> stages;                // the model stages it holds (two under DualPipe)
  int64_t params = 0, params_expert = 0;  // held (experts: one EP rank's share)
  int64_t owned = 0;                      // elements whose optimizer state it holds (ZeRO-1)
  int slots = 0;                          // micro-batch states held at the peak
  int64_t slot_bytes = 0;                 // forward-kept activations of its largest slot
  int grad_sets = 0;                      // gradient sets (backward buffers) held at the peak
  int64_t grad_set_bytes = 0;             // of the largest
  bool shared_pools = false;              // the two pools trim to share memory (pool_plan)
  int messages = 0;                       // pipeline message buffers at once
  MemoryTerms bytes;
};

struct Plan {
  std::string source;  // the config file
  int world = 1, pp = 1, dp = 1, ep = 1, ranks_per_node = 0;
  std::string schedule;
  int stages = 1, microbatches = 1;  // model stages; micro-batches per pipeline per step
  int64_t micro_batch = 1, seq_len = 1;
  double ep_rows = 1;  // token rows an EP rank receives per token sent (min(K, EP), x imbalance)
  // The expert rows every EP rank is counted with, over the mean (K a token): a busier rank's
  // buffers grow to its rows and keep them, so a run holds what its busiest micro-batches routed
  // there (1: the mean; `moetron plan --ep-imbalance R`). ep_imbalance_limit: the most at which
  // the peak rank still fits (EP > 1, the memory known and the layout fitting; else 0).
  double ep_imbalance = 1, ep_imbalance_limit = 0;
  // Parameters: the main model (embedding and head once), activated per token (what a token's
  // matrix products read: routed experts K of E; not the embedding, a lookup), the MTP modules'
  // own (they share the embedding and head) and their activated part.
  int64_t params_total = 0, params_activated = 0, params_mtp = 0, params_mtp_activated = 0;
  std::string hardware;            // hardware.name
  double memory_gib = 0;           // hardware.memory_gib; 0 = unknown
  std::vector<RankPlan> ranks;     // one per pipeline rank
  std::vector<std::string> notes;  // what `moetron train` cannot run of this layout yet

  const RankPlan& peak() const;  // the rank with the most bytes (the first of equals)
  int64_t memory_bytes() const;
  bool memory_known() const { return memory_gib > 0; }
  bool fits() const { return !memory_known() || peak().bytes.total() <= memory_bytes(); }
};

// The plan of `cfg` on `world` ranks (0: the config's, pp x dp), every EP rank's expert rows
// counted at ep_imbalance x the mean. Throws ConfigError when the world or the layout does not
// match the config, the schedule cannot be made, or ep_imbalance < 1.
Plan make_plan(const Config& cfg, int world = 0, double ep_imbalance = 1);

// Why the plan does not fit — the rank, its total against the device, and the term(s) that are
// over and by how much — or "" when it fits or the memory is unknown.
std::string plan_refusal(const Plan& p);

// `moetron train`'s check, before anything is allocated: throws ConfigError(plan_refusal) when
// the memory is known (hardware.memory_gib > 0) and the layout does not fit.
void check_memory(const Plan& p);
void check_memory(const Config& cfg, int world);  // of make_plan(cfg, world), made only if known

}  // namespace moetron
