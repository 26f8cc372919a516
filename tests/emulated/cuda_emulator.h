// A host emulator for the CUDA kernels: the real kernel source, compiled by the host compiler,
// runs with every CUDA thread of a block as a fiber, and the few things a CPU does not have are
// emulated lane by lane. Written for the tensor-core kernels of kernels/cuda/attention_kernels.cuh
// and the row kernels of kernels/cuda/layernorm_kernels.cuh and layerscale_kernels.cuh (their
// tests are attention_emulated.cpp and layernorm_emulated.cpp beside this file), usable by any
// kernel that keeps to what is below.
//
// What it emulates, and how:
//  - CUDA threads: each thread of a block is a fiber with its own stack. One thread runs at a
//    time, and threads switch only where CUDA threads wait for each other (__syncthreads and the
//    warp-wide instructions), so every interleaving it produces is one a GPU may produce. Blocks
//    run one after another (races between blocks go unseen); the kernel sees threadIdx,
//    blockIdx, blockDim and gridDim, in up to three dimensions. Threads form warps in the order
//    of their linear index (x fastest, then y, then z), as on the GPU; a block whose size is no
//    multiple of 32 ends with a partial warp, which may run any code but the warp-wide
//    instructions (their full mask names lanes that do not exist).
//  - Interleavings: each block draws one of two schedules. Random: the next thread to run is any
//    runnable one. Warp ahead: one warp runs as far as it can before another moves, which exposes
//    a warp that reuses shared memory other warps still read (a missing __syncthreads).
//  - Warp-wide instructions (the four shuffles, __syncwarp, ldmatrix, mma.sync): every lane brings
//    its operands and waits; the last lane to arrive checks that all 32 are at the same
//    instruction kind, computes every lane's result, and wakes the others. Shuffles follow the
//    CUDA Programming Guide ("Warp Shuffle Functions", widths included), the others the PTX ISA
//    tables named at each function. mma products are exact, summed in double and rounded once to
//    fp32: the hardware's summation order is unspecified, and this is at least as accurate.
//  - cp.async (16 bytes, zero-fill) with commit_group and wait_group: each block draws when its
//    copies land, at issue (as early as allowed) or at the wait_group that retires their group
//    (as late as allowed), so reading a tile before waiting for it, or overwriting a tile other
//    warps still read, changes the results.
//  - Memory: global buffers (DeviceBuffer), the block's dynamic shared memory and every fiber
//    stack end at a PROT_NONE guard page, so an access past the end faults on the spot; the
//    slack bytes between a buffer and the guard page before it (and the few after it, when its
//    size is no multiple of its alignment) hold a canary, checked after every block and launch.
//    ldmatrix and cp.async addresses, and the global addresses of cp.async, are checked against
//    the buffers before use. Other global accesses are plain C++: the guard pages and canaries
//    catch them, and common_device.cuh's 16-byte loads and stores also check their alignment
//    (DEIT_CHECK_ALIGNED16, at the end of this file); a test places a buffer "tight"
//    (DeviceBuffer's `align`) where a read just past its end must fault. Shared memory, dynamic
//    and static, starts every block filled with 0xFF bytes, a NaN in bf16 and fp32, so reading
//    what no thread wrote poisons the results.
//  - Static shared memory (`__shared__ float scratch[32];` in a kernel): `__shared__` becomes
//    `static thread_local`, one copy for every fiber of the block (they share one OS thread), and
//    the program's thread_local storage (its PT_TLS segment, found with dl_iterate_phdr) is what
//    the emulator poisons at every block, saves before a launch and restores after it (so other
//    thread_local variables of the program, which only a launch's kernel code could see
//    poisoned, keep their values). Unlike the dynamic shared memory it has no guard page.
//    `extern __shared__` arrays are not emulated: kernels take dynamic shared memory from
//    ptx::dynamic_smem().
//
// Failures (an access out of bounds, a deadlock, lanes of a warp at different warp-wide
// instructions, a thread that exits with copies in flight, a misaligned address) print what
// happened and where (the caller's context string, kernel, block, thread) and exit with status 1.
//
//  - atomicAdd: a plain read-modify-write. Threads of a block switch only where they wait for
//    each other and blocks run one after another, so no other thread can come between the read
//    and the write: it is atomic here as it is on the GPU.
//
// Not emulated: timing, reordering of one thread's memory accesses, partial-warp masks, the other
// atomics, and anything of CUDA not named here.
// Shared memory and global memory are plain host memory. CUDA's bf16 and vector types and their
// conversions are the CUDA headers' own host versions; CUDA's integer min and max, __fmaf_rn and
// isfinite are defined below; the other math functions are the C library's.
//
// Use: include this, then the kernel header (whose code must see these stand-ins), and launch
// with emu::launch. This header ends by including kernels/cuda/common_device.cuh, the kernels'
// shared device helpers, compiled unchanged on top of the built-ins here. Single-threaded: one
// launch at a time, the state below is global (the emulated device of tests/emulated/runtime/,
// which launches from several host threads, holds one lock around every launch).
#pragma once
#include <cuda_bf16.h>
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// CUDA's occupancy hint has no meaning on the host.
#define __launch_bounds__(...)

// A __shared__ variable: one copy per OS thread, which every fiber of the block shares; the
// emulator poisons it at every block (static_shared_memory() below). The CUDA headers define the
// name away on the host.
#undef __shared__
#define __shared__ static thread_local

// CUDA's built-in indices of the running thread. The scheduler sets threadIdx before it switches
// to a fiber, so a value the compiler keeps in a register stays right.
inline uint3 threadIdx{};
inline uint3 blockIdx{};
inline dim3 blockDim{};
inline dim3 gridDim{};

