// ZeRO-1: data-parallel gradient reduction with the optimizer state sharded over the group. The
// optimizer itself (moments and update) is AdamW (adamw.h), run here on the owned shard only.
//
// The parameters of one reduction group (dense parameters over DP, routed experts over EDP) live
// in two flat arenas, one for values and one for gradients, laid out in buckets; each bucket
// holds whole parameters and is padded to a multiple of the group size G. Rank r owns the r-th
// 1/G of every bucket. One step:
//   1. reduce-scatter each bucket of the gradient arena in place (sum over the group, in fp32 or,
//      with grad_reduce_bf16, in bf16 widened back to fp32): this rank's part of each bucket now
//      holds the summed gradients of the elements it owns (NCCL's in-place layout: the result
//      where the input's own block was; no separate gradient shard), the other parts this
//      rank's own gradients, spent;
//   2. (the caller computes the global gradient norm from every group's owned squares, and the
//      clip factor);
//   3. AdamW on the owned elements only, in the value arena — fp32 master weights are the
//      parameters themselves, moments (fp32 or bf16) exist only for the owned elements:
//      optimizer memory ~ 1/G;
//   4. all-gather each bucket of the value arena in place (this rank's block is already there).
// No step packs or unpacks a parameter. With G = 1 (one process) this is plain AdamW on the
// arenas (the gradient arena is the shard); the trainer uses this one path for every layout.
//
// Overlap with the backward (zero1_reduce.cpp). Step 1 need not wait for the whole backward: the
// trainer calls mark_final(i) as soon as params()[i]'s gradient will not change any more this
// step (the backward of the rank's last micro-batch has passed its layer), and a bucket whose
// parameters are all final starts its reduce-scatter at once, non-blocking, while the backward
// goes on; progress() (between the backward's pieces) lets MPI move it. Buckets start in one
// fixed order — last bucket first, as a backward finishes the last layers first — and a bucket
// starts only after every bucket before it in that order, so all ranks of the group post the
// same collectives in the same order whatever order their backwards finish in (DualPipe's twins
// run their two chunks in mirrored orders). reduce_scatter_grads() starts what is left (the
// parameters never marked: embedding, final norm, head) and waits for all. Each bucket's
// reduction is the same operation whenever it starts, so overlap on and off give the same bits.
//
// The arenas. The constructor plans the layout from the parameter list, allocates both arenas
// (Tensors from the device allocator, so their bytes are counted, zeroed: padding stays zero),
// copies each parameter's value and gradient into its slice and re-homes the Param onto it: the
// Param's `value`/`grad` become views of the arenas and its old storage is freed. A parameter
// that is a view of a fused tensor (Param::fused: an MLP's gate|up matrix, a MoE layer's experts)
// moves with the fused tensor: the fused tensor is laid out whole, where its first view appears in
// the list, as one unit that a bucket never splits; its views keep their offsets inside it, and
// the fused Param object (which the layer computes with) is re-homed onto the slice that spans
// its views. Every view of a fused tensor must be in the same group and together they must tile
// it exactly (checked). Parameters outside every group (the expert bias) keep their own storage.
// Owned ranges are kept in the parameter list's order, so the gradient norm sums in the same
// order as before the arenas: with G = 1 every number is unchanged.
//
// Sharded master weights (shard_values, G > 1). Under the FP8 and BF16 recipes a Linear's GEMMs
// read only its weight's copy (E4M3 blocks or bf16), which the Linear registered in
// Param::copies. Such a unit (every parameter, or fused tensor, with copies) keeps no fp32 values
// on the rank: its master values live only in this rank's shard, like the moments (Megatron's
// distributed optimizer does the same). Then:
//   - the shard of master values (`shard_value_`, every owned element) is what AdamW updates;
//   - the value arena holds only the other units (norms, embedding, an fp32 head or gate: their
//     readers need fp32 values), laid out compactly;
//   - step 4 all-gathers each bucket into the gradient arena, whose gradients are spent by then
//     (the next step's zero_grad clears it), and from there copies the resident units into the
//     value arena and hands each cached unit's values to its copies (Param::copies), which are
//     made from the same fp32 values as before: every copy, loss and update has the same bits;
//   - the cached parameters' `value` tensors are on the Meta device (a shape, no memory).
// Saving reads the owned values (read_owned), loading writes them (load_owned) and gathers.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pinned.h"
#include "model/buffers.h"
#include "model/param.h"
#include "parallel/adamw.h"
#include "parallel/comm.h"
#include "parallel/trace.h"

