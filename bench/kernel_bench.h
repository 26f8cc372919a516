// `deit bench kernels`: every fused CUDA kernel at the shapes a ViT training step gives it, against
// the hardware's ceilings measured in the same run and against the library that does the same job.
//
// Ceilings: device-to-device copy bandwidth (cudaMemcpyAsync of 1 GiB, counting the bytes read and
// written) for the memory-bound kernels, and the bf16 tensor-core rate of a large cuBLASLt GEMM
// (8192^3, bf16 in and out, fp32 accumulation, random data) for attention.
//
// What a kernel is judged by:
//   - memory-bound kernels (LayerNorm, LayerScale + drop-path, GELU, BCE, the last block's
//     class-token attention): the bytes the job must
//     move at least, i.e. each input read once and each output written once (scratch and re-reads
//     are the kernel's own cost), over its time, against the copy bandwidth;
//   - attention: its matmul FLOPs, forward 4 B H T^2 D (QK^T and PV), backward 10 B H T^2 D
//     (2.5x the forward: QK^T recomputed, dV, dP, dQ, dK, as flash-attention papers count),
//     against the GEMM rate; and against cuDNN's fused attention forward (bench/cudnn_attention.h)
//     on the same inputs where this build has cuDNN.
//
// Timing (bench/cuda_timing.h): CUDA events, after warm-up, L2 flushed before every run, median.
#pragma once

#if DEIT_HAVE_CUDA
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/cuda_timing.h"

namespace deit::bench {

struct KernelBenchOptions {
  TimingOptions timing;
  // More shapes: the memory-bound kernels at every preset width (384, 768, 1024, 1280) instead of
  // ViT-B's alone.
  bool all_widths = false;
};

struct KernelMeasurement {
  std::string kernel;  // "layernorm forward", "attention backward", "copy", ...
  std::string impl;    // "deit", "cudnn", "cublaslt", "cublaslt-autotuned", "cuda"
  std::string shape;   // the sizes, e.g. "B=256 T=197 H=12 D=64"
  bool available = true;
  std::string note;    // why a rival is unavailable, or which engine it ran
  Timing timing;
  double bytes = 0;    // bytes the job must move (memory-bound kernels), else 0
  double flops = 0;    // arithmetic (attention, GEMM), else 0
};

struct KernelReport {
  std::string device;
  std::string cudnn;  // the runtime version, or why there is no cuDNN rival
  TimingOptions timing;
  double copy_gbps = 0;    // the bandwidth ceiling, GB/s (1e9 bytes)
  double gemm_tflops = 0;  // the FLOP/s ceiling, TFLOP/s
  std::vector<KernelMeasurement> kernels;
  // What ended the run early (a kernel that failed or faulted: later ones would fail with it),
  // empty when every benchmark ran. The rows measured before it stand.
  std::string error;
};

using ProgressFn = std::function<void(const std::string&)>;

// Runs every benchmark on `device`; `progress` hears a line before each.
KernelReport run_kernel_benchmarks(int device, const KernelBenchOptions& options,
                                   const ProgressFn& progress);

// Achieved rate and fraction of the matching ceiling (0 where the measurement has no rate).
double achieved_gbps(const KernelMeasurement& m);
double achieved_tflops(const KernelMeasurement& m);
double fraction_of_ceiling(const KernelMeasurement& m, const KernelReport& report);

nlohmann::ordered_json to_json(const KernelReport& report);

}  // namespace deit::bench
#endif