namespace emu {

// ---------------------------------------------------------------------------------------------
// Failures: every check of the emulator ends here.

namespace detail {
struct Where {
  std::string context;  // what the program is doing (set_context)
  std::string kernel;   // the running launch
  bool in_thread = false;
};
inline Where g_where;
}  // namespace detail

// Names what the program is doing, for failure messages ("D=64 B=1 T=197 H=1").
inline void set_context(std::string what) { detail::g_where.context = std::move(what); }

namespace detail {
// "(x, y, z)", or "x" where y and z are 0 (an index) or 1 (a size).
template <typename Dim3>
inline std::string dims(const Dim3& d, unsigned unused) {
  if (d.y == unused && d.z == unused) return std::to_string(d.x);
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}
}  // namespace detail

// "while <context>, kernel <name>, block b of n, thread t (warp w, lane l)".
inline std::string where() {
  const detail::Where& w = detail::g_where;
  std::string s = "while " + (w.context.empty() ? std::string("(no context)") : w.context);
  if (!w.kernel.empty())
    s += ", kernel " + w.kernel + ", block " + detail::dims(blockIdx, 0) + " of " +
         detail::dims(gridDim, 1);
  if (w.in_thread) {
    const unsigned linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    s += ", thread " + detail::dims(threadIdx, 0) + " (warp " + std::to_string(linear / 32) +
         ", lane " + std::to_string(linear % 32) + ")";
  }
  return s;
}

[[noreturn]] inline void fail(const std::string& what) {
  std::fflush(stdout);
  std::fprintf(stderr, "EMULATION FAILURE: %s\n  %s\n", what.c_str(), where().c_str());
  std::fflush(stderr);
  std::_Exit(1);  // from a fiber's stack: no unwinding, no destructors
}

// ---------------------------------------------------------------------------------------------
// Guarded memory. A region's usable bytes end at a PROT_NONE page (up to align - 1 bytes
// earlier, to keep the start `align`-byte aligned: 16 unless asked), and a second PROT_NONE page
// precedes the page it starts in. The slack bytes between the guard pages and the usable range
// hold a canary.

enum class MemoryKind { kGlobal, kShared, kStack };

class GuardedRegion;
namespace detail {
inline std::vector<const GuardedRegion*> g_regions;  // all live regions
// The global region check_global found last: a kernel's accesses mostly fall in the buffer its
// previous one did, where a training step holds many buffers to search.
inline const GuardedRegion* g_last_global = nullptr;
constexpr unsigned char kCanary = 0xA5;
}  // namespace detail

class GuardedRegion {
 public:
  GuardedRegion(size_t bytes, MemoryKind kind, std::string name, size_t align = 16)
      : kind_(kind), name_(std::move(name)), bytes_(bytes) {
    if (align == 0 || (align & (align - 1)) != 0 || align > 16)
      fail(name_ + ": alignment " + std::to_string(align) + " (a power of 2, at most 16)");
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t body = (bytes + page - 1) / page * page;
    mapped_bytes_ = body + 2 * page;
    void* m = mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) fail("cannot map " + std::to_string(bytes) + " bytes for " + name_);
    mapped_ = static_cast<unsigned char*>(m);
    body_ = mapped_ + page;
    body_end_ = body_ + body;
    if (mprotect(mapped_, page, PROT_NONE) != 0 || mprotect(body_end_, page, PROT_NONE) != 0)
      fail("cannot protect the guard pages of " + name_);
    begin_ = reinterpret_cast<unsigned char*>(
        (reinterpret_cast<uintptr_t>(body_end_) - bytes) & ~uintptr_t{align - 1});
    std::memset(body_, detail::kCanary, static_cast<size_t>(begin_ - body_));
    std::memset(begin_ + bytes_, detail::kCanary, static_cast<size_t>(body_end_ - end()));
    detail::g_regions.push_back(this);
  }
  ~GuardedRegion() {
    if (detail::g_last_global == this) detail::g_last_global = nullptr;
    auto& all = detail::g_regions;
    all.erase(std::remove(all.begin(), all.end(), this), all.end());
    munmap(mapped_, mapped_bytes_);
  }
  GuardedRegion(const GuardedRegion&) = delete;
  GuardedRegion& operator=(const GuardedRegion&) = delete;

  unsigned char* begin() const { return begin_; }
  unsigned char* end() const { return begin_ + bytes_; }
  size_t size() const { return bytes_; }
  MemoryKind kind() const { return kind_; }
  const std::string& name() const { return name_; }

  bool contains(const void* p, size_t n) const {
    const auto* c = static_cast<const unsigned char*>(p);
    return c >= begin_ && c <= end() && n <= static_cast<size_t>(end() - c);
  }
  // Fails naming the region when a write landed in the slack before or after it.
  void check_canaries() const {
    for (const unsigned char* c = body_; c < begin_; ++c)
      if (*c != detail::kCanary)
        fail(name_ + ": a write landed " + std::to_string(begin_ - c) + " bytes before its start");
    for (const unsigned char* c = end(); c < body_end_; ++c)
      if (*c != detail::kCanary)
        fail(name_ + ": a write landed " + std::to_string(c - end()) + " bytes past its end");
  }

 private:
  MemoryKind kind_;
  std::string name_;
  size_t bytes_, mapped_bytes_ = 0;
  unsigned char *mapped_ = nullptr, *body_ = nullptr, *body_end_ = nullptr, *begin_ = nullptr;
};

