#include "engine/device.h"

#include <stdexcept>
#include <string>

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit {

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.rfind("cuda:", 0) == 0) {
    const std::string index = text.substr(5);
    if (!index.empty() && index.find_first_not_of("0123456789") == std::string::npos)
      return Device::cuda(std::stoi(index));
  }
  throw std::invalid_argument("unknown device '" + text + "' (expected cpu, cuda or cuda:N)");
}

int cuda_device_count() {
#if DEIT_HAVE_CUDA
  int count = 0;
  // No driver or no device is an answer here, not an error.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

void require_device(Device device) {
  if (device.is_cpu()) return;
#if DEIT_HAVE_CUDA
  const int count = cuda_device_count();
  if (device.index >= count)
    throw std::runtime_error("no CUDA device " + device.str() + ": this machine has " +
                             std::to_string(count) + "; use --device cpu");
#else
  throw std::runtime_error("this deit was built without CUDA, so " + device.str() +
                           " is not available; use --device cpu");
#endif
}

}  // namespace deit
