// AdamW over a flat run of elements: the two moments (fp32, or bf16 to halve the memory) and the
// update. It knows nothing of parameters, groups or sharding: ZeRO-1 (zero1.h) owns the elements
// a rank updates, lays them out as one shard, and calls update() on each piece of a parameter in
// it with the reduced, clipped gradients. The arithmetic is kernels::adamw_update's.
#pragma once

#include <cstdint>
#include <vector>

namespace moetron {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  bool bf16_moments = false;
};

class AdamW {
 public:
  AdamW() = default;  // no elements
  // Zeroed moments for `elements` elements.
  AdamW(int64_t elements, const AdamWOptions& opt);

  // One AdamW step on w[0, len) with gradients g[0, len), using the moments of elements
  // [at, at + len); `decay`: apply the weight decay. step_number is 1-based (bias correction).
  void update(float* w, const float* g, int64_t at, int64_t len, bool decay, double lr,
              int64_t step_number);

  // The moments of element k, in fp32 (bf16 moments widen exactly), and setting them (rounded
  // to bf16 when the moments are bf16): for checkpoints.
  float m(int64_t k) const;
  float v(int64_t k) const;
  void set(int64_t k, float m, float v);

  int64_t state_bytes() const;  // both moments

 private:
  AdamWOptions opt_;
  int64_t n_ = 0;
  std::vector<float> m32_, v32_;
  std::vector<uint16_t> m16_, v16_;
};

}  // namespace moetron