// Where an address outside every region lies: "N bytes past the end of qkv" for the nearest
// region (of one kind, or of any when `only` is null), with that region.
inline std::pair<std::string, const GuardedRegion*> locate(const void* p, const MemoryKind* only) {
  const auto* a = static_cast<const unsigned char*>(p);
  const GuardedRegion* nearest = nullptr;
  size_t distance = SIZE_MAX;
  for (const GuardedRegion* r : detail::g_regions) {
    if (only != nullptr && r->kind() != *only) continue;
    const size_t d = a >= r->end()     ? static_cast<size_t>(a - r->end())
                     : a < r->begin() ? static_cast<size_t>(r->begin() - a)
                                      : 0;
    if (d < distance) nearest = r, distance = d;
  }
  if (nearest == nullptr) return {"in no buffer", nullptr};
  return {std::to_string(distance) +
              (a >= nearest->end() ? " bytes past the end of " : " bytes before the start of ") +
              nearest->name(),
          nearest};
}

// Fails unless [p, p + n) lies in one global buffer and p is `align`-byte aligned.
inline void check_global(const void* p, size_t n, size_t align, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % align != 0)
    fail(std::string(what) + ": global address not " + std::to_string(align) + "-byte aligned");
  const GuardedRegion* last = detail::g_last_global;
  if (last != nullptr && last->contains(p, n)) return;
  for (const GuardedRegion* r : detail::g_regions)
    if (r->kind() == MemoryKind::kGlobal && r->contains(p, n)) {
      detail::g_last_global = r;
      return;
    }
  const MemoryKind global = MemoryKind::kGlobal;
  fail(std::string(what) + " out of bounds: " + std::to_string(n) + " bytes at " +
       locate(p, &global).first);
}

// n elements of T in global memory, starting poisoned (every byte 0xFF: NaN in bf16 and fp32),
// `align`-byte aligned: 16 as cudaMalloc's (at least), or alignof(T) to place the end right at the
// guard page whatever the size ("tight"), so that reading one element past it faults.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer(std::string name, size_t n, size_t align = 16)
      : region_(n * sizeof(T), MemoryKind::kGlobal, std::move(name), align), n_(n) {
    std::memset(region_.begin(), 0xFF, region_.size());
  }
  DeviceBuffer(std::string name, const std::vector<T>& host, size_t align = 16)
      : DeviceBuffer(std::move(name), host.size(), align) {
    std::memcpy(get(), host.data(), host.size() * sizeof(T));
  }
  T* get() const { return reinterpret_cast<T*>(region_.begin()); }
  std::vector<T> download() const { return std::vector<T>(get(), get() + n_); }

 private:
  GuardedRegion region_;
  size_t n_;
};

// A buffer placed tight (aligned to its element only): reading one element past its end faults.
template <typename T>
DeviceBuffer<T> tight(const std::string& name, const std::vector<T>& host) {
  return DeviceBuffer<T>(name, host, alignof(T));
}
template <typename T>
DeviceBuffer<T> tight(const std::string& name, size_t n) {
  return DeviceBuffer<T>(name, n, alignof(T));
}

// ---------------------------------------------------------------------------------------------
// Fibers. On x86-64, a switch saves the callee-saved registers on the running stack and loads
// the other fiber's stack pointer (deit_emu_switch_stack below): no system call, which made the
// [gpu] tests on the emulated device (tests/emulated/runtime/) about twice as fast as the
// portable ucontext_t calls (getcontext / makecontext / swapcontext), which set the signal mask
// on every switch and remain for other machines. Fibers never switch from inside a signal
// handler, and the floating-point control state is the thread's, shared by all of them.

