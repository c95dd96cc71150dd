// ZeRO-1: data-parallel gradient reduction with the optimizer state sharded over the group.
//
// The parameters of one reduction group (dense parameters over DP, routed experts over EDP) are
// laid out in a flat buffer of buckets; each bucket holds whole parameters and is padded to a
// multiple of the group size G. Rank r owns the r-th 1/G of every bucket. One step:
//   1. pack gradients into the flat buffer; reduce-scatter each bucket (sum over the group):
//      this rank now has the summed gradients of the elements it owns;
//   2. (the caller computes the global gradient norm from every group's owned squares, and the
//      clip factor);
//   3. AdamW on the owned elements only — fp32 master weights are the parameters themselves,
//      moments (fp32 or bf16) exist only for the owned elements: optimizer memory ~ 1/G;
//   4. all-gather each bucket's updated values and unpack into every parameter.
// With G = 1 (one process) this is plain AdamW; the trainer uses this one path for every layout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/param.h"
#include "parallel/comm.h"

namespace moetron {

struct Zero1Options {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  bool bf16_moments = false;
  int64_t bucket_elements = 1 << 20;  // 4 MiB of fp32 per bucket
};

class Zero1 {
 public:
  // params: the trainable parameters of this group, the same list in the same order on every
  // rank of `group`.
  Zero1(std::vector<Param<float>*> params, Communicator& group, const Zero1Options& opt);

  void reduce_scatter_grads();
  // Sum of squares of the owned, reduced gradients (parameters marked `replica` excluded).
  double owned_grad_sq() const;
  // AdamW on the owned elements with gradients multiplied by grad_scale (the clip factor), then
  // all-gather the updated parameters.
  void step(double lr, double grad_scale, int64_t step_number);

  int64_t state_bytes() const;  // moments held by this rank

  // Optimizer state for checkpoints: the moments of this rank's owned elements, one piece per
  // (parameter, owned range), in fp32 (bf16 moments widen exactly). import_moments takes pieces
  // from any sharding (any DP size) and fills every owned element; throws if one is missing.
  struct MomentPiece {
    std::string name;
    int64_t offset = 0;
    std::vector<float> m, v;
  };
  std::vector<MomentPiece> export_moments() const;
  void import_moments(const std::vector<MomentPiece>& pieces);
  // The parameters of this group, and the ranges of them this rank owns (the elements its
  // moments cover): a checkpoint writes each element once, from its owner.
  struct OwnedRange {
    const Param<float>* param;
    int64_t offset, len;
  };
  const std::vector<Param<float>*>& params() const { return params_; }
  std::vector<OwnedRange> owned_ranges() const {
    std::vector<OwnedRange> out;
    for (const Segment& s : segments_) out.push_back({s.p, s.param_offset, s.len});
    return out;
  }
  // Seconds in reduce-scatter and all-gather since the last call.
  double take_comm_seconds() {
    const double s = comm_seconds_;
    comm_seconds_ = 0;
    return s;
  }
  int64_t numel() const { return numel_; }

 private:
  struct Bucket {
    int64_t begin = 0, padded = 0;  // flat offset, padded length (multiple of G)
    std::vector<int64_t> params;    // indices into params_
  };
  struct Segment {  // a piece of one parameter inside this rank's shard
    Param<float>* p;
    int64_t param_offset, shard_offset, len;
  };
  std::vector<Param<float>*> params_;
  std::vector<int64_t> offset_;  // flat offset of each parameter
  std::vector<Bucket> buckets_;
  std::vector<Segment> segments_;
  Communicator& comm_;
  Zero1Options opt_;
  int64_t numel_ = 0, shard_ = 0;  // total elements, owned (padded) elements
  double comm_seconds_ = 0;
  std::vector<float> flat_, shard_grad_;
  std::vector<float> m32_, v32_;
  std::vector<uint16_t> m16_, v16_;
};

}  // namespace moetron
