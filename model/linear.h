// Linear and GroupedLinear: y = x W^T with W [out, in], no bias — the GEMM owners of the model.
//
// Precision lives here (ARCHITECTURE contract 6): a Linear is made with its component's
// LinearPrecision and runs its three GEMMs by that recipe; the layers that hold Linears contain
// no precision branch. A Linear's input is kept for the weight gradient as a SavedAct in the form
// the recipe and the storage policy ask for (T, bf16, or FP8 1x128 tiles): the layer writes the
// input into input(...) and calls keep(...), then forward(saved, ...) and later
// backward_weight(dy, saved). The GEMMs read what is kept (bf16 widened, FP8 as tiles), so the
// forward, a recompute and the weight gradient see the same X.
// Split backward (ARCHITECTURE contract 1): backward_input gives dx from dy; backward_weight adds
// dW and may run later (zero-bubble / DualPipe defer it).
//
// FP8 (LinearPrecision::recipe == FP8, T = float only; SPEC-deepseek-v3 §3.3):
//   forward          X [N,in] quantised 1x128 (kept instead of X), W [out,in] as 128x128 blocks
//                    (Fp8WeightCache), Y = fp8_fprop; fp32 accumulation, promotion every 128.
//   backward_input   dY [N,out] quantised 1x128 (or 128x128 blocks for the App. B.2 experiment),
//                    dX = fp8_linear_dgrad with the same W blocks, transposed (the cache's W^T).
//   backward_weight  dY quantised 128x1 token-major, the kept FP8 X re-quantised 1x128 -> 128x1
//                    (or an fp32 X quantised 128x1 directly), dW += fp8_wgrad (fp32).
// The layer keeps dY for the weight gradient, which may run later, as a SavedGrad (buffers.h): it
// writes dY into grad(...) and calls keep_grad(...) once backward_input has read it; under FP8
// that makes the 128x1 tiles the Wgrad reads (a quarter of the fp32 bytes), then instead of in
// backward_weight — the same bits. A dY given to backward_weight as T is quantised on the spot.
// The weight copy is refreshed at every forward unless the policy's weight_version counter is
// set (then only when it moved): both are exact for a weight that changes only between steps.
//
// BF16 (LinearPrecision::recipe == BF16, T = float): the forward and input-gradient GEMMs read a
// bf16 copy of W (Bf16WeightCache, refreshed like the FP8 copy) through the *_bf16_weight GEMM
// ops, which round only the activation operand: the same bits as rounding W in every call, one
// conversion of W per weight version instead of two per micro-batch. The weight gradient reads
// no weight.
//
// GroupedLinear: the same for G weight matrices W [G, out, in] applied to G row groups of one
// input (the routed experts; rows of group g are [off[g], off[g+1]), off in host memory), through
// the grouped GEMM ops. Its CPU implementation runs one group per thread.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "kernels/ops.h"
#include "model/buffers.h"
#include "model/param.h"
#include "model/precision.h"

namespace moetron {

// FP8 copy of G weight matrices W [G, R, C] (each quantised in its own 128x128 blocks):
// codes [G, R, C], scales [G, ceil(R/128), ceil(C/128)]; and W^T, what Dgrad reads (its GEMM wants
// the reduced dimension R contiguous): codes [G, C, R], scales [G, ceil(C/128), ceil(R/128)],
// made from the codes on the first Dgrad after each quantisation and kept with them, so the
// micro-batches of a step transpose once, as Transformer Engine's FP8 weight-transpose cache
// does. Its bytes, one more of each weight code, are in `plan`'s fp8-cache (trainer/plan.cpp).
// (`precision.fp8_weight_transpose: per_call`: the Linear transposes into its scratch at every
// Dgrad instead and this W^T is never made; LinearBase::weight_t.)
struct Fp8WeightCache {
  Buffer<uint8_t> q, qT;
  Buffer<float> s, sT;
  int64_t G = 0, R = 0, C = 0;
  uint64_t version = 0;
  bool valid = false;
  bool pushed = false;      // remade from values its parameter's owner gave (Param::copies): kept
  bool transposed = false;  // qT, sT hold the transpose of q, s
  int64_t blocks() const { return ((R + 127) / 128) * ((C + 127) / 128); }
  // Re-quantises unless valid at *ver (ver null: always) or pushed.
  void refresh(const Exec& ex, const float* W, int64_t groups, int64_t rows, int64_t cols,
               bool pow2, const uint64_t* ver) {
    if (pushed || (ver && valid && version == *ver && R == rows && C == cols)) return;
    quantize(ex, W, groups, rows, cols, pow2);
    version = ver ? *ver : 0;
  }
  // Quantises W [G, rows, cols] given by the parameter's owner; refresh() keeps it from now on.
  void push(const Exec& ex, const float* W, int64_t groups, int64_t rows, int64_t cols, bool pow2) {
    quantize(ex, W, groups, rows, cols, pow2);
    pushed = true;
  }
  // W^T's codes and scales (the current quantisation's)
  const uint8_t* qt(const Exec& ex) { return transpose(ex), qT.data(); }
  const float* st(const Exec& ex) { return transpose(ex), sT.data(); }

