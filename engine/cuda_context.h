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

}  // namespace deit
#endif
