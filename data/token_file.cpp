// Token files: writing and random-access reading of HDF5 token shards (HDF5 C API).
//
// The writer validates its inputs, writes to path + ".tmp" (tokens uint32 and doc_offsets
// uint64, both chunked with shuffle + deflate 4, plus the root attributes of ARCHITECTURE "Data
// formats"), fsyncs and renames, so a crash or a failure never leaves a half file under the
// final name. The reader validates the layout up front with messages that name the file, keeps
// the file and datasets open, and reads windows with hyperslab selections so that it never
// loads the whole dataset. HDF5's own error printing is switched off and its error stack is
// folded into DataError messages; every HDF5 call holds hdf5_mutex().
#include "data/token_file.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

namespace moetron::data {

std::mutex& hdf5_mutex() {
  static std::mutex m;
  return m;
}

namespace {

constexpr const char* kFormat = "moetron-tokens-v1";
constexpr hsize_t kChunkElems = hsize_t{64} * 1024;  // 256 KiB of uint32 tokens per chunk
constexpr size_t kChunkCacheBytes = size_t{32} << 20;
constexpr size_t kChunkCacheSlots = 12421;  // a prime, per the HDF5 chunk-cache advice
constexpr int64_t kMaxVocab = int64_t{1} << 32;

// Owns one HDF5 identifier and closes it with the matching H5?close.
class H5Id {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Id() = default;
  H5Id(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      close();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() { close(); }

  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
  // Closes now; false if HDF5 reported an error (for a file: data may not have reached disk).
  bool close() {
    herr_t r = 0;
    if (id_ >= 0 && closer_ != nullptr) r = closer_(id_);
    id_ = H5I_INVALID_HID;
    return r >= 0;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// Switches off HDF5's printing of error stacks. Per thread in thread-safe builds, so it is
// called at every entry point (cheap) rather than once.
void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

herr_t innermost_error(unsigned /*n*/, const H5E_error2_t* err, void* data) {
  // Walked downward (API call first), so the last description is where it was detected.
  if (err != nullptr && err->desc != nullptr && err->desc[0] != '\0') {
    *static_cast<std::string*>(data) = err->desc;
  }
  return 0;
}

// The most specific message on HDF5's error stack (e.g. "truncated file: eof = ..."); clears it.
std::string h5_detail() {
  std::string detail;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, innermost_error, &detail);
  H5Eclear2(H5E_DEFAULT);
  return detail;
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw DataError(path + ": " + what);
}

[[noreturn]] void fail_h5(const std::string& path, const std::string& what) {
  const std::string detail = h5_detail();
  fail(path, detail.empty() ? what : what + " (HDF5: " + detail + ")");
}

void check(herr_t r, const std::string& path, const std::string& what) {
  if (r < 0) fail_h5(path, what);
}

H5Id check_id(hid_t id, herr_t (*closer)(hid_t), const std::string& path, const std::string& what) {
  if (id < 0) fail_h5(path, what);
  return H5Id(id, closer);
}

std::string describe_type(hid_t type) {
  const size_t bits = 8 * H5Tget_size(type);
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
    case H5T_FLOAT:
      return "float" + std::to_string(bits);
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum";
    case H5T_ARRAY:
      return "array";
    case H5T_VLEN:
      return "vlen";
    case H5T_BITFIELD:
      return "bitfield";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_REFERENCE:
      return "reference";
    default:
      return "unknown type";
  }
}

// ---- writing ----

void write_string_attr(const std::string& path, hid_t obj, const char* name,
                       const std::string& value) {
  H5Id type = check_id(H5Tcopy(H5T_C_S1), H5Tclose, path, "cannot create string type");
  check(H5Tset_size(type.get(), H5T_VARIABLE), path, "cannot create string type");
  check(H5Tset_cset(type.get(), H5T_CSET_UTF8), path, "cannot create string type");
  H5Id space = check_id(H5Screate(H5S_SCALAR), H5Sclose, path, "cannot create dataspace");
  H5Id attr = check_id(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT),
                       H5Aclose, path, std::string("cannot create attribute '") + name + "'");
  const char* p = value.c_str();
  check(H5Awrite(attr.get(), type.get(), &p), path,
        std::string("cannot write attribute '") + name + "'");
}

void write_int64_attr(const std::string& path, hid_t obj, const char* name, int64_t value) {
  H5Id space = check_id(H5Screate(H5S_SCALAR), H5Sclose, path, "cannot create dataspace");
  H5Id attr = check_id(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                       H5Aclose, path, std::string("cannot create attribute '") + name + "'");
  check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), path,
        std::string("cannot write attribute '") + name + "'");
}

