// LayerNorm over the last dimension, bf16 activations with fp32 statistics.
// Forward fuses the mean, the variance (two passes over the row held in registers, not
// E[x^2] - E[x]^2), the normalisation and the affine transform into one read of x and one write
// of y. Backward fuses dx (both row reductions) with the per-chunk partial sums of dweight and
// dbias, so dy and x are read once; sum_partials then adds the chunks in a fixed order.
// Launch (both): one block per row, row_threads(C) = ceil(C / 8) rounded up to a warp
// (C = 384: 64 threads, C = 1280: 160), each thread holding 8 columns of the row in registers,
// 16-byte vector loads when C % 8 == 0 and every pointer is aligned, scalar (strided) otherwise.
// Forward: a grid-stride loop over rows, min(rows, 65536) blocks. Backward: row_chunks(rows, C)
// blocks, each walking a fixed chunk of at least 8 consecutive rows.
// Measured speed: not yet measured on a GPU.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/layernorm.h"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kVec;

template <int V>
__global__ void __launch_bounds__(1024)
    layernorm_forward_kernel(const bf16* x, const bf16* weight, const bf16* bias, bf16* y,
                             float* mean, float* rstd, int64_t rows, int64_t C, float eps) {
  __shared__ float scratch[32];
  float w[kVec], b[kVec];
  gpu::load_row<V>(weight, C, w);
  gpu::load_row<V>(bias, C, b);
  const float inv_C = 1.f / static_cast<float>(C);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float v[kVec];
    gpu::load_row<V>(x + r * C, C, v);
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) s += v[e];
    const float mu = gpu::block_sum(s, scratch) * inv_C;
    float q = 0.f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      v[e] = gpu::owns_slot<V>(e, C) ? v[e] - mu : 0.f;
      q += v[e] * v[e];
    }
    const float rs = 1.f / sqrtf(gpu::block_sum(q, scratch) * inv_C + eps);
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[e] = v[e] * rs * w[e] + b[e];
    gpu::store_row<V>(y + r * C, C, v);
    if (threadIdx.x == 0) {
      if (mean) mean[r] = mu;
      if (rstd) rstd[r] = rs;
    }
  }
}

// Block `chunk` handles rows [chunk * rows_per_chunk, ...) and writes its column sums of
// dy * xhat and dy to dw_partials / db_partials[chunk * C + c] (each may be nullptr).
template <int V>
__global__ void __launch_bounds__(1024)
    layernorm_backward_kernel(const bf16* dy, const bf16* x, const bf16* weight, const float* mean,
                              const float* rstd, bf16* dx, float* dw_partials, float* db_partials,
                              int64_t rows, int64_t C, int64_t rows_per_chunk) {
  __shared__ float scratch[64];
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float w[kVec], dw[kVec] = {}, db[kVec] = {};
  gpu::load_row<V>(weight, C, w);
  const float inv_C = 1.f / static_cast<float>(C);
  for (int64_t r = r0; r < r1; ++r) {
    float g[kVec], xh[kVec];
    gpu::load_row<V>(dy + r * C, C, g);
    gpu::load_row<V>(x + r * C, C, xh);
    const float mu = mean[r], rs = rstd[r];
    float sums[2] = {0.f, 0.f};  // sum_c g, sum_c g * xhat with g = dy * weight
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      xh[e] = (xh[e] - mu) * rs;
      dw[e] += g[e] * xh[e];  // g still holds dy here; columns past C hold dy = 0
      db[e] += g[e];
      g[e] *= w[e];
      sums[0] += g[e];
      sums[1] += g[e] * xh[e];
    }
    gpu::block_allreduce<gpu::SumOp, 2>(sums, scratch);
    // dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
#pragma unroll
    for (int e = 0; e < kVec; ++e) g[e] = rs * (g[e] - (sums[0] + xh[e] * sums[1]) * inv_C);
    gpu::store_row<V>(dx + r * C, C, g);
  }
  if (dw_partials) gpu::store_row<V>(dw_partials + blockIdx.x * C, C, dw);
  if (db_partials) gpu::store_row<V>(db_partials + blockIdx.x * C, C, db);
}

}  // namespace

void layernorm_forward_cuda(const bf16_bits* x, const bf16_bits* weight, const bf16_bits* bias,
                            bf16_bits* y, float* mean, float* rstd, int64_t rows, int64_t C,
                            double eps, cudaStream_t stream) {
  gpu::check_sizes("layernorm_forward_cuda", {rows, C});
  gpu::check_row_width("layernorm_forward_cuda", C);
  if (rows == 0 || C == 0) return;
  const unsigned grid = static_cast<unsigned>(std::min(rows, gpu::kMaxBlocks));
  const int threads = gpu::row_threads(C);
  const auto* xb = gpu::as_bf16(x);
  const auto* wb = gpu::as_bf16(weight);
  const auto* bb = gpu::as_bf16(bias);
  auto* yb = gpu::as_bf16(y);
  const float e = static_cast<float>(eps);
  if (C % kVec == 0 && gpu::aligned16(x, weight, bias, y))
    layernorm_forward_kernel<kVec>
        <<<grid, threads, 0, stream>>>(xb, wb, bb, yb, mean, rstd, rows, C, e);
  else
    layernorm_forward_kernel<1>
        <<<grid, threads, 0, stream>>>(xb, wb, bb, yb, mean, rstd, rows, C, e);
  DEIT_CUDA_CHECK_LAUNCH();
}

int64_t layernorm_backward_cuda_workspace_floats(int64_t rows, int64_t C) {
  return 2 * gpu::row_chunks(rows, C).chunks * C;
}

void layernorm_backward_cuda(const bf16_bits* dy, const bf16_bits* x, const bf16_bits* weight,
                             const float* mean, const float* rstd, bf16_bits* dx, float* dweight,
                             float* dbias, int64_t rows, int64_t C, float* workspace,
                             cudaStream_t stream) {
  gpu::check_sizes("layernorm_backward_cuda", {rows, C});
  gpu::check_row_width("layernorm_backward_cuda", C);
  if (C == 0) return;
  const gpu::RowChunks part = gpu::row_chunks(rows, C);
  gpu::check_workspace("layernorm_backward_cuda", workspace, (dweight || dbias) && part.chunks > 0);
  float* dw_partials = dweight ? workspace : nullptr;
  float* db_partials = dbias ? workspace + part.chunks * C : nullptr;
  if (part.chunks > 0) {
    const unsigned grid = static_cast<unsigned>(part.chunks);
    const int threads = gpu::row_threads(C);
    const auto* dyb = gpu::as_bf16(dy);
    const auto* xb = gpu::as_bf16(x);
    const auto* wb = gpu::as_bf16(weight);
    auto* dxb = gpu::as_bf16(dx);
    if (C % kVec == 0 && gpu::aligned16(dy, x, weight, dx, dw_partials, db_partials))
      layernorm_backward_kernel<kVec><<<grid, threads, 0, stream>>>(
          dyb, xb, wb, mean, rstd, dxb, dw_partials, db_partials, rows, C, part.rows_per_chunk);
    else
      layernorm_backward_kernel<1><<<grid, threads, 0, stream>>>(
          dyb, xb, wb, mean, rstd, dxb, dw_partials, db_partials, rows, C, part.rows_per_chunk);
    DEIT_CUDA_CHECK_LAUNCH();
  }
  if (dweight) gpu::sum_partials(dw_partials, part.chunks, C, dweight, stream);
  if (dbias) gpu::sum_partials(db_partials, part.chunks, C, dbias, stream);
}

}  // namespace deit::kernels
