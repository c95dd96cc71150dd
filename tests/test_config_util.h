// Helpers shared by the config tests (tests/test_config_*.cpp): a small valid config as YAML
// text, a way to change or delete keys in it, and "the error message or nothing".
//
// The base config is written here rather than read from configs/tiny.yaml so that tuning the demo
// config never changes what the validation tests mean.
#pragma once

#include <yaml-cpp/yaml.h>

#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "trainer/config.h"
#include "trainer/config_schema.h"

namespace moetron::test {

inline const char* kBaseYaml = R"(
model:
  vocab_size: 264
  hidden_size: 64
  intermediate_size: 128
  moe_intermediate_size: 32
  num_hidden_layers: 4
  first_k_dense_replace: 1
  num_attention_heads: 4
  n_routed_experts: 16
  n_shared_experts: 1
  num_experts_per_tok: 4
  n_group: 4
  topk_group: 2
  q_lora_rank: 32
  kv_lora_rank: 32
  qk_nope_head_dim: 16
  qk_rope_head_dim: 16
  v_head_dim: 16
data:
  train_path: train.h5
  seq_len: 128
  micro_batch_size: 8
  global_batch_size: 16
schedule:
  lr: {peak: 1.0e-3, warmup_steps: 10, constant_until: 150, decay_until: 300, min_lr: 1.0e-4}
)";

inline constexpr const char* kDelete = "<delete>";

// `edits`: {"a.b.c", "<YAML value>"} sets a key (creating mappings on the way), or
// {"a.b.c", kDelete} removes it. Returns the edited YAML text.
inline std::string edit_yaml(const std::string& text,
                             const std::vector<std::pair<std::string, std::string>>& edits) {
  YAML::Node root = YAML::Load(text);
  for (const auto& [path, value] : edits) {
    std::vector<std::string> parts;
    std::stringstream ss(path);
    for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
    YAML::Node parent =
        config_schema::mapping_at(root, std::vector<std::string>(parts.begin(), parts.end() - 1));
    if (value == kDelete) {
      parent.remove(parts.back());
    } else {
      parent[parts.back()] = YAML::Load(value);
    }
  }
  YAML::Emitter out;
  out << root;
  return out.c_str();
}

// The ConfigError message of parsing `text` (source "test.yaml"), or "" if it loads.
inline std::string error_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  try {
    parse_config(text, "test.yaml", sets);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

inline Config base_config(const std::vector<std::string>& sets = {}) {
  return parse_config(kBaseYaml, "test.yaml", sets);
}

}  // namespace moetron::test
