// The CUDA emulator's host side (tests/cuda_emu/device.h says what it is for and what it cannot
// check): the block scheduler that runs a kernel's threads as fibers, and the CUDA runtime calls
// the backend makes, on host memory.
//
// Scheduler: run_grid runs the blocks in order; for each, one fiber per thread (stacks kept
// between launches; the switch is a few instructions of its own, not ucontext's swapcontext, which
// makes a system call per switch and under ASan clears the whole stack's shadow each time). A sweep
// resumes every runnable thread until it finishes or reaches a barrier; then the barriers whose
// threads have all arrived are released (a warp's first, then the block's); when none can be, the
// kernel would hang on the GPU: the process stops, naming the kernel, the block and what each
// waiting thread waits at. Under ASan the switches are announced
// (__sanitizer_start/finish_switch_fiber) so that it follows the stacks.
//
// Under CUDA_EMU_SCHEDULE=shuffle:<seed> (streams.cpp) the blocks run in a random order, and each
// sweep resumes the block's threads in a random order.
//
// Runtime: one device (an H200's limits), memory from the host heap; launches, copies, fills and
// stream-ordered frees are enqueued on their stream and run when streams.cpp's schedule says
// (cudaFreeAsync's block stays allocated until its turn; copies from pageable host memory take
// their bytes when called, copies into it wait for their stream, as CUDA's do); the default
// memory pool's reserved memory and its high mark as the most stream-ordered bytes ever live (a
// pool that keeps what is freed holds that much). Copies with an explicit direction check that the
// device side is emulated device memory: a host pointer passed where a device one belongs is an
// error here too.
#include <cuda_runtime_api.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/cuda_emu/device.h"
#include "tests/cuda_emu/streams.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#else
#define CUDA_EMU_ASAN 0
#endif
#if defined(MOETRON_TSAN)  // this file is built without -fsanitize=thread (CMakeLists.txt)
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#define CUDA_EMU_TSAN 1
#else
#define CUDA_EMU_TSAN 0
#endif

