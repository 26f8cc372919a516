// LayerNorm over the last dimension with fp32 statistics: x and dx fp32 (the residual stream),
// y and dy bf16 (kernels/layernorm.h says why).
// Forward fuses the mean, the variance (two passes over the row held in registers, not
// E[x^2] - E[x]^2), the normalisation and the affine transform into one read of x and one write
// of y. Backward fuses dx (both row reductions) with the per-chunk partial sums of dweight and
// dbias, so dy and x are read once; sum_partial_sets then adds both gradients' chunks in a fixed
// order, in one launch.
// Launch, rows up to 1024 wide on the vector path (C % 8 == 0, every pointer 16-byte aligned;
// every ViT but ViT-H): a warp per row, blocks of 4 warps, lane l holding the 8-column groups
// l, l + 32, ... of the row in registers (C = 384: 2 groups, the second on 16 lanes; C = 768: 3),
// vector loads (16 bytes of bf16, 32 of fp32), both row reductions by shuffles: no barrier and no
// shared memory per row. Forward: a grid-stride loop over rows, ceil(rows / 4) blocks (at most
// 65536). Backward: row_chunks(rows, C) blocks, each walking a fixed chunk of at least 8
// consecutive rows, its warps taking every fourth row, each warp summing its dweight and dbias
// terms in shared memory of its own, and the block adding its 4 warps' sums at the end.
// Wider rows, or the scalar path: a block per row, row_threads(C) = ceil(C / 8) rounded up to a
// warp (C = 1280: 160), each thread holding 8 columns (strided on the scalar path), the row
// reductions through shared memory; forward grid-strided over min(rows, 65536) blocks, backward
// on row_chunks' blocks, loading the next row while this one reduces for rows up to 4096 wide.
// Why two layouts: a block per row gives each thread 8 columns of x to wait for, 32 bytes, and an
// H200 measured that layout at 64% (forward) and 61% (backward) of the copy bandwidth, while the
// fused residual + LayerNorm forward, whose threads wait for 48 bytes a row, reached 84%. A warp
// per row gives a thread 64 to 128 bytes of x (C = 384 to 1024) at the same or better occupancy
// (forward: 56 registers at C = 768 against the block kernel's 59), and no barrier.
// Registers and spills: layernorm_kernels.cuh and layernorm_row.cuh give them per kernel; the
// scalar backward on 1024-thread blocks (odd widths past 4096 columns, no ViT preset) spills 80
// bytes on sm_90 and 68 on sm_80: a 1024-thread block leaves a thread 64 registers.
// Measured speed, block per row (one H200, 2026-12-04, `deit bench kernels`, 50432 rows of 768,
// commit 69df758): forward 0.085 ms (2747 GB/s, 64% of the copy bandwidth), backward 0.148 ms
// (61%; 0.161 before the next-row loads); together 62%, short of issue 7's 80%. The warp per row
// layout is not yet measured (bench/PREDICTIONS.md).
//
// Files: the device code is kernels/cuda/layernorm_kernels.cuh (the row arithmetic
// kernels/cuda/layernorm_row.cuh); this file is the host side (argument checks, launches). The
// kernels also run, lane by lane on the host, in the CTest entry layernorm_emulated
// (tests/emulated/layernorm_emulated.cpp), which checks them against the CPU twin without a GPU;
// its launches mirror the ones below, so change them together.
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/layernorm.h"
// The device code, after what it uses.
#include "kernels/cuda/layernorm_kernels.cuh"

namespace deit::kernels {

void layernorm_forward_cuda(const float* x, const bf16_bits* weight, const bf16_bits* bias,
                            bf16_bits* y, float* mean, float* rstd, int64_t rows, int64_t C,
                            double eps, cudaStream_t stream) {
  gpu::check_sizes("layernorm_forward_cuda", {rows, C});
  gpu::check_row_width("layernorm_forward_cuda", C);
  if (rows == 0 || C == 0) return;
  const auto* wb = gpu::as_bf16(weight);
  const auto* bb = gpu::as_bf16(bias);
  auto* yb = gpu::as_bf16(y);
  const float e = static_cast<float>(eps);
  const bool vector = C % kVec == 0 && gpu::aligned16(x, weight, bias, y);
  if (gpu::takes_warp_rows(vector, C)) {
    gpu::with_warp_row_groups(C, [&](auto groups) {
      layernorm_forward_warp_kernel<groups.value>
          <<<gpu::warp_row_grid(rows), gpu::kWarpRowThreads, 0, stream>>>(x, wb, bb, yb, mean, rstd,
                                                                          rows, C, e);
      DEIT_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  const auto grid = static_cast<unsigned>(std::min(rows, gpu::kMaxBlocks));
  const int threads = gpu::row_threads(C);
  if (vector)
    layernorm_forward_kernel<kVec>
        <<<grid, threads, 0, stream>>>(x, wb, bb, yb, mean, rstd, rows, C, e);
  else
    layernorm_forward_kernel<1>
        <<<grid, threads, 0, stream>>>(x, wb, bb, yb, mean, rstd, rows, C, e);
  DEIT_CUDA_CHECK_LAUNCH();
}

int64_t layernorm_backward_cuda_workspace_floats(int64_t rows, int64_t C) {
  return 2 * gpu::row_chunks(rows, C).chunks * C;
}

void layernorm_backward_cuda(const bf16_bits* dy, const float* x, const bf16_bits* weight,
                             const float* mean, const float* rstd, float* dx, float* dweight,
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
    const auto* dyb = gpu::as_bf16(dy);
    const auto* wb = gpu::as_bf16(weight);
    const bool vector =
        C % kVec == 0 && gpu::aligned16(dy, x, weight, dx, dw_partials, db_partials);
    const int threads = gpu::row_threads(C);
    if (gpu::takes_warp_rows(vector, C))
      gpu::with_warp_row_groups(C, [&](auto groups) {
        layernorm_backward_warp_kernel<groups.value><<<grid, gpu::kWarpRowThreads, 0, stream>>>(
            dyb, x, wb, mean, rstd, dx, dw_partials, db_partials, rows, C, part.rows_per_chunk);
        DEIT_CUDA_CHECK_LAUNCH();
      });
    else
      gpu::with_row_variant(vector, threads, [&](auto width, auto early) {
        layernorm_backward_kernel<width.value, early.value><<<grid, threads, 0, stream>>>(
            dyb, x, wb, mean, rstd, dx, dw_partials, db_partials, rows, C, part.rows_per_chunk);
        DEIT_CUDA_CHECK_LAUNCH();
      });
  }
  gpu::PartialSets sums;
  sums.add(dw_partials, dweight);
  sums.add(db_partials, dbias);
  gpu::sum_partial_sets(sums, part.chunks, C, stream);
}

}  // namespace deit::kernels
