// Hardware profiles (see hardware.h): a profile is read with the config's own YAML machinery
// (config_schema.h), every key required, and fills the keys a config left unset.
#include "trainer/hardware.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "trainer/model_fields.h"

namespace moetron {

namespace {

using namespace config_schema;

// Copies the profile's value of every key the config did not write.
struct FillUnset {
  const Reader& reader;
  template <class R, class T>
  void field(const char* name, const R&, T& dst, const T& src) {
    if (!reader.present(join("hardware", name))) dst = src;
  }
};

std::vector<const char*> hardware_keys() {
  FieldNames names;
  const HardwareConfig h;
  visit_hardware_fields(names, h);
  return names.names;
}

}  // namespace

HardwareConfig read_hardware_profile(const std::string& yaml_text, const std::string& source) {
  Context ctx(source);
  YAML::Node root;
  std::string error;
  if (!load_document(yaml_text, root, error)) ctx.fail("", error);
  std::string list;
  for (const char* k : hardware_keys()) list += (list.empty() ? "" : ", ") + std::string(k);
  if (!root.IsMap())
    ctx.fail("", "expected a hardware profile, a mapping of " + list + ", got " +
                     (is_null(root) ? std::string("an empty document") : describe(root)));
  Schema schema{"", true, {}};
  for (const char* k : hardware_keys()) schema.children.push_back(Schema{k, false, {}});
  check_keys(ctx, root, schema, "");
  HardwareConfig hw;
  Reader reader(ctx, root);
  visit_hardware_fields(reader, hw);
  for (const char* k : hardware_keys())
    if (!reader.present(k))
      ctx.fail(k, "missing: a hardware profile gives every key (" + list + ")");
  return hw;
}

HardwareConfig load_hardware_profile(const std::string& path, const std::string& where) {
  const std::string source = where + path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw ConfigError(source + ": is a directory, expected a hardware profile (YAML)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(source + ": cannot open: " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(source + ": cannot read: " + std::strerror(errno));
  return read_hardware_profile(text.str(), source);
}

void apply_hardware_profile(const Context& ctx, const Reader& reader, HardwareConfig& hw) {
  if (hw.profile.empty()) return;
  bool unset = false;
  for (const char* k : hardware_keys()) unset = unset || !reader.present(join("hardware", k));
  if (!unset) return;  // every key written: the profile has nothing to give
  const HardwareConfig profile =
      load_hardware_profile(hw.profile, ctx.where("hardware.profile") + "hardware.profile: ");
  FillUnset fill{reader};
  visit_hardware_fields(fill, hw, profile);
}

}  // namespace moetron