namespace detail {

#if defined(__x86_64__)
// deit_emu_switch_stack(save, next): pushes rbp, rbx, r12-r15, stores rsp in *save, loads next
// as rsp, pops the same registers and returns into the fiber that saved it. Weak, since every
// translation unit that includes this header emits it.
extern "C" void deit_emu_switch_stack(void** save, void* next);
asm(R"(
  .text
  .weak deit_emu_switch_stack
  .type deit_emu_switch_stack, @function
deit_emu_switch_stack:
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
  .size deit_emu_switch_stack, .-deit_emu_switch_stack
)");

struct Context {
  void* sp = nullptr;
};
// A stack that "returns" into entry as if it had been called: six zeroed registers for the pops,
// then entry's address for the ret, then a null return address for entry itself (which never
// returns), leaving the stack 16-byte aligned at the call as the ABI wants.
inline void prepare_context(Context& c, const GuardedRegion& stack, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack.end()) & ~uintptr_t{15};
  auto* words = reinterpret_cast<uintptr_t*>(top);
  words[-1] = 0;
  words[-2] = reinterpret_cast<uintptr_t>(entry);
  for (int i = 3; i <= 8; ++i) words[-i] = 0;
  c.sp = words - 8;
}
inline void switch_context(Context& from, Context& to) { deit_emu_switch_stack(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
inline void prepare_context(Context& c, const GuardedRegion& stack, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack.begin();
  c.uc.uc_stack.ss_size = stack.size();
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

constexpr size_t kStackBytes = 256 << 10;

// A cp.async copy in flight: 16 bytes from src, or 16 zero bytes when !valid.
struct PendingCopy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;
  bool landed;
};

enum class ThreadState { kRunnable, kWaiting, kExited };

struct Fiber {
  Context context;
  std::unique_ptr<GuardedRegion> stack;
  unsigned index = 0;  // linear: threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * z)
  ThreadState state = ThreadState::kRunnable;
  const char* waiting_at = "";
  std::vector<PendingCopy> uncommitted;             // cp.async issued since the last commit
  std::deque<std::vector<PendingCopy>> committed;  // oldest group first
};

// The warp-wide instructions, and what a lane brings to and takes from one.
enum class Collective {
  kNone,
  kShuffleXor,
  kShuffleDown,
  kShuffleUp,
  kShuffleIndex,
  kSyncwarp,
  kLdmatrix,
  kLdmatrixTrans,
  kMma
};

inline const char* collective_name(Collective c) {
  switch (c) {
    case Collective::kShuffleXor: return "__shfl_xor_sync";
    case Collective::kShuffleDown: return "__shfl_down_sync";
    case Collective::kShuffleUp: return "__shfl_up_sync";
    case Collective::kShuffleIndex: return "__shfl_sync";
    case Collective::kSyncwarp: return "__syncwarp";
    case Collective::kLdmatrix: return "ldmatrix.x4";
    case Collective::kLdmatrixTrans: return "ldmatrix.x4.trans";
    case Collective::kMma: return "mma.sync.m16n8k16";
    default: return "nothing";
  }
}

struct LaneIn {
  const void* row = nullptr;  // ldmatrix: the shared row this lane addresses
  uint32_t a[4] = {}, b[2] = {};
  float c[4] = {};
  uint64_t value = 0;  // shuffle: this lane's value (bits), its lane argument and width
  int lane_arg = 0;
  int width = 32;
};
struct LaneOut {
  uint32_t r[4] = {};  // ldmatrix
  float d[4] = {};     // mma
  uint64_t value = 0;  // shuffle
};

struct Warp {
  int lanes = 32;                          // fewer in a block's last warp, when it is partial
  Collective pending = Collective::kNone;  // the instruction lanes are gathering at
  int arrived = 0;
  int exited = 0;
  LaneIn in[32];
  LaneOut out[32];
  std::vector<Fiber*> waiting;
};

enum class Interleaving { kRandom, kWarpAhead };
enum class CopyLanding { kAtIssue, kAtWait };

// Everything about the block being run.
struct Machine {
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::vector<Warp> warps;
  std::vector<std::vector<Fiber*>> runnable;  // per warp
  int runnable_count = 0;
  int favoured_warp = 0;  // Interleaving::kWarpAhead
  int exited = 0;
  int at_barrier = 0;
  std::vector<Fiber*> barrier_waiting;
  Fiber* current = nullptr;
  Context scheduler;
  const std::function<void()>* body = nullptr;
  unsigned char* shared = nullptr;
  const GuardedRegion* shared_region = nullptr;
  unsigned char* static_shared = nullptr;  // the __shared__ variables (static_shared_memory())
  size_t static_shared_bytes = 0;
  Interleaving interleaving = Interleaving::kRandom;
  CopyLanding landing = CopyLanding::kAtWait;
  std::mt19937_64 rng{1};
  // Totals, for the caller's summary.
  long long blocks = 0, switches = 0, collectives = 0, copies = 0;
};
inline Machine g_machine;

inline Fiber& current() { return *g_machine.current; }

inline void make_runnable(Fiber* f) {
  f->state = ThreadState::kRunnable;
  g_machine.runnable[f->index / 32].push_back(f);
  ++g_machine.runnable_count;
}

// Takes the i-th runnable fiber of warp w out of the runnable set.
inline Fiber* take(int w, size_t i) {
  std::vector<Fiber*>& list = g_machine.runnable[w];
  Fiber* f = list[i];
  list[i] = list.back();
  list.pop_back();
  --g_machine.runnable_count;
  return f;
}

// A uniformly random runnable fiber: its warp and its position there.
inline std::pair<int, size_t> pick_any() {
  Machine& m = g_machine;
  size_t r = m.rng() % static_cast<uint64_t>(m.runnable_count);
  int w = 0;
  while (r >= m.runnable[w].size()) r -= m.runnable[w++].size();
  return {w, r};
}

inline Fiber* pick_next() {
  Machine& m = g_machine;
  auto [w, i] = pick_any();
  if (m.interleaving == Interleaving::kWarpAhead) {
    if (m.runnable[m.favoured_warp].empty()) m.favoured_warp = w;
    w = m.favoured_warp;
    i = m.rng() % m.runnable[w].size();
  }
  return take(w, i);
}

// The running fiber waits in `queue` until someone makes it runnable again.
inline void wait_in(std::vector<Fiber*>& queue, const char* what) {
  Fiber& f = current();
  f.state = ThreadState::kWaiting;
  f.waiting_at = what;
  queue.push_back(&f);
  switch_context(f.context, g_machine.scheduler);
}

inline void release(std::vector<Fiber*>& queue) {
  for (Fiber* f : queue) make_runnable(f);
  queue.clear();
}

inline void land(PendingCopy& c) {
  if (c.landed) return;
  if (c.valid)
    std::memcpy(c.dst, c.src, c.bytes);
  else
    std::memset(c.dst, 0, c.bytes);
  c.landed = true;
}

[[noreturn]] inline void thread_exit() {
  Machine& m = g_machine;
  Fiber& f = current();
  if (!f.uncommitted.empty() || !f.committed.empty())
    fail("thread exits with cp.async copies it never waited for");
  Warp& warp = m.warps[f.index / 32];
  if (warp.arrived > 0)
    fail(std::string("thread exits while lanes of its warp wait at ") +
         collective_name(warp.pending));
  if (m.at_barrier > 0) fail("thread exits while other threads wait at __syncthreads");
  f.state = ThreadState::kExited;
  ++warp.exited;
  ++m.exited;
  switch_context(f.context, m.scheduler);
  std::abort();  // never resumed
}

inline void fiber_main() {
  (*g_machine.body)();
  thread_exit();
}

// What every unfinished thread waits for, when none can run.
[[noreturn]] inline void report_deadlock() {
  Machine& m = g_machine;
  const auto state = [&](size_t thread) -> std::string {
    const Fiber& f = *m.fibers[thread];
    return f.state == ThreadState::kExited ? "exited" : std::string("at ") + f.waiting_at;
  };
  std::string s = "deadlock: no thread can run";
  for (size_t w = 0; w < m.warps.size(); ++w) {
    s += "\n    warp " + std::to_string(w) + ":";
    // Runs of lanes in the same state: "lanes 1-31 at __shfl_xor_sync".
    const size_t lanes = static_cast<size_t>(m.warps[w].lanes);
    for (size_t first = 0, lane = 1; lane <= lanes; ++lane) {
      if (lane < lanes && state(32 * w + lane) == state(32 * w + first)) continue;
      const std::string named = first + 1 == lane ? "lane " + std::to_string(first)
                                                  : "lanes " + std::to_string(first) + "-" +
                                                        std::to_string(lane - 1);
      s += " " + named + " " + state(32 * w + first) + (lane < lanes ? ";" : "");
      first = lane;
    }
  }
  fail(s);
}

// Runs one block: fresh fibers, poisoned shared memory, a drawn schedule.
inline void run_block(unsigned threads) {
  Machine& m = g_machine;
  if (m.shared_region->size() > 0) std::memset(m.shared, 0xFF, m.shared_region->size());
  if (m.static_shared_bytes > 0) std::memset(m.static_shared, 0xFF, m.static_shared_bytes);
  m.interleaving = m.rng() % 2 ? Interleaving::kWarpAhead : Interleaving::kRandom;
  m.landing = m.rng() % 2 ? CopyLanding::kAtIssue : CopyLanding::kAtWait;
  const unsigned warps = (threads + 31) / 32;
  m.favoured_warp = static_cast<int>(m.rng() % warps);
  m.warps.assign(warps, Warp{});
  m.warps.back().lanes = static_cast<int>(threads - 32 * (warps - 1));
  m.runnable.assign(warps, {});
  m.runnable_count = 0;
  m.exited = 0;
  m.at_barrier = 0;
  m.barrier_waiting.clear();
  while (m.fibers.size() < threads) {
    m.fibers.push_back(std::make_unique<Fiber>());
    m.fibers.back()->stack = std::make_unique<GuardedRegion>(
        kStackBytes, MemoryKind::kStack, "stack of thread " + std::to_string(m.fibers.size() - 1));
  }
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = *m.fibers[t];
    f.index = t;
    f.uncommitted.clear();
    f.committed.clear();
    prepare_context(f.context, *f.stack, fiber_main);
    make_runnable(&f);
  }
  while (m.runnable_count > 0) {
    m.current = pick_next();
    const unsigned t = m.current->index;
    threadIdx = uint3{t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
    detail::g_where.in_thread = true;
    ++m.switches;
    switch_context(m.scheduler, m.current->context);
    detail::g_where.in_thread = false;
  }
  if (m.exited < static_cast<int>(threads)) report_deadlock();
  for (const GuardedRegion* r : g_regions)
    if (r->kind() != MemoryKind::kGlobal) r->check_canaries();
  ++m.blocks;
}

// A fault (a guard page, or any address no buffer owns): name the nearest region and how far
// outside it the access fell, and where the program was; then exit. (Not async-signal-safe, which
// is fine here: the faulting code is kernel code, never the allocator.)
inline void on_fault(int signal, siginfo_t* info, void*) {
  const std::string what = signal == SIGSEGV ? "segmentation fault" : "bus error";
  // x86-64 reports a general-protection fault with no address: among kernel code's accesses, a
  // 16-byte vector (float4, Bf16x8) the compiler loads or stores as aligned, at an address that
  // is not 16-byte aligned.
  if (info->si_code == SI_KERNEL)
    fail(what + " with no address: a general-protection fault, such as a 16-byte vector access "
                "at an address that is not 16-byte aligned");
  const auto [where, region] = locate(info->si_addr, nullptr);
  if (region != nullptr && region->kind() == MemoryKind::kStack &&
      info->si_addr < static_cast<void*>(region->begin()))
    fail(what + ": overflow of the " + region->name());
  fail(what + ", out-of-bounds access " + where);
}

// Where the __shared__ variables live: the program's thread_local storage on this thread, the
// PT_TLS segment of the main program (dl_iterate_phdr visits it first), p_memsz bytes at
// dlpi_tls_data (glibc 2.35 and later). Empty when no kernel of the program declares one.
inline std::pair<unsigned char*, size_t> static_shared_memory() {
  std::pair<unsigned char*, size_t> found{nullptr, 0};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto& tls = *static_cast<std::pair<unsigned char*, size_t>*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i)
          if (info->dlpi_phdr[i].p_type == PT_TLS)
            tls = {static_cast<unsigned char*>(info->dlpi_tls_data), info->dlpi_phdr[i].p_memsz};
        return 1;  // the main program only
      },
      &found);
  if (found.second > 0 && found.first == nullptr)
    fail("no thread_local storage of the program on this thread: no room for __shared__");
  return found;
}

