// The CUDA runtime API calls deit makes, on the emulated device of emulated_device.h: streams with
// queues that run when the host waits, events, graph capture and replay, guarded device memory,
// launch checks, per-thread last errors, and the order of work between streams (stream_order.h).
// Linked into the emulated test binary ahead of libcudart, so every call of the engine, model,
// trainer and tests lands here.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/emulated/cuda_emulator.h"
#include "tests/emulated/runtime/emulated_device.h"

// The runtime's opaque handle types, defined here.
struct CUstream_st;
struct CUevent_st;
struct CUgraph_st {
  std::vector<deit_emu::Work> nodes;  // in capture order, which respects every dependency
  std::vector<deit_emu::Footprint> footprints;  // what the nodes touch
};
struct CUgraphExec_st {
  std::vector<deit_emu::Work> nodes;
  std::vector<deit_emu::Footprint> footprints;
};

// What a captured stream's work depends on: for each stream of the capture, how many of its
// captured nodes (a join counts as one) come before. Used to refuse a capture whose forked
// streams never joined back into the stream that began it.
using CaptureClock = std::map<CUstream_st*, uint64_t>;

struct Capture {
  CUgraph_st* graph = nullptr;
  CUstream_st* origin = nullptr;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;
  bool invalidated = false;
  std::vector<CUstream_st*> joined;
  CaptureClock tails;  // nodes captured per stream
};

struct CUstream_st {
  std::string name;      // "stream 2", "the legacy stream"
  bool blocking = true;  // waits for, and is waited for by, the legacy default stream
  bool eager = false;    // runs its work as soon as it is queued (emulated_device.h)
  int priority = 0;
  deit_emu::VectorClock order;  // the work ordered before its next piece, its own included
  std::deque<deit_emu::Work> queue;
  uint64_t enqueued = 0, executed = 0;
  Capture* capture = nullptr;
  CaptureClock depends_on;  // within its capture
};

struct CUevent_st {
  bool recorded = false;
  CUstream_st* stream = nullptr;  // where it was last recorded, outside a capture
  uint64_t seq = 0;               // done once stream->executed reaches it
  uint64_t clock = 0;             // work enqueued anywhere before it, for cudaEventElapsedTime
  deit_emu::VectorClock order;    // the work ordered before it
  Capture* capture = nullptr;     // recorded in this capture
  CaptureClock depends_on;        // what the capture's work before it was
};

namespace deit_emu {
namespace {

constexpr int kSharedBytesDefault = 48 << 10;
constexpr int kSharedBytesOptIn = 232448;  // sm_90: 227 KiB per block

std::recursive_mutex& api_lock() {
  static std::recursive_mutex m;
  return m;
}

struct Device {
  Device() { legacy.name = "the legacy stream"; }