// A 1-D chunked dataset with shuffle + deflate 4 (chunk: 64K elements, or n if smaller).
void write_dataset(const std::string& path, hid_t file, const char* name, hid_t file_type,
                   hid_t mem_type, const void* data, hsize_t n) {
  const std::string what = std::string("cannot write dataset '") + name + "'";
  hsize_t dims[1] = {n};
  H5Id space = check_id(H5Screate_simple(1, dims, nullptr), H5Sclose, path, what);
  H5Id dcpl = check_id(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, path, what);
  hsize_t chunk[1] = {std::clamp<hsize_t>(n, 1, kChunkElems)};
  check(H5Pset_chunk(dcpl.get(), 1, chunk), path, what);
  check(H5Pset_shuffle(dcpl.get()), path, what);
  check(H5Pset_deflate(dcpl.get(), 4), path, what);
  H5Id dset =
      check_id(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
               H5Dclose, path, what);
  if (n > 0) {
    check(H5Dwrite(dset.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), path, what);
  }
  if (!dset.close()) fail_h5(path, what);
}

void validate_for_write(const std::string& path, const std::vector<uint32_t>& tokens,
                        const std::vector<uint64_t>& offsets, int64_t vocab_size) {
  if (path.empty()) throw DataError("write_token_file: empty output path");
  if (vocab_size <= 0 || vocab_size > kMaxVocab) {
    fail(path, "vocab_size must be in [1, 2^32], got " + std::to_string(vocab_size));
  }
  if (offsets.empty()) fail(path, "doc_offsets is empty (need n_docs+1 entries, starting at 0)");
  if (offsets.front() != 0) {
    fail(path, "doc_offsets must start at 0, starts at " + std::to_string(offsets.front()));
  }
  for (size_t i = 1; i < offsets.size(); ++i) {
    if (offsets[i] < offsets[i - 1]) {
      fail(path, "doc_offsets decrease at index " + std::to_string(i) + " (" +
                     std::to_string(offsets[i - 1]) + " then " + std::to_string(offsets[i]) + ")");
    }
  }
  if (offsets.back() != tokens.size()) {
    fail(path, "doc_offsets end at " + std::to_string(offsets.back()) + " but there are " +
                   std::to_string(tokens.size()) + " tokens");
  }
  const uint64_t vocab = static_cast<uint64_t>(vocab_size);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] >= vocab) {
      fail(path, "token id " + std::to_string(tokens[i]) + " at offset " + std::to_string(i) +
                     " is not below vocab_size " + std::to_string(vocab_size));
    }
  }
}

void fsync_path(const std::string& p, int flags) {
  const int fd = ::open(p.c_str(), flags);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// ---- reading ----

// Opens dataset `name`, which must be 1-D of an unsigned integer type of `bytes` bytes (any
// unsigned size up to `bytes` if !exact); returns it and its length.
H5Id open_1d_unsigned(const std::string& path, hid_t file, const char* name, hid_t dapl,
                      size_t bytes, bool exact, hsize_t* len) {
  const std::string want = std::string("dataset '") + name + "' must be 1-D uint" +
                           std::to_string(8 * bytes) + ", found ";
  const htri_t exists = H5Lexists(file, name, H5P_DEFAULT);
  if (exists <= 0) {
    H5Eclear2(H5E_DEFAULT);
    fail(path, std::string("no dataset '") + name + "' (not a moetron token file)");
  }
  H5Id dset = check_id(H5Dopen2(file, name, dapl), H5Dclose, path,
                       std::string("'") + name + "' is not a readable dataset");
  H5Id type = check_id(H5Dget_type(dset.get()), H5Tclose, path,
                       std::string("cannot read the type of dataset '") + name + "'");
  H5Id space = check_id(H5Dget_space(dset.get()), H5Sclose, path,
                        std::string("cannot read the shape of dataset '") + name + "'");
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail_h5(path, std::string("cannot read the shape of dataset '") + name + "'");
  const bool type_ok =
      H5Tget_class(type.get()) == H5T_INTEGER && H5Tget_sign(type.get()) == H5T_SGN_NONE &&
      (exact ? H5Tget_size(type.get()) == bytes : H5Tget_size(type.get()) <= bytes);
  if (rank != 1 || !type_ok) {
    fail(path, want + std::to_string(rank) + "-D " + describe_type(type.get()));
  }
  hsize_t dims[1] = {0};
  if (H5Sget_simple_extent_dims(space.get(), dims, nullptr) < 0) {
    fail_h5(path, std::string("cannot read the shape of dataset '") + name + "'");
  }
  if (dims[0] > static_cast<hsize_t>(std::numeric_limits<int64_t>::max())) {
    fail(path, std::string("dataset '") + name + "' is too long");
  }
  *len = dims[0];
  return dset;
}

H5Id open_attr(const std::string& path, hid_t obj, const char* name, bool required) {
  const htri_t exists = H5Aexists(obj, name);
  if (exists < 0) fail_h5(path, std::string("cannot look up attribute '") + name + "'");
  if (exists == 0) {
    if (required) fail(path, std::string("missing attribute '") + name + "'");
    return H5Id();
  }
  H5Id attr = check_id(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose, path,
                       std::string("cannot open attribute '") + name + "'");
  H5Id space = check_id(H5Aget_space(attr.get()), H5Sclose, path,
                        std::string("cannot read attribute '") + name + "'");
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    fail(path, std::string("attribute '") + name + "' must be a single value");
  }
  return attr;
}