 private:
  void quantize(const Exec& ex, const float* W, int64_t groups, int64_t rows, int64_t cols,
                bool pow2) {
    G = groups, R = rows, C = cols;
    sized(q, G * R * C);
    sized(s, G * blocks());
    kernels::quantize_batched(ex, W, G, R, C, kernels::kTile128x128, pow2, q.data(), s.data());
    valid = true;
    transposed = false;
  }
  void transpose(const Exec& ex) {
    if (transposed) return;
    kernels::transpose_e4m3_blocks(ex, q.data(), s.data(), G, R, C, sized(qT, G * R * C),
                                   sized(sT, G * blocks()));
    transposed = true;
  }
};

// bf16 copy of G weight matrices W [G, R, C] (round to nearest even, kernels/scalar.h).
struct Bf16WeightCache {
  Buffer<uint16_t> w;
  int64_t n = 0;
  uint64_t version = 0;
  bool valid = false;
  bool pushed = false;  // converted from values its parameter's owner gave (Param::copies): kept
  // Converts unless valid at *ver (ver null: always) or pushed.
  const uint16_t* refresh(const Exec& ex, const float* W, int64_t count, const uint64_t* ver) {
    if (!(pushed || (ver && valid && version == *ver && n == count))) {
      convert(ex, W, count);
      version = ver ? *ver : 0;
    }
    return w.data();
  }
  // Converts W [count] given by the parameter's owner; refresh() keeps it from now on.
  void push(const Exec& ex, const float* W, int64_t count) {
    convert(ex, W, count);
    pushed = true;
  }

