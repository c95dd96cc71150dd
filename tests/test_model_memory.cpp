// Activation memory: the analytic bytes of a micro-batch slot (model/memory.h) against the bytes
// the CPU allocator really holds for it, for tiny.yaml's model in fp32 and fp8, on one stage and on
// the stages of a PP2 cut (the last with its head and MTP module), with and without the recompute
// of the norms and MLA up-projections; the layers' shared scratch (one MoE, MLA, MLP, Linear and
// block scratch per model, used by every layer) against its analytic count; and no allocation at
// all once a slot and the layers' scratch have been sized (steady state).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "model/memory.h"
#include "model/model.h"
#include "tests/deepseek_v3_config.h"

namespace moetron {
namespace {

ModelConfig tiny() {  // configs/tiny.yaml's model (byte vocabulary)
  ModelConfig c;
  c.vocab_size = 264, c.hidden_size = 256, c.intermediate_size = 768;
  c.moe_intermediate_size = 128, c.num_hidden_layers = 4, c.first_k_dense_replace = 1;
  c.num_attention_heads = 4, c.n_routed_experts = 16, c.n_shared_experts = 1;
  c.num_experts_per_tok = 4, c.n_group = 4, c.topk_group = 2, c.routed_scaling_factor = 2.5;
  c.q_lora_rank = 96, c.kv_lora_rank = 64, c.qk_nope_head_dim = 32, c.qk_rope_head_dim = 16;
  c.v_head_dim = 32, c.num_nextn_predict_layers = 1, c.init_std = 0.02, c.max_seq_len = 128;
  return c;
}

std::vector<int32_t> tokens(int64_t B, int64_t S, int64_t V) {
  std::mt19937 g(3);
  std::vector<int32_t> t(B * (S + 1));
  for (auto& x : t) x = static_cast<int32_t>(g() % V);
  return t;
}

int64_t live() { return allocator(Device::CPU).stats().live_bytes; }

// "RECIPE[/bf16][+recompute][+e5m6][+x16]": the GEMM recipe, bf16 activation storage, recompute
// on, the attention output kept in E5M6, the block inputs kept in bf16 (with bf16 storage, as the
// config: activations.block_input: storage).
PrecisionPolicy policy(const std::string& r) {
  PrecisionPolicy pol =
      PrecisionPolicy::from(*from_word<Recipe>(r.substr(0, r.find_first_of("/+"))));
  pol.recompute_norms = pol.recompute_mla_up = r.find("+recompute") != std::string::npos;
  pol.store_bf16 = r.find("/bf16") != std::string::npos;
  pol.attn_out_e5m6 = r.find("+e5m6") != std::string::npos;
  pol.block_input_bf16 = pol.store_bf16 && r.find("+x16") != std::string::npos;
  return pol;
}

// The other layers' scratch (Block::Scratch): every MLA layer, every SwiGLU MLP (dense or
// shared expert) and every block (the MTP module's too) of the model uses the model's one, and
// what each part holds after a warm-up equals its analytic count.
void expect_shared_layer_scratch(const Model<float>& m, const LayerScratchBytes& want,
                                 const std::string& what) {
  const typename Block<float>::Scratch& sc = m.scratch();
  for (const Block<float>* b : m.blocks()) {
    EXPECT_EQ(b->attention().scratch(), sc.attn) << what;
    const Mlp<float>& mlp = b->is_moe() ? b->moe()->shared_expert() : *b->mlp();
    EXPECT_EQ(mlp.scratch(), sc.mlp) << what;
    EXPECT_EQ(b->own(), sc.own) << what;
  }
  const double held[4] = {
      static_cast<double>(sc.attn->bytes()), static_cast<double>(sc.mlp->bytes()),
      static_cast<double>(sc.linear->bytes()), static_cast<double>(sc.own->bytes())};
  const double analytic[4] = {static_cast<double>(want.attention), static_cast<double>(want.mlp),
                              static_cast<double>(want.linear), static_cast<double>(want.block)};
  std::printf(
      "%s: layer scratch attention %.3f MiB (analytic %.3f), mlp %.3f (%.3f), linear %.3f "
      "(%.3f), block %.3f (%.3f)\n",
      what.c_str(), held[0] / 1048576, analytic[0] / 1048576, held[1] / 1048576,
      analytic[1] / 1048576, held[2] / 1048576, analytic[2] / 1048576, held[3] / 1048576,
      analytic[3] / 1048576);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(held[i], analytic[i], 0.05 * analytic[i]) << what << i;
  EXPECT_EQ(m.layer_scratch_bytes(),
            sc.attn->bytes() + sc.mlp->bytes() + sc.linear->bytes() + sc.own->bytes());
}

TEST(ActivationMemory, AnalyticBytesMatchTheAllocator) {
  const ModelConfig c = tiny();
  const int64_t B = 4, S = 64, N = B * S, D = c.hidden_size;
  const auto tok = tokens(B, S, c.vocab_size);
  for (const char* recipe :
       {"fp32", "fp8", "fp32+recompute", "fp8+recompute", "fp32/bf16", "bf16/bf16",
        "fp32/bf16+recompute", "fp8/bf16+recompute", "fp8+e5m6", "fp8/bf16+recompute+e5m6",
        "fp32/bf16+x16", "fp8/bf16+recompute+e5m6+x16"}) {
    const PrecisionPolicy pol = policy(recipe);
    for (int64_t P : {1, 2}) {
      for (int64_t s = 0; s < P; ++s) {
        Model<float> m(c, pol, nullptr, StageSpec{s, P});
        m.init(1);
        std::vector<float> h_in(N * D, 0.01f), dh_out(N * D, 0.001f);
        const float* in = s > 0 ? h_in.data() : nullptr;
        const float* dout = s < P - 1 ? dh_out.data() : nullptr;
        Model<float>::MicroBatch warm, mb;  // warm: sizes the layers' own scratch
        m.forward(warm, tok.data(), B, S, 0.3, in);
        m.backward_input(warm, 1.0, dout, true);
        m.backward_weight(warm);
        // the MoE layers' scratch: one for the stage, sized by the warm-up as the analytic count
        const std::vector<MoE<float>*> moe = m.moe_layers();
        for (const MoE<float>* l : moe) EXPECT_EQ(l->scratch(), moe.front()->scratch());
        const ScratchBytes sc = moe_scratch_bytes(c, pol, N);
        EXPECT_NEAR(static_cast<double>(m.moe_scratch_bytes()), static_cast<double>(sc.total()),
                    0.05 * static_cast<double>(sc.total()))
            << recipe << " stage " << s << "/" << P;
        expect_shared_layer_scratch(
            m, layer_scratch_bytes(c, pol, s, P, N),
            std::string(recipe) + " stage " + std::to_string(s) + "/" + std::to_string(P));
        const int64_t l0 = live();
        m.forward(mb, tok.data(), B, S, 0.3, in);
        const int64_t fwd = live() - l0;
        m.backward_input(mb, 1.0, dout, /*defer_weight=*/true);
        const int64_t both = live() - l0;
        const SlotBytes want = slot_activation_bytes(c, pol, s, P, B, S);
        std::printf(
            "%s stage %lld/%lld: slot forward %.2f MiB (analytic %.2f), with backward "
            "%.2f MiB (analytic %.2f)\n",
            recipe, static_cast<long long>(s), static_cast<long long>(P), fwd / 1048576.0,
            want.forward / 1048576.0, both / 1048576.0, want.total() / 1048576.0);
        EXPECT_NEAR(static_cast<double>(fwd), static_cast<double>(want.forward),
                    0.05 * static_cast<double>(want.forward))
            << recipe << " stage " << s << "/" << P;
        EXPECT_NEAR(static_cast<double>(both), static_cast<double>(want.total()),
                    0.05 * static_cast<double>(want.total()))
            << recipe << " stage " << s << "/" << P;
        m.backward_weight(mb);
      }
    }
  }
}

// A process's second model chunk built with the first as its sibling shares the one-piece
// scratch (MLA, Mlp, Linear, the MoE layers' one-piece part with the rows) and keeps its own MoE
// scratch (the shared expert's output, the backward's lent gradients) and Block::Own; a
// sibling on another device is refused.
TEST(ActivationMemory, SiblingChunksShareTheOnePieceScratch) {
  const ModelConfig c = tiny();
  const PrecisionPolicy pol = policy("fp32");
  ParamStore<float> store(Device::CPU);
  Model<float> first(c, pol, nullptr, StageSpec{0, 2}, Exec{}, &store);
  Model<float> second(c, pol, nullptr, StageSpec{1, 2}, Exec{}, &store, &first);
  const auto &a = first.scratch(), &b = second.scratch();
  EXPECT_EQ(a.attn, b.attn);
  EXPECT_EQ(a.mlp, b.mlp);
  EXPECT_EQ(a.linear, b.linear);
  EXPECT_EQ(a.moe->one, b.moe->one);  // the MoE layers' one-piece scratch, with the rows
  EXPECT_NE(a.moe, b.moe);
  EXPECT_NE(a.own, b.own);
  EXPECT_THROW(
      Model<float>(c, pol, nullptr, StageSpec{1, 2}, Exec::on(Device::Meta), nullptr, &first),
      std::invalid_argument);
  // after a forward and backward of each chunk the MoE scratch holds the one-piece part once
  // (with the rows) and each chunk's own, as moe_scratch_bytes counts them
  first.init(1), second.init(1);
  const int64_t B = 2, S = 64, N = B * S, D = c.hidden_size;
  const auto tok = tokens(B, S, c.vocab_size);
  std::vector<float> h_in(N * D, 0.01f), dh_out(N * D, 0.001f);
  Model<float>::MicroBatch m0, m1;
  first.forward(m0, tok.data(), B, S, 0.3);
  second.forward(m1, tok.data(), B, S, 0.3, h_in.data());
  second.backward(m1, 1.0);
  first.backward(m0, 1.0, dh_out.data());
  const ScratchBytes want = moe_scratch_bytes(c, pol, N);
  const auto near = [](int64_t held, int64_t analytic, const char* what) {
    EXPECT_NEAR(static_cast<double>(held), static_cast<double>(analytic), 0.05 * analytic) << what;
  };
  near(a.moe->one->bytes(), want.one_piece + want.received, "one-piece MoE scratch");
  near(a.moe->own_bytes(), want.own, "first chunk's own MoE scratch");
  near(b.moe->own_bytes(), want.own, "second chunk's own MoE scratch");
  EXPECT_GT(want.one_piece, 2 * want.own);  // what the sharing saves is most of it
}

TEST(ActivationMemory, SteadyStateAllocatesNothing) {
  const ModelConfig c = tiny();
  const int64_t B = 4, S = 64;
  const auto tok = tokens(B, S, c.vocab_size);
  for (const char* recipe : {"fp32", "bf16", "fp8", "fp32/bf16+recompute", "fp8/bf16+x16"}) {
    Model<float> m(c, policy(recipe));
    m.init(2);
    Model<float>::MicroBatch a, b;  // two slots, used alternately like a pipeline's pool
    int64_t allocs = 0;
    for (int step = 1; step <= 5; ++step) {
      if (step == 3) allocs = allocator(Device::CPU).stats().allocations;
      for (auto* mb : {&a, &b}) {
        m.zero_loads();
        m.forward(*mb, tok.data(), B, S, 0.3);
        m.backward_input(*mb, 0.5, nullptr, true);
        m.backward_weight(*mb);
      }
    }
    EXPECT_EQ(allocator(Device::CPU).stats().allocations, allocs) << recipe;
  }
}

// One micro-batch of a fresh model (init seed) after a warm-up that sizes the layers' scratch:
// its loss, the bytes its forward keeps (the allocator's count, checked against the analytic
// slot_activation_bytes), and every parameter's gradient (weight pass deferred, as a pipeline).
struct MicroBatchRun {
  double loss = 0;
  int64_t bytes = 0;
  std::vector<float> grads;
};
MicroBatchRun one_micro_batch(const ModelConfig& c, const std::string& recipe,
                              const std::vector<int32_t>& tok, int64_t B, int64_t S,
                              uint64_t seed) {
  const PrecisionPolicy pol = policy(recipe);
  Model<float> m(c, pol);
  m.init(seed);
  Model<float>::MicroBatch warm, mb;
  m.forward(warm, tok.data(), B, S, 0.3);
  m.backward_input(warm, 1.0, nullptr, false);
  m.params().zero_grad();
  MicroBatchRun r;
  const int64_t l0 = live();
  r.loss = m.forward(mb, tok.data(), B, S, 0.3).loss;
  r.bytes = live() - l0;
  m.backward_input(mb, 1.0, nullptr, true);
  m.backward_weight(mb);
  for (const auto& p : m.params().all()) r.grads.insert(r.grads.end(), p->g(), p->g() + p->numel());
  const SlotBytes want = slot_activation_bytes(c, pol, 0, 1, B, S);
  EXPECT_NEAR(static_cast<double>(r.bytes), static_cast<double>(want.forward),
              0.05 * static_cast<double>(want.forward))
      << recipe;
  return r;
}
// |a - ref| / |ref| and the cosine of a and ref, over every gradient
std::pair<double, double> distance_and_cosine(const std::vector<float>& a,
                                              const std::vector<float>& ref) {
  double d = 0, dot = 0, na = 0, nr = 0;
  EXPECT_EQ(a.size(), ref.size());
  for (size_t i = 0; i < std::min(a.size(), ref.size()); ++i) {
    const double x = a[i], y = ref[i];
    d += (x - y) * (x - y), dot += x * y, na += x * x, nr += y * y;
  }
  return {std::sqrt(d / nr), dot / std::sqrt(na * nr)};
}

// Activation storage in bf16 (the forward computes in fp32, the backward reads bf16 copies):
// about half the bytes of a slot, analytically and in the allocator, for a loss within bf16
// round-off of fp32 storage and gradients that point the same way.
TEST(ActivationMemory, Bf16StorageHalvesTheSlotAndKeepsTheGradients) {
  const ModelConfig c = tiny();
  const int64_t B = 4, S = 128;
  const auto tok = tokens(B, S, c.vocab_size);
  const MicroBatchRun f = one_micro_batch(c, "fp32", tok, B, S, 5);
  const MicroBatchRun h = one_micro_batch(c, "fp32/bf16", tok, B, S, 5);
  const double ratio = static_cast<double>(h.bytes) / static_cast<double>(f.bytes);
  std::printf(
      "slot forward bytes: fp32 storage %.2f MiB, bf16 storage %.2f MiB (x%.3f); loss "
      "%.7f vs %.7f\n",
      f.bytes / 1048576.0, h.bytes / 1048576.0, ratio, f.loss, h.loss);
  EXPECT_LT(ratio, 0.60);  // the residual stream and per-token statistics stay fp32
  EXPECT_GT(ratio, 0.45);
  EXPECT_NEAR(h.loss, f.loss, 1e-3 * f.loss);
  const auto [dist, cosine] = distance_and_cosine(h.grads, f.grads);
  std::printf("gradient cosine bf16 vs fp32 storage: %.6f, relative distance %.4f\n", cosine, dist);
  // not closer: the Linears compute from their bf16-kept inputs, which moves a few near-tied
  // expert choices (whole rows of expert gradients change; 1.5% in the worst expert's norm)
  EXPECT_GT(cosine, 0.995);
  double n0 = 0, n1 = 0;
  for (size_t i = 0; i < f.grads.size() && i < h.grads.size(); ++i)
    n0 += static_cast<double>(f.grads[i]) * f.grads[i],
        n1 += static_cast<double>(h.grads[i]) * h.grads[i];
  EXPECT_NEAR(std::sqrt(n1 / n0), 1.0, 0.01);
}

// recompute_norms keeps no ffn_norm output: the weight gradients that read it (the gate's, and
// under fp32 the shared expert's and dense MLPs') get it made again from the kept h_mid. Under
// fp32 storage that is the forward's value, so the loss and every gradient are the same bits,
// for D fp32 values a token and block fewer in the slot; under bf16 storage the norm of the
// bf16 h_mid replaces the bf16 of the norm (the bf16 slot is then D bf16 values a token and block
// smaller), and only the weight gradients reading it move, within bf16 round-off.
TEST(ActivationMemory, RecomputedFfnNormGivesTheSameGradients) {
  const ModelConfig c = tiny();
  const int64_t B = 2, S = 64, N = B * S;
  const auto tok = tokens(B, S, c.vocab_size);
  const int64_t blocks = c.num_hidden_layers + c.num_nextn_predict_layers;
  for (const std::string storage : {"", "/bf16"}) {
    // (the recompute policy: "+recompute" turns on recompute_mla_up too, which changes no bit)
    const MicroBatchRun kept = one_micro_batch(c, "fp32" + storage, tok, B, S, 7);
    const MicroBatchRun made = one_micro_batch(c, "fp32" + storage + "+recompute", tok, B, S, 7);
    const int64_t elem = storage.empty() ? 4 : 2;
    std::printf("%s storage: slot %.3f MiB kept, %.3f with recompute\n",
                storage.empty() ? "fp32" : "bf16", kept.bytes / 1048576.0, made.bytes / 1048576.0);
    // the attention's norms and q, k, v made again too: at least every ffn_norm output fewer
    EXPECT_LE(made.bytes, kept.bytes - blocks * N * c.hidden_size * elem) << storage;
    EXPECT_EQ(kept.loss, made.loss) << storage;  // the forward computes as before
    if (storage.empty()) {
      EXPECT_EQ(kept.grads, made.grads);
      continue;
    }
    EXPECT_GT(distance_and_cosine(made.grads, kept.grads).second, 0.99999) << "bf16 storage";
    EXPECT_NE(kept.grads, made.grads) << "bf16 storage";  // the recompute reads bf16 inputs
  }
}

// A storage cut: one micro-batch under `base` and under `cut`, which keeps `saved` bytes fewer
// (allocator count) and computes the same forward (the same loss), its backward reading the
// narrower values (the gradients move: `moved`, relative, from base's).
struct StorageCut {
  MicroBatchRun base, cut;
  double moved = 0;
};
StorageCut storage_cut(const ModelConfig& c, const std::string& base, const std::string& cut,
                       int64_t B, int64_t S, uint64_t seed, int64_t saved) {
  const auto tok = tokens(B, S, c.vocab_size);
  StorageCut r{one_micro_batch(c, base, tok, B, S, seed), one_micro_batch(c, cut, tok, B, S, seed)};
  EXPECT_EQ(r.base.bytes - r.cut.bytes, saved) << cut;
  EXPECT_EQ(r.base.loss, r.cut.loss) << cut;
  r.moved = distance_and_cosine(r.cut.grads, r.base.grads).first;
  EXPECT_GT(r.moved, 0.0) << cut;
  std::printf("%s against %s: slot %.4f -> %.4f MiB, gradients moved %.3e\n", cut.c_str(),
              base.c_str(), r.base.bytes / 1048576.0, r.cut.bytes / 1048576.0, r.moved);
  return r;
}

// activations.attention_output: e5m6 keeps o (H x dv a token and block) in 1.5 bytes instead of
// fp32's 4 (or bf16's 2): the slot shrinks by that, in the allocator as in the analytic count.
// The forward reads the fp32 output as before (the same loss); the backward reads the E5M6
// values, one mantissa bit fewer than bf16, and the attention backward's D = rowsum(dO o O) then
// cancels against dP (why V3 keeps this tensor in 12 bits, not FP8). The gradients' distance from
// those of the fp32-kept output is measured against that of bf16 storage of every activation.
TEST(ActivationMemory, E5m6AttentionOutputShrinksTheSlot) {
  const ModelConfig c = tiny();
  const int64_t B = 2, S = 64, N = B * S;
  const int64_t blocks = c.num_hidden_layers + c.num_nextn_predict_layers;
  const int64_t o = N * c.num_attention_heads * c.v_head_dim;
  const StorageCut e = storage_cut(c, "fp8", "fp8+e5m6", B, S, 3, blocks * (4 * o - e5m6_bytes(o)));
  const MicroBatchRun h = one_micro_batch(c, "fp8/bf16", tokens(B, S, c.vocab_size), B, S, 3);
  const double bf16 = distance_and_cosine(h.grads, e.base.grads).first;
  std::printf("bf16 storage of every activation moved them %.3e\n", bf16);
  EXPECT_LT(e.moved, 1.5 * bf16);  // no worse than bf16 storage already is, within a margin
}

// activations.block_input: storage keeps every block's input (the residual stream where the
// block reads it; an MTP module's eh_proj output) in bf16, and the stream runs through the
// chunk's one fp32 buffer (Block::Own::x) instead of one per block in the slot: D fp32 values a
// token and block become D bf16 values. The forward reads the fp32 stream as before (the same
// loss); only attn_norm's backward and its recompute read the bf16 values, so the gradients move
// by a bf16 round-off in those, far less than bf16 storage of the rest moved them (which changes
// the Linears' forward inputs, and with them a few expert choices). In fp32 GEMMs: under fp8 any
// change of the backward's values flips some FP8 roundings of the gradient tiles, which is all
// one would measure.
TEST(ActivationMemory, Bf16BlockInputsHalveTheStreamInTheSlot) {
  const ModelConfig c = tiny();
  const int64_t B = 2, S = 64, N = B * S;
  const int64_t blocks = c.num_hidden_layers + c.num_nextn_predict_layers;
  const StorageCut x = storage_cut(c, "fp32/bf16+recompute", "fp32/bf16+recompute+x16", B, S, 9,
                                   blocks * N * c.hidden_size * (4 - 2));
  const MicroBatchRun wide =
      one_micro_batch(c, "fp32+recompute", tokens(B, S, c.vocab_size), B, S, 9);
  const double storage = distance_and_cosine(x.base.grads, wide.grads).first;
  std::printf("bf16 storage moved them %.3e from fp32 storage's\n", storage);
  EXPECT_LT(x.moved, 0.05 * storage);  // 7.4e-4 against 6.1e-2 when written
}

}  // namespace
}  // namespace moetron

