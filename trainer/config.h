// Config: the whole run as typed, validated structs, read from YAML.
//
// Every key a user may write is listed here with its type and default. Loading rejects unknown
// keys, wrong types and out-of-range values with one message naming the file and the dotted key
// (for example "configs/tiny.yaml: model.n_group: must divide n_routed_experts (16), got 5").
// `--set a.b=value` overrides are applied to the YAML tree before validation, so they get the
// same checks. Every choice that changes numbers lives here, and the whole struct is written into
// the run directory and (later) into checkpoints. A setting chosen from a few words is an enum
// once loaded (its words: next to the enum, kernels/enum_words.h). The table of settings and the
// rules between them: config.cpp; the YAML machinery: config_schema.h; the model's fields and
// rules: model_fields.h and model/config.h; the LR, gamma and lambda schedules: lr_schedule.h.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "kernels/enum_words.h"
#include "model/config.h"
#include "model/precision.h"
#include "trainer/lr_schedule.h"

namespace moetron {

// Raised for any invalid configuration; what() is the full user-facing message.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Token sources (data/dataset.h). A path is an HDF5 token file, a directory of them (its *.h5 in
// name order) or a shard index (*.index.json); train_path is one path, or "W1 PATH1 W2 PATH2 ..."
// to blend sources with weights W (Megatron's --data-path form).
struct DataConfig {
  std::string train_path;
  std::string valid_path;  // optional: the validation set (needed by run.eval_interval)
  std::string tokenizer;   // optional tokenizer.json: every shard must have been made with it
  int64_t seq_len = 128;
  int64_t micro_batch_size = 4;    // sequences per micro-batch
  int64_t global_batch_size = 16;  // sequences per optimizer step (multiple of micro x dp)
  // Batch-size ramp (SPEC §2): the global batch grows linearly from batch_ramp_start to
  // global_batch_size over the first batch_ramp_tokens tokens; 0 = no ramp.
  int64_t batch_ramp_start = 0;
  int64_t batch_ramp_tokens = 0;
  int64_t prefetch = 2;  // batches a background thread prepares ahead; 0 = none
};

// fp32 | bf16: the number format of optimizer moments, gradient reductions, kept activations.
enum class FloatFormat { FP32, BF16 };
inline constexpr EnumWord<FloatFormat> kFloatFormatWords[] = {{FloatFormat::FP32, "fp32"},
                                                              {FloatFormat::BF16, "bf16"}};
constexpr auto enum_words(FloatFormat) { return std::span(kFloatFormatWords); }

struct OptimizerConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double grad_clip = 1.0;  // global norm; 0 disables
  FloatFormat moment_dtype = FloatFormat::FP32;
  // the type gradients are summed in over the DP/EDP groups (bf16: rounded to bf16 for the
  // reduce-scatter and widened back to fp32 for the optimizer)
  FloatFormat grad_reduce_dtype = FloatFormat::FP32;
  // start a ZeRO-1 bucket's reduce-scatter as soon as the backward has finished its gradients
  // (parallel/zero1.h); off: all at the end of the step. The same bits either way.
  bool overlap_grad_reduce = true;
  // elements per ZeRO-1 bucket (4 MiB of fp32 by default): the unit of the reduction and of its
  // overlap — smaller starts sooner, in more collectives
  int64_t grad_bucket_elements = 1 << 20;
  // keep the fp32 master weights of the parameters the GEMMs read only as FP8 or bf16 copies
  // sharded with the optimizer state (ZeRO-1's owned elements) and remake the copies from each
  // step's all-gather (parallel/zero1.h): the same bits, a 1/G of those weights' memory
  bool shard_master_weights = true;
};

// The pipeline schedule (parallel/schedule.h makes it from its word).
enum class PipelineSchedule { OneFOneB, ZB1P, DualPipe, DualPipeV };
inline constexpr EnumWord<PipelineSchedule> kPipelineScheduleWords[] = {
    {PipelineSchedule::OneFOneB, "1f1b"},
    {PipelineSchedule::ZB1P, "zb1p"},
    {PipelineSchedule::DualPipe, "dualpipe"},
    {PipelineSchedule::DualPipeV, "dualpipev"}};
constexpr auto enum_words(PipelineSchedule) { return std::span(kPipelineScheduleWords); }