// emu_switch(save, to): saves the callee-saved registers on the current stack and its stack
// pointer in *save, then continues on the stack `to` (one emu_switch saved, or one fiber_stack
// laid out). x86-64 System V.
extern "C" void emu_switch(void** save, void* to);
asm(R"(
  .text
  .p2align 4
  .globl emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");

#if CUDA_EMU_TSAN
// The race detector's options (TSAN_OPTIONS adds to them): the interceptors' own accesses
// unchecked — the host's memcpy and memset of whole test tensors, not the kernels' accesses, and
// most of the suite's time under TSan (the emulated NCCL's and streams' copies run on the host).
extern "C" const char* __tsan_default_options() { return "ignore_interceptors_accesses=1"; }
#endif

namespace cuda_emu {

uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;

namespace {

// ---------------------------------------------------------------- scheduler

constexpr size_t kStack = 512 * 1024;  // per thread (ASan's redzones make frames larger)

enum class State { Ready, AtBlock, AtWarp, Done };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  char* stack = nullptr;
  State st = State::Ready;
  unsigned mask = 0;      // AtWarp: the lanes named
  const char* what = "";  // the barrier waited at
  bool orders = false;    // the barrier orders memory (__syncthreads, __syncwarp; not a shuffle)
  // warp_exchange: the value posted and where the partner's goes
  unsigned char posted[16];
  size_t bytes = 0;
  int src = -1;
  void* out = nullptr;
  void* fake_stack = nullptr;  // ASan's fake frames of this stack while switched out
};

struct Grid {
  const char* name = "";
  std::vector<uint64_t> warp_epoch;  // per warp: a number no other (block, warp, release) has
  uint64_t epochs = 0;
  Body* body = nullptr;
  std::vector<Fiber> fibers;  // this block's threads, x fastest
  int current = -1;
  void* sched_sp = nullptr;
  void* sched_fake_stack = nullptr;  // ASan: the scheduler's stack's fake frames and extent
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  std::mt19937_64 order;  // shuffle: the orders of blocks and of each sweep's threads
  std::vector<int> sweep;
};
Grid g;
std::vector<char*> stack_pool;

// ---------------------------------------------------------------- the race detector (TSan)
// In the ThreadSanitizer build each stack of stack_pool has a TSan fiber, and every switch to and
// from a thread tells TSan whose accesses follow, without ordering the two (so the fixed order in
// which the emulator runs threads orders nothing). What orders threads is what orders them on a
// GPU: the launch (everything the host did before it, for every thread of the grid), a barrier
// that orders memory (each of its threads' accesses before it, for each after it: __syncthreads
// for the block, __syncwarp for the lanes it names; a shuffle or a wmma operation orders only the
// values it exchanges) and the grid's end (every thread's accesses, for the host after it). An
// access to the same byte by two threads with neither ordered before the other, one of them a
// write and not both atomic, is a race TSan reports, with both threads' stacks.
//
// Which blocks: a synchronisation costs TSan time in proportion to the fibers there are (a vector
// clock each), two per thread at each barrier: watching every block, one fp8 quantiser test had
// not finished after three minutes (47 s now). So the race detector watches the corner blocks of
// each grid (first and last along each dimension: the tails of every partial tile) and the middle
// one, at most nine, and the threads of the others run with their accesses ignored
// (CUDA_EMU_RACE_BLOCKS=all watches every block). A race that only some interior blocks have, by
// their data, is not seen.
//
// What it cannot see: races between the same thread index of two blocks (one fiber per stack,
// kept from block to block, so its program order chains them), and between two blocks where an
// earlier barrier of the first already ordered the access for that fiber. The shared memory is
// mapped anew for each block (smem, below), so it carries nothing over.
namespace race {
#if CUDA_EMU_TSAN
std::vector<void*> fibers;  // per stack of stack_pool
void* host = nullptr;       // the context the grid was launched from
char launched, finished;    // sync addresses: host -> every thread; every thread -> host

constexpr unsigned kNoSync = __tsan_switch_to_fiber_no_sync;
void new_stack() {
  void* f = __tsan_create_fiber(0);
  char name[64];
  std::snprintf(name, sizeof name, "emulated GPU thread %zu of its block", fibers.size());
  __tsan_set_fiber_name(f, name);
  fibers.push_back(f);
}
void to_thread(int i) { __tsan_switch_to_fiber(fibers[static_cast<size_t>(i)], kNoSync); }
void to_host() { __tsan_switch_to_fiber(host, kNoSync); }
bool watching = true;  // the block running is watched

// Whether block b of the grid is watched (above).
bool watched(uint3 b, dim3 grid) {
  static const bool all = [] {
    const char* e = std::getenv("CUDA_EMU_RACE_BLOCKS");
    return e && std::string(e) == "all";
  }();
  const auto edge = [](unsigned i, unsigned n) { return i == 0 || i + 1 == n; };
  const auto middle = [](unsigned i, unsigned n) { return i == n / 2; };
  return all || (edge(b.x, grid.x) && edge(b.y, grid.y) && edge(b.z, grid.z)) ||
         (middle(b.x, grid.x) && middle(b.y, grid.y) && middle(b.z, grid.z));
}
// Before and after a block's threads run: ignore the accesses of those of an unwatched block.
void block_begin(uint3 b, dim3 grid, int threads) {
  watching = watched(b, grid);
  if (watching) return;
  for (int i = 0; i < threads; ++i) to_thread(i), __tsan_ignore_thread_begin();
  to_host();
}
void block_end(int threads) {
  if (watching) return;
  for (int i = 0; i < threads; ++i) to_thread(i), __tsan_ignore_thread_end();
  to_host();
}
// The launch orders the host's accesses before it for the grid's `threads` fibers (once per grid:
// a fiber runs its thread of each block in turn, in program order); the scheduler's own accesses
// (the shared memory's refill) are not the kernel's: ignored until the grid ends. Each
// synchronisation costs TSan time in proportion to the fibers there are, so per grid, not per
// block.
void grid_begin(int threads) {
  host = __tsan_get_current_fiber();
  __tsan_release(&launched);
  for (int i = 0; i < threads; ++i) to_thread(i), __tsan_acquire(&launched);
  to_host();
  __tsan_ignore_thread_begin();
}
// The grid's end orders every fiber's accesses before the host's next ones.
void grid_end(int threads) {
  __tsan_ignore_thread_end();
  for (int i = 0; i < threads; ++i) to_thread(i), __tsan_release(&finished);
  to_host();
  __tsan_acquire(&finished);
}
// A barrier releasing the threads `ids` orders each one's accesses before it for each after it (a
// fresh sync address each time: TSan drops what an address carries when its block is freed).
void order(const std::vector<int>& ids) {
  char* token = static_cast<char*>(std::malloc(1));
  for (const int m : ids) to_thread(m), __tsan_release(token);
  for (const int m : ids) to_thread(m), __tsan_acquire(token);
  to_host();
  std::free(token);
}
// __syncwarp releasing the lanes `members` of warp w.
void warp_barrier(int w, unsigned members) {
  if (!watching) return;
  std::vector<int> ids;
  for (int o = 0; o < 32; ++o)
    if (members >> o & 1u) ids.push_back(w * 32 + o);
  order(ids);
}
// __syncthreads releasing the block's threads that wait there.
void block_barrier() {
  if (!watching) return;
  std::vector<int> ids;
  for (size_t i = 0; i < g.fibers.size(); ++i)
    if (g.fibers[i].st == State::AtBlock) ids.push_back(static_cast<int>(i));
  order(ids);
}
#else
void new_stack() {}
void grid_begin(int) {}
void grid_end(int) {}
void block_begin(uint3, dim3, int) {}
void block_end(int) {}
void to_thread(int) {}
void to_host() {}
void warp_barrier(int, unsigned) {}
void block_barrier() {}
#endif
}  // namespace race

[[noreturn]] void fail(const std::string& msg) {
  std::fprintf(stderr, "cuda_emu: kernel %s, block (%u,%u,%u): %s\n", g.name, block_idx.x,
               block_idx.y, block_idx.z, msg.c_str());
  std::abort();
}

// ---------------------------------------------------------------- shared memory
// A block's shared memory is one arena (mapped once): the launch's dynamic shared memory at its
// start, then each static __shared__ variable, placed where the first thread of the launch to
// reach its declaration asks for it (cu_to_cpp.py turns each declaration into a reference into
// the arena). Before each block, the dynamic part and every variable placed are filled with 0xff
// bytes (NaN): on a GPU a new block's shared memory holds whatever was left there, so a kernel
// that reads it before writing it is wrong, and must not pass on the last block's values. Under
// ASan the rest of the arena is poisoned (a 32-byte gap between variables), so an access past a
// variable or past the dynamic size is reported; under TSan the used part is mapped afresh before
// each block, which clears what TSan knows of it (the last block's threads are not ordered before
// this block's, and their accesses must not be compared), and before a launch what the last
// launch used (its variables' places may differ from this one's).
namespace smem {
constexpr size_t kOptin = 232448;      // an H100's and H200's per-block opt-in (227 KiB)
constexpr size_t kStatic = 48 * 1024;  // CUDA's limit on a block's static shared memory
constexpr size_t kGap = 32, kPage = 4096;
constexpr size_t kArena = (kOptin + 2 * kStatic + kPage - 1) / kPage * kPage;

struct Var {
  const void* key;
  size_t offset, bytes;
};
unsigned char* arena = nullptr;
size_t dyn = 0, end = 0, statics = 0;  // dynamic bytes; the end of what is placed; static bytes
// The end of what this launch (until the next begins: the last launch) placed; beyond it the
// arena is as last mapped (TSan: untouched since it was mapped afresh).
size_t touched = 0;
std::vector<Var> vars;

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

void poison([[maybe_unused]] size_t offset, [[maybe_unused]] size_t bytes,
            [[maybe_unused]] bool on) {
#if CUDA_EMU_ASAN
  if (on)
    __asan_poison_memory_region(arena + offset, bytes);
  else
    __asan_unpoison_memory_region(arena + offset, bytes);
#endif
}

// Fills n bytes at p with 0xff, unseen by TSan (the kernel's threads did not write them).
void fill(unsigned char* p, size_t n) {
#if CUDA_EMU_TSAN
  __tsan_ignore_thread_begin();
#endif
  std::memset(p, 0xff, n);
#if CUDA_EMU_TSAN
  __tsan_ignore_thread_end();
#endif
}

// Maps [0, bytes) of the arena anew (TSan forgets it).
void remap([[maybe_unused]] size_t bytes) {
#if CUDA_EMU_TSAN
  if (bytes && mmap(arena, round_up(bytes, kPage), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
    fail("cannot map the shared memory anew");
#endif
}

void launch_begin(size_t dynamic_bytes) {
  if (!arena) {
    void* p = mmap(nullptr, kArena, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("no memory for the shared memory");
    arena = static_cast<unsigned char*>(p);
  }
  remap(touched);  // only what the last launch used (the whole arena cost TSan ~1 MiB of shadow)
  poison(0, kArena, true);
  poison(0, dynamic_bytes, false);
  vars.clear();
  dyn = dynamic_bytes;
  end = round_up(dyn, 256);
  touched = end;
  statics = 0;
}

void block_begin() {
  remap(end);
  fill(arena, dyn);
  for (const Var& v : vars) fill(arena + v.offset, v.bytes);
}

// The static variable `key`'s place (placed and filled on its first use in the launch).
void* place(const void* key, size_t bytes, size_t align) {
  for (const Var& v : vars)
    if (v.key == key) return arena + v.offset;
  const size_t offset = round_up(end + (vars.empty() ? 0 : kGap), std::max<size_t>(align, 16));
  statics += bytes;
  if (statics > kStatic) fail("more than 48 KiB of static shared memory (CUDA's limit per block)");
  if (dyn + statics > kOptin || offset + bytes > kArena)
    fail("static and dynamic shared memory together over the device's 227 KiB per block");
  vars.push_back(Var{key, offset, bytes});
  end = offset + bytes;
  touched = std::max(touched, end);
  poison(offset, bytes, false);
  fill(arena + offset, bytes);
  return arena + offset;
}
}  // namespace smem

uint3 coords(int i) {
  const unsigned x = block_dim.x, y = block_dim.y;
  return uint3{static_cast<unsigned>(i) % x, static_cast<unsigned>(i) / x % y,
               static_cast<unsigned>(i) / (x * y)};
}

// Continues on the stack saved at `to` (bottom, size: its extent, for ASan), saving this one's
// pointer in *save; ASan keeps this stack's fake frames in *fake (null: this stack is done).
void switch_stack(void** save, void* to, [[maybe_unused]] void** fake,
                  [[maybe_unused]] const void* bottom, [[maybe_unused]] size_t size) {
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(fake, bottom, size);
#endif
  emu_switch(save, to);
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake ? *fake : nullptr, nullptr, nullptr);
#endif
}

// From the running thread back to the scheduler.
void yield() {
  Fiber& f = g.fibers[static_cast<size_t>(g.current)];
  race::to_host();
  switch_stack(&f.sp, g.sched_sp, f.st == State::Done ? nullptr : &f.fake_stack, g.sched_bottom,
               g.sched_size);
}

void fiber_main() {
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g.sched_bottom, &g.sched_size);
#endif
  (*g.body)();
  g.fibers[static_cast<size_t>(g.current)].st = State::Done;
  yield();  // never resumed
  std::abort();
}

void resume(int i) {
  Fiber& f = g.fibers[static_cast<size_t>(i)];
  g.current = i;
  thread_idx = coords(i);
  race::to_thread(i);
  switch_stack(&g.sched_sp, f.sp, &g.sched_fake_stack, f.stack, kStack);
}

// Releases every warp whose named live lanes all wait at a warp barrier with the same mask, then
// the block if all its live threads wait at __syncthreads. False: nothing could be released.
bool release() {
  bool any = false;
  const int n = static_cast<int>(g.fibers.size());
  for (int w = 0; w * 32 < n; ++w) {
    Fiber* lanes = &g.fibers[static_cast<size_t>(w) * 32];
    const int width = std::min(32, n - w * 32);
    unsigned live = 0, waiting = 0;  // lanes not exited; lanes at a warp barrier
    for (int l = 0; l < width; ++l) {
      live |= lanes[l].st != State::Done ? 1u << l : 0u;
      waiting |= lanes[l].st == State::AtWarp ? 1u << l : 0u;
    }
    for (int l = 0; l < width; ++l) {
      if (!(waiting >> l & 1u)) continue;
      const unsigned mask = lanes[l].mask, members = mask & live;
      bool all = (members & waiting) == members;
      for (int o = 0; o < width && all; ++o) all = !(members >> o & 1u) || lanes[o].mask == mask;
      if (!all) continue;
      for (int o = 0; o < width; ++o) {  // shuffles: each takes its source lane's posted value
        Fiber& f = lanes[o];
        if (!(members >> o & 1u) || !f.out) continue;
        if (f.src >= width || !(members >> f.src & 1u) || lanes[f.src].bytes != f.bytes)
          fail("thread " + std::to_string(w * 32 + o) + " shuffles from lane " +
               std::to_string(f.src) + ", which is not in the exchange (its value is undefined)");
        std::memcpy(f.out, lanes[f.src].posted, f.bytes);
      }
      for (int o = 0; o < width; ++o)  // __syncwarp (a shuffle orders its values, no more)
        all = all && (!(members >> o & 1u) || lanes[o].orders);
      if (all) race::warp_barrier(w, members);
      for (int o = 0; o < width; ++o)
        if (members >> o & 1u) lanes[o].st = State::Ready, lanes[o].out = nullptr;
      g.warp_epoch[static_cast<size_t>(w)] = ++g.epochs;
      waiting &= ~members;
      any = true;
    }
  }
  if (any) return true;
  bool block = false;
  for (const Fiber& f : g.fibers) {
    if (f.st == State::AtWarp) return false;
    block = block || f.st == State::AtBlock;
  }
  if (!block) return false;
  race::block_barrier();
  for (Fiber& f : g.fibers)
    if (f.st == State::AtBlock) f.st = State::Ready;
  return true;
}

[[noreturn]] void deadlock() {
  std::string msg = "the block hangs: no barrier can complete;";
  int shown = 0;
  for (size_t i = 0; i < g.fibers.size() && shown < 8; ++i) {
    const Fiber& f = g.fibers[i];
    if (f.st == State::Done) continue;
    char buf[128];
    std::snprintf(buf, sizeof buf, " thread %zu at %s (mask %08x);", i, f.what, f.mask);
    msg += buf;
    ++shown;
  }
  fail(msg);
}

// At least n stacks (and the race detector's fibers) in the pool.
void ensure_stacks(int n) {
  while (stack_pool.size() < static_cast<size_t>(n)) {
    void* p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("no memory for thread stacks");
    stack_pool.push_back(static_cast<char*>(p));
    race::new_stack();
  }
}

void run_block() {
  const int n = static_cast<int>(g.fibers.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = g.fibers[static_cast<size_t>(i)];
    f = Fiber{};
    f.stack = stack_pool[static_cast<size_t>(i)];
    // what emu_switch pops: six registers, then fiber_main as the return address, above it a
    // slot in place of fiber_main's own return address (the stack 16-byte aligned at its call)
    void** top = reinterpret_cast<void**>(f.stack + kStack);
    top[-1] = nullptr;
    top[-2] = reinterpret_cast<void*>(&fiber_main);
    for (int r = 3; r <= 8; ++r) top[-r] = nullptr;
    f.sp = top - 8;
  }
  smem::block_begin();
  g.warp_epoch.assign(static_cast<size_t>((n + 31) / 32), 0);
  for (uint64_t& e : g.warp_epoch) e = ++g.epochs;
  g.sweep.resize(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) g.sweep[static_cast<size_t>(i)] = i;
  for (;;) {
    bool ran = false;
    if (shuffling()) std::shuffle(g.sweep.begin(), g.sweep.end(), g.order);
    for (const int i : g.sweep)
      if (g.fibers[static_cast<size_t>(i)].st == State::Ready) resume(i), ran = true;
    bool live = false;
    for (const Fiber& f : g.fibers) live = live || f.st != State::Done;
    if (!live) return;
    if (!release() && !ran) deadlock();
  }
}

void wait_at(State st, unsigned mask, const char* what, bool orders) {
  if (g.current < 0) {
    std::fprintf(stderr, "cuda_emu: %s outside a kernel\n", what);
    std::abort();
  }
  Fiber& f = g.fibers[static_cast<size_t>(g.current)];
  f.st = st;
  f.mask = mask;
  f.what = what;
  f.orders = orders;
  yield();
}

// ---------------------------------------------------------------- runtime state

std::mutex mu;
cudaError_t last_error = cudaSuccess;
struct Block {
  size_t bytes;
  bool device, async;
  bool freeing = false;  // cudaFreeAsync called: freed when its stream gets there
};
std::map<const char*, Block> blocks;  // every allocation, by start
// stream-ordered bytes live, and the most ever live: what a pool that keeps every freed block
// (kernels/cuda/runtime.cpp's release threshold "never") has reserved, so its high mark too
uint64_t async_live = 0, async_reserved = 0;
std::map<const void*, int> smem_optin;  // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
constexpr int kSmemOptin = static_cast<int>(smem::kOptin);
constexpr size_t kSmemDefault = 48 * 1024;

void* allocate(size_t bytes, bool device, bool async) {
  void* p = nullptr;  // the exact size: ASan sees a byte past the end
  if (posix_memalign(&p, 256, std::max<size_t>(bytes, 1)) != 0) return nullptr;
  std::lock_guard<std::mutex> lk(mu);
  blocks[static_cast<const char*>(p)] = Block{bytes, device, async};
  if (async) async_reserved = std::max(async_reserved, async_live += bytes);
  return p;
}

// Frees p now, after every stream's work (cudaFree and cudaFreeHost synchronise the device), or
// when stream s gets there (`ordered`: cudaFreeAsync; the pool's accounts change now, in the
// stream's order of allocations and frees, which is the call order: one stream allocates).
cudaError_t release_block(void* p, bool device, bool ordered, cudaStream_t s) {
  if (!p) return cudaSuccess;
  if (!ordered) synchronize_all();
  {
    std::lock_guard<std::mutex> lk(mu);
    const auto it = blocks.find(static_cast<const char*>(p));
    if (it == blocks.end() || it->second.device != device || it->second.freeing)
      return set_error(cudaErrorInvalidValue);
    if (it->second.async) async_live -= it->second.bytes;
    it->second.freeing = true;
  }
  const auto erase = [p] {
    std::lock_guard<std::mutex> lk(mu);
    blocks.erase(static_cast<const char*>(p));
    std::free(p);
  };
  if (ordered)
    enqueue(s, erase);
  else
    erase();
  return cudaSuccess;
}

// The allocation holding p, or null (mu held).
const std::pair<const char* const, Block>* containing(const void* p) {
  const char* q = static_cast<const char*>(p);
  auto it = blocks.upper_bound(q);
  if (it == blocks.begin()) return nullptr;
  --it;
  return q < it->first + std::max<size_t>(it->second.bytes, 1) ? &*it : nullptr;
}

// Whether [p, p + n) lies in one emulated device allocation.
bool is_device(const void* p, size_t n) {
  std::lock_guard<std::mutex> lk(mu);
  const auto* b = containing(p);
  return b && b->second.device && static_cast<const char*>(p) + n <= b->first + b->second.bytes;
}

// Whether p is page-locked host memory (cudaHostAlloc's).
bool is_pinned(const void* p) {
  std::lock_guard<std::mutex> lk(mu);
  const auto* b = containing(p);
  return b && !b->second.device;
}

thread_local bool in_kernel = false;  // this host thread runs a grid

// Runs body() as every thread of every block (blocks in order, or shuffled).
void run_grid(const char* name, dim3 grid, dim3 block, size_t smem, Body& body) {
  static std::mutex launch_mu;  // one grid at a time (the emulator's state is global)
  std::lock_guard<std::mutex> lk(launch_mu);
  in_kernel = true;
  g.name = name;
  g.body = &body;
  const int threads = static_cast<int>(block.x * block.y * block.z);
  ensure_stacks(threads);
  race::grid_begin(threads);
  smem::launch_begin(smem);
  g.fibers.assign(static_cast<size_t>(threads), Fiber{});
  grid_dim = grid;
  block_dim = block;
  const uint64_t blocks_n = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order;
  if (shuffling()) {
    g.order.seed(draw(UINT64_MAX));
    order.resize(blocks_n);
    for (uint64_t i = 0; i < blocks_n; ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), g.order);
  }
  for (uint64_t i = 0; i < blocks_n; ++i) {
    const uint64_t b = order.empty() ? i : order[i];
    block_idx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                      static_cast<unsigned>(b / (uint64_t(grid.x) * grid.y))};
    race::block_begin(block_idx, grid, threads);
    run_block();
    race::block_end(threads);
  }
  g.current = -1;
  g.body = nullptr;
  race::grid_end(threads);
  in_kernel = false;
}

}  // namespace

cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

void syncthreads(const char* what) { wait_at(State::AtBlock, 0, what, true); }
void syncwarp(unsigned mask, const char* what, bool orders) {
  wait_at(State::AtWarp, mask, what, orders);
}
void warp_exchange(unsigned mask, const void* mine, void* theirs, size_t bytes, int src) {
  if (bytes > 16) fail("a shuffle of more than 16 bytes");
  Fiber& f = g.fibers[static_cast<size_t>(g.current)];
  std::memcpy(f.posted, mine, bytes);
  f.bytes = bytes;
  f.src = src;
  f.out = theirs;
  wait_at(State::AtWarp, mask, "__shfl_sync", false);
}

int warp_index() { return g.current / 32; }
int lane_index() { return g.current % 32; }
uint64_t warp_epoch() { return g.warp_epoch[static_cast<size_t>(g.current / 32)]; }

void* dynamic_smem_bytes(size_t align) {
  if (reinterpret_cast<uintptr_t>(smem::arena) % align) fail("dynamic shared memory misaligned");
  return smem::arena;
}
void* static_smem_bytes(const void* key, size_t bytes, size_t align) {
  return smem::place(key, bytes, align);
}

void launch(const char* name, const void* kernel, dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, std::shared_ptr<Body> body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  size_t limit = kSmemDefault;
  {
    std::lock_guard<std::mutex> lk(mu);
    const auto it = smem_optin.find(kernel);
    if (it != smem_optin.end()) limit = static_cast<size_t>(it->second);
  }
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535) {
    std::fprintf(stderr, "cuda_emu: kernel %s: invalid launch (grid %u,%u,%u block %u,%u,%u)\n",
                 name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
    set_error(cudaErrorInvalidConfiguration);
    return;
  }
  if (smem > limit) {
    std::fprintf(stderr, "cuda_emu: kernel %s: %zu bytes of dynamic shared memory, %zu allowed\n",
                 name, smem, limit);
    set_error(cudaErrorInvalidValue);
    return;
  }
  if (in_kernel) {
    std::fprintf(stderr, "cuda_emu: kernel %s launched from inside a kernel\n", name);
    std::abort();
  }
  enqueue(stream, [=] { run_grid(name, grid, block, smem, *body); });
}

}  // namespace cuda_emu

