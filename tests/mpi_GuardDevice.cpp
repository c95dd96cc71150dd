// mpi-ranks: 1 2 4
// The guard device (kernels/device.h) in training: activations on memory that is inaccessible
// outside ops and the communicator, so any host code touching an activation faults. Training
// steps of tiny.yaml (narrowed) on one rank, on PP2 and on PP2 x DP2 x EP2 (4 ranks: the
// expert-parallel dispatcher's plan, wire packing and all-to-all on guard memory) must run and
// give the same losses bit for bit as the same run on the CPU device (the guard device runs the
// CPU backend). With run.count_flops, the GEMM FLOPs the ranks' ops executed in a step (summed over
// the world: stages, DP replicas and EP shards of the experts) less the recomputed head logits
// equal the step's tokens x 3 x the formula's GEMM forward (model/flops.h) exactly. A guard run's
// communicators refuse the other kind of memory (host data on host groups, device data on device
// groups: parallel/comm_checked.h), so these runs also prove which group each exchange uses. And
// the blocking reads of the device a step's pipeline makes (each a stream drain on a GPU) are
// exactly one per MoE layer per micro-batch without EP, none with it.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/device.h"
#include "model/flops.h"
#include "model/model.h"
#include "model/param.h"
#include "parallel/comm.h"
#include "parallel/comm_stream.h"
#include "trainer/config.h"
#include "trainer/train.h"

