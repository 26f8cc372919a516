#include "train/graph_step.h"

#include <stdexcept>
#include <vector>

#include "engine/autograd.h"
#include "engine/staged_upload.h"

#if DEIT_HAVE_CUDA
#include "engine/cuda_graph.h"
#endif

namespace deit::train {

struct GraphStep::Captured {
#if DEIT_HAVE_CUDA
  CudaGraph graph;
#endif
  Tensor images, targets, keep_scales;  // the fixed inputs the graph reads
  Tensor loss;                          // what it writes
};

GraphStep::GraphStep(Device device, Work work) : device_(device), work_(std::move(work)) {
#if DEIT_HAVE_CUDA
  if (!device.is_cuda())
    throw std::invalid_argument("a CUDA graph of the training step needs a CUDA device, not " +
                                device.str());
#else
  throw std::invalid_argument("a CUDA graph of the training step needs a build with CUDA");
#endif
}

GraphStep::~GraphStep() = default;

std::string GraphStep::capture(const Tensor& images, const Tensor& targets,
                               const Tensor& keep_scales, Communicator& comm) {
  // Capturing again would hand the old graph's blocks back while a replay may still use them.
  if (captured_) throw std::logic_error("GraphStep::capture: the step is captured already");
  std::string error;
#if DEIT_HAVE_CUDA
  auto fresh = std::make_unique<Captured>();
  Captured& c = *fresh;
  try {
    c.images = Tensor::empty(images.shape(), images.dtype(), device_);
    c.targets = Tensor::empty(targets.shape(), targets.dtype(), device_);
    c.keep_scales = Tensor::empty(keep_scales.shape(), keep_scales.dtype(), device_);
    c.graph.capture(device_.index,
                    [&] { c.loss = work_(c.images, c.targets, c.keep_scales); });
  } catch (const std::exception& e) {
    error = e.what();
    clear_tape();  // what the work recorded before it failed
  }
  std::vector<double> failures{error.empty() ? 0.0 : 1.0};
  comm.all_reduce_sum(failures);
  if (failures[0] == 0) {
    captured_ = std::move(fresh);
    return "";
  }
#else
  (void)images, (void)targets, (void)keep_scales, (void)comm;
  error = "a build without CUDA";
#endif
  return error.empty() ? "on another rank" : error;
}

Tensor GraphStep::run(const Tensor& images, const Tensor& targets, const Tensor& keep_scales,
                      const std::function<void()>& before_launch) {
#if DEIT_HAVE_CUDA
  if (!captured_) throw std::logic_error("GraphStep::run before a successful capture");
  Captured& c = *captured_;
  auto check = [](const char* what, const Tensor& given, const Tensor& fixed) {
    if (given.shape() != fixed.shape() || given.dtype() != fixed.dtype())
      throw std::invalid_argument(std::string("CUDA graph step: ") + what + " " +
                                  given.describe() + ", the graph was captured for " +
                                  fixed.describe());
  };
  check("images", images, c.images);
  check("targets", targets, c.targets);
  check("keep scales", keep_scales, c.keep_scales);
  c.images.copy_from(images);    // device to device: queued, no wait
  c.targets.copy_from(targets);
  c.keep_scales.copy_from(upload_without_waiting(keep_scales, device_));
  before_launch();
  c.graph.launch();
  return c.loss;
#else
  (void)images, (void)targets, (void)keep_scales, (void)before_launch;
  throw std::logic_error("GraphStep::run in a build without CUDA");
#endif
}

}  // namespace deit::train