inline void install_fault_handler() {
  static bool installed = false;
  if (installed) return;
  installed = true;
  // The handler runs on a stack of its own: a fiber's stack may be what overflowed.
  static std::vector<char> handler_stack(1 << 16);
  stack_t ss{};
  ss.ss_sp = handler_stack.data();
  ss.ss_size = handler_stack.size();
  sigaltstack(&ss, nullptr);
  struct sigaction sa {};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
}

// The arrival of this lane at a warp-wide instruction; the last lane computes all 32 results.
template <typename Compute>
inline LaneOut warp_collective(Collective kind, const LaneIn& in, Compute&& compute) {
  Machine& m = g_machine;
  Fiber& f = current();
  Warp& w = m.warps[f.index / 32];
  const int lane = static_cast<int>(f.index % 32);
  if (w.lanes < 32)
    fail(std::string(collective_name(kind)) + " in a partial warp of " +
         std::to_string(w.lanes) + " lanes (its full mask names lanes that do not exist)");
  if (w.exited > 0)
    fail(std::string(collective_name(kind)) + " in a warp with " + std::to_string(w.exited) +
         " exited lanes");
  if (w.arrived == 0) {
    w.pending = kind;
  } else if (w.pending != kind) {
    fail(std::string("divergent warp: this lane is at ") + collective_name(kind) + " while " +
         std::to_string(w.arrived) + " lanes wait at " + collective_name(w.pending));
  }
  w.in[lane] = in;
  if (++w.arrived < 32) {
    wait_in(w.waiting, collective_name(kind));
  } else {
    compute(w.in, w.out);
    w.arrived = 0;
    w.pending = Collective::kNone;
    ++m.collectives;
    release(w.waiting);
  }
  return w.out[lane];
}

