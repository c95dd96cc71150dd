// AdamW over a flat run of elements: the two moments (fp32, or bf16 to halve the memory) and the
// update. It knows nothing of parameters, groups or sharding: ZeRO-1 (zero1.h) owns the elements
// a rank updates, lays them out as one shard, and calls update() on each piece of a parameter in
// it with the reduced, clipped gradients. The arithmetic is kernels::adamw_update's; the moments
// live on the parameters' device (the GPU's memory in a CUDA run), and only a checkpoint moves
// them to or from the host (read, write).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/exec.h"
#include "model/buffers.h"

namespace moetron {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  bool bf16_moments = false;
};

class AdamW {
 public:
  AdamW() = default;  // no elements
  // Zeroed moments for `elements` elements on ex.device.
  AdamW(int64_t elements, const AdamWOptions& opt, const Exec& ex = Exec{});

  // A run of elements to update: w[0, len) with gradients g[0, len) (both on the device), using
  // the moments of elements [at, at + len); `decay`: apply the weight decay.
  struct Piece {
    float* w;
    const float* g;
    int64_t at, len;
    bool decay;
  };
  // One AdamW step on every piece (one op: on a GPU one launch). step_number is 1-based (bias
  // correction).
  void update(const std::vector<Piece>& pieces, double lr, int64_t step_number);

  // The moments of elements [at, at + len) into host memory in fp32 (bf16 moments widen
  // exactly), and set from host memory (rounded to bf16 when the moments are bf16): for
  // checkpoints.
  void read(int64_t at, int64_t len, float* m, float* v) const;
  void write(int64_t at, int64_t len, const float* m, const float* v);

  int64_t state_bytes() const;  // both moments

 private:
  AdamWOptions opt_;
  Exec ex_{};
  int64_t n_ = 0;
  Buffer<float> m32_, v32_;
  Buffer<uint16_t> m16_, v16_;
};

}  // namespace moetron
