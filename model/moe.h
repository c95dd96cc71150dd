// DeepSeekMoE layer: shared expert(s) plus routed experts, sigmoid gate with a selection-only
// bias, group-limited top-k, normalised weights x routed_scaling_factor, no token dropping.
//
// The layer runs as phases (ARCHITECTURE contract 3), each a separate call, so an executor can
// interleave two micro-batches and hide the expert all-to-all behind the other's compute:
//   forward:  gate -> dispatch -> experts -> combine     (shared expert: any time after gate)
//   backward: combine_backward -> experts_backward -> dispatch_backward -> gate_backward
// In one process dispatch/combine are local permutations by expert; expert parallelism replaces
// them with an all-to-all over the EP group without touching the other phases.
//
// Gate weights are folded into the experts' SwiGLU (g * W2(a) = W2(g * a)), so combine is a plain
// sum. The sequence-wise balance loss (alpha) is computed in the gate phase; expert loads of the
// micro-batch are kept in the state for the auxiliary-loss-free bias update. Both count only the
// positions with a target: all of them in the main model, the first S - k in MTP depth k.
//
// The routed experts are two GroupedLinears (linear.h) over the rows sorted by expert: their
// precision is theirs. Each expert's rows are padded with zero rows to a multiple of
// PrecisionPolicy::expert_row_align (16 for FP8 experts on a GPU, cuBLASLt's FP8 alignment); the
// zero rows change no value (they are never combined, and add zeros to the weight gradients). Under
// the fp8 recipe every expert's three GEMMs are block-scaled E4M3 (weights 128x128 per expert); the
// state keeps the expert inputs and the SwiGLU inputs as FP8 1x128 tiles and no fp32 expert
// activation; the backward dequantises gu and recomputes the SwiGLU output (SPEC §3.5). The
// activation gradient entering the down projection uses power-of-two scales under the default
// "spec" scale rule. The layer is op calls only: routing table, gathers, grouped GEMMs, balance
// loss, histogram and bias update are ops.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "kernels/pinned.h"
#include "model/buffers.h"
#include "model/config.h"
#include "model/dispatch.h"
#include "model/mlp.h"
#include "model/precision.h"
#include "model/program.h"

namespace moetron {

template <class T>
class MoE {
 public:
  struct State {
    int64_t B = 0, S = 0, N = 0;
    Buffer<T> scores, weights;  // [N,E], [N,K]
    Buffer<int32_t> idx;        // [N,K] global expert ids
    DispatchState<T> ds;        // received tokens [R, ...] and the dispatch plan
    // received (token, slot) pairs sorted by local expert, each expert's rows padded with zero
    // rows to a multiple of PrecisionPolicy::expert_row_align: A = offsets[E_local] rows
    int64_t A = 0;
    Buffer<int64_t> counts, offsets, slot;  // [El], [El+1], [R*K]
    Buffer<int64_t> row_token, row_slot;    // [A] (pad rows -1)
    // the offsets on the host (read once per forward): the grouped GEMMs' row groups, which the
    // ops take in host memory (pinned on a GPU: the read lands by DMA)
    PinnedVector<int64_t> group_off;  // [El+1]
    SavedAct<T> xperm;                // [A, D] expert inputs (FP8 tiles under the fp8 recipe)
    Buffer<T> wperm;                  // [A] gate weight of each row
    SavedAct<T> gu;                   // [A, 2F] SwiGLU inputs (FP8 under the fp8 recipe)
    SavedAct<T> a;                    // [A, F] (unless recomputed)
    typename Mlp<T>::State shared;
    Buffer<T> shared_out;  // [N, D]
    Buffer<T> bal_f;       // [B, E] balance-loss f_i per sequence (constants)
    // backward: kept for the weight gradients (dyperm [A, D], dgu [A, 2F]: under the fp8
    // recipe the Wgrads' 128x1 tiles; dlogits [N, E]), and the backward's own scratch (dwperm,
    // dxperm, dweights and the dispatch's ds.rdy, rdx, rdw: lent by the layers' Scratch for the
    // backward program only; dxperm from the forward's yperm; ds.rdy, rdx lent per call from
    // the Scratch's rows)
    SavedGrad<T> dyperm, dgu;
    Buffer<T> dlogits;
    Buffer<T> dwperm, dxperm, dweights;
    T aux_grad = T(0);  // d(total loss)/d(balance_loss), set by the caller
    template <class F>
    void for_each_grad(F&& f) {  // written by backward_input, read by backward_weight
      dyperm.for_each(f), dgu.for_each(f), f(dlogits);
      shared.for_each_grad(f);
    }
    // Bytes kept from forward to backward by the gate, the experts and the shared expert (the
    // dispatch state ds and the input x are the dispatcher's and the caller's).
    int64_t saved_bytes() const {
      const size_t n = scores.size() + weights.size() + wperm.size() + bal_f.size();
      return static_cast<int64_t>(n * sizeof(T) + idx.size() * 4 +
                                  (counts.size() + offsets.size() + slot.size() + row_token.size() +
                                   row_slot.size()) *
                                      8) +
             xperm.bytes() + gu.bytes() + a.bytes() + shared.saved_bytes();
    }
  };

