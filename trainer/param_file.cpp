// Parameter files (see param_file.h).
#include "trainer/param_file.h"

#include <vector>

#include "model/param.h"
#include "trainer/h5io.h"

namespace moetron {

using namespace h5;

void write_params(hid_t file, const ParamStore<float>& params, bool grads) {
  H5 gp{H5Gcreate2(file, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose};
  H5 gg{grads ? H5Gcreate2(file, "grads", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1, H5Gclose};
  std::vector<float> host;  // the values (gradients) staged from the parameter's device
  for (auto& p : params.all()) {
    std::vector<hsize_t> dims(p->value.shape().begin(), p->value.shape().end());
    host.resize(static_cast<size_t>(p->numel()));
    values_to_host(*p, 0, p->numel(), host.data());
    dataset(gp.id, p->name, H5T_NATIVE_FLOAT, dims, host.data());
    if (grads && p->trainable) {
      values_to_host(*p, 0, p->numel(), host.data(), /*grad=*/true);
      dataset(gg.id, p->name, H5T_NATIVE_FLOAT, dims, host.data());
    }
  }
}

void save_params(const ParamStore<float>& params, const std::string& out_path) {
  write_h5(out_path, "parameters", [&](hid_t f) { write_params(f, params, false); });
}

}  // namespace moetron
