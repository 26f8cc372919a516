#include "engine/staged_upload.h"

#include <stdexcept>

#if DEIT_HAVE_CUDA
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include <cuda_runtime.h>

#include "engine/stream.h"
#include "kernels/check.h"
#endif

namespace deit {

#if DEIT_HAVE_CUDA
namespace {

// The pinned slots of one device, used in turn.
class UploadSlots {
 public:
  static constexpr size_t kSlotBytes = size_t{256} << 10;
  static constexpr size_t kSlots = 16;

  explicit UploadSlots(int device) {
    DEIT_CUDA_CHECK(cudaSetDevice(device));
    DEIT_CUDA_CHECK(cudaHostAlloc(&pinned_, kSlotBytes * kSlots, cudaHostAllocDefault));
    for (cudaEvent_t& done : copied_)
      DEIT_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  }

  void upload(const void* host, void* device_dst, size_t bytes, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t slot = next_++ % kSlots;
    // The slot's previous copy must have read it (an event never recorded counts as done).
    DEIT_CUDA_CHECK(cudaEventSynchronize(copied_[slot]));
    uint8_t* staging = pinned_ + slot * kSlotBytes;
    std::memcpy(staging, host, bytes);
    DEIT_CUDA_CHECK(
        cudaMemcpyAsync(device_dst, staging, bytes, cudaMemcpyHostToDevice, stream));
    DEIT_CUDA_CHECK(cudaEventRecord(copied_[slot], stream));
  }

 private:
  std::mutex mutex_;
  uint8_t* pinned_ = nullptr;
  std::array<cudaEvent_t, kSlots> copied_{};
  size_t next_ = 0;
};

// Kept for the life of the process, as the streams are: tensors may be uploaded until exit.
UploadSlots& upload_slots(int device) {
  static std::mutex mutex;
  static auto* slots = new std::vector<std::unique_ptr<UploadSlots>>();
  std::lock_guard<std::mutex> lock(mutex);
  if (slots->size() <= static_cast<size_t>(device)) slots->resize(device + 1);
  if (!(*slots)[device]) (*slots)[device] = std::make_unique<UploadSlots>(device);
  return *(*slots)[device];
}

}  // namespace
#endif

Tensor upload_without_waiting(const Tensor& host, Device device) {
  if (!host.device().is_cpu())
    throw std::invalid_argument("upload_without_waiting: " + host.describe() +
                                " is not in host memory");
  if (device.is_cpu()) return host;
#if DEIT_HAVE_CUDA
  const size_t bytes = host.nbytes();
  if (bytes == 0 || bytes > UploadSlots::kSlotBytes) return host.to(device);
  cudaStream_t stream = compute_stream(device.index);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  DEIT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone)
    throw std::logic_error("upload_without_waiting: " + host.describe() +
                           " during a graph capture, whose replays would send stale bytes");
  Tensor out = Tensor::empty(host.shape(), host.dtype(), device);
  upload_slots(device.index).upload(host.raw_data(), out.raw_data(), bytes, stream);
  return out;
#else
  return host.to(device);
#endif
}

}  // namespace deit