// ---------------------------------------------------------------- the CUDA runtime API

using cuda_emu::set_error;

extern "C" {

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  return d == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (d != 0) return set_error(cudaErrorInvalidDevice);
  switch (a) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *v = cuda_emu::kSmemOptin;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *v = 132;
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *v = 1024;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *v = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *v = 0;
      return cudaSuccess;
    default:
      return set_error(cudaErrorInvalidValue);
  }
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_emu::last_error;
  cuda_emu::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return cuda_emu::last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    default:
      return "cudaError (emulated)";
  }
}
const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

cudaError_t cudaFuncSetAttribute(const void* f, cudaFuncAttribute a, int v) {
  if (a != cudaFuncAttributeMaxDynamicSharedMemorySize || v < 0 || v > cuda_emu::kSmemOptin)
    return set_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lk(cuda_emu::mu);
  cuda_emu::smem_optin[f] = v;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t n) {
  *p = cuda_emu::allocate(n, true, false);
  return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaMallocAsync(void** p, size_t n, cudaStream_t) {
  *p = cuda_emu::allocate(n, true, true);
  return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaFree(void* p) { return cuda_emu::release_block(p, true, false, nullptr); }
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  return cuda_emu::release_block(p, true, true, s);
}
cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) {
  *p = cuda_emu::allocate(n, false, false);
  return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* p) { return cuda_emu::release_block(p, false, false, nullptr); }
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* at, const void* p) {
  *at = cudaPointerAttributes{};
  std::lock_guard<std::mutex> lk(cuda_emu::mu);
  at->type = cudaMemoryTypeUnregistered;
  if (const auto* b = cuda_emu::containing(p)) {
    at->type = b->second.device ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
    at->devicePointer = b->second.device ? const_cast<void*>(p) : nullptr;
    at->hostPointer = b->second.device ? nullptr : const_cast<void*>(p);
  }
  return cudaSuccess;
}