namespace moetron {
namespace {

Config tiny(const std::string& device, const std::string& dir,
            const std::vector<std::string>& extra) {
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
  return load_config(src + "/configs/tiny.yaml", set);
}

std::vector<double> run(const std::string& device, const std::string& dir,
                        const std::vector<std::string>& extra = {}) {
  const Config cfg = tiny(device, dir, extra);
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
  const std::vector<double> cpu = run("cpu", tmp_dir("cpu"), {"run.steps=2"});
  const std::vector<double> guard = run("guard", tmp_dir("guard"), {"run.steps=2"});
  ASSERT_EQ(cpu.size(), 2u);
  EXPECT_EQ(guard, cpu);  // bit for bit: the same CPU kernels on the same inputs
  EXPECT_GT(allocator(Device::Guard).stats().allocations, 0);  // it really ran on the guard device
}

// The same with every activation-memory policy on: bf16 storage (its conversions are ops too),
// the recompute of norms and MLA up-projections, and the fp8 recipe's tiles.
TEST(GuardDevice, Bf16StorageRecomputeAndFp8TouchNoActivationOutsideOps) {
  const std::vector<std::string> extra = {
      "activations.storage=bf16", "activations.recompute_norms=on",
      "activations.recompute_mla_up=on", "precision.recipe=fp8", "run.steps=2"};
  const std::vector<double> cpu = run("cpu", tmp_dir("cpu_mem"), extra);
  const std::vector<double> guard = run("guard", tmp_dir("guard_mem"), extra);
  ASSERT_EQ(cpu.size(), 2u);
  EXPECT_EQ(guard, cpu);
}

// The parameters on the guard device too (set_guard_parameters): ZeRO-1's arenas, its shard and
// bf16 reduction staging, the AdamW moments (bf16), the gradient norm and finiteness check, the
// checkpoint's save and resume, the parameter file and the training sample reach them only
// through ops and the communicator — what a GPU run needs. Same losses as the CPU bit for bit,
// and a run resumed from step 2's checkpoint on the guard device gives step 3's loss again.
TEST(GuardDevice, ParametersOnGuardTooTrainSaveAndResume) {
  const std::vector<std::string> extra = {"optimizer.moment_dtype=bf16",
                                          "optimizer.grad_reduce_dtype=bf16", "run.save_interval=2",
                                          "run.sample_interval=3", "run.sample_tokens=4"};
  const std::vector<double> cpu = run("cpu", tmp_dir("cpu_params"), extra);
  set_guard_parameters(true);
  const std::string dir = tmp_dir("guard_params");
  if (world().rank() == 0) std::filesystem::remove_all(dir);
  world().barrier();
  std::vector<std::string> save = extra;
  save.push_back("run.save_params=" + dir + "/params");
  const std::vector<double> guard = run("guard", dir, save);
  EXPECT_GT(allocator(Device::Guard).stats().allocations, 0);
  // resume from step 2's checkpoint: step 3 again
  const Config cfg = tiny("guard", dir, extra);
  std::ostringstream log;
  const TrainSummary resumed = train(cfg, log, dir + "/checkpoints/step_2");
  set_default_device(Device::CPU);
  set_guard_parameters(false);
  ASSERT_EQ(cpu.size(), 3u);
  EXPECT_EQ(guard, cpu);
  ASSERT_EQ(resumed.losses.size(), 1u) << log.str();
  EXPECT_EQ(resumed.losses[0], cpu[2]);
  if (world().rank() == 0) {
    EXPECT_TRUE(std::filesystem::exists(dir + "/params.rank0.h5"));
  }
}

// DualPipe on PP2 x DP2 x EP2 with the parameters on the guard device: the twins' groups
// (process_groups.h) and the overlapped pairs' exchanges, every one on a communicator that refuses
// host memory for device data and guard memory for host data (parallel/comm_checked.h).
TEST(GuardDevice, DualPipeKeepsHostAndDeviceDataOnTheirGroups) {
  if (world().size() != 4) GTEST_SKIP() << "PP2 x DP2 x EP2: 4 ranks";
  const std::vector<std::string> extra = {"parallel.schedule=dualpipe", "data.micro_batch_size=1",
                                          "run.steps=2", "precision.recipe=fp8"};
  const std::vector<double> cpu = run("cpu", tmp_dir("cpu_dualpipe"), extra);
  set_guard_parameters(true);
  const std::vector<double> guard = run("guard", tmp_dir("guard_dualpipe"), extra);
  set_guard_parameters(false);
  ASSERT_EQ(cpu.size(), 2u);
  EXPECT_EQ(guard, cpu);
}

// The device data in NCCL's order (parallel/comm_stream.h: one stream of operations per process,
// in-order point-to-point, the EP dispatcher's collective path): the schedules post their
// pipeline, EP and ZeRO-1 operations in an order NCCL can run without deadlock (a deadlock hangs
// the stream and the watchdog stops the job), with the CPU's losses bit for bit: ZB1P on 2 and 4
// ranks, 1F1B on 2, DualPipe and DualPipeV on 4 (1F1B on one rank).
TEST(GuardDevice, DeviceDataInNcclOrderRunsEverySchedule) {
  std::vector<std::vector<std::string>> layouts = {{}};  // the default layout of this world size
  if (world().size() == 4) {
    layouts.push_back({"parallel.schedule=dualpipe", "data.micro_batch_size=1"});
    layouts.push_back({"parallel.schedule=dualpipev", "data.micro_batch_size=1"});
  }
  if (world().size() == 2) layouts.push_back({"parallel.schedule=1f1b"});
  for (std::vector<std::string> extra : layouts) {
    extra.insert(extra.end(), {"run.steps=2", "run.comm_timeout_s=60"});
    const std::vector<double> cpu = run("cpu", tmp_dir("cpu_nccl_order"), extra);
    set_guard_parameters(true), set_guard_nccl_order(true);
    const std::vector<double> guard = run("guard", tmp_dir("guard_nccl_order"), extra);
    set_guard_parameters(false), set_guard_nccl_order(false);
    ASSERT_EQ(cpu.size(), 2u);
    EXPECT_EQ(guard, cpu) << (extra.size() > 2 ? extra[0] : "default layout");
  }
}

// A number field of a metrics.jsonl line.
double field(const std::string& line, const std::string& key) {
  const size_t at = line.find("\"" + key + "\":");
  if (at == std::string::npos) ADD_FAILURE() << key << " not in " << line;
  return at == std::string::npos ? -1 : std::stod(line.substr(at + key.size() + 3));
}

TEST(GuardDevice, CountedGemmFlopsAddUpToTheFormulaOverTheLayout) {
  const std::string dir = tmp_dir("flops");
  if (world().rank() == 0) std::filesystem::remove_all(dir);  // metrics.jsonl appends
  const std::vector<std::string> extra = {"run.count_flops=on", "run.steps=2"};
  ASSERT_EQ(run("guard", dir, extra).size(), 2u);
  if (world().rank() != 0) return;
  const Config cfg = tiny("guard", dir, extra);
  const ModelConfig& c = cfg.model;
  const int64_t S = cfg.data.seq_len;
  const double N = static_cast<double>(cfg.data.global_batch_size * S);  // tokens of a step
  const double model = N * 3 * flops_per_token(c, S).gemm_forward();
  const double heads =
      N * 2 * static_cast<double>(c.hidden_size * c.vocab_size * (1 + c.num_nextn_predict_layers));
  std::ifstream in(dir + "/metrics.jsonl");
  int steps = 0;
  for (std::string line; std::getline(in, line); ++steps) {
    const double executed = field(line, "gemm_flops_executed");
    const double recompute = field(line, "gemm_flops_recompute");
    EXPECT_EQ(executed - recompute, model) << line;
    EXPECT_EQ(recompute, heads) << line;
  }
  EXPECT_EQ(steps, 2);
}

// The stream drains of a step's pipeline (kernels/host_waits.h: the blocking device-to-host reads,
// which the guard device counts as a GPU's would), summed over the world: none. The rows per
// expert come with the EP exchange's counts, or, all experts on one rank, from a read the local
// dispatcher started before the shared expert (model/dispatch.h); the losses the executor reads
// without waiting and collects at the end of the step.
TEST(GuardDevice, APipelineNeverDrainsTheStream) {
  std::vector<std::vector<std::string>> layouts = {{}};
  if (world().size() == 4) {
    layouts.push_back({"parallel.schedule=dualpipe", "data.micro_batch_size=1"});
    layouts.push_back({"parallel.schedule=dualpipev", "data.micro_batch_size=1"});
  }
  for (std::vector<std::string> extra : layouts) {
    extra.push_back("run.steps=2");
    const std::string dir = tmp_dir("host_waits");
    if (world().rank() == 0) std::filesystem::remove_all(dir);  // metrics.jsonl appends
    world().barrier();
    ASSERT_EQ(run("guard", dir, extra).size(), 2u);
    if (world().rank() != 0) continue;
    std::ifstream in(dir + "/metrics.jsonl");
    int steps = 0;
    for (std::string line; std::getline(in, line); ++steps)
      EXPECT_EQ(field(line, "host_waits"), 0.0) << line;
    EXPECT_EQ(steps, 2);
  }
}

// The device data staged through host memory over MPI (parallel.device_comm: mpi,
// parallel/comm_staged.h: how several ranks share one GPU, which NCCL refuses): every exchange of
// device data is copied down, sent over MPI and copied up by ops — PP2 ZB1P on 2 ranks, DualPipe
// on PP2 x DP2 x EP2 (pairs, twins, EP and ZeRO-1 exchanges) on 4 — with the CPU's losses bit for
// bit. That the copies happened shows in the pipeline's blocking device reads: each staged send or
// collective input is one, where the pipeline alone makes none (APipelineNeverDrainsTheStream).
TEST(GuardDevice, DeviceDataStagedThroughHostMemoryTrainsAsOnTheCpu) {
  if (world().size() == 1) GTEST_SKIP() << "one rank exchanges nothing with another";
  std::vector<std::vector<std::string>> layouts = {{}};
  if (world().size() == 4) layouts = {{"parallel.schedule=dualpipe", "data.micro_batch_size=1"}};
  for (std::vector<std::string> extra : layouts) {
    extra.insert(extra.end(), {"run.steps=2", "precision.recipe=fp8"});
    const std::vector<double> cpu = run("cpu", tmp_dir("cpu_staged"), extra);
    extra.push_back("parallel.device_comm=mpi");
    const std::string dir = tmp_dir("guard_staged");
    if (world().rank() == 0) std::filesystem::remove_all(dir);  // metrics.jsonl appends
    world().barrier();
    set_guard_parameters(true);
    const std::vector<double> guard = run("guard", dir, extra);
    set_guard_parameters(false);
    ASSERT_EQ(cpu.size(), 2u);
    EXPECT_EQ(guard, cpu) << (extra.size() > 3 ? extra[0] : "default layout");
    if (world().rank() != 0) continue;
    std::ifstream in(dir + "/metrics.jsonl");
    for (std::string line; std::getline(in, line);)
      EXPECT_GT(field(line, "host_waits"), 0.0) << line;
  }
}

}  // namespace
}  // namespace moetron