// How DualPipe's overlapped forward+backward pairs run: piece by piece, each piece ending where
// an expert exchange is posted (interleave), or forward then backward (none: the same arithmetic,
// nothing hidden — for measuring what the overlap hides).
enum class PairOverlap { Interleave, None };
inline constexpr EnumWord<PairOverlap> kPairOverlapWords[] = {
    {PairOverlap::Interleave, "interleave"}, {PairOverlap::None, "none"}};
constexpr auto enum_words(PairOverlap) { return std::span(kPairOverlapWords); }

// How a rank waits for MPI: polling (Open MPI's way), sleeping between tests (a waiting rank
// leaves its core to those computing), or auto: sleeping where the node has more ranks than
// cores, polling otherwise (parallel/comm.h set_sleeping_waits).
enum class WaitMode { Auto, Poll, Sleep };
inline constexpr EnumWord<WaitMode> kWaitModeWords[] = {
    {WaitMode::Auto, "auto"}, {WaitMode::Poll, "poll"}, {WaitMode::Sleep, "sleep"}};
constexpr auto enum_words(WaitMode) { return std::span(kWaitModeWords); }

// What carries the device data between ranks of a GPU run: NCCL, or MPI through pinned host
// copies (parallel/comm_staged.h: several ranks may then share one GPU, which NCCL refuses; no
// NCCL needed; slower). CPU runs move host memory over MPI either way.
enum class DeviceComm { Nccl, Mpi };
inline constexpr EnumWord<DeviceComm> kDeviceCommWords[] = {{DeviceComm::Nccl, "nccl"},
                                                            {DeviceComm::Mpi, "mpi"}};
constexpr auto enum_words(DeviceComm) { return std::span(kDeviceCommWords); }

struct ParallelConfig {
  int64_t pp = 1, dp = 1, ep = 1;
  int64_t ranks_per_node = 0;  // 0: all ranks on one node
  // Node-limited routing: each token's experts on at most M nodes (0 = no limit). Holds by
  // construction when expert groups lie inside nodes and topk_group <= M (V3: 8 groups = 8
  // nodes, topk_group 4 = M); the trainer checks that and measures it.
  int64_t max_nodes_per_token = 0;
  PipelineSchedule schedule = PipelineSchedule::OneFOneB;
  PairOverlap overlap = PairOverlap::Interleave;
  // > 0: a thread pokes MPI's progress engine every so many microseconds, so exchanges and DP
  // reductions in flight advance during long compute pieces (parallel/progress_thread.h)
  int64_t progress_poll_us = 0;
  WaitMode wait = WaitMode::Auto;
  // run.device cuda: the most CTAs (so SMs) an NCCL kernel may take (ncclConfig_t maxCTAs);
  // DeepSeek-V3 left 20 of an H800's 132 SMs to communication. 0: NCCL's default.
  int64_t nccl_max_ctas = 0;
  DeviceComm device_comm = DeviceComm::Nccl;
  // The first layer of each pipeline stage (pp of them; dualpipev: 2 x pp), from 0, increasing:
  // an explicit cut. Empty: cost-balanced (model/flops.h balanced_stage_starts: the last stage
  // carries the head and MTP). The cut in use is model.stage_starts.
  std::vector<int64_t> stage_layers;
};

// The pipeline's stages: parallel.pp, or 2 x pp for dualpipev (a V of two chunks per rank) — as
// parallel/schedule.h's schedules count them.
inline int64_t pipeline_stages(const ParallelConfig& p) {
  return p.pp * (p.schedule == PipelineSchedule::DualPipeV ? 2 : 1);
}

