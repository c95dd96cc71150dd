// Fine-grained FP8 quantisation (SPEC-deepseek-v3 §3.2): the one quantiser every FP8 caller uses.
//
// x [R, C] is cut into tiles of tr x tc elements — 1x128 for activations (per token, per 128
// channels along K), 128x128 for weights, 128x1 for the re-quantised activations and gradients
// that weight-gradient GEMMs read along the token axis. Each tile has one fp32 dequantisation
// scale s = max(amax, 1e-4) / 448 (or, with pow2, the next power of two at or above it), and
// q = e4m3(x / s), x ~ q * s. Edge tiles use only their valid elements (the same as zero padding).
// scales: [ceil(R/tr), ceil(C/tc)], row-major.
#pragma once

#include <cstdint>

namespace moetron::kernels {

struct Tile {
  int64_t rows = 1, cols = 128;
};
inline constexpr Tile kTile1x128{1, 128}, kTile128x128{128, 128}, kTile128x1{128, 1};

void quantize_e4m3(const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
                   float* scales);
void dequantize_e4m3(const uint8_t* q, const float* scales, int64_t R, int64_t C, Tile t, float* x);

}  // namespace moetron::kernels
