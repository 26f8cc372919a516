// The residual update of a DeiT III block: out = x + keep_scale[b] * gamma[c] * branch, with
// LayerScale (gamma) and drop-path (keep_scale) fused into the residual add: one read of x and
// branch, one write of out. Backward fuses dbranch = dout * keep_scale[b] * gamma[c] with the
// per-chunk partial sums of dgamma = sum_{b,t} dout * keep_scale[b] * branch, so dout and branch
// are read once; sum_partials then adds the chunks in a fixed order (deterministic).
// Launch. Forward: the elementwise launcher (256 threads, grid-stride over 8-element vectors when
// C % 8 == 0 and every pointer is 16-byte aligned, scalar otherwise). Backward: row_chunks blocks
// of row_threads(C) threads (ceil(C / 8) rounded up to a warp), each thread owning 8 columns and
// walking a fixed chunk of at least 8 consecutive (b, t) rows.
//
// Fused with the LayerNorm that follows (layerscale_residual_layernorm_*): the forward reads x and
// branch and writes out and y (4 passes over a (B, T, C) tensor where the two ops apart make 5);
// the backward reads dy, out, dout and branch and writes dx and dbranch (6 passes where LayerNorm
// backward, the gradient sum of the two consumers of out and LayerScale backward make 9). Launch:
// the row layout of layernorm.cu (one block per row, forward grid-striding over at most 65536
// blocks, backward over row_chunks), with dgamma, dln_weight and dln_bias as per-chunk partials.
// Measured speed: not yet measured on a GPU.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/layernorm_row.cuh"
#include "kernels/layerscale.h"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kVec;

struct LayerscaleForwardOp {
  const bf16* x;
  const bf16* branch;
  const bf16* gamma;
  const float* keep_scale;
  bf16* out;
  int64_t Tn, C;
  // With N = kVec, C % kVec == 0, so the vector lies in one row.
  template <int N>
  __device__ void apply(int64_t i) const {
    const int64_t row = i / C;
    const int64_t c = i - row * C;
    const float keep = keep_scale[row / Tn];
    float v[N], br[N], g[N];
    gpu::load<N>(x + i, v);
    gpu::load<N>(branch + i, br);
    gpu::load<N>(gamma + c, g);
#pragma unroll
    for (int j = 0; j < N; ++j) v[j] += keep * g[j] * br[j];
    gpu::store<N>(out + i, v);
  }
};

// Block `chunk` handles rows [chunk * rows_per_chunk, ...) of the (B*T, C) view; dbranch and
// partials may each be nullptr.
template <int V>
__global__ void __launch_bounds__(1024)
    layerscale_backward_kernel(const bf16* dout, const bf16* branch, const bf16* gamma,
                               const float* keep_scale, bf16* dbranch, float* partials,
                               int64_t rows, int64_t Tn, int64_t C, int64_t rows_per_chunk) {
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float g[kVec] = {}, acc[kVec] = {};
  if (dbranch) gpu::load_row<V>(gamma, C, g);  // gamma is only needed for dbranch
  for (int64_t r = r0; r < r1; ++r) {
    const float keep = keep_scale[r / Tn];
    float d[kVec];
    gpu::load_row<V>(dout + r * C, C, d);
#pragma unroll
    for (int e = 0; e < kVec; ++e) d[e] *= keep;
    if (partials) {
      float br[kVec];
      gpu::load_row<V>(branch + r * C, C, br);
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] += d[e] * br[e];
    }
    if (dbranch) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) d[e] *= g[e];
      gpu::store_row<V>(dbranch + r * C, C, d);
    }
  }
  if (partials) gpu::store_row<V>(partials + blockIdx.x * C, C, acc);
}

