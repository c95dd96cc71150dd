// Small HDF5 helpers for the trainer's files (gradient dumps, parameter files, checkpoints):
// RAII ids, scalar attributes, whole-dataset writes and reads, and an atomic file write
// (tmp + rename). Errors become std::runtime_error; HDF5's own error printing is silenced.
#pragma once

#include <hdf5.h>

#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetron::h5 {

struct H5 {  // closes an HDF5 id on scope exit (not copyable)
  hid_t id;
  herr_t (*close)(hid_t);
  H5(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  H5(const H5&) = delete;
  H5& operator=(const H5&) = delete;
  ~H5() {
    if (id >= 0) close(id);
  }
};

inline void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

inline void attr_double(hid_t loc, const char* name, double v) {
  H5 sp{H5Screate(H5S_SCALAR), H5Sclose};
  H5 a{H5Acreate2(loc, name, H5T_NATIVE_DOUBLE, sp.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
  check(a.id >= 0 && H5Awrite(a.id, H5T_NATIVE_DOUBLE, &v) >= 0, std::string("attribute ") + name);
}

inline void attr_int(hid_t loc, const char* name, int64_t v) {
  H5 sp{H5Screate(H5S_SCALAR), H5Sclose};
  H5 a{H5Acreate2(loc, name, H5T_NATIVE_INT64, sp.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
  check(a.id >= 0 && H5Awrite(a.id, H5T_NATIVE_INT64, &v) >= 0, std::string("attribute ") + name);
}

// A 1-D int64 attribute on the object `obj` (relative to loc), and reading one back.
inline void attr_ints(hid_t loc, const std::string& obj, const char* name,
                      const std::vector<int64_t>& v) {
  const hsize_t n = v.size();
  H5 sp{H5Screate_simple(1, &n, nullptr), H5Sclose};
  H5 a{H5Acreate_by_name(loc, obj.c_str(), name, H5T_NATIVE_INT64, sp.id, H5P_DEFAULT, H5P_DEFAULT,
                         H5P_DEFAULT),
       H5Aclose};
  check(a.id >= 0 && H5Awrite(a.id, H5T_NATIVE_INT64, v.data()) >= 0, obj + ": attribute " + name);
}
inline std::vector<int64_t> read_attr_ints(hid_t loc, const std::string& obj, const char* name) {
  check(H5Aexists_by_name(loc, obj.c_str(), name, H5P_DEFAULT) > 0, obj + ": no attribute " + name);
  H5 a{H5Aopen_by_name(loc, obj.c_str(), name, H5P_DEFAULT, H5P_DEFAULT), H5Aclose};
  H5 sp{a.id >= 0 ? H5Aget_space(a.id) : -1, H5Sclose};
  const hssize_t n = sp.id >= 0 ? H5Sget_simple_extent_npoints(sp.id) : -1;
  check(n >= 0 && n <= 32, obj + ": bad attribute " + name);
  std::vector<int64_t> v(static_cast<size_t>(n));
  check(n == 0 || H5Aread(a.id, H5T_NATIVE_INT64, v.data()) >= 0,
        obj + ": cannot read attribute " + name);
  return v;
}

inline void dataset(hid_t loc, const std::string& name, hid_t type,
                    const std::vector<hsize_t>& dims, const void* data) {
  H5 sp{H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose};
  H5 d{H5Dcreate2(loc, name.c_str(), type, sp.id, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose};
  check(d.id >= 0 && H5Dwrite(d.id, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
        "dataset " + name);
}

// Runs `write` on a new HDF5 file at path + ".tmp" and renames it to path; errors name the path.
template <class F>
void write_h5(const std::string& path, const char* what, F write) {
  H5E_auto2_t fn;
  void* data;
  H5Eget_auto2(H5E_DEFAULT, &fn, &data);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::string tmp = path + ".tmp";
  try {
    H5 f{H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose};
    check(f.id >= 0, "cannot create");
    write(f.id);
  } catch (const std::exception& e) {
    std::remove(tmp.c_str());
    H5Eset_auto2(H5E_DEFAULT, fn, data);
    throw std::runtime_error(path + ": cannot write " + what + " (" + e.what() + ")");
  }
  H5Eset_auto2(H5E_DEFAULT, fn, data);
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error(path + ": cannot rename from " + tmp);
}

// Reads a whole dataset of `type` into out (sized by the caller to the dataset's element count,
// which is returned by dataset_size).
inline int64_t dataset_size(hid_t loc, const std::string& name) {
  H5 d{H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose};
  check(d.id >= 0, "no dataset " + name);
  H5 sp{H5Dget_space(d.id), H5Sclose};
  const hssize_t n = sp.id >= 0 ? H5Sget_simple_extent_npoints(sp.id) : -1;
  check(n >= 0, "cannot read the size of dataset " + name);
  return n;
}
inline void read_dataset(hid_t loc, const std::string& name, hid_t type, void* out) {
  H5 d{H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose};
  check(d.id >= 0 && H5Dread(d.id, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) >= 0,
        "cannot read dataset " + name);
}

// The names of the links in a group, in storage order.
inline std::vector<std::string> links(hid_t group) {
  hsize_t count = 0;
  H5Gget_num_objs(group, &count);
  std::vector<std::string> out;
  for (hsize_t i = 0; i < count; ++i) {
    const ssize_t n = H5Gget_objname_by_idx(group, i, nullptr, 0);
    check(n >= 0 && n < 4096, "cannot read the name of link " + std::to_string(i));
    std::string name(static_cast<size_t>(n), '\0');
    H5Gget_objname_by_idx(group, i, name.data(), static_cast<size_t>(n) + 1);
    out.push_back(std::move(name));
  }
  return out;
}

}  // namespace moetron::h5
