// What the engine's CUDA ops need per device, created once, on first use: the compute stream
// (engine/stream.h) and the cuBLASLt handle with its workspace and GEMM plans
// (kernels/cuda/cublaslt.h). Everything lives until the process ends, like the allocators.
//
// One thread issues a device's work at a time (the CublasLt object is not thread-safe), which is
// how the trainer runs: one process per GPU, one thread driving it.
#pragma once

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

#include <memory>

#include "kernels/cuda/cublaslt.h"

namespace deit {

struct CudaContext {
  int device = 0;
  cudaStream_t stream = nullptr;
  std::unique_ptr<kernels::CublasLt> cublas_lt;
};

// Throws std::invalid_argument for a device index that does not exist.
CudaContext& cuda_context(int device);

// The device's GEMM settings (CublasLt::set_bias_epilogue, set_autotune) for a scope: set them
// through lt(), and the destructor puts back what the constructor found. The process's one
// CublasLt outlives a training run or a benchmark, and tests run many of those in one process.
class CublasLtSettingsScope {
 public:
  explicit CublasLtSettingsScope(int device)
      : lt_(*cuda_context(device).cublas_lt),
        bias_epilogue_(lt_.bias_epilogue()),
        autotune_(lt_.autotune()) {}
  ~CublasLtSettingsScope() {
    lt_.set_bias_epilogue(bias_epilogue_);
    lt_.set_autotune(autotune_);
  }
  CublasLtSettingsScope(const CublasLtSettingsScope&) = delete;
  CublasLtSettingsScope& operator=(const CublasLtSettingsScope&) = delete;
  kernels::CublasLt& lt() const { return lt_; }

 private:
  kernels::CublasLt& lt_;
  bool bias_epilogue_, autotune_;
};

}  // namespace deit
#endif