namespace moetron {
namespace {

// DeepSeek-V3 (HF config.json) built on the Meta device: every parameter has its shape and name,
// nothing is allocated, and the counts are the published ones (671B in the main model, 685B with
// the MTP module's weights and its copies of the embedding and head, as the Hugging Face
// checkpoint), in well under a second.
TEST(MetaDevice, BuildsDeepSeekV3WithoutMemory) {
  const ModelConfig c = deepseek_v3_config();
  const int64_t cpu0 = allocator(Device::CPU).stats().live_bytes;
  Model<float> m(c, PrecisionPolicy::from(Recipe::FP8), nullptr, StageSpec{},
                 Exec::on(Device::Meta));
  const int64_t cpu1 = allocator(Device::CPU).stats().live_bytes;
  int64_t total = 0, mtp = 0;
  for (const auto& p : m.params().all()) {
    EXPECT_EQ(p->value.raw(), nullptr) << p->name;
    total += p->numel();
    if (p->name.rfind("model.layers.61.", 0) == 0) mtp += p->numel();
  }
  // the MTP module's own weights (its embedding and head are the model's, registered once)
  std::printf("DeepSeek-V3 on the meta device: %.2fB parameters, %.2fB without MTP\n", total / 1e9,
              (total - mtp) / 1e9);
  EXPECT_NEAR(static_cast<double>(total - mtp), 671e9, 0.003 * 671e9);
  // the HF checkpoint's 685B stores the MTP module's own copies of the embedding and head too
  const int64_t shared = 2 * c.vocab_size * c.hidden_size;
  EXPECT_NEAR(static_cast<double>(total + shared), 685e9, 0.005 * 685e9);
  EXPECT_LT(cpu1 - cpu0, int64_t(64) << 20);  // no parameter memory (a few small buffers at most)
  EXPECT_GE(allocator(Device::Meta).stats().live_bytes, 2 * 4 * total);  // values + grads, fp32
  PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
  pol.recompute_norms = pol.recompute_mla_up = true;
  const ActivationBytes moe = block_activation_bytes(c, pol, true, 4096);
  const SlotBytes slot = slot_activation_bytes(c, pol, 0, 16, 1, 4096);
  std::printf(
      "V3 MoE block, fp8 + recompute: %.1f KiB/token forward, %.1f KiB/token backward; "
      "a PP16 stage-0 slot of 1 x 4096 tokens: %.2f GiB\n",
      moe.forward / 1024, moe.backward / 1024, slot.total() / 1073741824.0);
}

}  // namespace
}  // namespace moetron
