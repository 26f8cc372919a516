// The device code of the linear layer (kernels/cuda/linear.cu says how it is launched; the GEMMs
// are cuBLASLt's): the bias add where no GEMM epilogue fuses it, and the bias gradient's per-chunk
// column sums of dy, which sum_partials (kernels/cuda/common_kernels.cuh) then adds.
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

// Block `chunk` writes the sums over rows [chunk * rows_per_chunk, ...) of dy (rows, C), whose
// rows lie ld elements apart (a tile of C columns of a wider matrix), to partials[chunk * C + c].
template <int V>
__global__ void __launch_bounds__(1024)
    column_partials_kernel(const bf16* dy, float* partials, int64_t rows, int64_t C, int64_t ld,
                           int64_t rows_per_chunk) {
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float acc[kVec] = {};
  for (int64_t r = r0; r < r1; ++r) {
    float d[kVec];
    gpu::load_row<V>(dy + r * ld, C, d);
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[e] += d[e];
  }
  gpu::store_row<V>(partials + blockIdx.x * C, C, acc);
}

}  // namespace
}  // namespace deit::kernels