// One block per row r of the (B*T, C) view, grid-striding: out = x + keep * gamma * branch, then
// y = LayerNorm(out as rounded to bf16), as layernorm_forward_kernel computes it.
template <int V>
__global__ void __launch_bounds__(1024) layerscale_layernorm_forward_kernel(
    const bf16* x, const bf16* branch, const bf16* gamma, const float* keep_scale,
    const bf16* ln_weight, const bf16* ln_bias, bf16* out, bf16* y, float* mean, float* rstd,
    int64_t rows, int64_t Tn, int64_t C, float eps) {
  __shared__ float scratch[32];
  float g[kVec], w[kVec], b[kVec];
  gpu::load_row<V>(gamma, C, g);
  gpu::load_row<V>(ln_weight, C, w);
  gpu::load_row<V>(ln_bias, C, b);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float keep = keep_scale[r / Tn];
    float v[kVec], br[kVec];
    gpu::load_row<V>(x + r * C, C, v);
    gpu::load_row<V>(branch + r * C, C, br);
    // The LayerNorm sees the residual stream as stored, so backward's xhat matches forward's.
    // Slots past C stay 0 (0 + keep * 0 * 0).
#pragma unroll
    for (int e = 0; e < kVec; ++e)
      v[e] = __bfloat162float(__float2bfloat16_rn(v[e] + keep * g[e] * br[e]));
    gpu::store_row<V>(out + r * C, C, v);
    gpu::layernorm_row_forward<V>(v, w, b, C, eps, scratch, mean ? mean + r : nullptr,
                                  rstd ? rstd + r : nullptr);
    gpu::store_row<V>(y + r * C, C, v);
  }
}

// Block `chunk` handles rows [chunk * rows_per_chunk, ...) of the (B*T, C) view. Per row:
// d = dout + LayerNorm backward(dy) in fp32, written to dx; then d * keep is LayerScale's input
// gradient: dbranch = d * keep * gamma, and d * keep * branch adds to the dgamma partials. Any of
// dout, dbranch and the partials may be nullptr. gamma and ln_weight are re-read per row (from
// L1) rather than held, to stay within the 64 registers of a 1024-thread block.
template <int V>
__global__ void __launch_bounds__(1024) layerscale_layernorm_backward_kernel(
    const bf16* dout, const bf16* dy, const bf16* out, const bf16* branch, const bf16* gamma,
    const float* keep_scale, const bf16* ln_weight, const float* mean, const float* rstd,
    bf16* dx, bf16* dbranch, float* dgamma_partials, float* dw_partials, float* db_partials,
    int64_t rows, int64_t Tn, int64_t C, int64_t rows_per_chunk) {
  __shared__ float scratch[64];
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float dgamma[kVec] = {}, dw[kVec] = {}, db[kVec] = {};
  for (int64_t r = r0; r < r1; ++r) {
    float g[kVec], xh[kVec], t[kVec];
    gpu::load_row<V>(dy + r * C, C, g);
    gpu::load_row<V>(out + r * C, C, xh);
    gpu::load_row<V>(ln_weight, C, t);
    gpu::layernorm_row_backward<V>(g, xh, t, mean[r], rstd[r], C, scratch, dw, db);
    float d[kVec];
    if (dout) {
      gpu::load_row<V>(dout + r * C, C, d);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) d[e] = 0.f;
    }
    // dx = dout + what flows back through the LayerNorm
#pragma unroll
    for (int e = 0; e < kVec; ++e) d[e] += g[e];
    gpu::store_row<V>(dx + r * C, C, d);
    const float keep = keep_scale[r / Tn];
#pragma unroll
    for (int e = 0; e < kVec; ++e) d[e] *= keep;
    if (dgamma_partials) {
      gpu::load_row<V>(branch + r * C, C, t);
#pragma unroll
      for (int e = 0; e < kVec; ++e) dgamma[e] += d[e] * t[e];  // branch is 0 past C
    }
    if (dbranch) {
      gpu::load_row<V>(gamma, C, t);
#pragma unroll
      for (int e = 0; e < kVec; ++e) d[e] *= t[e];
      gpu::store_row<V>(dbranch + r * C, C, d);
    }
  }
  if (dgamma_partials) gpu::store_row<V>(dgamma_partials + blockIdx.x * C, C, dgamma);
  if (dw_partials) gpu::store_row<V>(dw_partials + blockIdx.x * C, C, dw);
  if (db_partials) gpu::store_row<V>(db_partials + blockIdx.x * C, C, db);
}

}  // namespace

