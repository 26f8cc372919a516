// The device code of the residual update with LayerScale and drop-path, alone and fused with the
// LayerNorm after it (kernels/cuda/layerscale.cu says what each fuses, its launch shapes and its
// measured speed): the forward op of the elementwise launcher, the backward kernel with its
// per-chunk partial sums of dgamma, and the fused forward and backward kernels (each in two row
// layouts, a block per row and a warp per row), whose LayerNorm arithmetic is
// kernels/cuda/layernorm_row.cuh. The residual stream (x, out) and its gradient
// (dout, dx) are fp32, the branch side (branch, y, dy, dbranch) bf16: kernels/layerscale.h says
// why.
//
// Included by layerscale.cu, and by the emulated test (tests/emulated/layernorm_emulated.cpp)
// after tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without
// a GPU. So the code here uses only common_device.cuh and layernorm_row.cuh, CUDA's bf16 types and
// conversions, and the built-ins the emulator provides; anything more needs a stand-in there.
// Each includer is the only translation unit of its program with these kernels, hence the unnamed
// namespace.
#pragma once
#include <cstdint>

#include "kernels/cuda/common_device.cuh"
#include "kernels/cuda/layernorm_row.cuh"
#include "kernels/samples.h"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kVec;

struct LayerscaleForwardOp {
  const float* x;
  const bf16* branch;
  const bf16* gamma;
  const float* keep_scale;
  float* out;
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
    layerscale_backward_kernel(const float* dout, const bf16* branch, const bf16* gamma,
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
// y = LayerNorm(out), as layernorm_forward_kernel computes it (one row a block, for the reason it
// gives). out is stored in fp32 as computed, so the LayerNorm here normalises exactly what
// backward reads. branch_slot, normed_slot: the slot maps of kernels/layerscale.h's SampleSlots
// (selected_row finds a row's branch and y rows; a row without branch rows adds 0, one without a
// y row stores only out and the statistics).
template <int V>
__global__ void __launch_bounds__(1024)
    layerscale_layernorm_forward_kernel(const float* x, const bf16* branch, const bf16* gamma,
                                        const float* keep_scale, const bf16* ln_weight,
                                        const bf16* ln_bias, float* out, bf16* y, float* mean,
                                        float* rstd, int64_t rows, int64_t Tn, int64_t C, float eps,
                                        const int32_t* branch_slot, const int32_t* normed_slot) {
  __shared__ float scratch[32];
  float g[kVec], w[kVec], b[kVec];
  gpu::load_row<V>(gamma, C, g);
  gpu::load_row<V>(ln_weight, C, w);
  gpu::load_row<V>(ln_bias, C, b);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float keep = keep_scale[r / Tn];
    const int64_t branch_row = selected_row(branch_slot, r, Tn);
    float v[kVec], br[kVec] = {};
    gpu::load_row<V>(x + r * C, C, v);
    if (branch_row >= 0) gpu::load_row<V>(branch + branch_row * C, C, br);
      // Slots past C stay 0 (0 + keep * 0 * 0).
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[e] += keep * g[e] * br[e];
    gpu::store_row<V>(out + r * C, C, v);
    gpu::layernorm_row_forward<V>(v, w, b, C, eps, scratch, mean ? mean + r : nullptr,
                                  rstd ? rstd + r : nullptr);
    const int64_t y_row = selected_row(normed_slot, r, Tn);
    if (y_row >= 0) gpu::store_row<V>(y + y_row * C, C, v);
  }
}

// Block `chunk` handles rows [chunk * rows_per_chunk, ...) of the (B*T, C) view. Per row:
// d = dout + LayerNorm backward(dy) in fp32, written to dx; then d * keep is LayerScale's input
// gradient: dbranch = d * keep * gamma, which (as stored, in bf16) adds to the dbias partials, the
// bias gradient of the linear layer that made branch, in the order and chunks that the linear
// layer's own pass over dbranch (column_partials_kernel) would sum it: the same bits; and
// d * keep * branch adds to the dgamma partials. Any of dout, dbranch and the partials may be
// nullptr (the dbias partials need dbranch, and the whole batch's rows: no branch_slot). The slot
// maps as in the forward: a row without a dy row has dy 0, one without branch rows no dbranch.
// gamma and ln_weight are re-read per row (from L1) rather than held. Early (blocks of at most
// kEarlyLoadThreads, so 128 registers a thread): dout and branch are loaded with dy and out, before
// the LayerNorm's reductions, so that a row waits for memory once; otherwise (the 64 registers of a
// 1024-thread block) after them, and a row waits three times, each wait then a barrier's.
template <int V, bool Early>
__global__ void __launch_bounds__(Early ? gpu::kEarlyLoadThreads : 1024)
    layerscale_layernorm_backward_kernel(const float* dout, const bf16* dy, const float* out,
                                         const bf16* branch, const bf16* gamma,
                                         const float* keep_scale, const bf16* ln_weight,
                                         const float* mean, const float* rstd, float* dx,
                                         bf16* dbranch, float* dgamma_partials, float* dw_partials,
                                         float* db_partials, float* dbias_partials, int64_t rows,
                                         int64_t Tn, int64_t C, int64_t rows_per_chunk,
                                         const int32_t* branch_slot, const int32_t* normed_slot) {
  __shared__ float scratch[64];
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float dgamma[kVec] = {}, dw[kVec] = {}, db[kVec] = {}, dbias[kVec] = {};
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t y_row = selected_row(normed_slot, r, Tn);
    const int64_t branch_row = selected_row(branch_slot, r, Tn);
    float g[kVec] = {}, xh[kVec] = {}, t[kVec], d[kVec];
    float br[kVec] = {};  // 0 where not loaded
    const auto load_dout = [&] {
      if (dout) {
        gpu::load_row<V>(dout + r * C, C, d);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) d[e] = 0.f;
      }
    };
    // A row without dy (0) adds nothing through the LayerNorm, whatever out holds: not read.
    if (y_row >= 0) {
      gpu::load_row<V>(dy + y_row * C, C, g);
      gpu::load_row<V>(out + r * C, C, xh);
    }
    if constexpr (Early) {
      load_dout();
      if (dgamma_partials && branch_row >= 0) gpu::load_row<V>(branch + branch_row * C, C, br);
    }
    gpu::load_row<V>(ln_weight, C, t);
    gpu::layernorm_row_backward<V>(g, xh, t, mean[r], rstd[r], C, scratch, dw, db);
    if constexpr (!Early) load_dout();
      // dx = dout + what flows back through the LayerNorm
#pragma unroll
    for (int e = 0; e < kVec; ++e) d[e] += g[e];
    gpu::store_row<V>(dx + r * C, C, d);
    const float keep = keep_scale[r / Tn];
#pragma unroll
    for (int e = 0; e < kVec; ++e) d[e] *= keep;
    if (dgamma_partials) {
      if constexpr (!Early) {
        if (branch_row >= 0) gpu::load_row<V>(branch + branch_row * C, C, br);
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) dgamma[e] += d[e] * br[e];  // branch is 0 past C
    }
    if (dbranch && branch_row >= 0) {
      gpu::load_row<V>(gamma, C, t);
#pragma unroll
      for (int e = 0; e < kVec; ++e) d[e] *= t[e];
      gpu::store_row<V>(dbranch + branch_row * C, C, d);
      if (dbias_partials) {
#pragma unroll
        for (int e = 0; e < kVec; ++e)  // as stored, as column_partials_kernel would sum it
          dbias[e] += __bfloat162float(__float2bfloat16_rn(d[e]));
      }
    }
  }
  if (dgamma_partials) gpu::store_row<V>(dgamma_partials + blockIdx.x * C, C, dgamma);
  if (dw_partials) gpu::store_row<V>(dw_partials + blockIdx.x * C, C, dw);
  if (db_partials) gpu::store_row<V>(db_partials + blockIdx.x * C, C, db);
  if (dbias_partials) gpu::store_row<V>(dbias_partials + blockIdx.x * C, C, dbias);
}