 private:
  void convert(const Exec& ex, const float* W, int64_t count) {
    n = count;
    kernels::narrow_to_bf16(ex, W, count, sized(w, count));
    valid = true;
  }
};

// The buffers a Linear uses within one call and drops: its input before the conversion to bf16
// or FP8 tiles (written between input() and keep()), a kept bf16 input widened for a GEMM, and an
// input quantised on the fly. Each use lies inside one call of one Linear (input() to keep() spans
// only the norm or gather that writes the input), so all the Linears of a model (a pipeline
// chunk, which runs one program at a time) share one: the Model makes it with the layers' Scratch
// structs, and a Linear made without one makes its own.
template <class T>
struct LinearScratch {
  explicit LinearScratch(Device d) : x(d), wide(d), wtq(d), wts(d) {
    x8.q = Buffer<uint8_t>(d), x8.s = Buffer<float>(d);
    dy8.dy = Buffer<T>(d), dy8.q = Buffer<uint8_t>(d), dy8.s = Buffer<float>(d);
  }
  Buffer<T> x;          // BF16/FP8: the input before conversion [N, in]
  Buffer<T> wide;       // BF16: a kept input read back as T for a GEMM [N, in]
  Fp8Act x8;            // FP8: an input quantised on the fly and not kept [N, in] + scales
  SavedGrad<T> dy8;     // FP8: a dY given as T, quantised for the Wgrad on the fly [N, out]
  Buffer<uint8_t> wtq;  // FP8, fp8_weight_transpose per_call: W^T's codes [G, in, out]
  Buffer<float> wts;    // and block scales [G, ceil(in/128), ceil(out/128)]
  // the bytes held (capacities)
  int64_t bytes() const {
    return static_cast<int64_t>((x.capacity() + wide.capacity()) * sizeof(T) + x8.q.capacity() +
                                x8.s.capacity() * sizeof(float) + dy8.q.capacity() +
                                dy8.s.capacity() * sizeof(float) + wtq.capacity() +
                                wts.capacity() * sizeof(float));
  }
};

// What Linear and GroupedLinear share: the weight, its precision and its FP8 or bf16 copy.
template <class T>
struct LinearBase {
  Param<T>* W = nullptr;  // [G, out, in] (G = 1 for a Linear)
  int64_t G = 1, in = 0, out = 0;
  LinearPrecision lp{};
  Exec ex{};
  const uint64_t* version = nullptr;  // PrecisionPolicy::weight_version (null: every forward)
  bool store_bf16 = false;            // PrecisionPolicy::store_bf16: a kept input in bf16
  bool wt_per_call = false;           // PrecisionPolicy::weight_transpose == PerCall
  // the weight's copy (FP8 or bf16), shared with the closure the Linear registers in W->copies
  std::shared_ptr<Fp8WeightCache> wq = std::make_shared<Fp8WeightCache>();
  std::shared_ptr<Bf16WeightCache> w16 = std::make_shared<Bf16WeightCache>();
  std::shared_ptr<LinearScratch<T>> sc;  // one call's scratch, shared with the model's Linears