void layerscale_residual_forward_cuda(const bf16_bits* x, const bf16_bits* branch,
                                      const bf16_bits* gamma, const float* keep_scale,
                                      bf16_bits* out, int64_t B, int64_t Tn, int64_t C,
                                      cudaStream_t stream) {
  gpu::check_sizes("layerscale_residual_forward_cuda", {B, Tn, C});
  const LayerscaleForwardOp op{gpu::as_bf16(x),
                               gpu::as_bf16(branch),
                               gpu::as_bf16(gamma),
                               keep_scale,
                               gpu::as_bf16(out),
                               Tn,
                               C};
  gpu::launch_elementwise(op, B * Tn * C, C % kVec == 0 && gpu::aligned16(x, branch, gamma, out),
                          stream);
}

int64_t layerscale_residual_backward_cuda_workspace_floats(int64_t B, int64_t Tn, int64_t C) {
  return gpu::row_chunks(B * Tn, C).chunks * C;
}

void layerscale_residual_backward_cuda(const bf16_bits* dout, const bf16_bits* branch,
                                       const bf16_bits* gamma, const float* keep_scale,
                                       bf16_bits* dbranch, float* dgamma, int64_t B, int64_t Tn,
                                       int64_t C, float* workspace, cudaStream_t stream) {
  const char* fn = "layerscale_residual_backward_cuda";
  gpu::check_sizes(fn, {B, Tn, C});
  gpu::check_row_width(fn, C);
  if (C == 0) return;
  const int64_t rows = B * Tn;
  const gpu::RowChunks part = gpu::row_chunks(rows, C);
  gpu::check_workspace(fn, workspace, dgamma && part.chunks > 0);
  float* partials = dgamma ? workspace : nullptr;
  if (part.chunks > 0 && (dbranch || dgamma)) {
    const unsigned grid = static_cast<unsigned>(part.chunks);
    const int threads = gpu::row_threads(C);
    const auto* doutb = gpu::as_bf16(dout);
    const auto* brb = gpu::as_bf16(branch);
    const auto* gb = gpu::as_bf16(gamma);
    auto* dbrb = gpu::as_bf16(dbranch);
    if (C % kVec == 0 && gpu::aligned16(dout, branch, gamma, dbranch, partials))
      layerscale_backward_kernel<kVec><<<grid, threads, 0, stream>>>(
          doutb, brb, gb, keep_scale, dbrb, partials, rows, Tn, C, part.rows_per_chunk);
    else
      layerscale_backward_kernel<1><<<grid, threads, 0, stream>>>(
          doutb, brb, gb, keep_scale, dbrb, partials, rows, Tn, C, part.rows_per_chunk);
    DEIT_CUDA_CHECK_LAUNCH();
  }
  if (dgamma) gpu::sum_partials(partials, part.chunks, C, dgamma, stream);
}

void layerscale_residual_layernorm_forward_cuda(const bf16_bits* x, const bf16_bits* branch,
                                                const bf16_bits* gamma, const float* keep_scale,
                                                const bf16_bits* ln_weight,
                                                const bf16_bits* ln_bias, bf16_bits* out,
                                                bf16_bits* y, float* mean, float* rstd, int64_t B,
                                                int64_t Tn, int64_t C, double eps,
                                                cudaStream_t stream) {
  const char* fn = "layerscale_residual_layernorm_forward_cuda";
  gpu::check_sizes(fn, {B, Tn, C});
  gpu::check_row_width(fn, C);
  const int64_t rows = B * Tn;
  if (rows == 0 || C == 0) return;
  const unsigned grid = static_cast<unsigned>(std::min(rows, gpu::kMaxBlocks));
  const int threads = gpu::row_threads(C);
  const auto* xb = gpu::as_bf16(x);
  const auto* brb = gpu::as_bf16(branch);
  const auto* gb = gpu::as_bf16(gamma);
  const auto* wb = gpu::as_bf16(ln_weight);
  const auto* bb = gpu::as_bf16(ln_bias);
  auto* outb = gpu::as_bf16(out);
  auto* yb = gpu::as_bf16(y);
  const float e = static_cast<float>(eps);
  if (C % kVec == 0 && gpu::aligned16(x, branch, gamma, ln_weight, ln_bias, out, y))
    layerscale_layernorm_forward_kernel<kVec><<<grid, threads, 0, stream>>>(
        xb, brb, gb, keep_scale, wb, bb, outb, yb, mean, rstd, rows, Tn, C, e);
  else
    layerscale_layernorm_forward_kernel<1><<<grid, threads, 0, stream>>>(
        xb, brb, gb, keep_scale, wb, bb, outb, yb, mean, rstd, rows, Tn, C, e);
  DEIT_CUDA_CHECK_LAUNCH();
}

