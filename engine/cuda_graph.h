// A CUDA graph of everything the engine issues on one device's compute stream while capture()
// runs its work, replayed with launch(). With static shapes and a warm caching
// allocator a whole training step (forward, backward, optimizer) can be captured: the engine's step
// does no host synchronisation and no host reads, which capture would reject.
//
// What a replay reads and writes are the addresses seen during capture: tensors that the captured
// work reads from outside (images, targets, parameters, optimizer state) must stay alive and be
// refilled in place, and those it produced (the loss, the gradients) are rewritten in place by
// every replay. Scalars passed to kernels by value are frozen at capture time; the optimizer's
// learning rate and step count are not, when the graph holds Optimizer::update_async() and
// Optimizer::begin_step_async() runs before each launch() (engine/optimizer.h).
//
// The blocks the captured work allocates belong to the graph until it is destroyed or captured
// again (a private pool of the caching allocator, engine/allocator.h): a replay writes them, so
// nothing else may be given them, even after the tensors that held them during capture are gone.
// Destroying or recapturing a graph therefore first waits for its replays on the compute stream.
//
// Work that the captured stream hands to another stream through events, as the NCCL communicator
// does with its communication stream (engine/communicator.h), is captured with it, provided it is
// joined back before the capture ends: every collective is, once its bucket is finished.
#pragma once

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <string>

namespace deit {

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Runs `work` with the compute stream of `device` in capture mode and instantiates what it
  // issued (replacing any earlier capture). Nothing runs on the device yet. If `work` throws, the
  // capture is ended and discarded and the exception passes on.
  void capture(int device, const std::function<void()>& work);

  // Enqueues one replay on the compute stream (asynchronous, like the work it replays).
  void launch();

  bool captured() const { return exec_ != nullptr; }

 private:
  // Waits for the replays still queued on the compute stream, then destroys the graph and hands
  // its pool back to the allocator. Returns what failed, "" if nothing: the destructor reports it
  // (it must not throw), capture() throws it.
  [[nodiscard]] std::string reset() noexcept;

  int device_ = 0;
  uint64_t pool_ = 0;  // the allocator pool of the captured work's blocks (0: none)
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace deit
#endif