  // Streams are never freed: a wait queued on another stream may still name a destroyed one.
  std::vector<std::unique_ptr<CUstream_st>> streams;
  CUstream_st legacy;
  std::vector<Capture*> captures;
  VectorClock host_order;  // the work the host has waited for
  RaceDetector races;
  std::map<uintptr_t, std::unique_ptr<emu::GuardedRegion>> allocations;  // by start address
  std::map<const void*, int> max_dynamic_shared;  // cudaFuncAttributeMaxDynamicSharedMemorySize
  uint64_t clock = 0;
  uint64_t allocation_count = 0;
};
Device& device() {
  static Device* d = new Device;  // never destroyed: static destructors may still call in
  return *d;
}

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaStreamCaptureMode t_capture_mode = cudaStreamCaptureModeGlobal;

CUstream_st* resolve(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return &device().legacy;
  return s;
}

void run_until(CUstream_st& s, uint64_t upto) {
  while (s.executed < upto) {
    Work w = std::move(s.queue.front());
    s.queue.pop_front();
    ++s.executed;
    w();
  }
}
void run_all(CUstream_st& s) { run_until(s, s.enqueued); }

void run_everything() {
  Device& d = device();
  bool again = true;
  while (again) {
    run_all(d.legacy);
    for (auto& s : d.streams) run_all(*s);
    again = !d.legacy.queue.empty();
    for (auto& s : d.streams) again = again || !s->queue.empty();
  }
}

void invalidate(Capture* c) { c->invalidated = true; }

// The work ordered before the next piece on `s`: its own, what it waited for, the legacy stream's
// implicit waits (it and the blocking streams wait for each other), and what the host waited for.
VectorClock& order_before_next(CUstream_st& s) {
  Device& d = device();
  if (&s == &d.legacy) {
    for (auto& other : d.streams)
      if (other->blocking) s.order.merge(other->order);
  } else if (s.blocking) {
    s.order.merge(d.legacy.order);
  }
  s.order.merge(d.host_order);
  return s.order;
}

// The host waited for the work `order` counts: what it queues next is ordered after all of it.
void host_waited_for(const VectorClock& order) {
  Device& d = device();
  d.host_order.merge(order);
  d.races.forget_ordered_before(d.host_order);
}

// A device-wide wait (cudaFree): everything queued so far.
void host_waited_for_everything() {
  Device& d = device();
  VectorClock everything = d.legacy.order;
  for (auto& s : d.streams) everything.merge(s->order);
  host_waited_for(everything);
}

emu::GuardedRegion* find_allocation(const void* p);

std::string describe(const Access& a) {
  const emu::GuardedRegion* r = find_allocation(reinterpret_cast<const void*>(a.allocation));
  return std::string(a.writes ? "writes" : "reads") + " bytes [" +
         std::to_string(a.begin - a.allocation) + ", " + std::to_string(a.end - a.allocation) +
         ") of " + (r != nullptr ? r->name() : "an allocation");
}

// Queues the next piece of work on `s`, touching `footprints`: ticks the stream's clock and fails
// the emulation if the work races with another stream's.
void order_next_piece(CUstream_st& s, std::vector<Footprint>& footprints) {
  VectorClock& order = order_before_next(s);
  order.tick(&s);
  for (Footprint& f : footprints) {
    if (f.queued_by.frames.empty()) f.queued_by = CallStack::here();
    const std::optional<Race> race = device().races.check(&s, order, f);
    if (!race) continue;
    const auto* other = static_cast<const CUstream_st*>(race->earlier_stream);
    emu::fail("work on two streams touches the same device memory and nothing orders it:\n  " +
              f.site + " on " + s.name + " " + describe(race->later) + ", queued by\n" +
              f.queued_by.describe() + "  and " + race->earlier_work->site +
              ", queued earlier on " + other->name + ", " + describe(race->earlier) +
              ", queued by\n" + race->earlier_work->queued_by.describe() +
              "  One stream must wait for the other (cudaStreamWaitEvent), or the host for both.");
  }
}

// CUDA's rule for "potentially unsafe" calls (synchronisation, allocation, synchronous copies)
// while captures are under way: a thread in global mode may not make them while it captures or
// any thread captures in global mode; in thread-local mode, while it captures; in relaxed mode,
// ever. Returns the error and invalidates the captures it violates.
cudaError_t check_unsafe_call() {
  if (t_capture_mode == cudaStreamCaptureModeRelaxed) return cudaSuccess;
  bool refused = false;
  for (Capture* c : device().captures) {
    const bool own = c->thread == std::this_thread::get_id();
    const bool prohibits =
        (own && c->mode != cudaStreamCaptureModeRelaxed) ||
        (t_capture_mode == cudaStreamCaptureModeGlobal && c->mode == cudaStreamCaptureModeGlobal);
    if (prohibits) invalidate(c), refused = true;
  }
  return refused ? cudaErrorStreamCaptureUnsupported : cudaSuccess;
}

emu::GuardedRegion* find_allocation(const void* p) {
  Device& d = device();
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = d.allocations.upper_bound(a);
  if (it == d.allocations.begin()) return nullptr;
  --it;
  emu::GuardedRegion* r = it->second.get();
  return r->contains(p, 0) ? r : nullptr;
}

// The copy kinds name which side is the device; that side must lie in one allocation.
bool copy_in_bounds(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyDefault) return true;
  if (kind == cudaMemcpyHostToHost) return true;
  return (!dst_device || range_access(dst, bytes, true)) &&
         (!src_device || range_access(src, bytes, false));
}

}  // namespace