// The warp row layout (launch_shape.h; vector path, C <= 1024), as layernorm_forward_warp_kernel:
// a warp per row, grid-striding, no barrier; gamma and the LayerNorm's weight and bias are read
// per row (from L1) rather than held. The slot maps as in the block per row. Blocks an SM: those of
// the LayerNorm alone. The branch is read a slot group at a time beside gamma, which ptxas still
// hoists: loaded whole before the sum, as until 2026-12-05, its 16-byte words spilled 68 bytes at
// G = 4 (sm_90).
template <int G>
__global__ void __launch_bounds__(gpu::kWarpRowThreads, gpu::forward_warp_row_min_blocks(G))
    layerscale_layernorm_forward_warp_kernel(const float* x, const bf16* branch, const bf16* gamma,
                                             const float* keep_scale, const bf16* ln_weight,
                                             const bf16* ln_bias, float* out, bf16* y, float* mean,
                                             float* rstd, int64_t rows, int64_t Tn, int64_t C,
                                             float eps, const int32_t* branch_slot,
                                             const int32_t* normed_slot) {
  using Row = gpu::WarpRow<G>;
  const Row row{C};
  for (int64_t r = gpu::warp_row_first(); r < rows; r += gpu::warp_row_stride()) {
    const float keep = keep_scale[r / Tn];
    const int64_t branch_row = selected_row(branch_slot, r, Tn);
    float v[Row::kSlots];
    row.load(x + r * C, v);
    const Row branch_cols = row.or_none(branch_row >= 0);
    const bf16* branch_row_ptr = branch + max(branch_row, int64_t{0}) * C;
#pragma unroll
    for (int k = 0; k < G; ++k) {  // slots past C stay 0 (0 + keep * 0 * 0)
      float g[kVec], br[kVec];
      branch_cols.load_group(branch_row_ptr, k, br);
      row.load_group(gamma, k, g);
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[k * kVec + j] += keep * g[j] * br[j];
    }
    row.store(out + r * C, v);
    gpu::layernorm_warp_row_forward(v, row, ln_weight, ln_bias, eps, mean ? mean + r : nullptr,
                                    rstd ? rstd + r : nullptr);
    const int64_t y_row = selected_row(normed_slot, r, Tn);
    if (y_row >= 0) row.store(y + y_row * C, v);
  }
}

