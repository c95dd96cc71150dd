// Checkpoints: one directory per step, one HDF5 shard per rank, a manifest written last.
//
//   <run.dir>/checkpoints/step_<N>/rank_<R>.h5   parameters this rank holds (HF names, fp32,
//                                                 expert bias included) and the moments of its
//                                                 ZeRO-1 shard as (name, offset) pieces
//   <run.dir>/checkpoints/step_<N>/manifest.yaml  step, tokens, samples consumed, layout, the
//                                                 model config, each shard's size and CRC32
// Written into step_<N>.tmp/ and renamed once the manifest is in place: a directory without a
// manifest, or still named .tmp, is never loaded. The newest `keep` complete ones are kept.
// Loading is by parameter name and (name, offset) pieces, so a checkpoint loads on any layout
// (DP, EP or PP changed): each rank reads what it holds from whichever shards have it.
// No RNG state needs saving: initialisation happens once, and the sampler is a pure function
// of (seed, sample index).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "model/param.h"
#include "parallel/comm.h"
#include "parallel/zero1.h"
#include "trainer/config.h"

namespace moetron {

struct TrainState {
  int64_t step = 0;     // optimizer steps done
  int64_t tokens = 0;   // tokens consumed
  int64_t samples = 0;  // sequences consumed (the sampler's position)
};

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct NamedTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// What one rank writes: a host copy of its parameters and optimizer-shard moments.
struct Snapshot {
  std::vector<std::pair<std::string, NamedTensor>> params;
  std::vector<Zero1::MomentPiece> moments;
  static Snapshot take(const ParamStore<float>& ps, const std::vector<const Zero1*>& opts);
};

// Asynchronous saves: save() copies the state to host buffers (the only part training waits
// for, after any previous save still in flight) and writes it in a background thread over its
// own communicator, so training continues meanwhile. Errors surface at the next wait().
class CheckpointWriter {
 public:
  explicit CheckpointWriter(Communicator& world);
  ~CheckpointWriter();
  // Returns the seconds training was blocked (waiting for the previous save + the copy).
  double save(const Config& cfg, const TrainState& st, const ParamStore<float>& ps,
              const std::vector<const Zero1*>& opts, const std::string& tokenizer);
  // Waits for the save in flight; returns its directory ("" if none); rethrows its error.
  std::string wait();
  // Of the last completed save: seconds the background write took, bytes of this rank's shard.
  double write_seconds() const { return write_seconds_; }
  int64_t shard_bytes() const { return shard_bytes_; }

 private:
  std::unique_ptr<Communicator> comm_;
  std::thread thread_;
  std::string dir_, error_;
  double write_seconds_ = 0;
  int64_t shard_bytes_ = 0;
};

// Synchronous save, collective over `world`. Returns the directory written. `tokenizer` names
// the tokenizer of the training data (recorded; checked on load).
std::string save_checkpoint(const Config& cfg, const TrainState& st, const Snapshot& snap,
                            const std::string& tokenizer, Communicator& world);

// The newest complete checkpoint under <run_dir>/checkpoints whose manifest and shard checksums
// verify ("" if none); a broken newer one is skipped with a warning naming what is wrong.
std::string find_checkpoint(const std::string& run_dir, std::string* warnings);

// Loads `dir` into this rank's parameters and optimizer shards; checks that the checkpoint's
// model matches cfg.model (message names the first differing key). Returns the train state.
TrainState load_checkpoint(const std::string& dir, const Config& cfg, ParamStore<float>& ps,
                           const std::vector<Zero1*>& opts, const std::string& tokenizer);

// Every parameter of a verified checkpoint by name (each once, whichever shard holds it), with
// its shape, sorted by name. Loads them all into memory: meant for export of CPU-scale models.
std::vector<std::pair<std::string, NamedTensor>> read_checkpoint_params(const std::string& dir);

}  // namespace moetron
