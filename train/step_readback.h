// What the host learns from each optimizer step on CUDA: the loss of each of its micro-batches
// (for the progress line, the epoch's mean loss and the divergence check) and the global gradient
// norm (a non-finite gradient leaves the device's weights unchanged, engine/optimizer.h, and must
// stop the run as it does on the CPU). Reading a device value waits for the device, so the values
// are copied into one device buffer as they are computed, and the host reads the buffer once,
// after the whole step is queued: one wait per optimizer step.
#pragma once
#include <cstdint>
#include <vector>

#include "engine/communicator.h"
#include "engine/tensor.h"

namespace deit::train {

class StepReadback {
 public:
  // Room for `micro_batches` losses per step (--accum-steps) on `device`.
  StepReadback(Device device, int64_t micro_batches);

  // Queues a copy of a micro-batch's loss (one f32 element on the device); no wait.
  void record_loss(const Tensor& loss);

  struct Values {
    std::vector<double> losses;  // in the order recorded
    double grad_norm = 0;
  };
  // Queues the copy of the step's gradient norm (Optimizer::device_grad_norm()), waits for the
  // device once (through `comm`, which gives up on lost peers), and returns the step's values.
  // The next step records from the start again.
  Values read(const Tensor& grad_norm, Communicator& comm);

 private:
  Tensor buffer_;  // f32 (micro_batches + 1): the losses, then the gradient norm
  int64_t recorded_ = 0;
};

}  // namespace deit::train
