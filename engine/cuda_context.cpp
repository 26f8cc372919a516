#include "engine/cuda_context.h"

#if DEIT_HAVE_CUDA
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/stream.h"
#include "kernels/check.h"

namespace deit {

CudaContext& cuda_context(int device) {
  // Never destroyed: tensors and plans freed during static destruction may still need them.
  static std::mutex mutex;
  static auto* contexts = new std::vector<std::unique_ptr<CudaContext>>();
  std::lock_guard<std::mutex> lock(mutex);
  // Every op asks: answer from the table without querying the driver once the context exists.
  if (device >= 0 && static_cast<size_t>(device) < contexts->size() && (*contexts)[device])
    return *(*contexts)[device];
  const int count = cuda_device_count();
  if (device < 0 || device >= count)
    throw std::invalid_argument("no CUDA device cuda:" + std::to_string(device) +
                                " (this machine has " + std::to_string(count) + ")");
  if (contexts->size() < static_cast<size_t>(count)) contexts->resize(count);
  auto& slot = (*contexts)[device];
  if (!slot) {
    // CublasLt allocates its workspace on the current device.
    DEIT_CUDA_CHECK(cudaSetDevice(device));
    auto context = std::make_unique<CudaContext>();
    context->device = device;
    context->stream = compute_stream(device);
    context->cublas_lt = std::make_unique<kernels::CublasLt>();
    slot = std::move(context);
  }
  return *slot;
}

}  // namespace deit
#endif