bool read_int64_attr(const std::string& path, hid_t obj, const char* name, bool required,
                     int64_t* out) {
  H5Id attr = open_attr(path, obj, name, required);
  if (!attr.ok()) return false;
  H5Id type = check_id(H5Aget_type(attr.get()), H5Tclose, path,
                       std::string("cannot read attribute '") + name + "'");
  if (H5Tget_class(type.get()) != H5T_INTEGER) {
    fail(path, std::string("attribute '") + name + "' must be an integer, found " +
                   describe_type(type.get()));
  }
  check(H5Aread(attr.get(), H5T_NATIVE_INT64, out), path,
        std::string("cannot read attribute '") + name + "'");
  return true;
}

bool read_string_attr(const std::string& path, hid_t obj, const char* name, bool required,
                      std::string* out) {
  H5Id attr = open_attr(path, obj, name, required);
  if (!attr.ok()) return false;
  const std::string what = std::string("cannot read attribute '") + name + "'";
  H5Id ftype = check_id(H5Aget_type(attr.get()), H5Tclose, path, what);
  if (H5Tget_class(ftype.get()) != H5T_STRING) {
    fail(path, std::string("attribute '") + name + "' must be a string, found " +
                   describe_type(ftype.get()));
  }
  H5Id mtype = check_id(H5Tcopy(H5T_C_S1), H5Tclose, path, what);
  check(H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get())), path, what);
  const htri_t vlen = H5Tis_variable_str(ftype.get());
  if (vlen < 0) fail_h5(path, what);
  if (vlen > 0) {
    check(H5Tset_size(mtype.get(), H5T_VARIABLE), path, what);
    char* p = nullptr;
    check(H5Aread(attr.get(), mtype.get(), &p), path, what);
    *out = p != nullptr ? std::string(p) : std::string();
    H5free_memory(p);
  } else {
    const size_t size = H5Tget_size(ftype.get());
    if (size == 0) fail_h5(path, what);
    check(H5Tset_size(mtype.get(), size), path, what);
    check(H5Tset_strpad(mtype.get(), H5T_STR_NULLPAD), path, what);
    std::string buf(size, '\0');
    check(H5Aread(attr.get(), mtype.get(), buf.data()), path, what);
    buf.resize(strnlen(buf.c_str(), size));
    *out = std::move(buf);
  }
  return true;
}

// Reads `count` elements of a 1-D dataset from `start` as `mem_type` (caller holds the lock).
void read_range(const std::string& path, hid_t dset, hid_t file_space, hid_t mem_type,
                hsize_t start, hsize_t count, void* out, const char* name) {
  const std::string what = std::string("cannot read dataset '") + name + "' [" +
                           std::to_string(start) + ", " + std::to_string(start + count) + ")";
  check(H5Sselect_hyperslab(file_space, H5S_SELECT_SET, &start, nullptr, &count, nullptr), path,
        what);
  H5Id mem = check_id(H5Screate_simple(1, &count, nullptr), H5Sclose, path, what);
  check(H5Dread(dset, mem_type, mem.get(), file_space, H5P_DEFAULT, out), path, what);
}

}  // namespace

