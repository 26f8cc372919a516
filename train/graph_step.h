// `deit train --cuda-graph`: the training step (forward, loss, backward with the gradient
// reduction, the optimizer update, the EMA) captured once as a CUDA graph and replayed for every
// later batch, so that the host launches one graph per step instead of every kernel of it.
//
// A replay reads what the capture read, where the capture read it (engine/cuda_graph.h). So each
// step's inputs are first copied into fixed device buffers: the batch's images and targets (device
// to device, on the compute stream) and the drop-path keep scales (drawn on the host, uploaded
// without a wait). The scalars that change from step to step (the learning rate, the bias
// corrections) reach the replayed update through Optimizer::begin_step_async(), which the caller
// runs in `before_launch`. The step must be warm when it is captured (cuBLASLt plans made, the
// allocator's cache filled): the trainer runs its first step eagerly.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "engine/communicator.h"
#include "engine/tensor.h"

namespace deit::train {

class GraphStep {
 public:
  // One training step from its inputs (images (B, 3, S, S) f32, targets (B, K) f32, keep scales
  // (2 * depth, B) f32, all on the device), queued on the compute stream without a host wait;
  // returns the loss, which every replay rewrites in place.
  using Work = std::function<Tensor(const Tensor& images, const Tensor& targets,
                                    const Tensor& keep_scales)>;

  // `device` must be a CUDA device (std::invalid_argument otherwise, or in a build without CUDA).
  GraphStep(Device device, Work work);
  ~GraphStep();
  GraphStep(const GraphStep&) = delete;
  GraphStep& operator=(const GraphStep&) = delete;

  // Allocates the fixed inputs with the shapes and dtypes of these (images and targets on the
  // device, keep_scales in host memory) and captures `work` over them; nothing runs yet. Once per
  // GraphStep (std::logic_error after a success). Every rank of `comm` captures or none keeps its
  // graph (a rank that replays alone would wait in its collectives for ever): returns "" when all
  // did, else why not (this rank's error, or "on another rank"), with nothing captured and the
  // tape cleared. Gradients the failed capture made are the caller's to drop. The graph keeps
  // the blocks its step allocated (about one step's activations) for as long as it lives, beside
  // what eager work (evaluation) allocates.
  std::string capture(const Tensor& images, const Tensor& targets, const Tensor& keep_scales,
                      Communicator& comm);
  bool captured() const { return captured_ != nullptr; }

  // Copies images, targets and keep_scales into the fixed buffers (queued on the compute stream,
  // no wait), runs `before_launch`, and launches the captured step. Needs captured() and the
  // captured shapes (std::invalid_argument otherwise). Returns the loss tensor the step writes.
  Tensor run(const Tensor& images, const Tensor& targets, const Tensor& keep_scales,
             const std::function<void()>& before_launch);

 private:
  struct Captured;

  Device device_;
  Work work_;
  std::unique_ptr<Captured> captured_;
};

}  // namespace deit::train
