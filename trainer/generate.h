// Text generation: `moetron generate` from a checkpoint, and the text samples a training run
// prints every run.sample_interval steps. The model side is model/decode.h (the Decoder and its
// MLA latent cache); here is the host side: the run's tokenizer, sampling from the logits
// (temperature, top-k, a seeded RNG; greedy at temperature 0), the loop that feeds each new token
// back, checkpoint loading, and the command line.
//
// Inference computes in fp32 from the fp32 master weights whatever precision.recipe trained them
// (the simplest choice; the weights a checkpoint holds are fp32). Only the main model runs: the
// MTP modules are neither loaded nor used. Every generation starts after the tokenizer's EOS (the
// separator the training data puts before each document), so a prompt continues like the start
// of a document, and an empty prompt is a document's start. Generation stops after max_tokens
// tokens or at an EOS.
//
// Past the context (model.max_seq_len tokens), generation goes on with the newest half of the
// tokens as the new context, fed again from position 0 (so every step but those costs one token's
// forward); the uncached path (`--no-cache`: the training forward over the whole context at every
// step) uses the same contexts, so both give the same tokens up to round-off.
//
// One thread by default (`--threads N` for more): one token's ops are so small at the tiny model's
// width that a second thread mostly waits at OpenMP barriers (docs/performance.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/bpe.h"
#include "kernels/exec.h"
#include "model/decode.h"
#include "model/param.h"
#include "parallel/comm.h"
#include "trainer/config.h"
#include "trainer/param_file.h"

namespace moetron {

// The run's tokenizer: its BPE tokenizer.json, or bytes (runs on byte-level token files).
class TextCodec {
 public:
  static TextCodec bytes();
  static TextCodec bpe(data::BpeTokenizer tok);
  // For a run whose data was made with the tokenizer named `trained_on` (a checkpoint manifest's
  // or a shard's "tokenizer": "bpe-<hash>" or "bytes-v1"): bytes, or the tokenizer.json at
  // `json`, which must be that tokenizer. Throws std::invalid_argument naming both (`what`: the
  // run's data or checkpoint; `how`: how to name a tokenizer.json when none is given).
  static TextCodec for_run(const std::string& trained_on, const std::string& json,
                           const std::string& what, const std::string& how);
  const std::string& name() const { return name_; }
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;  // special tokens are skipped
  int32_t eos() const { return eos_; }                        // -1: none

 private:
  std::optional<data::BpeTokenizer> bpe_;
  std::string name_;
  int32_t eos_ = -1;
};

struct GenerateOptions {
  int64_t max_tokens = 100;
  double temperature = 0.8;  // 0: greedy
  int64_t top_k = 40;        // 0: the whole vocabulary
  uint64_t seed = 0;
  bool cache = true;  // false: recompute the whole context at every step (the reference)
};

// The next token from host logits [V]: the argmax at temperature 0 (the lowest id among equal
// maxima), else a draw from softmax(logits / temperature) over the top_k largest (0: all).
int32_t pick_token(const float* logits, int64_t V, double temperature, int64_t top_k,
                   std::mt19937_64& rng);

// Generates up to o.max_tokens tokens after `prompt` (1 .. dec.window() ids) with `dec`'s model,
// calling emit(id) as each is chosen; stops after `stop` (>= 0). Returns the generated ids.
std::vector<int32_t> generate(Decoder<float>& dec, const std::vector<int32_t>& prompt,
                              const GenerateOptions& o, int32_t stop,
                              const std::function<void(int32_t)>& emit);

// The ids of a prompt as generation reads it: EOS (if the tokenizer has one) then the text's.
std::vector<int32_t> prompt_ids(const TextCodec& codec, const std::string& text);

// Text of a growing id sequence, printable piece by piece: push(id) returns what can be printed
// now (holding back a character whose bytes are split over tokens), finish() the rest.
class TextStream {
 public:
  explicit TextStream(const TextCodec& codec) : codec_(codec) {}
  std::string push(int32_t id);
  std::string finish();

 private:
  const TextCodec& codec_;
  std::vector<int32_t> pending_;
};

// The main model of a checkpoint (the newest complete one of a run directory, or the named
// checkpoint directory), written by any layout, on one process in fp32. Throws CheckpointError
// naming the path for a missing, incomplete or foreign checkpoint.
struct LoadedModel {
  std::string dir;        // the checkpoint directory
  int64_t step = 0;       // optimizer steps it had done
  std::string tokenizer;  // the tokenizer its data was made with (manifest)
  Config cfg;             // the run's effective config (manifest)
  std::unique_ptr<Model<float>> model;
};
LoadedModel load_for_generation(const std::string& checkpoint_or_run_dir, std::string* warnings);

// `moetron generate CHECKPOINT_OR_RUN_DIR --prompt TEXT [...]` (args: after "generate"). Text to
// `out` as it is produced, a summary line to `log`. Returns the exit code. Throws
// GenerateUsageError for a malformed command line, CheckpointError or std::invalid_argument for
// bad input.
struct GenerateUsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
extern const char* const kGenerateUsage;
int generate_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& log);

// The training run's samples (run.sample_interval): made at construction, before the run writes
// anything, so that a prompt longer than the context or BPE data without data.tokenizer stop the
// run with a ConfigError naming the key.
class TrainingSampler {
 public:
  // data_tokenizer: the tokenizer the training shards were made with.
  TrainingSampler(const Config& cfg, const std::string& data_tokenizer);
  ~TrainingSampler();
  bool due(int64_t step, bool last) const {
    return cfg_.run.sample_interval > 0 && (step % cfg_.run.sample_interval == 0 || last);
  }
  // Collective over `world`: the main model's parameters, each from the one rank that
  // `contributes` it (summed over the world, so every element arrives exactly), into an fp32
  // model on rank 0 (built on ex's device at the first call), which continues the prompt greedily
  // for run.sample_tokens tokens. Returns the sample's text on rank 0, "" elsewhere.
  // `values`: where a parameter's whole values are (trainer/param_file.h; default its tensor).
  std::string sample(const ParamStore<float>& stage_params,
                     const std::function<bool(const Param<float>&)>& contributes,
                     Communicator& world, const Exec& ex, const WholeValues& values = {});
  const std::string& prompt() const { return cfg_.run.sample_prompt; }

 private:
  Config cfg_;
  TextCodec codec_;
  std::vector<int32_t> prompt_;
  std::unique_ptr<Model<float>> model_;                  // rank 0
  std::unique_ptr<Decoder<float>> dec_;                  // rank 0
  std::vector<std::pair<std::string, int64_t>> layout_;  // the main model's (name, numel)
};

}  // namespace moetron
