#include "engine/cuda_graph.h"

#if DEIT_HAVE_CUDA
#include <stdexcept>

#include "engine/allocator.h"
#include "engine/stream.h"
#include "kernels/check.h"

namespace deit {

CudaGraph::~CudaGraph() { reset(); }

void CudaGraph::reset() {
  // No checks here: reset() runs in the destructor, which must not throw.
  if (exec_) cudaGraphExecDestroy(exec_);
  if (graph_) cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
  if (pool_) cuda_allocator(device_).release_pool(pool_);
  pool_ = 0;
}

void CudaGraph::capture(int device, const std::function<void()>& work) {
  reset();
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
    reset();
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
    reset();
    throw;
  }
}

void CudaGraph::launch() {
  if (!exec_) throw std::logic_error("CudaGraph::launch() before a successful capture()");
  DEIT_CUDA_CHECK(cudaGraphLaunch(exec_, compute_stream(device_)));
}

}  // namespace deit
#endif
