// The device code of the linear layer (kernels/cuda/linear.cu says how it is launched; the GEMMs
// are cuBLASLt's): the bias add where no GEMM epilogue fuses it. The bias gradient's column sums
// of dy are common_kernels.cuh's column_partials_kernel, then sum_partials.
//
// Included by linear.cu, and by the emulated test (tests/emulated/ops_emulated.cpp) after
// tests/emulated/cuda_emulator.h, which runs this kernel lane by lane on machines without a GPU.
// So the code here uses only common_device.cuh, CUDA's bf16 types and conversions, and the
// built-ins the emulator provides; anything more needs a stand-in there. Each includer is the only
// translation unit of its program with these kernels, hence the unnamed namespace.
#pragma once
#include <cstdint>

#include "kernels/cuda/common_device.cuh"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kVec;

// y (rows, cols) += bias (cols), in place, for the elementwise launcher: N consecutive elements
// of a vector lie in one row when cols is a multiple of N.
struct AddBiasRowsOp {
  bf16* y;
  const bf16* bias;
  int64_t cols;
  template <int N>
  __device__ void apply(int64_t i) const {
    float v[N], b[N];
    gpu::load<N>(y + i, v);
    gpu::load<N>(bias + i % cols, b);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] += b[j];
    gpu::store<N>(y + i, v);
  }
};

}  // namespace
}  // namespace deit::kernels