struct TokenFile::Impl {
  H5Id file;
  H5Id tokens;
  H5Id tokens_space;  // reused for hyperslab selections (under the mutex)
  H5Id offsets;
  H5Id offsets_space;
};

TokenFile::TokenFile(const std::string& path) : path_(path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) fail(path, "no such file");
    fail(path, std::string("cannot access: ") + std::strerror(errno));
  }
  if (S_ISDIR(st.st_mode)) fail(path, "is a directory, not a token file");
  if (::access(path.c_str(), R_OK) != 0) {
    fail(path, std::string("cannot read: ") + std::strerror(errno));
  }

  std::lock_guard<std::mutex> lock(hdf5_mutex());
  quiet_hdf5();
  auto impl = std::make_unique<Impl>();  // after the lock: closed under it if we throw
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    fail(path, "not an HDF5 file");
  }
  H5Id fapl = check_id(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, path, "cannot open");
  check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), path, "cannot open");
  impl->file = check_id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()), H5Fclose, path,
                        "cannot open HDF5 file (truncated or corrupt?)");
  const hid_t file = impl->file.get();

  H5Id dapl = check_id(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose, path, "cannot open");
  check(H5Pset_chunk_cache(dapl.get(), kChunkCacheSlots, kChunkCacheBytes,
                           H5D_CHUNK_CACHE_W0_DEFAULT),
        path, "cannot open");
  hsize_t n_tokens = 0, n_offsets = 0;
  impl->tokens = open_1d_unsigned(path, file, "tokens", dapl.get(), 4, true, &n_tokens);
  impl->tokens_space = check_id(H5Dget_space(impl->tokens.get()), H5Sclose, path,
                                "cannot read the shape of dataset 'tokens'");
  impl->offsets = open_1d_unsigned(path, file, "doc_offsets", H5P_DEFAULT, 8, false, &n_offsets);
  impl->offsets_space = check_id(H5Dget_space(impl->offsets.get()), H5Sclose, path,
                                 "cannot read the shape of dataset 'doc_offsets'");
  if (n_offsets == 0) fail(path, "dataset 'doc_offsets' is empty (needs n_docs+1 entries)");
  uint64_t first = 0, last = 0;
  read_range(path, impl->offsets.get(), impl->offsets_space.get(), H5T_NATIVE_UINT64, 0, 1, &first,
             "doc_offsets");
  read_range(path, impl->offsets.get(), impl->offsets_space.get(), H5T_NATIVE_UINT64, n_offsets - 1,
             1, &last, "doc_offsets");
  if (first != 0 || last != n_tokens) {
    fail(path, "dataset 'doc_offsets' is inconsistent: runs from " + std::to_string(first) +
                   " to " + std::to_string(last) +
                   ", expected 0 to n_tokens = " + std::to_string(n_tokens));
  }

  std::string format;
  read_string_attr(path, file, "format", true, &format);
  if (format != kFormat) {
    fail(path, "attribute 'format' is '" + format + "', expected '" + kFormat + "'");
  }
  TokenFileInfo info;
  info.n_tokens = static_cast<int64_t>(n_tokens);
  info.n_docs = static_cast<int64_t>(n_offsets - 1);
  read_int64_attr(path, file, "vocab_size", true, &info.vocab_size);
  if (info.vocab_size <= 0 || info.vocab_size > kMaxVocab) {
    fail(path,
         "attribute 'vocab_size' must be in [1, 2^32], is " + std::to_string(info.vocab_size));
  }
  read_string_attr(path, file, "tokenizer", true, &info.tokenizer);
  read_string_attr(path, file, "source", false, &info.source);
  int64_t stored = 0;
  if (read_int64_attr(path, file, "n_tokens", false, &stored) && stored != info.n_tokens) {
    fail(path, "attribute 'n_tokens' = " + std::to_string(stored) + " but dataset 'tokens' has " +
                   std::to_string(info.n_tokens));
  }
  if (read_int64_attr(path, file, "n_docs", false, &stored) && stored != info.n_docs) {
    fail(path, "attribute 'n_docs' = " + std::to_string(stored) +
                   " but dataset 'doc_offsets' describes " + std::to_string(info.n_docs));
  }
  info_ = std::move(info);
  impl_ = std::move(impl);
}