cudaError_t record_error(cudaError_t error) {
  if (error != cudaSuccess) t_last_error = error;
  return error;
}

std::optional<Access> allocation_access(const void* p, bool writes) {
  std::lock_guard<std::recursive_mutex> lock(api_lock());
  const emu::GuardedRegion* r = find_allocation(p);
  if (r == nullptr) return std::nullopt;
  const auto begin = reinterpret_cast<uintptr_t>(r->begin());
  return Access{begin, begin, begin + r->size(), writes};
}

std::optional<Access> range_access(const void* p, size_t bytes, bool writes) {
  std::lock_guard<std::recursive_mutex> lock(api_lock());
  const emu::GuardedRegion* r = find_allocation(p);
  if (r == nullptr || !r->contains(p, bytes)) return std::nullopt;
  const auto begin = reinterpret_cast<uintptr_t>(p);
  return Access{reinterpret_cast<uintptr_t>(r->begin()), begin, begin + bytes, writes};
}

namespace {
cudaError_t enqueue_touching(cudaStream_t stream, Work work, std::vector<Footprint> footprints) {
  std::lock_guard<std::recursive_mutex> lock(api_lock());
  Device& d = device();
  CUstream_st* s = resolve(stream);
  if (s == &d.legacy && !d.captures.empty()) {
    // Work on the legacy stream would have to wait for the capturing streams.
    for (Capture* c : d.captures) invalidate(c);
    return cudaErrorStreamCaptureImplicit;
  }
  if (s->capture != nullptr) {
    if (s->capture->invalidated) return cudaErrorStreamCaptureInvalidated;
    CUgraph_st& graph = *s->capture->graph;
    graph.nodes.push_back(std::move(work));
    for (Footprint& f : footprints) {
      f.queued_by = CallStack::here();
      graph.footprints.push_back(std::move(f));
    }
    s->depends_on[s] = ++s->capture->tails[s];
    return cudaSuccess;
  }
  order_next_piece(*s, footprints);
  // The legacy stream and the blocking streams wait for each other's earlier work.
  if (s == &d.legacy) {
    for (auto& other : d.streams)
      if (other->blocking && other->enqueued > other->executed) {
        CUstream_st* o = other.get();
        const uint64_t upto = o->enqueued;
        s->queue.push_back([o, upto] { run_until(*o, upto); });
        ++s->enqueued;
      }
  } else if (s->blocking && d.legacy.enqueued > d.legacy.executed) {
    const uint64_t upto = d.legacy.enqueued;
    s->queue.push_back([&d, upto] { run_until(d.legacy, upto); });
    ++s->enqueued;
  }
  s->queue.push_back(std::move(work));
  ++s->enqueued;
  ++d.clock;
  if (s->eager) run_all(*s);
  return cudaSuccess;
}
}  // namespace

cudaError_t enqueue(cudaStream_t stream, Work work, Footprint footprint) {
  return enqueue_touching(stream, std::move(work), {std::move(footprint)});
}

cudaError_t launch_kernel(const void* kernel, dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, Work run, Footprint footprint) {
  std::lock_guard<std::recursive_mutex> lock(api_lock());
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return record_error(cudaErrorInvalidConfiguration);
  if (shared_bytes > kSharedBytesDefault) {
    const auto it = device().max_dynamic_shared.find(kernel);
    if (it == device().max_dynamic_shared.end() || shared_bytes > size_t(it->second)) {
      std::fprintf(stderr,
                   "emulated device: %s launches with %zu bytes of dynamic shared memory "
                   "without cudaFuncSetAttribute allowing them\n",
                   footprint.site.c_str(), shared_bytes);
      return record_error(cudaErrorInvalidValue);
    }
  }
  return record_error(enqueue(stream, std::move(run), std::move(footprint)));
}

}  // namespace deit_emu