namespace moetron {

// The optimizer's options (AdamWOptions) and the sharding's.
struct Zero1Options : AdamWOptions {
  bool grad_reduce_bf16 = false;      // round gradients to bf16 for the reduction (fp32 otherwise)
  int64_t bucket_elements = 1 << 20;  // 4 MiB of fp32 per bucket
  bool overlap = true;        // start a bucket's reduce-scatter when mark_final made it final
  int staging = 2;            // grad_reduce_bf16: bf16 buckets in flight at once (staging buffers)
  bool shard_values = false;  // G > 1: master values of the units with copies only in the shard
};

class Zero1 {
 public:
  // params: the trainable parameters of this group, the same list in the same order on every
  // rank of `group`, all on one device (the arenas, the shard and the moments go there; the
  // optimizer's arithmetic runs there as ops). They are re-homed onto the group's arenas (values
  // kept).
  Zero1(std::vector<Param<float>*> params, Communicator& group, const Zero1Options& opt);
  Zero1(const Zero1&) = delete;
  Zero1& operator=(const Zero1&) = delete;

  // params()[i]'s gradient is final for this step: buckets made final start their reduction
  // (with overlap; else nothing happens until reduce_scatter_grads).
  void mark_final(int64_t i);
  // Lets the reductions in flight progress (a test of each; completed bf16 buckets widened).
  void progress();
  // Starts every bucket not started yet, waits for all; after this (until step) owned_grads()
  // holds the summed gradients of the owned elements. Marks are cleared for the next step.
  void reduce_scatter_grads();
  // Gradient elements (padded buckets) whose reduction the last reduce_scatter_grads found
  // already started by mark_final.
  int64_t started_early() const { return last_started_early_; }
  int64_t reduced_elements() const { return G1() ? 0 : grad_arena_.numel(); }  // (padded)
  // Sum of squares of the owned, reduced gradients (parameters marked `replica` excluded).
  double owned_grad_sq() const;
  // Whether this rank's own gradients, before their reduction, were all finite (with G > 1
  // counted per bucket as its reduction starts: the reduction then overwrites them in place).
  bool local_grads_finite() const;
  // AdamW on the owned elements with gradients multiplied by grad_scale (the clip factor), then
  // all-gather the updated parameters. (With G = 1 the gradients are scaled in place.)
  void step(double lr, double grad_scale, int64_t step_number);

  // Whether master values are sharded (shard_values, G > 1, some unit with copies), and the fp32
  // bytes of values this rank holds: the resident units' and, when sharded, the owned masters.
  bool sharded() const { return sharded_; }
  int64_t value_bytes() const {
    return static_cast<int64_t>(sizeof(float)) * (value_arena_.numel() + shard_value_.size());
  }
  // Whether params()[i]'s values are on this rank (not: sharded, its GEMMs read only copies).
  bool holds_values(size_t i) const { return !cached(static_cast<size_t>(unit_of_.at(i))); }

  int64_t state_bytes() const { return adamw_.state_bytes(); }  // moments held by this rank

  // Optimizer state for checkpoints: the moments of this rank's owned elements, one piece per
  // (parameter, owned range), in fp32 (bf16 moments widen exactly). import_moments takes pieces
  // from any sharding (any DP size) and fills every owned element; throws if one is missing.
  struct MomentPiece {
    std::string name;
    int64_t offset = 0;
    PinnedVector<float> m, v;  // host memory (pinned on a GPU run: the checkpoint's copies)
  };
  std::vector<MomentPiece> export_moments() const;
  void import_moments(const std::vector<MomentPiece>& pieces);
  // Sharded: fills every owned master value through read(param, offset, len, host); then
  // gather_values() remakes the copies and the resident values. (Unsharded, a load writes each
  // parameter's values itself.)
  using ReadValues = std::function<void(const Param<float>&, int64_t, int64_t, float*)>;
  void load_owned(const ReadValues& read);
  // Sharded: all-gathers the master values into the gradient arena (collective; they stay there
  // until the next step's zero_grad), remaking the copies and the resident values from them.
  // whole_values(p) is then where p's whole values are: its slice of the gradient arena, or its
  // value tensor where the rank holds it (unsharded: always); asked for a sharded parameter not
  // gathered since the last reduce_scatter_grads, it throws.
  void gather_values();
  const Tensor& whole_values(const Param<float>& p) const;
  // The parameters of this group, and the ranges of them this rank owns (the elements its
  // moments cover): a checkpoint writes each element once, from its owner.
  // shard_offset: where the range's moments (and sharded masters) are in the shard;
  // grad_offset: where its reduced gradients are in owned_grads() (its place in the arena).
  struct OwnedRange {
    const Param<float>* param;
    int64_t offset, len, shard_offset, grad_offset;
  };
  const std::vector<Param<float>*>& params() const { return params_; }
  std::vector<OwnedRange> owned_ranges() const {
    std::vector<OwnedRange> out;
    for (const Segment& s : segments_)
      out.push_back({s.p, s.param_offset, s.len, s.shard_offset, s.arena_offset});
    return out;
  }
  // The master values of an owned range into host memory (a checkpoint's piece).
  void read_owned(const OwnedRange& r, float* host) const;
  // (device memory: the gradient arena, whose owned parts hold the reduced gradients)
  const float* owned_grads() const { return grad_arena_.data<float>(); }
  // The arenas (numel: the padded layout) and where params()[i] starts in them.
  const Tensor& value_arena() const { return value_arena_; }
  const Tensor& grad_arena() const { return grad_arena_; }
  int64_t arena_offset(size_t i) const { return offset_.at(i); }
  // Seconds in reduce-scatter and all-gather since the last call.
  double take_comm_seconds() {
    const double s = comm_seconds_;
    comm_seconds_ = 0;
    return s;
  }
  int64_t numel() const { return numel_; }  // parameter elements (padding excluded)

