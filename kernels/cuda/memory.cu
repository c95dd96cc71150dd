// Memory ops on the GPU: copies (device, host to device, device to host) and zero fills, all on
// the context's stream. copy_to_host waits for the stream, since its caller reads the host memory
// next — for the work before the copy in a wait of its own, since a copy into pageable memory
// blocks inside cudaMemcpyAsync until it has run, where the hang watchdog would not see a stream
// stuck behind a dead peer's collective; copy_to_host_start records an event after its copy, which
// the HostRead waits for (the stream up to the copy, nothing enqueued later). copy_from_host does
// not wait for the stream, yet its caller may reuse the host memory at once: the bytes go through
// the staging ring below.
//
// Staging ring: kSlots pinned slots of kSlotBytes, used round robin. An upload is cut into
// slot-sized chunks; each chunk waits until its slot's previous upload has run (an event), is
// copied into the slot by the host, and is uploaded from there by a DMA copy on the stream, after
// which the slot's event is recorded. So the host blocks only on an upload kSlots chunks old; as
// that upload ran in the stream's order, the wait covers the compute queued before it. A few
// small uploads between waits (a micro-batch's tokens) therefore never wait for compute and no
// longer drain the pipeline, while an upload of more than kSlots x kSlotBytes (16 MiB), or a
// fifth one while four are still queued, does wait (holding the mutex: other uploading threads
// wait too). The DMA reads page-locked memory (no driver staging). One ring per process.
#include <array>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "kernels/cuda/ops_cuda.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int kSlots = 4;
constexpr size_t kSlotBytes = size_t(4) << 20;

struct StagingRing {
  struct Slot {
    uint8_t* host = nullptr;     // kSlotBytes of pinned memory
    cudaEvent_t done = nullptr;  // recorded after the slot's last upload
  };
  std::mutex mu;
  std::array<Slot, kSlots> slots;
  int next = 0;

  Slot& take() {
    Slot& s = slots[next];
    next = (next + 1) % kSlots;
    if (!s.host) {
      s.host = static_cast<uint8_t*>(pinned_host_allocator().allocate(kSlotBytes));
      MOETRON_CUDA_CHECK(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming));
    } else {
      wait_event(s.done, "upload (staging slot)");
    }
    return s;
  }
};
// never destroyed: the slots live as long as the process (as the streams do)
StagingRing& ring() {
  static auto& r = *new StagingRing;
  return r;
}

}  // namespace

void copy_from_host(const Exec& ex, void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t st = stream_of(ex);
  StagingRing& r = ring();
  std::lock_guard<std::mutex> lk(r.mu);
  for (size_t at = 0; at < bytes; at += kSlotBytes) {
    const size_t n = std::min(kSlotBytes, bytes - at);
    StagingRing::Slot& slot = r.take();
    std::memcpy(slot.host, static_cast<const uint8_t*>(host_src) + at, n);
    MOETRON_CUDA_CHECK(
        cudaMemcpyAsync(static_cast<uint8_t*>(dst) + at, slot.host, n, cudaMemcpyHostToDevice, st));
    MOETRON_CUDA_CHECK(cudaEventRecord(slot.done, st));
  }
}

void copy_to_host(const Exec& ex, void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  cudaStream_t s = stream_of(ex);
  wait_stream(s, "device read");  // the work before the copy, watched
  MOETRON_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s));
  wait_stream(s, "device read");  // the copy (into pinned memory it is asynchronous)
}

namespace {
void wait_read(void* e) { wait_event(*static_cast<cudaEvent_t*>(e), "device read (started)"); }
}  // namespace

HostRead copy_to_host_start(const Exec& ex, void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return HostRead();
  cudaStream_t s = stream_of(ex);
  // into pageable memory cudaMemcpyAsync returns only once the copy has run: the read would wait
  // for the whole stream, inside the call, where the hang watchdog does not see it
  cudaPointerAttributes at{};
  MOETRON_CUDA_CHECK(cudaPointerGetAttributes(&at, host_dst));
  if (at.type != cudaMemoryTypeHost)
    throw std::invalid_argument(
        "copy_to_host_start: the destination is not page-locked memory (kernels/pinned.h); a "
        "copy into pageable memory would wait for the stream before returning");
  MOETRON_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s));
  auto ev = std::shared_ptr<cudaEvent_t>(new cudaEvent_t(nullptr), [](cudaEvent_t* e) {
    if (*e) cudaEventDestroy(*e);
    delete e;
  });
  MOETRON_CUDA_CHECK(cudaEventCreateWithFlags(ev.get(), cudaEventDisableTiming));
  MOETRON_CUDA_CHECK(cudaEventRecord(*ev, s));
  return HostRead(std::move(ev), &wait_read);
}

void copy(const Exec& ex, void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  MOETRON_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_of(ex)));
}

void fill_zero(const Exec& ex, void* p, size_t bytes) {
  if (bytes == 0) return;
  MOETRON_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_of(ex)));
}

}  // namespace moetron::kernels::gpu