// GEMM precision (model/precision.h has the meaning of every setting). Master weights and
// gradients are always fp32; the AdamW moments' type is optimizer.moment_dtype, the type of the
// gradient reduction optimizer.grad_reduce_dtype.
struct PrecisionConfig {
  Recipe recipe = Recipe::FP32;
  Pow2Scales fp8_pow2_scales = Pow2Scales::Spec;    // which FP8 scales are UE8M0
  DgradTile fp8_dgrad_tile = DgradTile::Tile1x128;  // 128x128: experiment, SPEC App. B.2
  WeightTranspose fp8_weight_transpose = WeightTranspose::Cached;  // Dgrad's W^T: kept or per call
  RecipeOverrides overrides;  // per component (kComponents); unset ("recipe") = follow `recipe`
  // Routed experts' rows padded to a multiple of this (PrecisionPolicy::expert_row_align); 0 =
  // auto: 16 where the routed experts run FP8 on a CUDA device (cuBLASLt's FP8 alignment), else 1.
  int64_t expert_row_align = 0;
  // The policy the model is built with on `device`.
  PrecisionPolicy policy(Device device = Device::CPU) const {
    PrecisionPolicy p;
    p.recipe = recipe;
    p.overrides = overrides;
    p.pow2_scales = fp8_pow2_scales;
    p.dgrad_tile = fp8_dgrad_tile;
    p.weight_transpose = fp8_weight_transpose;
    const bool fp8_experts = p.recipe_of(Component::RoutedExpert) == Recipe::FP8;
    p.expert_row_align = expert_row_align > 0                    ? expert_row_align
                         : fp8_experts && device == Device::CUDA ? 16
                                                                 : 1;
    return p;
  }
};

// What a micro-batch keeps from forward to backward (PrecisionPolicy's recompute_*).
struct ActivationsConfig {
  bool recompute_norms = false;             // off | on
  bool recompute_mla_up = false;            // off | on
  FloatFormat storage = FloatFormat::FP32;  // kept tensors that are not FP8
  bool attention_output_e5m6 = false;       // storage | e5m6: the kept attention output
  bool block_input_storage = false;         // fp32 | storage: the kept block inputs
};

// One accelerator (per device): its memory — what `moetron plan` and `moetron train` check a
// layout against —, its dense peak rates — the denominators of MFU — and its links (estimates);
// 0 = unknown (no memory check, no MFU). `profile` names a hardware profile
// (configs/hardware/*.yaml: this section in a file of its own, every key given) that supplies every
// key the config does not write (trainer/hardware.h). H800/H100 SXM: 80 GB, 989.5 BF16, 1979 FP8.
struct HardwareConfig {
  std::string profile;
  std::string name;              // for reports ("H800")
  double memory_gib = 0;         // device memory, GiB
  double peak_bf16_tflops = 0;   // dense
  double peak_fp8_tflops = 0;    // dense
  double peak_fp32_tflops = 0;   // dense fp32 GEMMs (the CPU's recipe; `moetron probe` measures it)
  double hbm_gbs = 0;            // memory bandwidth, GB/s
  int64_t devices_per_node = 0;  // devices that share the intra-node links
  int64_t cores_per_node = 0;    // CPU hosts: the cores a node's ranks share (0 = unknown)
  double nvlink_gbs = 0;         // intra-node bandwidth per device, GB/s (as published)
  double ib_gbs = 0;             // inter-node bandwidth per device, GB/s (one direction)
  // `moetron estimate`'s global efficiency factors (trainer/estimate.h), fractions of a peak: of
  // the GEMM precision's peak for bf16/fp32 GEMMs and the attention core, of the FP8 peak for FP8
  // GEMMs, of hbm_gbs for memory-bound kernels, of the link bandwidths for EP, PP and DP bytes.
  double gemm_efficiency = 0, gemm_efficiency_fp8 = 0, memory_efficiency = 0, comm_efficiency = 0;
};