TokenFile::~TokenFile() {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  impl_.reset();
}

void TokenFile::read(int64_t start, int64_t n, uint32_t* out) const {
  const int64_t total = info_.n_tokens;
  if (start < 0 || n < 0 || start > total || n > total - start) {
    fail(path_, "read of " + std::to_string(n) + " tokens at offset " + std::to_string(start) +
                    " is out of range (file has " + std::to_string(total) + " tokens)");
  }
  if (n == 0) return;
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    quiet_hdf5();
    read_range(path_, impl_->tokens.get(), impl_->tokens_space.get(), H5T_NATIVE_UINT32,
               static_cast<hsize_t>(start), static_cast<hsize_t>(n), out, "tokens");
  }
  const uint64_t vocab = static_cast<uint64_t>(info_.vocab_size);
  for (int64_t i = 0; i < n; ++i) {
    if (out[i] >= vocab) {
      fail(path_, "token id " + std::to_string(out[i]) + " at offset " + std::to_string(start + i) +
                      " is not below vocab_size " + std::to_string(info_.vocab_size) +
                      " (corrupt file or wrong vocab_size)");
    }
  }
}

std::vector<uint64_t> TokenFile::doc_offsets(int64_t d, int64_t n) const {
  const int64_t docs = info_.n_docs;
  if (d < 0 || n < 0 || d > docs || n > docs - d) {
    fail(path_, "doc_offsets of " + std::to_string(n) + " documents from document " +
                    std::to_string(d) + " is out of range (file has " + std::to_string(docs) +
                    " documents)");
  }
  std::vector<uint64_t> out(static_cast<size_t>(n) + 1);
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    quiet_hdf5();
    read_range(path_, impl_->offsets.get(), impl_->offsets_space.get(), H5T_NATIVE_UINT64,
               static_cast<hsize_t>(d), out.size(), out.data(), "doc_offsets");
  }
  const uint64_t total = static_cast<uint64_t>(info_.n_tokens);
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] > total || (i > 0 && out[i] < out[i - 1])) {
      fail(path_, "dataset 'doc_offsets' is inconsistent at index " +
                      std::to_string(d + static_cast<int64_t>(i)) + " (value " +
                      std::to_string(out[i]) + ", n_tokens " + std::to_string(total) + ")");
    }
  }
  return out;
}

void write_token_file(const std::string& path, const std::vector<uint32_t>& tokens,
                      const std::vector<uint64_t>& doc_offsets, int64_t vocab_size,
                      const std::string& tokenizer, const std::string& source) {
  validate_for_write(path, tokens, doc_offsets, vocab_size);
  const std::string tmp = path + ".tmp";
  const size_t slash = path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    fail(path, "cannot write: directory " + dir + " does not exist");
  }
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  quiet_hdf5();
  try {
    H5Id fapl = check_id(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, path, "cannot create " + tmp);
    check(H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG), path, "cannot create " + tmp);
    H5Id file = check_id(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose,
                         path, "cannot create " + tmp);
    write_dataset(path, file.get(), "tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, tokens.data(),
                  tokens.size());
    write_dataset(path, file.get(), "doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64,
                  doc_offsets.data(), doc_offsets.size());
    const int64_t n_docs = static_cast<int64_t>(doc_offsets.size()) - 1;
    write_int64_attr(path, file.get(), "vocab_size", vocab_size);
    write_string_attr(path, file.get(), "tokenizer", tokenizer);
    write_string_attr(path, file.get(), "source", source);
    write_int64_attr(path, file.get(), "n_docs", n_docs);
    write_int64_attr(path, file.get(), "n_tokens", static_cast<int64_t>(tokens.size()));
    write_string_attr(path, file.get(), "format", kFormat);
    check(H5Fflush(file.get(), H5F_SCOPE_LOCAL), path, "cannot flush " + tmp);
    if (!file.close()) fail_h5(path, "cannot close " + tmp);
    fsync_path(tmp, O_RDONLY);
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      fail(path, "cannot rename " + tmp + " to it: " + std::strerror(errno));
    }
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  // Make the rename itself durable; failure here loses nothing already visible.
  fsync_path(dir, O_RDONLY | O_DIRECTORY);
}

}  // namespace moetron::data
