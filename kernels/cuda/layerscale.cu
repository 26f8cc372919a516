// The residual update of a DeiT III block: out = x + keep_scale[b] * gamma[c] * branch, with
// LayerScale (gamma) and drop-path (keep_scale) fused into the residual add: one read of x and
// branch, one write of out. Backward fuses dbranch = dout * keep_scale[b] * gamma[c] with the
// per-chunk partial sums of dgamma = sum_{b,t} dout * keep_scale[b] * branch, so dout and branch
// are read once; sum_partials then adds the chunks in a fixed order (deterministic).
// Launch. Forward: the elementwise launcher (256 threads, grid-stride over 8-element vectors when
// C % 8 == 0 and every pointer is 16-byte aligned, scalar otherwise). Backward: row_chunks blocks
// of row_threads(C) threads (ceil(C / 8) rounded up to a warp), each thread owning 8 columns and
// walking a fixed chunk of at least 8 consecutive (b, t) rows.
// Measured speed: not yet measured on a GPU.
#include "kernels/cuda/common.cuh"
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

}  // namespace deit::kernels
