#include "train/step_readback.h"

#include <stdexcept>
#include <string>

namespace deit::train {

StepReadback::StepReadback(Device device, int64_t micro_batches)
    : buffer_(Tensor::empty({micro_batches + 1}, DType::f32, device)) {}

void StepReadback::record_loss(const Tensor& loss) {
  if (recorded_ + 1 >= buffer_.numel())
    throw std::logic_error("step readback: more than " + std::to_string(buffer_.numel() - 1) +
                           " losses in one step");
  buffer_.slice(recorded_, recorded_ + 1).copy_from(loss.view({1}));  // device to device
  ++recorded_;
}

StepReadback::Values StepReadback::read(const Tensor& grad_norm, Communicator& comm) {
  const int64_t slot = buffer_.numel() - 1;
  buffer_.slice(slot, slot + 1).copy_from(grad_norm.view({1}));
  comm.wait_for_device();  // the step's one wait
  const std::vector<double> host = buffer_.to_vector<double>();
  Values values;
  values.losses.assign(host.begin(), host.begin() + recorded_);
  values.grad_norm = host[slot];
  recorded_ = 0;
  return values;
}

}  // namespace deit::train