using deit_emu::api_lock;
using deit_emu::device;
using deit_emu::record_error;
using deit_emu::resolve;
using Lock = std::lock_guard<std::recursive_mutex>;

// ---------------------------------------------------------------------------------------------
// Errors and the device.

cudaError_t cudaGetLastError() {
  const cudaError_t e = deit_emu::t_last_error;
  deit_emu::t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return deit_emu::t_last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorIllegalState:
      return "the operation cannot be performed in the present state";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched:
      return "capture was not ended in the same stream as it began";
    case cudaErrorStreamCaptureUnjoined:
      return "capturing stream has unjoined work";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    default:
      return "unrecognized error code (emulated device)";
  }
}

namespace {

// A process of an mpirun job (the emulated NCCL of several ranks runs over MPI, nccl.cpp) is the
// GPU of its node that its local rank picks, as the trainer picks one (`--device cuda`); any other
// process is device 0. The devices below it are the other processes' and refused here.
int this_device() {
  static const int index = [] {
    const char* local_rank = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    return local_rank ? std::max(0, std::atoi(local_rank)) : 0;
  }();
  return index;
}

}  // namespace

cudaError_t cudaGetDeviceCount(int* count) {
  *count = this_device() + 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  return record_error(d == this_device() ? cudaSuccess : cudaErrorInvalidDevice);
}
cudaError_t cudaGetDevice(int* d) {
  *d = this_device();
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int d) {
  if (d != this_device()) return record_error(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "emulated sm_90 device (tests/emulated/runtime)");
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = size_t{141} << 30;
  prop->multiProcessorCount = 132;
  prop->l2CacheSize = 60 << 20;
  prop->sharedMemPerBlock = deit_emu::kSharedBytesDefault;
  prop->sharedMemPerBlockOptin = deit_emu::kSharedBytesOptIn;
  prop->maxThreadsPerBlock = 1024;
  prop->warpSize = 32;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int d) {
  if (d != this_device()) return record_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      return cudaSuccess;
    case cudaDevAttrL2CacheSize:
      *value = 60 << 20;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = deit_emu::kSharedBytesOptIn;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    default:
      return record_error(cudaErrorInvalidValue);
  }
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  Lock lock(api_lock());
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value > deit_emu::kSharedBytesOptIn) return record_error(cudaErrorInvalidValue);
  device().max_dynamic_shared[func] = value;
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// Memory.

cudaError_t cudaMalloc(void** p, size_t bytes) {
  Lock lock(api_lock());
  *p = nullptr;
  if (const cudaError_t e = deit_emu::check_unsafe_call(); e != cudaSuccess) return record_error(e);
  deit_emu::Device& d = device();
  auto region =
      std::make_unique<emu::GuardedRegion>(std::max<size_t>(bytes, 1), emu::MemoryKind::kGlobal,
                                           "cudaMalloc #" + std::to_string(++d.allocation_count) +
                                               " (" + std::to_string(bytes) + " bytes)");
  std::memset(region->begin(), 0xFF, region->size());  // fresh device memory is not zero
  *p = region->begin();
  d.allocations.emplace(reinterpret_cast<uintptr_t>(*p), std::move(region));
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  Lock lock(api_lock());
  if (p == nullptr) return cudaSuccess;
  if (const cudaError_t e = deit_emu::check_unsafe_call(); e != cudaSuccess) return record_error(e);
  deit_emu::run_everything();  // cudaFree waits for the device
  deit_emu::host_waited_for_everything();
  auto& all = device().allocations;
  const auto it = all.find(reinterpret_cast<uintptr_t>(p));
  if (it == all.end()) return record_error(cudaErrorInvalidValue);
  all.erase(it);  // the wait above left the order check no record of it
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() {
  Lock lock(api_lock());
  if (const cudaError_t e = deit_emu::check_unsafe_call(); e != cudaSuccess) return record_error(e);
  deit_emu::run_everything();
  deit_emu::host_waited_for_everything();
  return cudaSuccess;
}

cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned int) {
  Lock lock(api_lock());
  *p = nullptr;
  if (const cudaError_t e = deit_emu::check_unsafe_call(); e != cudaSuccess) return record_error(e);
  *p = std::aligned_alloc(4096, (std::max<size_t>(bytes, 1) + 4095) / 4096 * 4096);
  return *p ? cudaSuccess : record_error(cudaErrorMemoryAllocation);
}

