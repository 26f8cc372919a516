// The library rival of our attention forward (kernels/attention.h): cuDNN's fused flash attention,
// planned through the cuDNN graph API's SDPA forward operation (cuDNN >= 9.13.1, backend
// descriptors: the C++ cudnn-frontend is not needed). It reads Q, K and V straight from our packed
// qkv buffer (B, T, 3, H, D) through strides, writes out (B, T, H, D) and the natural-log
// log-sum-exp (B, H, T) in fp32, exactly our kernel's outputs, so the two are compared on the same
// job and their outputs can be checked against each other.
//
// Its backward has no rival here: the graph API's SDPA backward operation has engines on Blackwell
// only, and the composite graph the cudnn-frontend builds for it is not reproduced; bench/
// torch_baseline.py times cuDNN's backward through PyTorch at the same shapes instead.
#pragma once

// The first cuDNN whose SDPA operation the rival uses, encoded as CUDNN_VERSION and
// cudnnGetVersion() encode it (major * 10000 + minor * 100 + patch). 9.13.0's headers already
// declare the operation, but NVIDIA's cudnn-frontend refuses its unified SDPA node below 9.13.1
// ("Unified SDPA node requires cuDNN 9.13.1", sdpa_support_surface.h), judging by the lower of the
// header and library versions; we follow the library's own authors. A macro, not a constant,
// because cudnn_attention.cpp also compiles the rival out with #if below it.
#define DEIT_CUDNN_SDPA_MIN_VERSION 91301

#if DEIT_HAVE_CUDNN
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/bf16.h"

namespace deit::bench {

class CudnnAttentionForward {
 public:
  // Plans the attention for these sizes on the current device. Throws std::runtime_error saying
  // why when there is no rival: cudnn_sdpa_unavailable_reason()'s, or (naming the cuDNN call and
  // status) no engine that takes this shape.
  CudnnAttentionForward(int64_t B, int64_t Tn, int64_t H, int64_t D, double scale);
  ~CudnnAttentionForward();
  CudnnAttentionForward(const CudnnAttentionForward&) = delete;
  CudnnAttentionForward& operator=(const CudnnAttentionForward&) = delete;

  // qkv, out: bf16, 16-byte aligned; lse: fp32. Enqueued on `stream`. The first call with these
  // pointers binds them (builds cuDNN's variant pack); later calls with the same ones only launch,
  // so a timed run after a warm-up one is not charged the host's set-up.
  void run(const kernels::bf16_bits* qkv, kernels::bf16_bits* out, float* lse,
           cudaStream_t stream);

  // The engine cuDNN's heuristic ranked first among those that could be planned, and its scratch.
  const std::string& engine() const;
  size_t workspace_bytes() const;

 private:
  struct Plan;
  std::unique_ptr<Plan> plan_;
};

// "9.19.0": the cuDNN library loaded at run time (which may differ from the headers built against).
std::string cudnn_runtime_version();

// The cuDNN the rival can count on: the lower of the headers deit was built against
// (CUDNN_VERSION) and the library loaded at run time (cudnnGetVersion()), as the cudnn-frontend
// judges it.
size_t cudnn_effective_version();

// Empty when cudnn_effective_version() reaches DEIT_CUDNN_SDPA_MIN_VERSION; else why there is no
// rival, naming both versions. The one gate the constructor and the tests share.
std::string cudnn_sdpa_unavailable_reason();

}  // namespace deit::bench
#endif