// Enqueued on s: from pageable host memory the bytes are taken now (CUDA stages them before it
// returns); into pageable host memory the call returns once the copy has run (CUDA's does), so
// the stream's work before it runs first.
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind k,
                            cudaStream_t s) {
  if (n == 0) return cudaSuccess;
  const bool dst_dev = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
  const bool src_dev = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
  if ((dst_dev && !cuda_emu::is_device(dst, n)) || (src_dev && !cuda_emu::is_device(src, n)) ||
      (k == cudaMemcpyHostToDevice && cuda_emu::is_device(src, n)) ||
      (k == cudaMemcpyDeviceToHost && cuda_emu::is_device(dst, n))) {
    std::fprintf(stderr,
                 "cuda_emu: cudaMemcpy of %zu bytes: a pointer is not on the side its "
                 "direction (%d) says\n",
                 n, static_cast<int>(k));
    return set_error(cudaErrorInvalidValue);
  }
  if (k == cudaMemcpyHostToDevice && !cuda_emu::is_pinned(src)) {
    auto bytes = std::make_shared<std::vector<char>>(static_cast<const char*>(src),
                                                     static_cast<const char*>(src) + n);
    cuda_emu::enqueue(s, [=] { std::memcpy(dst, bytes->data(), n); });
    return cudaSuccess;
  }
  cuda_emu::enqueue(s, [=] { std::memmove(dst, src, n); });
  if (k == cudaMemcpyDeviceToHost && !cuda_emu::is_pinned(dst)) cuda_emu::synchronize(s);
  return cudaSuccess;
}
// The legacy default stream's copy, waited for.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
  const cudaError_t e = cudaMemcpyAsync(dst, src, n, k, nullptr);
  cuda_emu::synchronize(nullptr);
  return e;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s) {
  if (n && !cuda_emu::is_device(p, n)) return set_error(cudaErrorInvalidValue);
  if (n) cuda_emu::enqueue(s, [=] { std::memset(p, v, n); });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  const cudaError_t e = cudaMemsetAsync(p, v, n, nullptr);
  cuda_emu::synchronize(nullptr);
  return e;
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* p, int d) {
  static int pool;
  *p = reinterpret_cast<cudaMemPool_t>(&pool);
  return d == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice);
}
cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr a, void* v) {
  // the threshold is "never" (the pool keeps all): a reset high mark restarts at what it holds
  if (a == cudaMemPoolAttrReleaseThreshold ||
      (a == cudaMemPoolAttrReservedMemHigh && *static_cast<uint64_t*>(v) == 0))
    return cudaSuccess;
  return set_error(cudaErrorInvalidValue);
}
cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr a, void* v) {
  std::lock_guard<std::mutex> lk(cuda_emu::mu);
  if (a != cudaMemPoolAttrReservedMemHigh && a != cudaMemPoolAttrReservedMemCurrent)
    return set_error(cudaErrorInvalidValue);
  *static_cast<uint64_t*>(v) = cuda_emu::async_reserved;
  return cudaSuccess;
}

}  // extern "C"