int64_t layerscale_residual_layernorm_backward_cuda_workspace_floats(int64_t B, int64_t Tn,
                                                                      int64_t C) {
  return 3 * gpu::row_chunks(B * Tn, C).chunks * C;
}

void layerscale_residual_layernorm_backward_cuda(
    const bf16_bits* dout, const bf16_bits* dy, const bf16_bits* out, const bf16_bits* branch,
    const bf16_bits* gamma, const float* keep_scale, const bf16_bits* ln_weight, const float* mean,
    const float* rstd, bf16_bits* dx, bf16_bits* dbranch, float* dgamma, float* dln_weight,
    float* dln_bias, int64_t B, int64_t Tn, int64_t C, float* workspace, cudaStream_t stream) {
  const char* fn = "layerscale_residual_layernorm_backward_cuda";
  gpu::check_sizes(fn, {B, Tn, C});
  gpu::check_row_width(fn, C);
  if (C == 0) return;
  const int64_t rows = B * Tn;
  const gpu::RowChunks part = gpu::row_chunks(rows, C);
  gpu::check_workspace(fn, workspace, (dgamma || dln_weight || dln_bias) && part.chunks > 0);
  const int64_t stride = part.chunks * C;
  float* dgamma_partials = dgamma ? workspace : nullptr;
  float* dw_partials = dln_weight ? workspace + stride : nullptr;
  float* db_partials = dln_bias ? workspace + 2 * stride : nullptr;
  if (part.chunks > 0) {
    const unsigned grid = static_cast<unsigned>(part.chunks);
    const int threads = gpu::row_threads(C);
    const auto* doutb = gpu::as_bf16(dout);
    const auto* dyb = gpu::as_bf16(dy);
    const auto* outb = gpu::as_bf16(out);
    const auto* brb = gpu::as_bf16(branch);
    const auto* gb = gpu::as_bf16(gamma);
    const auto* wb = gpu::as_bf16(ln_weight);
    auto* dxb = gpu::as_bf16(dx);
    auto* dbrb = gpu::as_bf16(dbranch);
    if (C % kVec == 0 && gpu::aligned16(dout, dy, out, branch, gamma, ln_weight, dx, dbranch,
                                        dgamma_partials, dw_partials, db_partials))
      layerscale_layernorm_backward_kernel<kVec><<<grid, threads, 0, stream>>>(
          doutb, dyb, outb, brb, gb, keep_scale, wb, mean, rstd, dxb, dbrb, dgamma_partials,
          dw_partials, db_partials, rows, Tn, C, part.rows_per_chunk);
    else
      layerscale_layernorm_backward_kernel<1><<<grid, threads, 0, stream>>>(
          doutb, dyb, outb, brb, gb, keep_scale, wb, mean, rstd, dxb, dbrb, dgamma_partials,
          dw_partials, db_partials, rows, Tn, C, part.rows_per_chunk);
    DEIT_CUDA_CHECK_LAUNCH();
  }
  if (dgamma) gpu::sum_partials(dgamma_partials, part.chunks, C, dgamma, stream);
  if (dln_weight) gpu::sum_partials(dw_partials, part.chunks, C, dln_weight, stream);
  if (dln_bias) gpu::sum_partials(db_partials, part.chunks, C, dln_bias, stream);
}

}  // namespace deit::kernels
