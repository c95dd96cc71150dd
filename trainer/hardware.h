// The `hardware` section's keys and hardware profiles. A profile (configs/hardware/*.yaml) is the
// section in a file of its own with every key given (name, memory, dense peaks, links); a config
// names one with `hardware.profile` (`moetron plan --hardware FILE` sets it) and the profile
// supplies every key the config does not write, so a key written in the config (or set with
// `--set`) wins over the profile's. The effective config written to a run directory writes every
// key, so reading it back never opens the profile: a run directory stays readable where the
// profile file is not. Paths are relative to the working directory, like data paths.
//
// A profile that cannot be read, lacks a key, has an unknown key or a value of the wrong type or
// range is one ConfigError naming the config, the profile file and the key:
//   "run.yaml: hardware.profile: hw/h800.yaml: memory_gib: expected a number, got the string
//   "80GB""
#pragma once

#include <string>

#include "trainer/config.h"
#include "trainer/config_schema.h"

namespace moetron {

// The hardware keys, in table order (the config's section after `profile`, and a profile's keys).
template <class V, class... H>
void visit_hardware_fields(V& v, H&... h) {
  using namespace config_schema;
  v.field("name", kAnyText, h.name...);
  v.field("memory_gib", kNonNegative, h.memory_gib...);
  v.field("peak_bf16_tflops", kNonNegative, h.peak_bf16_tflops...);
  v.field("peak_fp8_tflops", kNonNegative, h.peak_fp8_tflops...);
  v.field("peak_fp32_tflops", kNonNegative, h.peak_fp32_tflops...);
  v.field("hbm_gbs", kNonNegative, h.hbm_gbs...);
  v.field("devices_per_node", kNonNegative, h.devices_per_node...);
  v.field("cores_per_node", kNonNegative, h.cores_per_node...);
  v.field("nvlink_gbs", kNonNegative, h.nvlink_gbs...);
  v.field("ib_gbs", kNonNegative, h.ib_gbs...);
  constexpr Range kFraction{0, 1, false, false};
  v.field("gemm_efficiency", kFraction, h.gemm_efficiency...);
  v.field("gemm_efficiency_fp8", kFraction, h.gemm_efficiency_fp8...);
  v.field("memory_efficiency", kFraction, h.memory_efficiency...);
  v.field("comm_efficiency", kFraction, h.comm_efficiency...);
}

// Reads a profile; `source` names it in messages (the file, and where it was named from).
HardwareConfig read_hardware_profile(const std::string& yaml_text, const std::string& source);
// The same from a file (`where`: "<config>: hardware.profile: " or "").
HardwareConfig load_hardware_profile(const std::string& path, const std::string& where = "");

// parse_config's step after reading: the keys of `hw` that `reader` did not find under
// "hardware." are taken from the profile hw.profile names, read only when there is a key to fill.
void apply_hardware_profile(const config_schema::Context& ctx, const config_schema::Reader& reader,
                            HardwareConfig& hw);

}  // namespace moetron