  void init(Param<T>* w, int64_t groups, int64_t in_, int64_t out_, const LinearPrecision& p,
            const PrecisionPolicy& pol, const Exec& e, std::shared_ptr<LinearScratch<T>> s) {
    if (p.fp8() && !std::is_same_v<T, float>)
      throw std::invalid_argument("the fp8 recipe needs a float model");
    W = w, G = groups, in = in_, out = out_, lp = p, ex = e;
    version = pol.weight_version.get();
    store_bf16 = pol.store_bf16;
    wt_per_call = pol.weight_transpose == WeightTranspose::PerCall;
    sc = s ? std::move(s) : std::make_shared<LinearScratch<T>>(e.device);
    register_copy();
  }
  // Under FP8 and BF16 the GEMMs read only W's copy: the Linear registers how to remake it from
  // given values (Param::copies; a Linear is its weight's one reader). Every copy of the Linear
  // shares the cache the closure holds.
  void register_copy() {
    if constexpr (std::is_same_v<T, float>) {
      if (fp8())
        W->copies.push_back([q = wq, e = ex, g = G, o = out, i = in,
                             p2 = lp.pow2_w](const float* v) { q->push(e, v, g, o, i, p2); });
      else if (bf16_weight())
        W->copies.push_back(
            [c = w16, e = ex, n = G * out * in](const float* v) { c->push(e, v, n); });
    }
  }
  bool fp8() const { return lp.fp8(); }
  kernels::GemmPrecision prec() const { return lp.gemm(); }
  // Where the forward writes the input X [N, in] that is kept for the weight gradient.
  T* input(SavedAct<T>& s, int64_t N) const {
    s.set_form(fp8(), store_bf16, lp.pow2_x);
    return s.write(N, in, sc->x);
  }
  void keep(SavedAct<T>& s) const { s.keep(ex, sc->x); }
  // X [N, in] = rows src[idx[r]] (idx[r] < 0: zeros), kept: input() + gather_rows + keep(), or
  // under FP8 the gathered rows quantised straight into the kept tiles (the same codes and
  // scales, without the fp32 gathered copy in the scratch)
  void keep_gathered(SavedAct<T>& s, const T* src, const int64_t* idx, int64_t N) const {
    if constexpr (std::is_same_v<T, float>) {
      if (fp8()) {
        s.set_form(true, store_bf16, lp.pow2_x);
        s.rows = N, s.cols = in;
        return s.x8.quantize_gathered(ex, src, idx, N, in, lp.pow2_x);
      }
    }
    kernels::gather_rows<T>(ex, src, idx, N, in, input(s, N));
    keep(s);
  }
  // X as the GEMMs see it: a Linear computes from what it keeps (FP8 tiles are read by the FP8
  // GEMMs themselves; bf16 is widened), so forward, recompute and weight gradient agree.
  const T* kept(const SavedAct<T>& s) const { return s.read(ex, sc->wide); }
  void refresh() const {
    if constexpr (std::is_same_v<T, float>) wq->refresh(ex, W->w(), G, out, in, lp.pow2_w, version);
  }
  // Where the layer writes dY [N, out] that a weight gradient reads later: the kept buffer, or
  // (FP8) scratch that keep_grad quantises.
  T* grad(SavedGrad<T>& g, int64_t N, Buffer<T>& scratch) const {
    g.set_form(fp8(), lp.pow2_dy);
    return g.write(N, out, scratch);
  }
  // dY [N, out] as the FP8 Wgrad reads it, quantised into the scratch (FP8 only)
  const SavedGrad<T>& quantised_dy(const T* dy, int64_t N) const {
    sc->dy8.set_form(true, lp.pow2_dy);
    sc->dy8.keep(ex, dy, N, out);
    return sc->dy8;
  }
  // FP8: W^T's codes and block scales, what Dgrad reads: the cache's, made once per weight
  // version, or (per_call) transposed into the scratch now
  std::pair<const uint8_t*, const float*> weight_t() const {
    if (!wt_per_call) return {wq->qt(ex), wq->st(ex)};
    uint8_t* q = sized(sc->wtq, G * out * in);
    float* s = sized(sc->wts, G * wq->blocks());
    kernels::transpose_e4m3_blocks(ex, wq->q.data(), wq->s.data(), G, out, in, q, s);
    return {q, s};
  }
  // BF16 on a float model: the GEMMs that read W take its bf16 copy.
  bool bf16_weight() const { return std::is_same_v<T, float> && lp.recipe == Recipe::BF16; }
  const uint16_t* weight16() const {
    if constexpr (std::is_same_v<T, float>) return w16->refresh(ex, W->w(), G * out * in, version);
    return nullptr;
  }
};

template <class T>
struct Linear : LinearBase<T> {
  using B = LinearBase<T>;
  // scratch: the model's shared LinearScratch (null: the Linear makes its own)
  static Linear make(Param<T>* W, int64_t in, int64_t out, const LinearPrecision& lp,
                     const PrecisionPolicy& pol, const Exec& ex,
                     std::shared_ptr<LinearScratch<T>> scratch = nullptr) {
    Linear l;
    l.init(W, 1, in, out, lp, pol, ex, std::move(scratch));
    return l;
  }

