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
    if (!index.empty() && index.find_first_not_of("0123456789") == std::string::npos) {
      // No machine has a billion GPUs, and std::stoi would throw a bare "stoi" past 2^31.
      if (index.size() > 9)
        throw std::invalid_argument("device '" + text + "': no GPU has index " + index);
      return Device::cuda(std::stoi(index));
    }
  }
  throw std::invalid_argument("unknown device '" + text + "' (expected cpu, cuda or cuda:N)");
}

CudaDeviceQuery query_cuda_devices() {
  CudaDeviceQuery query;
#if DEIT_HAVE_CUDA
  const cudaError_t error = cudaGetDeviceCount(&query.count);
  if (error == cudaSuccess) return query;
  // The failure is this query's answer, not an error of the next CUDA call to be checked: it must
  // not stay behind as the thread's last error.
  cudaGetLastError();
  query.count = 0;
  query.error = static_cast<int>(error);
  query.error_name = cudaGetErrorName(error);
  query.error_text = cudaGetErrorString(error);
  // The versions tell "no driver" (0) from "a driver too old for this runtime"; both calls work
  // without a usable device, and a failure leaves the version unknown (0), which is all we need.
  if (cudaDriverGetVersion(&query.driver_version) != cudaSuccess) query.driver_version = 0;
  if (cudaRuntimeGetVersion(&query.runtime_version) != cudaSuccess)
    query.runtime_version = CUDART_VERSION;
  cudaGetLastError();
#endif
  return query;
}

int cuda_device_count() { return query_cuda_devices().count; }

#if DEIT_HAVE_CUDA
namespace {

// 12080 -> "12.8", as nvidia-smi prints the CUDA version a driver supports.
std::string cuda_version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

}  // namespace
#endif

std::string missing_cuda_device_message(Device device, const CudaDeviceQuery& query,
                                        const std::string& instead) {
#if DEIT_HAVE_CUDA
  if (query.error == cudaSuccess)
    return "no CUDA device " + device.str() + ": this machine has " + std::to_string(query.count) +
           "; " + instead;
  std::string cause;
  switch (query.error) {
    case cudaErrorInsufficientDriver:
      // The runtime answers this both when libcuda.so is missing and when it is too old.
      cause = query.driver_version == 0
                  ? "no NVIDIA driver is installed (libcuda.so was not found), so this machine "
                    "has no usable GPU"
                  : "the NVIDIA driver supports CUDA " + cuda_version_text(query.driver_version) +
                        ", older than the CUDA " + cuda_version_text(query.runtime_version) +
                        " runtime this deit was built with: update the driver";
      break;
    case cudaErrorNoDevice:
      cause =
          "no CUDA device is visible to this process: the machine has no GPU, the container "
          "was started without GPU access (docker run --gpus ...), or CUDA_VISIBLE_DEVICES "
          "hides them";
      break;
    case cudaErrorStubLibrary:
      cause =
          "the libcuda.so found is the CUDA toolkit's stub, not the driver's: put the "
          "driver's library ahead of the toolkit's stubs/ folder on the library path";
      break;
    case cudaErrorSystemDriverMismatch:
      cause =
          "the loaded NVIDIA kernel module and the driver library (libcuda.so) are different "
          "versions: reload the driver or reboot";
      break;
    default:
      cause = "the CUDA runtime cannot use this machine's driver or devices";
      break;
  }
  return "cannot use CUDA device " + device.str() + ": cudaGetDeviceCount failed with " +
         query.error_name + " (" + query.error_text + "); " + cause + "; or " + instead;
#else
  (void)query;
  return "this deit was built without CUDA, so " + device.str() + " is not available; " + instead;
#endif
}

void require_device(Device device) {
  if (device.is_cpu()) return;
  const CudaDeviceQuery query = query_cuda_devices();
  if (device.index >= query.count)
    throw std::runtime_error(missing_cuda_device_message(device, query));
}

}  // namespace deit
