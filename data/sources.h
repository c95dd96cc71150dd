// Data sources from text: the `data.train_path` / `data.valid_path` setting -> SourceSpecs.
//
// A setting is one path, or Megatron's blend form "W1 PATH1 W2 PATH2 ..." (whitespace separated,
// each weight a positive number). A path is
//   - an HDF5 token file (*.h5),
//   - a shard index (*.index.json, data/shard_writer.h), or
//   - a directory: its shard indexes if it has any, else its *.h5 files, in name order.
// Every path must exist and a directory must hold at least one of those; anything else is a
// DataError naming the setting's path and what was expected. The files themselves are checked
// when the Dataset opens them.
#pragma once

#include <string>
#include <vector>

#include "data/dataset.h"

namespace moetron::data {

// `what` names the setting in messages (e.g. "data.train_path").
std::vector<SourceSpec> parse_sources(const std::string& setting, const std::string& what);

}  // namespace moetron::data