  // The buffers one call of a MoE layer uses and drops (never kept from forward to backward),
  // shared by all the MoE layers of a model: a model (one pipeline chunk) runs one program at a
  // time — its layers one after another, and the executor never interleaves two programs of one
  // chunk (parallel/pipeline_impl.h) — so one set serves every layer, and a rank holds them once
  // per chunk instead of once per layer (DeepSeek-V3: 8 MoE layers per rank).
  struct Scratch {
    // One-piece scratch: each buffer is written and read inside one piece of a program (no yield
    // between), so a process's model chunks, whose programs interleave only at yields, share it
    // (Block::Scratch::make). A chunk runs one program at a time, so the backward borrows what
    // only the forward uses: yperm [A, D] holds the experts' outputs from `experts` to
    // combine_start; in the backward, under FP8 experts, their gradient dyperm until it is kept
    // as Wgrad tiles, then d xperm until dispatch_backward_start has sent it. a_tmp [A, F]: the
    // SwiGLU output before it is kept (or recomputed), then, in the backward, its gradient dA
    // (before the recomputed output, which the weight gradient reads). gu_tmp [A, 2F]: the
    // SwiGLU input before it is kept narrow (or widened for a read), then, under FP8 experts,
    // its gradient dgu before it is kept as Wgrad tiles (written over the widened input: the
    // SwiGLU backward reads each (g, u) pair before it writes its (dg, du)). logits [N, E]: the
    // gate's. rows [R, D]: lent to the state's dispatch for one call at a time (DispatchState: rx,
    // ry, rdy, rdx).
    struct OnePiece {
      explicit OnePiece(Device d) : gu_tmp(d), a_tmp(d), logits(d), yperm(d), rows(d) {}
      Buffer<T> gu_tmp, a_tmp, logits, yperm, rows;
      int64_t bytes() const {
        size_t n = 0;
        for (const Buffer<T>* b : {&gu_tmp, &a_tmp, &logits, &yperm, &rows}) n += b->capacity();
        return static_cast<int64_t>(n * sizeof(T));
      }
    };
    explicit Scratch(Device d)
        : one(std::make_shared<OnePiece>(d)), shared_out(d), rdw(d), dwperm(d), dweights(d) {}
    std::shared_ptr<OnePiece> one;
    // the chunk's own: live across a program's yields
    Buffer<T> shared_out;             // [N, D] from the shared expert to combine_wait
    Buffer<T> rdw, dwperm, dweights;  // lent to the state for the backward program
    // the bytes held (capacities): the chunk's own, and with the one-piece scratch
    int64_t own_bytes() const {
      size_t n = 0;
      for (const Buffer<T>* b : {&shared_out, &rdw, &dwperm, &dweights}) n += b->capacity();
      return static_cast<int64_t>(n * sizeof(T));
    }
    int64_t bytes() const { return own_bytes() + one->bytes(); }
  };

  // The dispatcher decides which experts live here (all of them for LocalDispatcher). tail: the
  // positions at the end of each sequence that have no target (k in MTP depth k, SPEC §1.5): they
  // are routed and computed like the others but left out of the balance loss and the loads.
  // scratch, mlp, linear: the model's shared Scratch, the shared expert's Mlp::Scratch and the
  // Linears' LinearScratch (null: the layer makes its own).
  void build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
             const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher,
             const Exec& ex, int64_t tail = 0, std::shared_ptr<Scratch> scratch = nullptr,
             std::shared_ptr<typename Mlp<T>::Scratch> mlp = nullptr,
             std::shared_ptr<LinearScratch<T>> linear = nullptr);
  void init(double std, uint64_t seed);