// n bytes at p, aligned to n (what cp.async and ldmatrix ask of their shared addresses).
inline void check_shared(const void* p, size_t n, const char* what) {
  const GuardedRegion& s = *g_machine.shared_region;
  if (!s.contains(p, n))
    fail(std::string(what) + ": shared address out of range (offset " +
         std::to_string(static_cast<const unsigned char*>(p) - s.begin()) + " of " +
         std::to_string(s.size()) + " bytes)");
  if (reinterpret_cast<uintptr_t>(p) % n != 0)
    fail(std::string(what) + ": shared address not " + std::to_string(n) + "-byte aligned");
}

inline uint16_t load_u16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline float bf16_bits_to_float(uint32_t bits16) {
  const uint32_t u = bits16 << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// PTX ISA, "Warp-level matrix load instruction: ldmatrix" (.m8n8.x4.b16, its fragment-layout
// figure): lanes 8i .. 8i + 7 give the addresses of rows 0-7 of matrix i, 16 bytes each; lane l
// receives in register i the elements (row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1) of matrix
// i, the lower column in the low half. With .trans, matrix i is read transposed: (rows 2 (l % 4)
// and 2 (l % 4) + 1, column l / 4).
template <bool Transposed>
inline void ldmatrix(uint32_t (&r)[4], const void* row) {
  constexpr Collective kind = Transposed ? Collective::kLdmatrixTrans : Collective::kLdmatrix;
  check_shared(row, 16, collective_name(kind));
  LaneIn in;
  in.row = row;
  const LaneOut out = warp_collective(kind, in, [](const LaneIn (&lanes)[32], LaneOut (&res)[32]) {
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      for (int i = 0; i < 4; ++i) {
        // Element (row, col) of matrix i as stored; lane 8i + row holds that row's address.
        const auto element = [&](int row, int col) -> uint32_t {
          return load_u16(static_cast<const unsigned char*>(lanes[8 * i + row].row) + 2 * col);
        };
        res[l].r[i] = Transposed ? element(2 * t, g) | element(2 * t + 1, g) << 16
                                 : element(g, 2 * t) | element(g, 2 * t + 1) << 16;
      }
    }
  });
  for (int i = 0; i < 4; ++i) r[i] = out.r[i];
}

// PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" (.bf16 A and B, .f32 C
// and D), with g = lane / 4, t = lane % 4: register a0 holds A[g][2t, 2t+1], a1 A[g+8][2t, 2t+1],
// a2 A[g][2t+8, 2t+9], a3 A[g+8][2t+8, 2t+9]; b0 holds B[2t, 2t+1][g], b1 B[2t+8, 2t+9][g]; c0, c1
// are C[g][2t, 2t+1] and c2, c3 C[g+8][2t, 2t+1]. Lower index in the low half of a register.
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  LaneIn in;
  for (int i = 0; i < 4; ++i) {
    in.a[i] = a[i];
    in.c[i] = c[i];
  }
  in.b[0] = b0;
  in.b[1] = b1;
  const LaneOut out = warp_collective(
      Collective::kMma, in, [](const LaneIn (&lanes)[32], LaneOut (&res)[32]) {
        float A[16][16], B[16][8];
        for (int l = 0; l < 32; ++l) {
          const int g = l / 4, t = l % 4;
          for (int half = 0; half < 2; ++half) {
            const int lo_col = 2 * t + 8 * half;  // a0/a1 columns 2t.., a2/a3 columns 2t + 8..
            A[g][lo_col] = bf16_bits_to_float(lanes[l].a[2 * half] & 0xFFFF);
            A[g][lo_col + 1] = bf16_bits_to_float(lanes[l].a[2 * half] >> 16);
            A[g + 8][lo_col] = bf16_bits_to_float(lanes[l].a[2 * half + 1] & 0xFFFF);
            A[g + 8][lo_col + 1] = bf16_bits_to_float(lanes[l].a[2 * half + 1] >> 16);
            B[lo_col][g] = bf16_bits_to_float(lanes[l].b[half] & 0xFFFF);
            B[lo_col + 1][g] = bf16_bits_to_float(lanes[l].b[half] >> 16);
          }
        }
        for (int l = 0; l < 32; ++l) {
          const int g = l / 4, t = l % 4;
          for (int e = 0; e < 4; ++e) {
            const int row = g + 8 * (e / 2), col = 2 * t + e % 2;
            double sum = lanes[l].c[e];
            for (int k = 0; k < 16; ++k) sum += static_cast<double>(A[row][k]) * B[k][col];
            res[l].d[e] = static_cast<float>(sum);
          }
        }
      });
  for (int i = 0; i < 4; ++i) c[i] = out.d[i];
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Launching.

struct Launch {
  std::string kernel;   // for messages: "attention_forward_kernel<64>"
  dim3 grid;            // gridDim: blocks (a number, or dim3 for 2-D and 3-D grids)
  dim3 block;           // blockDim: threads per block, at most 1024 in all
  size_t shared_bytes;  // dynamic shared memory, what dynamic_smem() returns
};

