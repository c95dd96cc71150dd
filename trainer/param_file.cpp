// Parameter files (see param_file.h).
#include "trainer/param_file.h"

#include <stdexcept>
#include <vector>

#include "kernels/ops.h"
#include "model/param.h"
#include "trainer/h5io.h"

namespace moetron {

using namespace h5;

void whole_values_to_host(const Param<float>& p, const WholeValues& values, float* host) {
  if (!values) return values_to_host(p, 0, p.numel(), host);
  const Tensor& v = values(p);
  if (!v.raw()) throw std::logic_error(p.name + ": its values are not gathered on this rank");
  kernels::copy_to_host(Exec::on(v.device()), host, v.data<float>(), v.bytes());
}

void write_params(hid_t file, const ParamStore<float>& params, bool grads,
                  const WholeValues& values) {
  H5 gp{H5Gcreate2(file, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose};
  H5 gg{grads ? H5Gcreate2(file, "grads", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1, H5Gclose};
  std::vector<float> host;  // the values (gradients) staged from the parameter's device
  for (auto& p : params.all()) {
    std::vector<hsize_t> dims(p->value.shape().begin(), p->value.shape().end());
    host.resize(static_cast<size_t>(p->numel()));
    whole_values_to_host(*p, values, host.data());
    dataset(gp.id, p->name, H5T_NATIVE_FLOAT, dims, host.data());
    if (grads && p->trainable) {
      values_to_host(*p, 0, p->numel(), host.data(), /*grad=*/true);
      dataset(gg.id, p->name, H5T_NATIVE_FLOAT, dims, host.data());
    }
  }
}

void save_params(const ParamStore<float>& params, const std::string& out_path,
                 const WholeValues& values) {
  write_h5(out_path, "parameters", [&](hid_t f) { write_params(f, params, false, values); });
}

}  // namespace moetron
