// Where a tensor lives: the host, or one CUDA device.
#pragma once
#include <string>

namespace deit {

struct Device {
  enum class Kind { cpu, cuda };
  Kind kind = Kind::cpu;
  int index = 0;

  static Device cpu() { return {Kind::cpu, 0}; }
  static Device cuda(int index = 0) { return {Kind::cuda, index}; }
  bool is_cpu() const { return kind == Kind::cpu; }
  bool is_cuda() const { return kind == Kind::cuda; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// Parses "cpu", "cuda" or "cuda:N"; throws std::invalid_argument naming the bad text.
Device parse_device(const std::string& text);

// What the CUDA runtime says about this machine's devices. A failed query is kept, not folded into
// "0 devices": a driver older than the runtime and a container started without GPU access both
// look like a machine without a GPU otherwise, and the user must be told which one it is.
struct CudaDeviceQuery {
  int count = 0;           // usable devices: 0 when the query failed
  int error = 0;           // cudaGetDeviceCount's cudaError_t (0: success)
  std::string error_name;  // cudaGetErrorName's text, empty on success
  std::string error_text;  // cudaGetErrorString's text, empty on success
  // Only when the query failed: they tell a missing driver from one older than the runtime.
  int driver_version = 0;   // cudaDriverGetVersion: 0 when no driver is installed
  int runtime_version = 0;  // cudaRuntimeGetVersion: the CUDA runtime deit runs on
};

// Asks the CUDA runtime once per call; a CPU-only build answers count 0 with no error.
CudaDeviceQuery query_cuda_devices();

// Number of usable CUDA devices: 0 in a CPU-only build, on a machine without a GPU, or when the
// runtime cannot use the driver (query_cuda_devices() says why).
int cuda_device_count();

// Why `device` cannot be used, given what `query` found: the runtime's own error text, the likely
// cause (no driver, a driver older than the runtime, no device visible to this process) and what
// to do instead (`instead`: a command with no CPU path names its own). Separate from
// require_device so that each cause can be tested on any machine.
std::string missing_cuda_device_message(Device device, const CudaDeviceQuery& query,
                                        const std::string& instead = "use --device cpu");

// Throws std::runtime_error, naming the device and what to do instead, when `device` is a CUDA
// device that this build or this machine does not have (missing_cuda_device_message): a command
// fails before any work.
void require_device(Device device);

}  // namespace deit