cudaError_t cudaFreeHost(void* p) {
  Lock lock(api_lock());
  if (const cudaError_t e = deit_emu::check_unsafe_call(); e != cudaSuccess) return record_error(e);
  deit_emu::run_everything();
  deit_emu::host_waited_for_everything();
  std::free(p);
  return cudaSuccess;
}

namespace deit_emu {
namespace {

// What a copy touches on the device: the ranges of its two sides that lie there.
Footprint copy_footprint(const char* api, void* dst, const void* src, size_t bytes) {
  Footprint f{api, {}, {}};
  if (auto a = range_access(src, bytes, /*writes=*/false)) f.accesses.push_back(*a);
  if (auto a = range_access(dst, bytes, /*writes=*/true)) f.accesses.push_back(*a);
  return f;
}

// A synchronous copy or memset: work on the legacy stream that the host then waits for.
void run_on_legacy_and_wait(Footprint footprint, const Work& work) {
  std::vector<Footprint> footprints{std::move(footprint)};
  order_next_piece(device().legacy, footprints);
  run_everything();  // it waits for the blocking streams' work before it
  work();
  host_waited_for(device().legacy.order);
}

}  // namespace
}  // namespace deit_emu

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  Lock lock(api_lock());
  if (!deit_emu::copy_in_bounds(dst, src, bytes, kind)) return record_error(cudaErrorInvalidValue);
  return record_error(
      deit_emu::enqueue(stream, [=] { std::memmove(dst, src, bytes); },
                        deit_emu::copy_footprint("cudaMemcpyAsync", dst, src, bytes)));
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  Lock lock(api_lock());
  if (const cudaError_t e = deit_emu::check_unsafe_call(); e != cudaSuccess) return record_error(e);
  if (!deit_emu::copy_in_bounds(dst, src, bytes, kind)) return record_error(cudaErrorInvalidValue);
  deit_emu::run_on_legacy_and_wait(deit_emu::copy_footprint("cudaMemcpy", dst, src, bytes),
                                   [=] { std::memmove(dst, src, bytes); });
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t stream) {
  Lock lock(api_lock());
  const std::optional<deit_emu::Access> target = deit_emu::range_access(p, bytes, true);
  if (!target) return record_error(cudaErrorInvalidValue);
  const deit_emu::Footprint f{"cudaMemsetAsync", {*target}, {}};
  return record_error(deit_emu::enqueue(stream, [=] { std::memset(p, value, bytes); }, f));
}

cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  Lock lock(api_lock());
  if (const cudaError_t e = deit_emu::check_unsafe_call(); e != cudaSuccess) return record_error(e);
  const std::optional<deit_emu::Access> target = deit_emu::range_access(p, bytes, true);
  if (!target) return record_error(cudaErrorInvalidValue);
  deit_emu::run_on_legacy_and_wait({"cudaMemset", {*target}, {}},
                                   [=] { std::memset(p, value, bytes); });
  return cudaSuccess;
}

// ---------------------------------------------------------------------------------------------
// Streams and events.

namespace {
cudaError_t create_stream(cudaStream_t* out, unsigned int flags, int priority) {
  Lock lock(api_lock());
  auto s = std::make_unique<CUstream_st>();
  s->blocking = (flags & cudaStreamNonBlocking) == 0;
  // Every other stream runs eagerly: which ones, DEIT_EMULATED_EAGER says (emulated_device.h).
  static const char* eager = std::getenv("DEIT_EMULATED_EAGER");
  const size_t parity = eager != nullptr && std::string(eager) == "even" ? 0 : 1;
  s->eager = device().streams.size() % 2 == parity;
  s->priority = priority;
  s->name = "stream " + std::to_string(device().streams.size() + 1);
  *out = s.get();
  device().streams.push_back(std::move(s));
  return cudaSuccess;
}
}  // namespace

