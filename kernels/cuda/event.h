// A CUDA event of the current device, destroyed with its owner. Host code: the NCCL
// communicator's stream ordering (engine/communicator_nccl.cpp) and the GEMM autotuner's timing
// (kernels/cuda/cublaslt.cu) hold theirs in one.
#pragma once
#include <cuda_runtime.h>

#include <utility>

#include "kernels/check.h"

namespace deit::kernels {

class CudaEvent {
 public:
  // cudaEventDisableTiming where the event only orders work: such events are cheaper.
  explicit CudaEvent(unsigned flags) { DEIT_CUDA_CHECK(cudaEventCreateWithFlags(&event_, flags)); }
  ~CudaEvent() {
    if (event_) cudaEventDestroy(event_);
  }
  CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  CudaEvent& operator=(CudaEvent&&) = delete;
  operator cudaEvent_t() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace deit::kernels