// Seeds every random choice of the schedules (which thread runs next, when copies land).
inline void seed(uint64_t s) { detail::g_machine.rng.seed(s); }

// The command line every emulated test takes: [--full] [--seed N]. A run without --seed draws
// one; either way it is printed first, so a failing run can be repeated exactly.
struct TestOptions {
  bool full = false;  // the longer sweep
  uint64_t seed = 0;  // of the inputs (seed) and of every block's schedule (seed + 1)
};
// Parses the options, prints "<program>: seed N ...", and seeds the schedules. Bad arguments:
// prints the usage and exits with status 2.
inline TestOptions parse_test_options(int argc, char** argv, const char* program) {
  TestOptions o;
  o.seed = (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--full") {
      o.full = true;
      continue;
    }
    if (arg == "--seed" && i + 1 < argc) {
      const char* digits = argv[++i];
      char* end = nullptr;
      o.seed = std::strtoull(digits, &end, 10);
      if (end != digits && *end == '\0') continue;
    }
    std::fprintf(stderr, "usage: %s [--full] [--seed N]\n", program);
    std::exit(2);
  }
  std::printf("%s: seed %llu (repeat this run with --seed %llu)\n", program,
              static_cast<unsigned long long>(o.seed), static_cast<unsigned long long>(o.seed));
  seed(o.seed + 1);
  return o;
}

// Runs body() as every thread of every block of the launch, blocks in order, then checks the
// canaries of every global buffer. The program's thread_local storage, poisoned at every block
// for the __shared__ variables, is as it was before once the launch returns.
inline void launch(const Launch& l, const std::function<void()>& body) {
  detail::Machine& m = detail::g_machine;
  const uint64_t threads = uint64_t{l.block.x} * l.block.y * l.block.z;
  if (threads == 0 || threads > 1024 || l.block.z > 64)
    fail(l.kernel + ": block of " + detail::dims(l.block, 1) +
         " threads (CUDA takes 1 to 1024 threads, at most 64 in z)");
  if (l.grid.x == 0 || l.grid.y == 0 || l.grid.z == 0 || l.grid.y > 65535 || l.grid.z > 65535)
    fail(l.kernel + ": grid of " + detail::dims(l.grid, 1) +
         " blocks (CUDA takes y and z up to 65535)");
  detail::install_fault_handler();
  detail::g_where.kernel = l.kernel;
  const GuardedRegion shared(l.shared_bytes, MemoryKind::kShared,
                             "shared memory (" + std::to_string(l.shared_bytes) + " bytes)");
  m.shared = shared.begin();
  m.shared_region = &shared;
  std::tie(m.static_shared, m.static_shared_bytes) = detail::static_shared_memory();
  const std::vector<unsigned char> thread_locals(m.static_shared,
                                                 m.static_shared + m.static_shared_bytes);
  m.body = &body;
  gridDim = l.grid;
  blockDim = l.block;
  for (unsigned z = 0; z < l.grid.z; ++z)
    for (unsigned y = 0; y < l.grid.y; ++y)
      for (unsigned x = 0; x < l.grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        detail::run_block(static_cast<unsigned>(threads));
      }
  for (const GuardedRegion* r : detail::g_regions)
    if (r->kind() == MemoryKind::kGlobal) r->check_canaries();
  std::copy(thread_locals.begin(), thread_locals.end(), m.static_shared);
  m.shared_region = nullptr;
  m.body = nullptr;
  detail::g_where.kernel.clear();
}

struct Totals {
  long long blocks, switches, collectives, copies;
};
inline Totals totals() {
  const detail::Machine& m = detail::g_machine;
  return {m.blocks, m.switches, m.collectives, m.copies};
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// CUDA built-in functions.

inline void __syncthreads() {
  emu::detail::Machine& m = emu::detail::g_machine;
  if (m.exited > 0)
    emu::fail("__syncthreads after " + std::to_string(m.exited) + " threads of the block exited");
  if (++m.at_barrier < static_cast<int>(blockDim.x * blockDim.y * blockDim.z)) {
    emu::detail::wait_in(m.barrier_waiting, "__syncthreads");
  } else {
    m.at_barrier = 0;
    emu::detail::release(m.barrier_waiting);
  }
}

namespace emu::detail {

// CUDA Programming Guide, "Warp Shuffle Functions": the lane whose value lane l receives, or l
// itself where the guide says a lane keeps its own value. Lanes form groups of `width` (a power
// of 2 up to 32) and a shuffle reads within the lane's group, except the xor form, which may
// also read an earlier group.
inline int shuffle_source(Collective kind, int l, int arg, int width) {
  const int group = l & ~(width - 1), in_group = l - group;
  switch (kind) {
    case Collective::kShuffleIndex: return group + (arg & (width - 1));  // srcLane mod width
    case Collective::kShuffleUp: return in_group >= arg ? l - arg : l;
    case Collective::kShuffleDown: return in_group + arg < width ? l + arg : l;
    default: return (l ^ arg) < group + width ? l ^ arg : l;  // xor: a later group reads itself
  }
}

// A shuffle of a 4- or 8-byte value over the whole warp (mask 0xffffffff: partial masks are not
// emulated); `arg` is the lane, delta or xor mask of the form.
template <typename T>
inline T shuffle(Collective kind, unsigned mask, T value, int arg, int width) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "4- or 8-byte values only");
  const char* name = collective_name(kind);
  if (mask != 0xffffffffu) fail(std::string(name) + ": only the full-warp mask is emulated");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    fail(std::string(name) + ": width " + std::to_string(width) + " (a power of 2 up to 32)");
  if (kind != Collective::kShuffleIndex && (arg < 0 || arg >= 32))
    fail(std::string(name) + ": lane argument " + std::to_string(arg) + " outside 0-31");
  LaneIn in;
  std::memcpy(&in.value, &value, sizeof(T));
  in.lane_arg = arg;
  in.width = width;
  const LaneOut out = warp_collective(kind, in, [kind](const LaneIn (&lanes)[32],
                                                       LaneOut (&res)[32]) {
    for (int l = 0; l < 32; ++l)
      res[l].value = lanes[shuffle_source(kind, l, lanes[l].lane_arg, lanes[l].width)].value;
  });
  T r;
  std::memcpy(&r, &out.value, sizeof(T));
  return r;
}

}  // namespace emu::detail

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  return emu::detail::shuffle(emu::detail::Collective::kShuffleXor, mask, value, lane_mask, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return emu::detail::shuffle(emu::detail::Collective::kShuffleDown, mask, value,
                              static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return emu::detail::shuffle(emu::detail::Collective::kShuffleUp, mask, value,
                              static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  return emu::detail::shuffle(emu::detail::Collective::kShuffleIndex, mask, value, src_lane,
                              width);
}

// The lanes of the warp wait for each other (full mask only).
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) emu::fail("__syncwarp: only the full-warp mask is emulated");
  using emu::detail::LaneIn, emu::detail::LaneOut;
  emu::detail::warp_collective(emu::detail::Collective::kSyncwarp, LaneIn{},
                               [](const LaneIn (&)[32], LaneOut (&)[32]) {});
}

