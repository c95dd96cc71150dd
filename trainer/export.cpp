// Safetensors export (see export.h). Format: 8-byte little-endian header size, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {...}} padded with spaces
// to a multiple of 8, then the tensors' bytes back to back in header order. Streamed: shapes come
// from the shards' metadata, data tensor by tensor in bounded chunks (memory independent of the
// model's size).
#include "trainer/export.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kernels/scalar.h"
#include "trainer/checkpoint.h"
#include "trainer/model_fields.h"

namespace moetron {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxFileBytes = int64_t{4} << 30;

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) o += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return o + "\"";
}

struct Out {  // one safetensors file: its tensors (names into the reader) and data bytes
  std::vector<const std::string*> tensors;
  int64_t bytes = 0;
};

bool keep_fp32(const std::string& name) {
  return name.find("e_score_correction_bias") != std::string::npos;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Streams the file: the header (offsets from the shapes alone), then each tensor read from the
// shards and converted in chunks of kChunk elements, so memory does not grow with the model.
constexpr int64_t kChunk = int64_t{1} << 22;

void write_file(const std::string& path, const Out& o, const CheckpointReader& ck, bool bf16) {
  std::ostringstream h;
  h << "{\"__metadata__\":{\"format\":\"pt\"}";
  int64_t off = 0;
  for (const std::string* name : o.tensors) {
    const bool f32 = !bf16 || keep_fp32(*name);
    const std::vector<int64_t>& shape = ck.shape(*name);
    const int64_t n = numel(shape) * (f32 ? 4 : 2);
    h << "," << json_str(*name) << ":{\"dtype\":\"" << (f32 ? "F32" : "BF16") << "\",\"shape\":[";
    for (size_t i = 0; i < shape.size(); ++i) h << (i ? "," : "") << shape[i];
    h << "],\"data_offsets\":[" << off << "," << off + n << "]}";
    off += n;
  }
  h << "}";
  std::string header = h.str();
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  try {
    std::ofstream f(tmp, std::ios::binary);
    const uint64_t len = header.size();
    unsigned char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(len >> (8 * i));
    f.write(reinterpret_cast<const char*>(le), 8);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    std::vector<float> buf;
    std::vector<uint16_t> b16;
    for (const std::string* name : o.tensors) {
      const bool f32 = !bf16 || keep_fp32(*name);
      const int64_t total = numel(ck.shape(*name));
      for (int64_t at = 0; at < total; at += kChunk) {
        const int64_t n = std::min(kChunk, total - at);
        buf.resize(n);
        ck.read(*name, at, n, buf.data());
        if (f32) {
          f.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(n * 4));
        } else {
          b16.resize(n);
          for (int64_t i = 0; i < n; ++i) b16[i] = f32_to_bf16(buf[i]);
          f.write(reinterpret_cast<const char*>(b16.data()), static_cast<std::streamsize>(n * 2));
        }
      }
      if (!f) throw CheckpointError(tmp + ": write failed (disk full?)");
    }
    f.close();
    if (!f) throw CheckpointError(tmp + ": write failed (disk full?)");
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  fs::rename(tmp, path);
}

// Tensors in name order, split into files of at most kMaxFileBytes; *total: all data bytes.
std::vector<Out> plan_files(const CheckpointReader& ck, bool bf16, int64_t* total) {
  std::vector<Out> files(1);
  *total = 0;
  for (const std::string& name : ck.names()) {
    const int64_t n = numel(ck.shape(name)) * (!bf16 || keep_fp32(name) ? 4 : 2);
    if (files.back().bytes > 0 && files.back().bytes + n > kMaxFileBytes) files.emplace_back();
    files.back().tensors.push_back(&name);
    files.back().bytes += n;
    *total += n;
  }
  return files;
}

// The safetensors files one tensor at a time, and model.safetensors.index.json.
void write_weights(const std::string& out_dir, const CheckpointReader& ck, bool bf16) {
  int64_t total = 0;
  const std::vector<Out> files = plan_files(ck, bf16, &total);
  std::ostringstream index;
  index << "{\"metadata\":{\"total_size\":" << total << "},\"weight_map\":{";
  bool first = true;
  for (size_t i = 0; i < files.size(); ++i) {
    char fname[64];
    std::snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", i + 1, files.size());
    write_file(out_dir + "/" + fname, files[i], ck, bf16);
    for (const std::string* name : files[i].tensors) {
      index << (first ? "" : ",") << json_str(*name) << ":" << json_str(fname);
      first = false;
    }
  }
  index << "}}\n";
  std::ofstream(out_dir + "/model.safetensors.index.json") << index.str();
}

// config.json: the model section of the manifest, in HF names, plus DeepSeek-V3's constants
void write_config_json(const std::string& out_dir, const YAML::Node& m, bool bf16) {
  std::ostringstream c;
  c << "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n  \"model_type\": \"deepseek_v3\",\n";
  c << "  \"torch_dtype\": \"" << (bf16 ? "bfloat16" : "float32") << "\",\n";
  c << "  \"scoring_func\": \"sigmoid\",\n  \"topk_method\": \"noaux_tc\",\n";
  c << "  \"norm_topk_prob\": true,\n  \"hidden_act\": \"silu\",\n  \"moe_layer_freq\": 1,\n";
  c << "  \"tie_word_embeddings\": false,\n  \"attention_bias\": false,\n";
  c << "  \"initializer_range\": " << m["init_std"].as<std::string>() << ",\n";
  c << "  \"max_position_embeddings\": " << m["max_seq_len"].as<std::string>() << ",\n";
  const std::vector<const char*> keys = hf_model_field_names();
  c << "  \"num_key_value_heads\": " << m["num_attention_heads"].as<std::string>();
  for (const char* k : keys) c << ",\n  \"" << k << "\": " << m[k].as<std::string>();
  const YAML::Node rs = m["rope_scaling"];
  if (rs && rs["factor"] && rs["factor"].as<double>() > 1.0)
    c << ",\n  \"rope_scaling\": {\"type\": \"yarn\", \"factor\": "
      << rs["factor"].as<std::string>() << ", \"original_max_position_embeddings\": "
      << rs["original_max_position_embeddings"].as<std::string>()
      << ", \"beta_fast\": " << rs["beta_fast"].as<std::string>()
      << ", \"beta_slow\": " << rs["beta_slow"].as<std::string>()
      << ", \"mscale\": " << rs["mscale"].as<std::string>() << ", \"mscale_all_dim\": 1.0}";
  else
    c << ",\n  \"rope_scaling\": null";
  c << "\n}\n";
  std::ofstream(out_dir + "/config.json") << c.str();
}

}  // namespace

void export_checkpoint(const std::string& checkpoint_dir, const std::string& out_dir,
                       const std::string& dtype) {
  if (dtype != "bf16" && dtype != "fp32")
    throw CheckpointError("export --dtype must be bf16 or fp32, got '" + dtype + "'");
  const bool bf16 = dtype == "bf16";
  const CheckpointReader ck(checkpoint_dir);  // verified and indexed; no tensor data read yet
  const YAML::Node manifest = YAML::LoadFile(checkpoint_dir + "/manifest.yaml");
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw CheckpointError(out_dir + ": cannot create (" + ec.message() + ")");
  write_weights(out_dir, ck, bf16);
  write_config_json(out_dir, manifest["model"], bf16);
}

}  // namespace moetron
