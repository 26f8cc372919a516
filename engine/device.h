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

// Number of usable CUDA devices: 0 in a CPU-only build or on a machine without a GPU.
int cuda_device_count();

// Throws std::runtime_error, naming the device and what to do instead, when `device` is a CUDA
// device that this build or this machine does not have: a command fails before any work.
void require_device(Device device);

}  // namespace deit