  // y[N,out] = x W^T from the kept input
  void forward(const SavedAct<T>& x, T* y) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8()) {
        B::refresh();
        return kernels::fp8_fprop(B::ex, x.x8.q.data(), x.x8.s.data(), B::wq->q.data(),
                                  B::wq->s.data(), x.rows, B::out, B::in, y);
      }
    }
    gemm_fwd(B::kept(x), x.rows, y);
  }
  // y[N,out] = x W^T from an input X [N, in] the caller keeps and gives again to the weight
  // gradient: FP8 keeps its 1x128 tiles in s (the recipe's Wgrad operand), others keep nothing.
  void forward_keep_input(SavedAct<T>& s, const T* x, int64_t N, T* y) const {
    s.set_form(B::fp8(), false, B::lp.pow2_x);
    s.rows = N, s.cols = B::in;
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8()) {
        s.x8.quantize(B::ex, x, N, B::in, B::lp.pow2_x);
        return forward(s, y);
      }
    }
    gemm_fwd(x, N, y);
  }
  // y[N,out] = x W^T from an input that is not kept (FP8: quantised into a scratch)
  void forward(const T* x, int64_t N, T* y) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8()) {
        B::refresh();
        Fp8Act& x8 = B::sc->x8;
        x8.quantize(B::ex, x, N, B::in, B::lp.pow2_x);
        return kernels::fp8_fprop(B::ex, x8.q.data(), x8.s.data(), B::wq->q.data(), B::wq->s.data(),
                                  N, B::out, B::in, y);
      }
    }
    gemm_fwd(x, N, y);
  }
  // dx[N,in] (+)= dy[N,out] W
  void backward_input(const T* dy, int64_t N, T* dx, bool accumulate = false) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8()) {
        B::refresh();  // normally still valid
        const auto [qt, st] = B::weight_t();
        return kernels::fp8_linear_dgrad(B::ex, dy, N, B::out, B::in, qt, st, B::lp.pow2_dy,
                                         B::lp.dgrad_128x128, dx, accumulate);
      }
    }
    if constexpr (std::is_same_v<T, float>) {
      if (B::bf16_weight())
        return kernels::gemm_bf16_weight(B::ex, false, false, N, B::in, B::out, 1.f, dy,
                                         B::weight16(), accumulate ? 1.f : 0.f, dx);
    }
    kernels::gemm<T>(B::ex, false, false, N, B::in, B::out, T(1), dy, B::W->w(),
                     accumulate ? T(1) : T(0), dx, B::prec());
  }
  // Keeps dy [N, out] (written into grad(g, ...) or given) for backward_weight.
  void keep_grad(SavedGrad<T>& g, const T* dy, int64_t N) const {
    g.set_form(B::fp8(), B::lp.pow2_dy);
    g.keep(B::ex, dy, N, B::out);
  }
  // dW[out,in] += dy[N,out]^T x from the kept input and the kept dy
  void backward_weight(const SavedGrad<T>& dy, const SavedAct<T>& x) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8())
        return kernels::fp8_linear_wgrad(B::ex, dy.q.data(), dy.s.data(), x.x8.q.data(),
                                         x.x8.s.data(), x.rows, B::out, B::in, x.x8.pow2,
                                         B::W->g());
    }
    gemm_wgrad(dy.dy.data(), B::kept(x), x.rows);
  }
  // dW[out,in] += dy^T x from the kept dy and an input held as T (FP8: quantised 128x1 here)
  void backward_weight(const SavedGrad<T>& dy, const T* x, int64_t N) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8())
        return kernels::fp8_linear_wgrad_f32(B::ex, dy.q.data(), dy.s.data(), x, N, B::out, B::in,
                                             B::lp.pow2_x, B::W->g());
    }
    gemm_wgrad(dy.dy.data(), x, N);
  }
  // The same two from a dy given as T [N, out]
  void backward_weight(const T* dy, const SavedAct<T>& x) const {
    if (B::fp8()) return backward_weight(B::quantised_dy(dy, x.rows), x);
    gemm_wgrad(dy, B::kept(x), x.rows);
  }
  void backward_weight(const T* dy, const T* x, int64_t N) const {
    if (B::fp8()) return backward_weight(B::quantised_dy(dy, N), x, N);
    gemm_wgrad(dy, x, N);
  }

 private:
  void gemm_fwd(const T* x, int64_t N, T* y) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::bf16_weight())
        return kernels::gemm_bf16_weight(B::ex, false, true, N, B::out, B::in, 1.f, x,
                                         B::weight16(), 0.f, y);
    }
    kernels::gemm<T>(B::ex, false, true, N, B::out, B::in, T(1), x, B::W->w(), T(0), y, B::prec());
  }
  void gemm_wgrad(const T* dy, const T* x, int64_t N) const {
    kernels::gemm<T>(B::ex, true, false, B::out, B::in, N, T(1), dy, x, T(1), B::W->g(), B::prec());
  }
};

template <class T>
struct GroupedLinear : LinearBase<T> {
  using B = LinearBase<T>;
  static GroupedLinear make(Param<T>* W, int64_t G, int64_t in, int64_t out,
                            const LinearPrecision& lp, const PrecisionPolicy& pol, const Exec& ex,
                            std::shared_ptr<LinearScratch<T>> scratch = nullptr) {
    GroupedLinear l;
    l.init(W, G, in, out, lp, pol, ex, std::move(scratch));
    return l;
  }

