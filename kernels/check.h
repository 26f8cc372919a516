// Error checks for every CUDA and cuBLAS call: a failure throws with the call, file and line.
#pragma once
#include <stdexcept>
#include <string>

#if DEIT_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>

namespace deit::detail {
[[noreturn]] inline void throw_call_error(const char* what, const char* call, const char* file,
                                          int line) {
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + call +
                           " failed: " + what);
}
}  // namespace deit::detail

#define DEIT_CUDA_CHECK(call)                                                                  \
  do {                                                                                         \
    cudaError_t deit_err_ = (call);                                                            \
    if (deit_err_ != cudaSuccess)                                                              \
      ::deit::detail::throw_call_error(cudaGetErrorString(deit_err_), #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports bad launch configurations at the launch site.
#define DEIT_CUDA_CHECK_LAUNCH() DEIT_CUDA_CHECK(cudaGetLastError())

#define DEIT_CUBLAS_CHECK(call)                                                            \
  do {                                                                                     \
    cublasStatus_t deit_st_ = (call);                                                      \
    if (deit_st_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::deit::detail::throw_call_error(cublasLtGetStatusString(deit_st_), #call, __FILE__, \
                                       __LINE__);                                          \
  } while (0)
#endif
