#include "engine/stream.h"

#if DEIT_HAVE_CUDA
#include <mutex>
#include <vector>

#include "kernels/check.h"

namespace deit {

cudaStream_t compute_stream(int device) {
  static std::mutex mutex;
  static std::vector<cudaStream_t> streams;
  std::lock_guard<std::mutex> lock(mutex);
  if (streams.size() <= static_cast<size_t>(device)) streams.resize(device + 1, nullptr);
  if (!streams[device]) {
    DEIT_CUDA_CHECK(cudaSetDevice(device));
    DEIT_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
  }
  return streams[device];
}

}  // namespace deit
#endif
