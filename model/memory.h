// Activation memory, analytically: the bytes one micro-batch state (Model::MicroBatch, one slot of
// the pipeline executor) holds, per token and per layer, for a config and precision policy —
// without building or running anything, so it applies to any model size (planning).
//
// "forward" is what a forward keeps for the backward; "backward" what backward_input adds and
// keeps until backward_weight (the gradients the weight gradients read). A slot at its peak holds
// both. Exact for one expert-parallel rank (every token's K expert rows are local, and each token
// is received once); with EP the rows per rank vary with routing: `rows` received token rows per
// token (a token goes to each EP rank that holds one of its experts: on average <= min(K, EP);
// trainer/plan.h uses that bound) and `load` x K expert rows per token (1: the mean; a busier
// rank's buffers grow to its rows, and keep them: trainer/plan.h's ep_imbalance).
// tests/test_model_memory.cpp checks these numbers against the bytes the allocator holds.
#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/precision.h"

namespace moetron {

struct ActivationBytes {
  double forward = 0, backward = 0;  // bytes per token
  double total() const { return forward + backward; }
  ActivationBytes& operator+=(const ActivationBytes& o) {
    forward += o.forward, backward += o.backward;
    return *this;
  }
};

// One transformer block (MLA + dense MLP, or + MoE) per token, T = elem bytes (4: float).
// S: sequence length (the balance loss keeps [B, E] per micro-batch: E/S per token).
ActivationBytes block_activation_bytes(const ModelConfig& c, const PrecisionPolicy& pol, bool moe,
                                       int64_t S, int64_t elem = 4, double rows = 1,
                                       double load = 1);

// The whole slot of pipeline stage `stage` (of n_stages) for micro-batches of B x S tokens:
// blocks, residual stream, head, MTP modules, token ids and the per-micro-batch constants.
struct SlotBytes {
  int64_t forward = 0, backward = 0;
  int64_t total() const { return forward + backward; }
};
// The MoE layers' shared scratch (MoE::Scratch), for micro-batches of B x S = N tokens: held
// once per model (pipeline chunk) however many MoE layers it has, and zero without one.
// `one_piece`: the temporaries no yield cuts (gate logits, expert outputs — the backward's dyperm
// staging and d xperm —, SwiGLU scratch and the backward's dA and FP8 dgu staging), which a
// process's model chunks share (MoE::Scratch::OnePiece); `own`: each chunk's, live across a
// program's yields (the shared expert's output, the backward's d wperm, d weights and received
// d weights); `received`: the one [R, D] buffer lent for each call that writes or reads the
// received rows, their outputs, and in the backward the rows' gradients received and sent back
// (rx, ry, rdy, rdx), one-piece too; a plan counts it with the EP buffers where EP > 1.
struct ScratchBytes {
  int64_t one_piece = 0, own = 0, received = 0;
  int64_t total() const { return one_piece + own + received; }
};
ScratchBytes moe_scratch_bytes(const ModelConfig& c, const PrecisionPolicy& pol, int64_t N,
                               int64_t elem = 4, double rows = 1, double load = 1);

// The rest of the layers' shared scratch (Block::Scratch but MoE::Scratch), for micro-batches of
// N tokens on pipeline stage `stage` of n_stages: held once per model (pipeline chunk) however many
// layers it has; each buffer is grown to the largest call that uses it. `attention`: MLA::Scratch
// (every stage has a block); `mlp`: Mlp::Scratch, per buffer the larger of the dense MLP and the
// shared expert present; `linear`: LinearScratch, the largest Linear input converted to bf16 or
// FP8 (the attention projections' inputs, the routed experts' sorted rows), widened from bf16, or
// quantised on the fly (o_proj's, the down projections' inputs). (A dY quantised on the fly for
// an FP8 Wgrad, LinearScratch::dy8, has no user in the model: every FP8 Linear's dY is kept.)
// Routed-expert rows: load x K per token. `block`: Block::Own, the backward's d ffn_norm output (D
// per token), the blocks' bf16-storage staging of h_mid and ffn_norm's output (2 x D per token)
// and, on the stage with the MTP module, its temporaries (5 x D per token).
struct LayerScratchBytes {
  int64_t attention = 0, mlp = 0, linear = 0, block = 0;
  int64_t total() const { return attention + mlp + linear + block; }
};
LayerScratchBytes layer_scratch_bytes(const ModelConfig& c, const PrecisionPolicy& pol,
                                      int64_t stage, int64_t n_stages, int64_t N, int64_t elem = 4);
// The same for the model chunks of one process (stages, built with Model's sibling): the
// one-piece scratch (attention, mlp, linear) once, each buffer grown to the largest call of any
// of the stages; block (Block::Own) per chunk.
LayerScratchBytes layer_scratch_bytes(const ModelConfig& c, const PrecisionPolicy& pol,
                                      const std::vector<int64_t>& stages, int64_t n_stages,
                                      int64_t N, int64_t elem = 4, double load = 1);

SlotBytes slot_activation_bytes(const ModelConfig& c, const PrecisionPolicy& pol, int64_t stage,
                                int64_t n_stages, int64_t B, int64_t S, int64_t elem = 4,
                                double rows = 1, double load = 1);

}  // namespace moetron