  // y[rows,out] = x W_g^T per group, from the kept input
  void forward(const SavedAct<T>& x, const int64_t* off, T* y) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8()) {
        B::refresh();
        return kernels::grouped_fp8_fprop(B::ex, off, B::G, x.x8.q.data(), x.x8.s.data(),
                                          B::wq->q.data(), B::wq->s.data(), B::out, B::in, y);
      }
    }
    grouped_fwd(B::kept(x), off, y);
  }
  // the same from an input that is not kept
  void forward(const T* x, int64_t rows, const int64_t* off, T* y) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8()) {
        B::refresh();
        Fp8Act& x8 = B::sc->x8;
        x8.quantize(B::ex, x, rows, B::in, B::lp.pow2_x);
        return kernels::grouped_fp8_fprop(B::ex, off, B::G, x8.q.data(), x8.s.data(),
                                          B::wq->q.data(), B::wq->s.data(), B::out, B::in, y);
      }
    }
    grouped_fwd(x, off, y);
  }
  // dx[rows,in] = dy[rows,out] W_g per group (write)
  void backward_input(const T* dy, const int64_t* off, T* dx) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8()) {
        B::refresh();
        const auto [qt, st] = B::weight_t();
        return kernels::grouped_fp8_linear_dgrad(B::ex, off, B::G, dy, B::out, B::in, qt, st,
                                                 B::lp.pow2_dy, B::lp.dgrad_128x128, dx);
      }
    }
    if constexpr (std::is_same_v<T, float>) {
      if (B::bf16_weight())
        return kernels::grouped_gemm_bf16_weight(B::ex, off, B::G, false, B::in, B::out, dy,
                                                 B::weight16(), dx);
    }
    kernels::grouped_gemm<T>(B::ex, off, B::G, false, B::in, B::out, dy, B::W->w(), dx, B::prec());
  }
  // Keeps dy [rows, out] of the G groups (written into grad(g, ...)) for backward_weight.
  void keep_grad(SavedGrad<T>& g, const T* dy, const int64_t* off) const {
    g.set_form(B::fp8(), B::lp.pow2_dy);
    g.keep(B::ex, dy, off[B::G], B::out, off, B::G);
  }
  // dW_g[out,in] += dy_g^T x_g from the kept dy and the kept input
  void backward_weight(const SavedGrad<T>& dy, const SavedAct<T>& x, const int64_t* off) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8())
        return kernels::grouped_fp8_linear_wgrad(B::ex, off, B::G, dy.q.data(), dy.s.data(),
                                                 x.x8.q.data(), x.x8.s.data(), B::out, B::in,
                                                 x.x8.pow2, B::W->g());
    }
    kernels::grouped_gemm_wgrad<T>(B::ex, off, B::G, B::out, B::in, dy.dy.data(), B::kept(x),
                                   B::W->g(), B::prec());
  }
  // the same from an input held as T
  void backward_weight(const SavedGrad<T>& dy, const T* x, const int64_t* off) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::fp8())
        return kernels::grouped_fp8_linear_wgrad_f32(B::ex, off, B::G, dy.q.data(), dy.s.data(), x,
                                                     B::out, B::in, B::lp.pow2_x, B::W->g());
    }
    kernels::grouped_gemm_wgrad<T>(B::ex, off, B::G, B::out, B::in, dy.dy.data(), x, B::W->g(),
                                   B::prec());
  }

 private:
  // y[rows,out] = x W_g^T per group, non-FP8
  void grouped_fwd(const T* x, const int64_t* off, T* y) const {
    if constexpr (std::is_same_v<T, float>) {
      if (B::bf16_weight())
        return kernels::grouped_gemm_bf16_weight(B::ex, off, B::G, true, B::out, B::in, x,
                                                 B::weight16(), y);
    }
    kernels::grouped_gemm<T>(B::ex, off, B::G, true, B::out, B::in, x, B::W->w(), y, B::prec());
  }
};

}  // namespace moetron