// CUDA's fused multiply-add of floats, rounded once to nearest even (CUDA Math API, __fmaf_rn),
// and isfinite, which device code calls unqualified for float and double alike.
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }

// CUDA's reciprocal square root (CUDA Math API, rsqrtf: within 2 ulp); the host's is closer.
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }

// See the top of the file: no thread runs between the read and the write.
template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
using std::isfinite;

// CUDA's integer min and max (its device overloads take two operands of one integer type).
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <typename T, typename = std::enable_if_t<std::is_integral_v<T>>>
inline T max(T a, T b) {
  return a < b ? b : a;
}

// ---------------------------------------------------------------------------------------------
// Twins of kernels/cuda/mma.cuh, same names and signatures.

namespace deit::kernels::ptx {

// PTX ISA, "cp.async": copies cp-size (16 or 4) bytes global -> shared, or src-size 0: writes
// cp-size zero bytes and reads nothing; both addresses cp-size aligned. Whether it lands now or at
// the wait_group that retires it is the block's draw (see CopyLanding).
inline void cp_async(void* dst, const void* src, int bytes, bool valid) {
  emu::detail::Machine& m = emu::detail::g_machine;
  emu::detail::check_shared(dst, bytes, "cp.async destination");
  emu::check_global(src, bytes, bytes, "cp.async source");
  emu::detail::PendingCopy copy{dst, src, bytes, valid, false};
  if (m.landing == emu::detail::CopyLanding::kAtIssue) emu::detail::land(copy);
  emu::detail::current().uncommitted.push_back(copy);
  ++m.copies;
}
inline void cp_async_16(void* dst, const void* src, bool valid) { cp_async(dst, src, 16, valid); }
inline void cp_async_4(void* dst, const void* src, bool valid) { cp_async(dst, src, 4, valid); }

// PTX ISA, "cp.async.commit_group": the copies issued since the last commit become one group.
inline void cp_async_commit() {
  emu::detail::Fiber& f = emu::detail::current();
  f.committed.push_back(std::move(f.uncommitted));
  f.uncommitted.clear();
}

// PTX ISA, "cp.async.wait_group N": waits until at most N of this thread's most recent groups
// are pending and every older group has landed.
template <int N>
inline void cp_async_wait() {
  emu::detail::Fiber& f = emu::detail::current();
  while (f.committed.size() > static_cast<size_t>(N)) {
    for (emu::detail::PendingCopy& c : f.committed.front()) emu::detail::land(c);
    f.committed.pop_front();
  }
}

inline void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* p) {
  emu::detail::ldmatrix<false>(r, p);
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* p) {
  emu::detail::ldmatrix<true>(r, p);
}

inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  emu::detail::mma_m16n8k16(c, a, b0, b1);
}

// PTX ISA, "ex2.approx.ftz.f32": 2^x within 2 ulp (the host's exp2f is closer), subnormal inputs
// and results flushed to zero (+0 for -inf, as the hardware gives).
inline float exp2_ftz(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.f;
  const float y = std::exp2(x);
  return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}

// PTX ISA, "rcp.approx.ftz.f32": 1/x within 1 ulp (the host divides exactly), subnormal inputs
// (so 1/0 = +inf, keeping the sign) and results flushed to zero.
inline float rcp_ftz(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = std::copysign(0.f, x);
  const float y = 1.f / x;
  return std::fpclassify(y) == FP_SUBNORMAL ? std::copysign(0.f, y) : y;
}

inline unsigned char* dynamic_smem() { return emu::detail::g_machine.shared; }

}  // namespace deit::kernels::ptx

// ---------------------------------------------------------------------------------------------
// The kernels' shared device helpers (loads and stores, block reductions, the row layout), the
// very code nvcc compiles, on top of the built-ins above. Their 16-byte loads and stores, global
// or shared, check their address: the host reads most misaligned ones without a fault.

namespace emu {
inline void check_aligned16(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    fail(std::string(what) + ": address not 16-byte aligned");
}
}  // namespace emu

#define DEIT_CHECK_ALIGNED16(p, what) ::emu::check_aligned16(p, what)
#include "kernels/cuda/common_device.cuh"
