#include "engine/stream.h"

#if DEIT_HAVE_CUDA
#include <mutex>
#include <vector>

#include "kernels/check.h"

namespace deit {

namespace {

enum class StreamKind { compute, communication };

cudaStream_t device_stream(int device, StreamKind kind) {
  static std::mutex mutex;
  static std::vector<cudaStream_t> streams[2];
  std::lock_guard<std::mutex> lock(mutex);
  std::vector<cudaStream_t>& of_kind = streams[static_cast<int>(kind)];
  if (of_kind.size() <= static_cast<size_t>(device)) of_kind.resize(device + 1, nullptr);
  if (!of_kind[device]) {
    DEIT_CUDA_CHECK(cudaSetDevice(device));
    // The communication stream gets the highest priority: a collective whose input is ready but
    // whose blocks queue behind backward's kernels delays every rank, not just this one.
    int lowest = 0, highest = 0;
    DEIT_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lowest, &highest));
    DEIT_CUDA_CHECK(cudaStreamCreateWithPriority(
        &of_kind[device], cudaStreamNonBlocking,
        kind == StreamKind::communication ? highest : lowest));
  }
  return of_kind[device];
}

}  // namespace

cudaStream_t compute_stream(int device) { return device_stream(device, StreamKind::compute); }

cudaStream_t communication_stream(int device) {
  return device_stream(device, StreamKind::communication);
}

}  // namespace deit
#endif