cudaError_t cudaStreamCreate(cudaStream_t* s) { return create_stream(s, cudaStreamDefault, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
  return create_stream(s, flags, 0);
}
cudaError_t cudaStreamCreateWithPriority(cudaStream_t* s, unsigned int flags, int priority) {
  return create_stream(s, flags, priority);
}
cudaError_t cudaDeviceGetStreamPriorityRange(int* least, int* greatest) {
  *least = 0;
  *greatest = -5;
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Lock lock(api_lock());
  CUstream_st* s = resolve(stream);
  if (s == &device().legacy) return record_error(cudaErrorInvalidResourceHandle);
  if (s->capture != nullptr) return record_error(cudaErrorStreamCaptureUnsupported);
  deit_emu::run_all(*s);  // its work still completes
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  Lock lock(api_lock());
  CUstream_st* s = resolve(stream);
  if (s->capture != nullptr) {
    deit_emu::invalidate(s->capture);
    return record_error(cudaErrorStreamCaptureUnsupported);
  }
  if (const cudaError_t e = deit_emu::check_unsafe_call(); e != cudaSuccess) return record_error(e);
  if (s == &device().legacy)
    deit_emu::run_everything();
  else
    deit_emu::run_all(*s);
  deit_emu::host_waited_for(deit_emu::order_before_next(*s));
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  Lock lock(api_lock());
  delete e;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t stream) {
  Lock lock(api_lock());
  CUstream_st* s = resolve(stream);
  e->recorded = true;
  if (s->capture != nullptr) {
    if (s->capture->invalidated) return record_error(cudaErrorStreamCaptureInvalidated);
    e->capture = s->capture;
    e->depends_on = s->depends_on;
    return cudaSuccess;
  }
  if (s == &device().legacy && !device().captures.empty())
    return record_error(deit_emu::enqueue(stream, [] {}));  // refused: the implicit dependency
  e->capture = nullptr;
  e->stream = s;
  e->seq = s->enqueued;
  e->clock = ++device().clock;
  e->order = deit_emu::order_before_next(*s);
  return cudaSuccess;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t e, unsigned int) {
  Lock lock(api_lock());
  CUstream_st* s = resolve(stream);
  if (e->capture != nullptr) {
    // Waiting for a captured event joins the capture: later work here is captured too.
    if (s->capture == nullptr) {
      if (s == &device().legacy) return record_error(cudaErrorStreamCaptureImplicit);
      s->capture = e->capture;
      e->capture->joined.push_back(s);
      s->depends_on = e->depends_on;
      s->depends_on[s] = ++s->capture->tails[s];
    } else if (s->capture != e->capture) {
      return record_error(cudaErrorStreamCaptureIsolation);
    }
    for (const auto& [stream, count] : e->depends_on)
      s->depends_on[stream] = std::max(s->depends_on[stream], count);
    return cudaSuccess;
  }
  if (!e->recorded || e->stream == nullptr || s->capture != nullptr) return cudaSuccess;
  s->order.merge(e->order);
  CUstream_st* other = e->stream;
  const uint64_t upto = e->seq;
  return record_error(
      deit_emu::enqueue(stream, [other, upto] { deit_emu::run_until(*other, upto); }));
}

cudaError_t cudaEventQuery(cudaEvent_t e) {
  Lock lock(api_lock());
  if (e->capture != nullptr) return record_error(cudaErrorStreamCaptureUnsupported);
  if (const cudaError_t err = deit_emu::check_unsafe_call(); err != cudaSuccess)
    return record_error(err);
  if (!e->recorded || e->stream == nullptr) return cudaSuccess;
  if (e->stream->executed >= e->seq) {
    deit_emu::host_waited_for(e->order);
    return cudaSuccess;
  }
  // Still queued: answer as a busy GPU would, and let it finish for the next query.
  deit_emu::run_until(*e->stream, e->seq);
  return record_error(cudaErrorNotReady);
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  Lock lock(api_lock());
  if (e->capture != nullptr) return record_error(cudaErrorStreamCaptureUnsupported);
  if (const cudaError_t err = deit_emu::check_unsafe_call(); err != cudaSuccess)
    return record_error(err);
  if (e->recorded && e->stream != nullptr) {
    deit_emu::run_until(*e->stream, e->seq);
    deit_emu::host_waited_for(e->order);
  }
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  Lock lock(api_lock());
  if (!start->recorded || !end->recorded || start->stream == nullptr || end->stream == nullptr)
    return record_error(cudaErrorInvalidResourceHandle);
  if (start->stream->executed < start->seq || end->stream->executed < end->seq)
    return record_error(cudaErrorNotReady);
  // No timing on the host: one microsecond per piece of work enqueued between them.
  *ms = 1e-3f * static_cast<float>(end->clock > start->clock ? end->clock - start->clock : 0);
  return cudaSuccess;
}

cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* data) {
  Lock lock(api_lock());
  return record_error(deit_emu::enqueue(stream, [fn, data] { fn(data); }));
}