// The warp row layout's backward (vector path, C <= 1024): what
// layerscale_layernorm_backward_kernel<kVec, true> computes but the dbias partials, with the rows
// of a chunk taken by the block's warps in turn (warp w: rows w, w + 4, ...) and dgamma, dln_weight
// and dln_bias summed in gpu::WarpColumnSums, and the slot maps as there. Not dbias: the bias
// gradient of the linear layer that made branch must be the bits of that layer's own sums over
// dbranch, which run a row at a time (column_partials_kernel), and the warps here sum in another
// order; layerscale.cu runs that kernel over dbranch after this one. Registers: left alone, ptxas
// takes 80, 108, 142 and 168 at G = 1 to 4 (sm_90, before the slot maps); held to 5, 5, 4 and 3
// blocks an SM, 72, 96, 128 and 167 (sm_80: 69, 95, 128, 168), no spills (held to 4 blocks at G = 4
// it spilled 104 bytes, to 6 at G = 2 some 16). deit3_small's rows (G = 2, the second group on half
// the lanes): 20 warps an SM, each lane waiting for 144 bytes of a row on average, where the block
// per row kept 10 blocks of 48 working threads waiting for 96 (93 registers on 64-thread blocks).
constexpr int layerscale_backward_warp_min_blocks(int G) { return G <= 2 ? 5 : (G == 3 ? 4 : 3); }

template <int G>
__global__ void __launch_bounds__(gpu::kWarpRowThreads, layerscale_backward_warp_min_blocks(G))
    layerscale_layernorm_backward_warp_kernel(
        const float* dout, const bf16* dy, const float* out, const bf16* branch, const bf16* gamma,
        const float* keep_scale, const bf16* ln_weight, const float* mean, const float* rstd,
        float* dx, bf16* dbranch, float* dgamma_partials, float* dw_partials, float* db_partials,
        int64_t rows, int64_t Tn, int64_t C, int64_t rows_per_chunk, const int32_t* branch_slot,
        const int32_t* normed_slot) {
  using Row = gpu::WarpRow<G>;
  using Sums = gpu::WarpColumnSums<G, 3>;
  enum Set { kDgamma, kDlnWeight, kDlnBias };  // kDlnBias next to kDlnWeight: the LayerNorm's pair
  const Row row{C};
  const Sums sums(row);
  const gpu::WarpChunkRows chunk = gpu::warp_chunk_rows(rows, rows_per_chunk);
  for (int64_t r = chunk.first; r < chunk.end; r += chunk.kStep) {
    // All four inputs of the row before the LayerNorm's reductions: a row waits for memory once.
    const int64_t y_row = selected_row(normed_slot, r, Tn);
    const int64_t branch_row = selected_row(branch_slot, r, Tn);
    float g[Row::kSlots], xh[Row::kSlots], d[Row::kSlots];
    float br[Row::kSlots] = {};  // 0 where not loaded
    // A row without dy (0) adds nothing through the LayerNorm, whatever out holds: not read.
    const Row dy_cols = row.or_none(y_row >= 0);
    dy_cols.load(dy + max(y_row, int64_t{0}) * C, g);
    dy_cols.load(out + r * C, xh);
    if (dout) {
      row.load(dout + r * C, d);
    } else {
#pragma unroll
      for (int e = 0; e < Row::kSlots; ++e) d[e] = 0.f;
    }
    if (dgamma_partials)
      row.or_none(branch_row >= 0).load(branch + max(branch_row, int64_t{0}) * C, br);
    gpu::layernorm_warp_row_backward(g, xh, mean[r], rstd[r], row, ln_weight, sums, kDlnWeight);
    // dx = dout + what flows back through the LayerNorm
#pragma unroll
    for (int e = 0; e < Row::kSlots; ++e) d[e] += g[e];
    row.store(dx + r * C, d);
    const float keep = keep_scale[r / Tn];
#pragma unroll
    for (int e = 0; e < Row::kSlots; ++e) d[e] *= keep;
#pragma unroll
    for (int k = 0; k < G; ++k) {
      float* dk = d + k * kVec;
      if (dgamma_partials) {
        float t[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) t[j] = dk[j] * br[k * kVec + j];  // branch is 0 past C
        sums.add(kDgamma, row, k, t);
      }
      if (dbranch && branch_row >= 0) {
        float gamma_k[kVec];
        row.load_group(gamma, k, gamma_k);
#pragma unroll
        for (int j = 0; j < kVec; ++j) dk[j] *= gamma_k[j];
      }
    }
    if (dbranch && branch_row >= 0) row.store(dbranch + branch_row * C, d);
  }
  __syncthreads();
  const int64_t at = blockIdx.x * C;
  if (dgamma_partials) sums.store_sums(kDgamma, C, dgamma_partials + at);
  if (dw_partials) sums.store_sums(kDlnWeight, C, dw_partials + at);
  if (db_partials) sums.store_sums(kDlnBias, C, db_partials + at);
}

}  // namespace

}  // namespace deit::kernels
