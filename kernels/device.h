// Devices and their allocators: where every buffer of moetron lives (ARCHITECTURE contract 8).
//
//   CPU    aligned host memory (64-byte alignment, the widest vector load).
//   CUDA   device memory; the CUDA backend registers a caching, stream-ordered allocator with
//          register_allocator() (until it does, asking for CUDA memory is an error).
//   Meta   allocates nothing: a buffer on it has a size and no memory. A model of any size can be
//          built on it and its bytes counted (planning: `moetron plan`).
//   Guard  a test device: host pages that are inaccessible (PROT_NONE) except while an op or the
//          communicator runs (GuardAccess). Training on it proves that no code outside the ops
//          touches activation memory — the property a CUDA backend needs.
//
// Every allocator counts what it holds (live and peak bytes, allocations and frees), so tests can
// check the analytic activation memory against real bytes and that steady state allocates nothing.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kernels/enum_words.h"

namespace moetron {

enum class Device : uint8_t { CPU, CUDA, Meta, Guard };
inline constexpr EnumWord<Device> kDeviceWords[] = {
    {Device::CPU, "cpu"}, {Device::CUDA, "cuda"}, {Device::Meta, "meta"}, {Device::Guard, "guard"}};
constexpr auto enum_words(Device) { return std::span(kDeviceWords); }
const char* device_name(Device d);
// "cpu", "cuda", "meta", "guard" -> Device (std::invalid_argument otherwise)
Device parse_device(const char* name);

struct AllocStats {
  int64_t live_bytes = 0, peak_bytes = 0, allocations = 0, frees = 0;
};

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual Device device() const = 0;
  // bytes > 0; never returns null except on the Meta device.
  void* allocate(size_t bytes);
  void deallocate(void* p, size_t bytes);
  AllocStats stats() const;
  void reset_peak();  // peak_bytes (and the reserve's high mark) from what is held now
  // The most this allocator held from its device since reset_peak(), its cache included: a
  // caching allocator that keeps freed blocks (the CUDA pool) reserves more than peak_bytes;
  // one that gives them back holds peak_bytes.
  virtual int64_t reserved_peak_bytes() const { return stats().peak_bytes; }

 protected:
  virtual void* do_allocate(size_t bytes) = 0;
  virtual void do_deallocate(void* p, size_t bytes) = 0;
  virtual void reset_reserved_peak() {}

 private:
  std::atomic<int64_t> live_{0}, peak_{0}, allocs_{0}, frees_{0};
};

// The process-wide allocator of a device.
Allocator& allocator(Device d);
// The CUDA backend installs its allocator here (the pointer must outlive every buffer).
void register_allocator(Device d, Allocator* a);

// The device new buffers are made on unless their owner names one (torch's default device):
// CPU unless a run or a test chooses otherwise (run.device).
Device default_device();
void set_default_device(Device d);

// While at least one GuardAccess exists (any thread), Guard memory is readable and writable,
// including memory allocated while it is held; the op dispatcher and the communicator hold one
// around their work. Cheap elsewhere: a counter under an uncontended mutex, no system call while
// no Guard memory exists.
class GuardAccess {
 public:
  GuardAccess();
  ~GuardAccess();
  GuardAccess(const GuardAccess&) = delete;
  GuardAccess& operator=(const GuardAccess&) = delete;
};
// Whether p points into Guard memory (what the Guard device stands in for: memory the host may
// not touch, as a GPU's). The communicators of a guard run check it (parallel/comm_checked.h).
bool is_guard_memory(const void* p);

// Makes Device::CUDA this process's accelerator number local_rank mod the node's visible count
// (the launch convention: launch/mpirun.sh), before any CUDA memory or stream exists. Throws
// std::runtime_error saying why when there is none: a build without the CUDA backend, or no
// usable GPU (the driver's reason).
void select_cuda_device(int local_rank);

}  // namespace moetron