// ---------------------------------------------------------------------------------------------
// Graphs.

cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode* mode) {
  std::swap(*mode, deit_emu::t_capture_mode);
  return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  Lock lock(api_lock());
  CUstream_st* s = resolve(stream);
  if (s == &device().legacy) return record_error(cudaErrorStreamCaptureUnsupported);
  if (s->capture != nullptr) return record_error(cudaErrorIllegalState);
  auto* c = new Capture;
  c->graph = new CUgraph_st;
  c->origin = s;
  c->mode = mode;
  c->thread = std::this_thread::get_id();
  s->capture = c;
  device().captures.push_back(s->capture);
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  Lock lock(api_lock());
  *graph = nullptr;
  CUstream_st* s = resolve(stream);
  Capture* c = s->capture;
  if (c == nullptr) return record_error(cudaErrorIllegalState);
  if (c->origin != s) {
    deit_emu::invalidate(c);
    return record_error(cudaErrorStreamCaptureUnmatched);
  }
  // Every forked stream's last captured node must come before the end.
  const bool unjoined = std::any_of(c->joined.begin(), c->joined.end(),
                                    [&](CUstream_st* j) { return s->depends_on[j] < c->tails[j]; });
  if (unjoined) c->invalidated = true;
  for (CUstream_st* j : c->joined) j->capture = nullptr, j->depends_on.clear();
  s->capture = nullptr;
  s->depends_on.clear();
  auto& all = device().captures;
  all.erase(std::remove(all.begin(), all.end(), c), all.end());
  std::unique_ptr<Capture> ended(c);
  if (c->invalidated) {
    delete c->graph;
    return record_error(unjoined ? cudaErrorStreamCaptureUnjoined
                                 : cudaErrorStreamCaptureInvalidated);
  }
  *graph = c->graph;
  return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  Lock lock(api_lock());
  const Capture* c = resolve(stream)->capture;
  *status = c == nullptr     ? cudaStreamCaptureStatusNone
            : c->invalidated ? cudaStreamCaptureStatusInvalidated
                             : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  Lock lock(api_lock());
  if (graph == nullptr) return record_error(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->nodes, graph->footprints};
  for (deit_emu::Footprint& f : (*exec)->footprints) f.site = "a graph replay of " + f.site;
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  Lock lock(api_lock());
  const std::vector<deit_emu::Work>* nodes = &exec->nodes;
  return record_error(deit_emu::enqueue_touching(
      stream, [nodes] { for (const deit_emu::Work& w : *nodes) w(); }, exec->footprints));
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  Lock lock(api_lock());
  deit_emu::run_everything();  // a replay still queued reads the nodes
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}