struct RunConfig {
  std::string dir = "runs/default";
  int64_t steps = 100;
  uint64_t seed = 1234;
  int64_t log_interval = 1;
  int64_t threads = 0;  // intra-op threads per process; 0 = cores / processes on this node
  // Where activations live and ops run: cpu; cuda (the node's GPU number node-local rank mod
  // the GPUs visible, parameters and optimizer state there too, device data over NCCL); or guard,
  // the test device whose memory only ops and the communicator may touch (kernels/device.h): a
  // CPU run, slower, that proves what a GPU run needs.
  Device device = Device::CPU;  // cpu | cuda | guard
  // If set, every rank writes its parameters after the last step to <save_params>.rank<R>.h5
  // (HF names; tests compare layouts by them). Checkpoints proper are a separate mechanism.
  std::string save_params;
  int64_t save_interval = 0;     // checkpoint every N steps (and at the end); 0 = never
  int64_t keep_checkpoints = 3;  // complete checkpoints kept in <dir>/checkpoints
  // A step whose loss or gradient norm is NaN/Inf on any rank is skipped (no update of weights,
  // moments or expert bias; logged); this many in a row stop the run with an error. 0 = never stop.
  int64_t max_bad_steps = 5;
  // Hang detection (parallel/watchdog.h): a blocking communication wait (pipeline receive, EP
  // exchange, DP collective, checkpoint agreement) longer than this many seconds aborts the whole
  // job with a message naming the wait and the rank most behind; every rank keeps a heartbeat in
  // <dir>/status/rank_<R>.json. 0 = off (no watchdog thread, no status files).
  double comm_timeout_s = 600;
  int64_t eval_interval = 0;  // validation loss every N steps (and at the end); 0 = never
  int64_t eval_batches = 0;   // global batches per evaluation; 0 = the whole validation set
  // A text sample every N steps (and at the end; 0 = never): the main model continues
  // sample_prompt ("" = the start of a document) greedily for sample_tokens tokens, printed and
  // appended to <dir>/samples.txt (trainer/generate.h).
  int64_t sample_interval = 0;
  std::string sample_prompt;
  int64_t sample_tokens = 64;
  // off | on: count the GEMM FLOPs the ops execute (kernels/flop_counter.h) and report them per
  // step in metrics.jsonl (gemm_flops_executed, gemm_flops_recompute and
  // gemm_tflops_executed_per_device). Off by default; on, it costs an atomic addition per GEMM
  // op (the grouped GEMMs' row counts are host memory already, kernels/ops.h).
  bool count_flops = false;
  // Steps (1-based, as metrics.jsonl numbers them; strictly increasing) whose timeline every rank
  // records — compute ops, pieces of overlapped pairs, EP exchanges, PP messages, ZeRO buckets,
  // optimizer, data waits (parallel/trace.h) — into one Chrome Trace Event file
  // <dir>/trace.json, written after the last of them (Perfetto opens it). [] = off.
  std::vector<int64_t> trace_steps;
  // Steps (1-based, strictly increasing) whose ops every rank times on its device — GPU time by
  // CUDA events, not launch time (kernels/op_profile.h) — summed per op into
  // <dir>/op_profile/rank_<R>.tsv after the last of them; rank 0 also logs its slowest ops with
  // their share of the steps' time and the GEMMs' TFLOP/s. [] = off.
  std::vector<int64_t> profile_steps;
};

struct Config {
  std::string source;  // the file it came from (for messages)
  ModelConfig model;
  DataConfig data;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  ActivationsConfig activations;
  ParallelConfig parallel;
  PrecisionConfig precision;
  HardwareConfig hardware;
  RunConfig run;
  // The policy the model is built with: precision.* and activations.* (and run.device).
  PrecisionPolicy policy() const {
    PrecisionPolicy p = precision.policy(run.device);
    p.recompute_norms = activations.recompute_norms;
    p.recompute_mla_up = activations.recompute_mla_up;
    p.store_bf16 = activations.storage == FloatFormat::BF16;
    p.attn_out_e5m6 = activations.attention_output_e5m6;
    p.block_input_bf16 = activations.block_input_storage && p.store_bf16;
    return p;
  }
};

// YAML layout: sections model, data, optimizer, schedule, activations, parallel, precision,
// hardware, run;
// keys are the field names above (model: the Hugging Face names of model/config.h). Beyond 1:1
// fields:
//   model.rope_scaling: {type: yarn, factor, original_max_position_embeddings, beta_fast,
//     beta_slow, mscale} -> the yarn_* fields; null or absent = off.
//   model.max_seq_len: when absent, data.seq_len.
//   schedule.lr: {peak, warmup_steps, constant_until, decay_until, min_lr, tails}; tails is a
//     list of {until: X, lr: Y}; schedule.bias_update_speed / mtp_weight: a number, or a list of
//     {until: X, value: Y}. In both lists every entry but the last needs `until`, strictly
//     increasing; the last value holds to the end.
//   hardware.profile: a hardware profile file whose keys fill the hardware keys not written here.
//   A null section or an absent key keeps the defaults; a null string setting reads as "".
// Loads `path`, applies "key.path=value" overrides, validates. Throws ConfigError.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from YAML text (tests); `source` names it in messages.
Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides = {});
// The effective config as YAML (written to <run_dir>/config.yaml): every setting, defaults
// included; parse_config accepts it and gives back an equal Config.
std::string config_to_yaml(const Config& c);
// True when every setting is equal (`source` is not a setting and is ignored).
bool operator==(const Config& a, const Config& b);

}  // namespace moetron
