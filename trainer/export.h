// `moetron export CHECKPOINT OUTDIR [--dtype bf16|fp32]`: a checkpoint as Hugging Face-style
// safetensors files (model-0000i-of-0000n.safetensors, at most 4 GiB each), their
// model.safetensors.index.json, and a config.json with the DeepSeek-V3 names, so outside tools
// can load the weights. The expert selection bias stays fp32 (as in DeepSeek's release).
// Streamed tensor by tensor from the shards: memory does not grow with the model.
#pragma once

#include <string>

namespace moetron {

void export_checkpoint(const std::string& checkpoint_dir, const std::string& out_dir,
                       const std::string& dtype);

}  // namespace moetron
