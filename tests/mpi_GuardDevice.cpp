// mpi-ranks: 1 2 4
// The guard device (kernels/device.h) in training: activations on memory that is inaccessible
// outside ops and the communicator, so any host code touching an activation faults. Training
// steps of tiny.yaml (narrowed) on one rank, on PP2 and on PP2 x DP2 x EP2 (4 ranks: the
// expert-parallel dispatcher's plan, wire packing and all-to-all on guard memory) must run and
// give the same losses bit for bit as the same run on the CPU device (the guard device runs the
// CPU backend).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "parallel/comm.h"
#include "trainer/config.h"
#include "trainer/train.h"

namespace moetron {
namespace {

std::vector<double> run(const std::string& device, const std::string& dir,
                        const std::vector<std::string>& extra = {}) {
  Communicator& w = world();
  const std::string src = MOETRON_SOURCE_DIR;
  std::vector<std::string> set = {
      "run.steps=3",
      "run.log_interval=100",
      "run.threads=1",
      "run.eval_interval=0",
      "model.hidden_size=64",
      "model.intermediate_size=128",
      "model.moe_intermediate_size=32",
      "model.n_routed_experts=8",
      "model.n_group=4",
      "model.topk_group=2",
      "model.num_experts_per_tok=2",
      "model.q_lora_rank=32",
      "model.kv_lora_rank=24",
      "data.seq_len=32",
      "data.micro_batch_size=2",
      "data.global_batch_size=8",
      "data.train_path=" + src + "/data/cache/sotu/train",
      "data.valid_path=",
      "data.tokenizer=" + src + "/data/cache/sotu/tokenizer.json",
      "schedule.lr.warmup_steps=2",
      "parallel.pp=" + std::to_string(std::min(w.size(), 2)),
      "parallel.dp=" + std::to_string(w.size() == 4 ? 2 : 1),
      "parallel.ep=" + std::to_string(w.size() == 4 ? 2 : 1),
      "parallel.schedule=" + std::string(w.size() > 1 ? "zb1p" : "1f1b"),
      "run.device=" + device,
      "run.dir=" + dir};
  set.insert(set.end(), extra.begin(), extra.end());
  const Config cfg = load_config(src + "/configs/tiny.yaml", set);
  std::ostringstream log;
  const TrainSummary s = train(cfg, log);
  set_default_device(Device::CPU);
  return s.losses;
}

std::string tmp_dir(const char* name) {
  return (std::filesystem::temp_directory_path() /
          ("moetron_guard_" + std::string(name) + "_" + std::to_string(world().size())))
      .string();
}

TEST(GuardDevice, TrainsTinyWithTheSameLossesAsTheCpu) {
  const std::vector<double> cpu = run("cpu", tmp_dir("cpu"));
  const std::vector<double> guard = run("guard", tmp_dir("guard"));
  ASSERT_EQ(cpu.size(), 3u);
  EXPECT_EQ(guard, cpu);  // bit for bit: the same CPU kernels on the same inputs
  EXPECT_GT(allocator(Device::Guard).stats().allocations, 0);  // it really ran on the guard device
}

// The same with every activation-memory policy on: bf16 storage (its conversions are ops too),
// the recompute of norms and MLA up-projections, and the fp8 recipe's tiles.
TEST(GuardDevice, Bf16StorageRecomputeAndFp8TouchNoActivationOutsideOps) {
  const std::vector<std::string> extra = {
      "activations.storage=bf16", "activations.recompute_norms=on",
      "activations.recompute_mla_up=on", "precision.recipe=fp8"};
  const std::vector<double> cpu = run("cpu", tmp_dir("cpu_mem"), extra);
  const std::vector<double> guard = run("guard", tmp_dir("guard_mem"), extra);
  ASSERT_EQ(cpu.size(), 3u);
  EXPECT_EQ(guard, cpu);
}

}  // namespace
}  // namespace moetron
