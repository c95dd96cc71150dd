// Hardware profiles (trainer/hardware.h) and the shipped configs: every file under configs/ and
// configs/hardware/ loads with the validator; a profile fills the hardware keys a config leaves
// unset (a key the config or `--set` writes wins); a profile that lacks a key, has an unknown one
// or a value of the wrong type is one message naming the config, the profile and the key; and a run
// directory's effective config reads back without its profile.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/test_config_util.h"
#include "trainer/config.h"
#include "trainer/hardware.h"

namespace moetron {
namespace {

namespace fs = std::filesystem;
const fs::path kSource = MOETRON_SOURCE_DIR;

// A file in a fresh temporary directory, removed with it.
struct TempFile {
  fs::path dir, path;
  TempFile(const std::string& name, const std::string& text) {
    dir = fs::temp_directory_path() / ("moetron_hw_" + std::to_string(::getpid()) + "_" + name);
    fs::create_directories(dir);
    path = dir / name;
    std::ofstream(path) << text;
  }
  ~TempFile() { fs::remove_all(dir); }
};

const char* kProfile = R"(name: X100
memory_gib: 64
peak_bf16_tflops: 500
peak_fp8_tflops: 1000
hbm_gbs: 2000
devices_per_node: 4
cores_per_node: 0
nvlink_gbs: 300
ib_gbs: 25
peak_fp32_tflops: 60
gemm_efficiency: 0.5
gemm_efficiency_fp8: 0.4
memory_efficiency: 0.7
comm_efficiency: 0.6
)";

std::string error_of_profile(const std::string& profile_text) {
  TempFile f("bad.yaml", profile_text);
  return test::error_of(test::kBaseYaml, {"hardware.profile=" + f.path.string()});
}

// Paths in configs are relative to the working directory: the source root, as for the e2e tests.
struct InSourceRoot {
  fs::path before = fs::current_path();
  InSourceRoot() { fs::current_path(kSource); }
  ~InSourceRoot() { fs::current_path(before); }
};

TEST(ConfigFiles, EveryShippedConfigAndProfileLoads) {
  InSourceRoot here;
  int configs = 0, profiles = 0;
  for (const auto& e : fs::directory_iterator("configs")) {
    if (e.path().extension() != ".yaml") continue;
    SCOPED_TRACE(e.path().string());
    EXPECT_NO_THROW(load_config(e.path().string()));
    ++configs;
  }
  for (const auto& e : fs::directory_iterator("configs/hardware")) {
    SCOPED_TRACE(e.path().string());
    EXPECT_EQ(e.path().extension(), ".yaml");
    EXPECT_NO_THROW(load_hardware_profile(e.path().string()));
    ++profiles;
  }
  EXPECT_GE(configs, 5);
  EXPECT_EQ(profiles, 4);  // h800, h100, h200, cpu
}

TEST(ConfigFiles, DeepSeekV3IsTheHuggingFaceConfigOnH800) {
  InSourceRoot here;
  const Config c = load_config("configs/deepseek-v3-671b.yaml");
  const ModelConfig& m = c.model;
  EXPECT_EQ(m.num_hidden_layers, 61);
  EXPECT_EQ(m.first_k_dense_replace, 3);
  EXPECT_EQ(m.hidden_size, 7168);
  EXPECT_EQ(m.n_routed_experts, 256);
  EXPECT_EQ(m.num_experts_per_tok, 8);
  EXPECT_EQ(m.moe_intermediate_size, 2048);
  EXPECT_EQ(m.intermediate_size, 18432);
  EXPECT_EQ(m.vocab_size, 129280);
  EXPECT_EQ(m.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.data.seq_len, 4096);
  EXPECT_EQ(c.data.batch_ramp_start, 3072);
  EXPECT_EQ(c.data.global_batch_size, 15360);
  EXPECT_EQ(c.parallel.pp * c.parallel.dp, 2048);
  EXPECT_EQ(c.optimizer.moment_dtype, FloatFormat::BF16);
  EXPECT_EQ(c.precision.recipe, Recipe::FP8);
  EXPECT_EQ(c.hardware.name, "H800");
  EXPECT_EQ(c.hardware.memory_gib, 79.6);
  EXPECT_EQ(c.hardware.peak_bf16_tflops, 989.5);
  EXPECT_EQ(c.hardware.peak_fp8_tflops, 1979);
  EXPECT_EQ(c.hardware.nvlink_gbs, 400);
}

TEST(HardwareProfile, FillsTheKeysTheConfigLeavesUnset) {
  TempFile f("x100.yaml", kProfile);
  const Config c =
      test::base_config({"hardware.profile=" + f.path.string(), "hardware.peak_bf16_tflops=123"});
  EXPECT_EQ(c.hardware.name, "X100");
  EXPECT_EQ(c.hardware.memory_gib, 64);
  EXPECT_EQ(c.hardware.peak_bf16_tflops, 123);  // written: the config wins
  EXPECT_EQ(c.hardware.peak_fp8_tflops, 1000);
  EXPECT_EQ(c.hardware.devices_per_node, 4);
  EXPECT_EQ(c.hardware.ib_gbs, 25);
  // without a profile every key is 0 (unknown)
  EXPECT_EQ(test::base_config().hardware.memory_gib, 0);
}

TEST(HardwareProfile, TheEffectiveConfigReadsBackWithoutTheProfile) {
  Config c;
  {
    TempFile f("x100.yaml", kProfile);
    c = test::base_config({"hardware.profile=" + f.path.string()});
  }  // the profile is gone: every key is written, so it is not read again
  const Config back = parse_config(config_to_yaml(c), "run/config.yaml");
  EXPECT_TRUE(back == c);
  EXPECT_EQ(back.hardware.memory_gib, 64);
}

TEST(HardwareProfile, AMissingKeyNamesTheFileAndTheKey) {
  const std::string msg =
      error_of_profile(test::edit_yaml(kProfile, {{"memory_gib", test::kDelete}}));
  EXPECT_NE(msg.find("test.yaml: --set hardware.profile="), std::string::npos) << msg;
  EXPECT_NE(msg.find("bad.yaml: memory_gib: missing: a hardware profile gives every key (name, "
                     "memory_gib, "),
            std::string::npos)
      << msg;
}

TEST(HardwareProfile, AWrongTypeNamesTheFileAndTheKey) {
  const std::string msg =
      error_of_profile(test::edit_yaml(kProfile, {{"peak_fp8_tflops", "\"lots\""}}));
  EXPECT_NE(msg.find("bad.yaml: peak_fp8_tflops: expected a number, got the string \"lots\""),
            std::string::npos)
      << msg;
  EXPECT_NE(error_of_profile(test::edit_yaml(kProfile, {{"memory_gib", "-1"}}))
                .find("bad.yaml: memory_gib: must be >= 0, got -1"),
            std::string::npos);
}

TEST(HardwareProfile, UnknownKeysAndBadFilesAreOneMessage) {
  EXPECT_NE(error_of_profile(test::edit_yaml(kProfile, {{"hbm_gib", "80"}}))
                .find("bad.yaml: unknown key hbm_gib (did you mean hbm_gbs?)"),
            std::string::npos);
  EXPECT_NE(error_of_profile("- a list").find("bad.yaml: expected a hardware profile, a mapping"),
            std::string::npos);
  const std::string missing =
      test::error_of(test::kBaseYaml, {"hardware.profile=/nonexistent.yaml"});
  EXPECT_EQ(missing,
            "test.yaml: --set hardware.profile=/nonexistent.yaml: hardware.profile: "
            "/nonexistent.yaml: cannot open: No such file or directory");
}

}  // namespace
}  // namespace moetron
