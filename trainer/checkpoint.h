// Checkpoints: one directory per step, one HDF5 shard per rank, a manifest written last.
//
//   <run.dir>/checkpoints/step_<N>/rank_<R>.h5   this rank's share of the parameters and of the
//                                                 Adam moments, as (name, offset) pieces
//   <run.dir>/checkpoints/step_<N>/manifest.yaml  format version, step, tokens, samples consumed,
//                                                 layout, the model config, each shard's size and
//                                                 CRC32
// Each element is written once (format v2): a trainable parameter by the rank that owns it under
// ZeRO-1 (its pieces are the owner's ZeRO-1 segments, like the moments), a tensor outside any
// ZeRO group (the expert bias) by DP rank 0 of its stage, a replicated copy (Param::replica) not
// at all (its primary copy is written). Shard layout:
//   /params/<name>#<offset>        1-D fp32, attribute "shape": the whole tensor's shape
//   /moments/<name>#<offset>#m|v   1-D fp32
// Written into step_<N>.tmp/ and renamed once the manifest is in place: a directory without a
// manifest, or still named .tmp, is never loaded. The newest `keep` complete ones are kept. A
// re-save of a step moves the old step_<N> aside as step_<N>.old first; a crash between the two
// renames leaves step_<N>.old, which stands in for step_<N> while that is missing.
// Loading reassembles every tensor from its pieces, so a checkpoint loads on any layout (DP, EP or
// PP changed); pieces that are missing or overlap are an error naming the file and tensor.
// Format v1 checkpoints (every rank wrote the whole tensors it held, /params/<name>) still load:
// a whole tensor is one piece at offset 0, the first shard holding it is used.
// No RNG state needs saving: initialisation happens once, and the sampler is a pure function
// of (seed, sample index).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/pinned.h"
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

// What one rank writes: host copies of the pieces of parameters it owns, and of the moments of
// its optimizer shards. `opts` are the ZeRO-1 groups of this rank's trainable parameters;
// `write_unsharded`: this rank writes the tensors in none of them (true on DP rank 0).
struct Snapshot {
  struct Piece {
    std::string name;
    std::vector<int64_t> shape;  // of the whole tensor
    int64_t offset = 0;          // of data[0] in the flattened tensor
    PinnedVector<float> data;    // pinned on a GPU run: the device copies straight into it
  };
  std::vector<Piece> params;
  std::vector<Zero1::MomentPiece> moments;
  static Snapshot take(const ParamStore<float>& ps, const std::vector<const Zero1*>& opts,
                       bool write_unsharded);
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
              const std::vector<const Zero1*>& opts, bool write_unsharded,
              const std::string& tokenizer);
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

// What `--resume` names, resolved before anything is written: "" (no resume) and a directory are
// returned as they are; "auto" becomes the newest complete checkpoint of run_dir, or "" when
// run_dir has no checkpoint at all (a fresh start). Lines for the log are appended to *notes: one
// "moetron: warning: " line per newer checkpoint skipped, or the fresh start. When checkpoints
// exist but none is usable, a CheckpointError lists each one and why it was refused: a run that
// asked to resume never starts over on top of its own history.
std::string resolve_resume(const std::string& resume, const std::string& run_dir,
                           std::string* notes);

// `text` with `prefix` at the start of every line (a warning of several lines stays a warning on
// each of them); every line ends with a newline.
std::string prefix_lines(const std::string& prefix, const std::string& text);

// Loads `dir` into this rank's parameters and optimizer shards; checks that the checkpoint's
// model matches cfg.model (message names the first differing key). Returns the train state.
TrainState load_checkpoint(const std::string& dir, const Config& cfg, ParamStore<float>& ps,
                           const std::vector<Zero1*>& opts, const std::string& tokenizer);

// Reads the parameters of a verified checkpoint tensor by tensor without loading the rest: opens
// every shard and indexes the pieces from their metadata (checking that each tensor's pieces
// cover it exactly once), then reads any range of one tensor from whichever shards hold it.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& dir);  // throws CheckpointError
  ~CheckpointReader();
  int format_version() const;
  const std::vector<std::string>& names() const;  // every parameter, sorted
  bool has(const std::string& name) const;
  const std::vector<int64_t>& shape(const std::string& name) const;
  // Elements [begin, begin + count) of the flattened tensor `name`.
  void read(const std::string& name, int64_t begin, int64_t count, float* out) const;

  struct Impl;  // checkpoint.cpp; load_checkpoint uses it directly

 private:
  std::unique_ptr<Impl> impl_;
};

// Every parameter of `params` from the checkpoint `ck` (step directory `dir`), by name, one
// tensor at a time (dump-grads --from, generate). The checkpoint must hold each one with the
// same shape; otherwise a CheckpointError names the parameter, the checkpoint and `whose`
// ("the config's model", "its manifest's model").
template <class T>
class ParamStore;
void load_params(ParamStore<float>& params, const CheckpointReader& ck, const std::string& dir,
                 const std::string& whose);

}  // namespace moetron
