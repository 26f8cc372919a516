// The host side of kernels/cuda/common.cuh and the two reduction kernels every family shares:
//  - sum_partials: adds per-chunk column partials (chunks, C) into (C). Launch: blocks of 8 columns
//    x 128 chunk lanes, ceil(C / 8) blocks; lane y sums chunks y, y + 128, ... in order, then a
//    fixed shared-memory tree adds the 128 lanes.
//  - sum_to_scalar: one block of 1024 threads, strided sums then block_sum.
// Measured speed: not yet measured on a GPU.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"

namespace deit::kernels::gpu {
namespace {

constexpr int kPartialCols = 8;
constexpr int kPartialLanes = 128;
constexpr int kPartialThreads = kPartialCols * kPartialLanes;
constexpr int kScalarThreads = 1024;

__global__ void __launch_bounds__(kPartialThreads)
    sum_partials_kernel(const float* partials, int64_t chunks, int64_t C, float* out) {
  __shared__ float acc[kPartialLanes][kPartialCols];
  const int x = threadIdx.x, y = threadIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kPartialCols + x;
  float s = 0.f;
  if (c < C)
    for (int64_t k = y; k < chunks; k += kPartialLanes) s += partials[k * C + c];
  acc[y][x] = s;
  __syncthreads();
#pragma unroll
  for (int half = kPartialLanes / 2; half > 0; half /= 2) {
    if (y < half) acc[y][x] += acc[y + half][x];
    __syncthreads();
  }
  if (y == 0 && c < C) out[c] = acc[0][x];
}

__global__ void __launch_bounds__(kScalarThreads)
    sum_to_scalar_kernel(const float* v, int64_t n, float scale, float* out) {
  __shared__ float scratch[32];
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += v[i];
  s = block_sum(s, scratch);
  if (threadIdx.x == 0) *out = s * scale;
}

}  // namespace

void check_sizes(const char* fn, std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes)
    if (s < 0)
      throw std::invalid_argument(std::string(fn) + ": negative size " + std::to_string(s));
}

void check_row_width(const char* fn, int64_t C) {
  if (C > kMaxRowWidth)
    throw std::invalid_argument(std::string(fn) + ": rows of " + std::to_string(C) +
                                " elements; the CUDA kernel handles at most " +
                                std::to_string(kMaxRowWidth));
}

void check_workspace(const char* fn, const float* workspace, bool needed) {
  if (needed && !workspace) throw std::invalid_argument(std::string(fn) + ": workspace is nullptr");
}

void sum_partials(const float* partials, int64_t chunks, int64_t C, float* out,
                  cudaStream_t stream) {
  if (C <= 0) return;
  const dim3 block(kPartialCols, kPartialLanes);
  sum_partials_kernel<<<static_cast<unsigned>(ceil_div(C, kPartialCols)), block, 0, stream>>>(
      partials, chunks, C, out);
  DEIT_CUDA_CHECK_LAUNCH();
}

void sum_to_scalar(const float* v, int64_t n, float scale, float* out, cudaStream_t stream) {
  sum_to_scalar_kernel<<<1, kScalarThreads, 0, stream>>>(v, n, scale, out);
  DEIT_CUDA_CHECK_LAUNCH();
}

}  // namespace deit::kernels::gpu