 private:
  struct Bucket {
    int64_t begin = 0, padded = 0;  // arena offset, padded length (multiple of G)
    std::vector<int64_t> params;    // indices into params_, in arena order
    std::vector<int64_t> units;     // indices into units_
  };
  struct Segment {  // a piece of one parameter inside this rank's shard
    Param<float>* p;
    int64_t param_offset, shard_offset, len;
    int64_t index;         // of p in params_
    int64_t arena_offset;  // where it is in the arenas (its reduced gradients: in place)
  };
  struct Plan;  // the constructor's grouping of parameters into units (zero1.cpp)
  static Plan plan_units(const std::vector<Param<float>*>& params);
  int64_t plan_buckets(const Plan& plan);
  void rehome(const Plan& plan, int64_t flat);
  void plan_shard();
  int64_t start_final_buckets();  // in the start order, while the next is final: elements
  void start(int64_t bucket);     // posts its reduce-scatter
  void finish(size_t flight);     // after in_flight_[flight] completed: widen (bf16), drop it
  void scale_owned_grads(double grad_scale);
  void all_gather_values();
  void spread_bucket(size_t b);  // sharded: gathered bucket b -> resident values and copies
  float* master(const Segment& s) {
    return sharded_ ? shard_value_.data() + s.shard_offset : s.p->w() + s.param_offset;
  }
  bool G1() const { return comm_.size() == 1; }
  // this rank's part of bucket b in the gradient arena: where its reduction lands
  float* owned_part(size_t b) {
    const Bucket& k = buckets_[b];
    return grad_arena_.data<float>() + k.begin + comm_.rank() * (k.padded / comm_.size());
  }
  Exec ex_{};  // the parameters' device: every vector op of the optimizer runs there
  std::vector<Param<float>*> params_;
  std::vector<int64_t> offset_;  // arena offset of each parameter
  std::vector<Bucket> buckets_;
  std::vector<Segment> segments_;
  Communicator& comm_;
  Zero1Options opt_;
  int64_t numel_ = 0, shard_ = 0;  // total elements, owned (padded) elements
  double comm_seconds_ = 0;
  Tensor value_arena_, grad_arena_;  // [padded layout] fp32 (sharded: resident units, compact)
  // What a bucket never splits (a parameter, or a fused tensor with its views): its storage
  // Param, arena offset and length, and where the value arena holds it (-1: nowhere, cached);
  // per parameter, its unit.
  struct Unit {
    Param<float>* storage;
    int64_t offset, numel, value_at;
  };
  std::vector<Unit> units_;
  std::vector<int64_t> unit_of_;
  // Sharded master values: the owned elements (shard order). A unit is cached (its values only
  // in the shards) when the group is sharded and the unit has copies.
  bool sharded_ = false;
  Buffer<float> shard_value_;
  bool cached(size_t u) const { return sharded_ && !units_[u].storage->copies.empty(); }
  std::unordered_map<const Param<float>*, Tensor> gathered_;  // whole_values of the cached ones
  // The overlapped reduction: per bucket, where its part of the shard starts and how many of its
  // parameters are not final yet; per parameter, its bucket and whether it is final.
  std::vector<int64_t> shard_pos_, not_final_, bucket_of_;
  std::vector<char> final_;
  size_t started_ = 0;  // buckets started this step: the start order's first `started_`
  int64_t started_early_ = 0, last_started_early_ = 0;
  // grad_reduce_bf16: staging buffers, each one bucket's bf16 send then its part's receive
  // (declared before in_flight_: destroyed after the reductions that use them are waited for)
  std::vector<Buffer<uint16_t>> stage16_;
  std::vector<int> free16_;
  struct InFlight {
    int64_t bucket;
    Request req;
    int staging;      // bf16 staging buffer, or -1
    trace::Event tr;  // post to completion, when traced (run.trace_steps)
  };
  std::vector<InFlight> in_flight_;
  AdamW adamw_;  // the moments of the owned elements (shard order)
  // the device results of owned_grad_sq (one sum per segment) and local_grads_finite (the
  // non-finite local gradients: of the arena with G = 1, else of each bucket as it starts)
  mutable Buffer<double> seg_sq_;
  mutable Buffer<int64_t> bad_;
};

}  // namespace moetron