  // ---- forward phases (x = ffn_norm output [N,D], kept alive by the caller) ----
  // The layer's balance loss goes to balance[0] (double, device) and its expert loads are added
  // into load[E] (device): both for the caller to collect without a sync per micro-batch.
  void gate(State& st, const T* x, int64_t B, int64_t S, double* balance, int64_t* load) const;
  void shared_expert(State& st, const T* x) const;
  void dispatch_start(State& st, const T* x) const;
  void dispatch_wait(State& st) const;
  void experts(State& st) const;
  void combine_start(State& st) const;
  void combine_wait(State& st, T* y) const;  // y[N,D] = shared + sum of weighted expert outputs
  void forward(State& st, const T* x, int64_t B, int64_t S, T* y, double* balance,
               int64_t* load) const;
  // The phases as a program (model/program.h) that stops after posting the dispatch and after
  // posting the combine: gate + dispatch | shared expert + experts + combine | combine wait.
  // forward() is this program run to its end. `layer` labels the yields.
  Program forward_program(State& st, const T* x, int64_t B, int64_t S, T* y, double* balance,
                          int64_t* load, int layer) const;

  // ---- backward phases: dx[N,D] accumulates ----
  void combine_backward_start(State& st, const T* dy, T* dx) const;  // + shared expert backward
  void combine_backward_wait(State& st) const;
  void experts_backward(State& st) const;
  void dispatch_backward_start(State& st) const;
  void dispatch_backward_wait(State& st, T* dx) const;
  void gate_backward(State& st, T* dx) const;
  void backward_input(State& st, const T* dy, T* dx) const;  // all four, in order
  // The backward phases as a program that stops after posting the combine's backward and after
  // posting the dispatch's backward: combine backward (+ shared expert) | experts backward,
  // dispatch backward posted, the experts' weight gradients (DeepSeek-V3 runs mlp(W) while the
  // dispatch's backward is in flight) | dispatch backward wait + gate backward. The experts'
  // weight gradients run in it, or are queued on `queue` (non-null).
  Program backward_program(State& st, const T* dy, T* dx, WeightQueue* queue, int layer) const;
  // Weight gradients: the routed experts' (from the state), and the shared expert's and the
  // gate's (x: the layer input); backward_weight does both.
  void experts_backward_weight(State& st) const;
  void dense_backward_weight(State& st, const T* x) const;
  void backward_weight(State& st, const T* x) const {
    experts_backward_weight(st);
    dense_backward_weight(st, x);
  }

  // Auxiliary-loss-free balancing: b_i += gamma * sign(mean(load) - load_i), load [E] on the
  // model's device.
  void update_bias(const int64_t* load, double gamma);
  Param<T>* bias() const { return bias_; }
  int64_t n_experts() const { return E_; }
  const std::vector<Param<T>*>& params() const { return params_; }
  const std::shared_ptr<Scratch>& scratch() const { return scratch_; }
  const Mlp<T>& shared_expert() const { return shared_; }

 private:
  Exec ex_{};
  int64_t D_ = 0, E_ = 0, K_ = 0, F_ = 0;
  int64_t E_local_ = 0, first_expert_ = 0;  // experts held here: [first, first + E_local)
  int64_t row_align_ = 1;  // each expert's rows padded with zero rows to a multiple of this
  std::shared_ptr<TokenDispatcher<T>> dispatcher_;
  double alpha_ = 0;
  int64_t tail_ = 0;  // positions per sequence left out of the balance statistics (build's tail)
  int64_t valid_positions(int64_t S) const { return S > tail_ ? S - tail_ : 0; }
  kernels::GateParams gp_;
  Param<T>* gate_w_ = nullptr;  // [E, D]
  Param<T>* bias_ = nullptr;    // [E], selection only, not trained
  Linear<T> gate_;
  // All experts' weights, fused (unregistered; the per-expert views are the named parameters):
  std::unique_ptr<Param<T>> gu_all_;    // [E_local, 2F, D] gate|up
  std::unique_ptr<Param<T>> down_all_;  // [E_local, D, F]
  GroupedLinear<T> gu_, down_;
  bool recompute_swiglu_ = false;  // FP8 gu: a recomputed in the backward (SPEC §3.5)
  bool store_bf16_ = false;        // PrecisionPolicy::store_bf16
  // one call's scratch, shared with the model's other MoE layers (Scratch); the forward-only
  // buffers (the gate logits, the experts' outputs, the shared expert's output) live there too
  std::shared_ptr<Scratch> scratch_;
  Mlp<T> shared_;
  std::vector<Param<T>*> params_;
};

}  // namespace moetron
