#include "engine/cuda_graph.h"

#if DEIT_HAVE_CUDA
#include <cstdio>
#include <stdexcept>
#include <string>

#include "engine/allocator.h"
#include "engine/stream.h"
#include "kernels/check.h"

namespace deit {

CudaGraph::~CudaGraph() {
  // A destructor must not throw: report, and go on without the graph.
  const std::string failure = reset();
  if (!failure.empty())
    std::fprintf(stderr, "deit: warning: destroying a CUDA graph: %s\n", failure.c_str());
}

std::string CudaGraph::reset() noexcept {
  // Runs one step of the teardown, checked; its failure is kept (the first one) instead of thrown,
  // so that the rest of the teardown still runs.
  std::string failure;
  const auto step = [&failure](auto&& call) {
    try {
      call();
      return true;
    } catch (const std::exception& e) {
      if (failure.empty()) failure = e.what();
      cudaGetLastError();  // reported by the caller, not left for the next launch check to find
      return false;
    }
  };
  // A replay queued by launch() may still be running and writing the pool's blocks. Handed back
  // to the shared cache, they are safe only for later work on the same compute stream, yet they
  // can also go to another stream (a collective, a copy) or back to the driver (release_cached),
  // and nothing would order that after the replay. Every caller so far happened to synchronise
  // first (the step reads its loss back); the graph must not depend on that, so it waits for its
  // own replays. This runs once per capture or teardown, so the wait costs nothing.
  bool replays_done = true;
  if (exec_)
    replays_done = step([&] { DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(device_))); });
  if (exec_) step([&] { DEIT_CUDA_CHECK(cudaGraphExecDestroy(exec_)); });
  if (graph_) step([&] { DEIT_CUDA_CHECK(cudaGraphDestroy(graph_)); });
  exec_ = nullptr;
  graph_ = nullptr;
  // After a failed wait a replay may still write the pool: its blocks then serve nothing else, a
  // leak that is harmless next to the device error that caused it.
  if (pool_ && replays_done) step([&] { cuda_allocator(device_).release_pool(pool_); });
  if (!replays_done) failure += " (the graph's memory pool is left unused)";
  pool_ = 0;
  return failure;
}

void CudaGraph::capture(int device, const std::function<void()>& work) {
  if (const std::string failure = reset(); !failure.empty()) throw std::runtime_error(failure);
  device_ = device;
  cudaStream_t stream = compute_stream(device);
  // Global mode: any call that is unsafe during capture (a synchronisation, a copy to or from
  // pageable host memory), from any thread, fails loudly instead of being silently left out of the
  // graph. The caching allocator's own cudaMalloc is let through (engine/allocator.cpp).
  // What the captured work allocates stays the graph's until reset() (engine/allocator.h).
  CachingAllocator& allocator = cuda_allocator(device);
  DEIT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  try {
    pool_ = allocator.begin_pool();
    work();
  } catch (...) {
    if (pool_) allocator.end_pool();
    cudaGraph_t partial = nullptr;
    cudaStreamEndCapture(stream, &partial);  // the exception below is the error worth reporting
    if (partial) cudaGraphDestroy(partial);
    cudaGetLastError();
    (void)reset();  // a teardown failure would matter less than the error rethrown
    throw;
  }
  allocator.end_pool();
  try {
    DEIT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
    // Node priorities as captured: the communication stream's collectives keep their high
    // priority (engine/stream.h) instead of taking the launch stream's.
    DEIT_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, cudaGraphInstantiateFlagUseNodePriority));
  } catch (...) {
    // The caller may go on without a graph: the failure must not stay behind as the thread's
    // last error, where the next launch check would find it.
    cudaGetLastError();
    (void)reset();  // a teardown failure would matter less than the error rethrown
    throw;
  }
}

void CudaGraph::launch() {
  if (!exec_) throw std::logic_error("CudaGraph::launch() before a successful capture()");
  DEIT_CUDA_CHECK(cudaGraphLaunch(exec_, compute_stream(device_)));
}

}  // namespace deit
#endif
