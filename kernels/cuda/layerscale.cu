// The residual update of a DeiT III block: out = x + keep_scale[b] * gamma[c] * branch, with
// LayerScale (gamma) and drop-path (keep_scale) fused into the residual add: one read of x and
// branch, one write of out. Backward fuses dbranch = dout * keep_scale[b] * gamma[c] with the
// per-chunk partial sums of dgamma = sum_{b,t} dout * keep_scale[b] * branch, so dout and branch
// are read once; sum_partials then adds the chunks in a fixed order (deterministic). The residual
// stream x, out and its gradient dout, dx are fp32, the branch side bf16 (kernels/layerscale.h).
// Launch. Forward: the elementwise launcher (256 threads, grid-stride over 8-element vectors, 16
// bytes of bf16 or 32 of fp32, when C % 8 == 0 and every pointer is 16-byte aligned, scalar
// otherwise). Backward: row_chunks blocks
// of row_threads(C) threads (ceil(C / 8) rounded up to a warp), each thread owning 8 columns and
// walking a fixed chunk of at least 8 consecutive (b, t) rows.
//
// Fused with the LayerNorm that follows (layerscale_residual_layernorm_*): the forward reads x and
// branch and writes out and y (4 passes over a (B, T, C) tensor where the two ops apart make 5);
// the backward reads dy, out, dout and branch and writes dx and dbranch (6 passes where LayerNorm
// backward, the gradient sum of the two consumers of out and LayerScale backward make 9). Launch:
// the row layouts of layernorm.cu, with dgamma, dln_weight and dln_bias as per-chunk partials,
// and, for ops::linear_layerscale_residual_layernorm, the column sums of dbranch too: the bias
// gradient of the linear layer that made branch (attention's proj, the MLP's fc2), in the bits
// that layer's own pass over dbranch would give, so that a step is the same with the MLP's GELU
// recomputed (fc2 then sums its own). A warp per row on the vector path for rows up to 1024 wide
// (deit3_small, base and large), the backward's warps taking a chunk's rows in turn and summing
// in shared memory, which is another order than the linear layer's: there the dbias partials come
// from common.cu's column_partials over dbranch after the kernel (the linear layer's own kernel; a
// read of dbranch, 39 MB a layer for deit3_small's batch of 256, most of it still in L2). A block
// per row otherwise (forward grid-striding over at most 65536 blocks, backward over row_chunks),
// summing dbias itself, a row at a time; rows up to 4096 wide (blocks of at most 512 threads) take
// the backward's early-load variant (layerscale_kernels.cuh). Both backwards load all four inputs
// of a row before the LayerNorm's reductions, and sum_partial_sets adds all the gradients' chunks
// in one launch.
// A branch computed for some samples alone (kernels/layerscale.h's SampleSlots): the kernels find
// each row's branch, y, dy and dbranch rows through the slot maps and read and write them where
// the branches keep them. That replaces four copies a branch (the gather of its input and the
// scatter of its output, and their gradients), each over the selected share of a (B, T, C)
// activation. The backward reads neither dy nor out in a row the next branch did not take (its dy
// is 0: the LayerNorm passes nothing back), nor branch where the branch has no row. dbias is then
// summed by column_partials over dbranch's rows, as the linear layer would.
// Registers of the backward (ptxas, sm_90 / sm_80; with the slot maps, 16-byte bf16 loads): the
// early variants 106 / 99 (vectors) and 115 / 125 (scalars), no spills; the 1024-thread ones, for
// rows past 4096 and held to 64 registers, spill since they also sum dbias: none (vectors) and
// 148 / 148 bytes (scalars). No ViT preset has rows that wide (ViT-H: 1280). The forward's scalar
// path (odd widths, unaligned pointers; no preset either) spills 32 bytes on sm_80.
// Measured speed, a block per row (one H200, 2026-12-04, `deit bench kernels`, 256 x 197 x 768,
// commit 69df758; the warp per row is not yet measured, bench/PREDICTIONS.md):
// LayerScale + drop-path forward 0.095 ms (95% of the copy bandwidth), backward 0.103 ms (70%);
// fused with the LayerNorm after it, forward 0.130 ms (84%; 0.158 on a variant walking several
// rows a block, gone since), backward 0.209 ms (78%; 0.270 before the early loads), with the
// dbias partials 0.216 ms. At C = 384 (deit3_small) the early backward, 93 registers on 64-thread
// blocks, ran at 25% occupancy (0.110 ms in Nsight, bench/results/2026-12-04-h200-ncu-3/). Since
// then C = 384 takes the warp per row (96 registers, 5 blocks an SM, dbias from column_partials
// after it), not yet measured.
//
// Files: the device code is kernels/cuda/layerscale_kernels.cuh (the LayerNorm row arithmetic
// kernels/cuda/layernorm_row.cuh); this file is the host side (argument checks, launches). The
// kernels also run, lane by lane on the host, in the CTest entry layernorm_emulated
// (tests/emulated/layernorm_emulated.cpp), which checks them against the CPU twin without a GPU;
// its launches mirror the ones below, so change them together.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/layerscale.h"
// The device code, after what it uses.
#include "kernels/cuda/layerscale_kernels.cuh"

namespace deit::kernels {

void layerscale_residual_forward_cuda(const float* x, const bf16_bits* branch,
                                      const bf16_bits* gamma, const float* keep_scale, float* out,
                                      int64_t B, int64_t Tn, int64_t C, cudaStream_t stream) {
  gpu::check_sizes("layerscale_residual_forward_cuda", {B, Tn, C});
  const LayerscaleForwardOp op{
      x, gpu::as_bf16(branch), gpu::as_bf16(gamma), keep_scale, out, Tn, C};
  gpu::launch_elementwise(op, B * Tn * C, C % kVec == 0 && gpu::aligned16(x, branch, gamma, out),
                          stream);
}

int64_t layerscale_residual_backward_cuda_workspace_floats(int64_t B, int64_t Tn, int64_t C) {
  return gpu::row_chunks(B * Tn, C).chunks * C;
}

void layerscale_residual_backward_cuda(const float* dout, const bf16_bits* branch,
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
    const auto* brb = gpu::as_bf16(branch);
    const auto* gb = gpu::as_bf16(gamma);
    auto* dbrb = gpu::as_bf16(dbranch);
    if (C % kVec == 0 && gpu::aligned16(dout, branch, gamma, dbranch, partials))
      layerscale_backward_kernel<kVec><<<grid, threads, 0, stream>>>(
          dout, brb, gb, keep_scale, dbrb, partials, rows, Tn, C, part.rows_per_chunk);
    else
      layerscale_backward_kernel<1><<<grid, threads, 0, stream>>>(
          dout, brb, gb, keep_scale, dbrb, partials, rows, Tn, C, part.rows_per_chunk);
    DEIT_CUDA_CHECK_LAUNCH();
  }
  if (dgamma) gpu::sum_partials(partials, part.chunks, C, dgamma, stream);
}

namespace {

// The rows branch and dbranch hold: the whole batch's, or the selected samples'.
int64_t branch_rows(const SampleSlots& slots, int64_t B, int64_t Tn) {
  return (slots.branch ? slots.branch_samples : B) * Tn;
}

void check_slots(const char* fn, const SampleSlots& slots, int64_t B) {
  if (slots.branch && (slots.branch_samples < 0 || slots.branch_samples > B))
    throw std::invalid_argument(std::string(fn) + ": " + std::to_string(slots.branch_samples) +
                                " selected samples of a batch of " + std::to_string(B));
}

}  // namespace

void layerscale_residual_layernorm_forward_cuda(const float* x, const bf16_bits* branch,
                                                const bf16_bits* gamma, const float* keep_scale,
                                                const bf16_bits* ln_weight,
                                                const bf16_bits* ln_bias, float* out, bf16_bits* y,
                                                float* mean, float* rstd, int64_t B, int64_t Tn,
                                                int64_t C, double eps, cudaStream_t stream,
                                                const SampleSlots& slots) {
  const char* fn = "layerscale_residual_layernorm_forward_cuda";
  gpu::check_sizes(fn, {B, Tn, C});
  gpu::check_row_width(fn, C);
  check_slots(fn, slots, B);
  const int64_t rows = B * Tn;
  if (rows == 0 || C == 0) return;
  const auto* brb = gpu::as_bf16(branch);
  const auto* gb = gpu::as_bf16(gamma);
  const auto* wb = gpu::as_bf16(ln_weight);
  const auto* bb = gpu::as_bf16(ln_bias);
  auto* yb = gpu::as_bf16(y);
  const float e = static_cast<float>(eps);
  const bool vector = C % kVec == 0 && gpu::aligned16(x, branch, gamma, ln_weight, ln_bias, out, y);
  if (gpu::takes_warp_rows(vector, C)) {
    gpu::with_warp_row_groups(C, [&](auto groups) {
      layerscale_layernorm_forward_warp_kernel<groups.value>
          <<<gpu::warp_row_grid(rows), gpu::kWarpRowThreads, 0, stream>>>(
              x, brb, gb, keep_scale, wb, bb, out, yb, mean, rstd, rows, Tn, C, e, slots.branch,
              slots.normed);
      DEIT_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  const auto grid = static_cast<unsigned>(std::min(rows, gpu::kMaxBlocks));
  const int threads = gpu::row_threads(C);
  if (vector)
    layerscale_layernorm_forward_kernel<kVec>
        <<<grid, threads, 0, stream>>>(x, brb, gb, keep_scale, wb, bb, out, yb, mean, rstd, rows,
                                       Tn, C, e, slots.branch, slots.normed);
  else
    layerscale_layernorm_forward_kernel<1>
        <<<grid, threads, 0, stream>>>(x, brb, gb, keep_scale, wb, bb, out, yb, mean, rstd, rows,
                                       Tn, C, e, slots.branch, slots.normed);
  DEIT_CUDA_CHECK_LAUNCH();
}

// dgamma's, dln_weight's and dln_bias's partials over the whole batch's rows, then dbias's over
// dbranch's rows (row_chunks is not monotonic in the rows: a selection's may take more chunks).
int64_t layerscale_residual_layernorm_backward_cuda_workspace_floats(int64_t B, int64_t Tn,
                                                                     int64_t C,
                                                                     const SampleSlots& slots) {
  return (3 * gpu::row_chunks(B * Tn, C).chunks +
          gpu::row_chunks(branch_rows(slots, B, Tn), C).chunks) *
         C;
}

void layerscale_residual_layernorm_backward_cuda(
    const float* dout, const bf16_bits* dy, const float* out, const bf16_bits* branch,
    const bf16_bits* gamma, const float* keep_scale, const bf16_bits* ln_weight, const float* mean,
    const float* rstd, float* dx, bf16_bits* dbranch, float* dgamma, float* dln_weight,
    float* dln_bias, float* dbias, int64_t B, int64_t Tn, int64_t C, float* workspace,
    cudaStream_t stream, const SampleSlots& slots) {
  const char* fn = "layerscale_residual_layernorm_backward_cuda";
  gpu::check_sizes(fn, {B, Tn, C});
  gpu::check_row_width(fn, C);
  check_slots(fn, slots, B);
  if (C == 0) return;
  const int64_t rows = B * Tn;
  // dbias is summed over dbranch's rows in the chunks of the linear layer's own pass over them
  // (none when the branch ran on no sample: dbias is then 0, and dbranch may be null).
  const int64_t dbranch_rows = branch_rows(slots, B, Tn);
  if (dbias && !dbranch && dbranch_rows > 0)
    throw std::invalid_argument(std::string(fn) + ": dbias is summed from dbranch, which is null");
  const gpu::RowChunks part = gpu::row_chunks(rows, C);
  const gpu::RowChunks dbias_part = gpu::row_chunks(dbranch_rows, C);
  gpu::check_workspace(fn, workspace,
                       (dgamma || dln_weight || dln_bias || dbias) && part.chunks > 0);
  const int64_t stride = part.chunks * C;
  float* dgamma_partials = dgamma ? workspace : nullptr;
  float* dw_partials = dln_weight ? workspace + stride : nullptr;
  float* db_partials = dln_bias ? workspace + 2 * stride : nullptr;
  float* dbias_partials = dbias ? workspace + 3 * stride : nullptr;
  if (part.chunks > 0) {
    const unsigned grid = static_cast<unsigned>(part.chunks);
    const int threads = gpu::row_threads(C);
    const auto* dyb = gpu::as_bf16(dy);
    const auto* brb = gpu::as_bf16(branch);
    const auto* gb = gpu::as_bf16(gamma);
    const auto* wb = gpu::as_bf16(ln_weight);
    auto* dbrb = gpu::as_bf16(dbranch);
    const bool vector =
        C % kVec == 0 && gpu::aligned16(dout, dy, out, branch, gamma, ln_weight, dx, dbranch,
                                        dgamma_partials, dw_partials, db_partials, dbias_partials);
    // The block per row sums dbias on its way over the whole batch's rows, a row at a time as the
    // linear layer would; otherwise (the warps' order, or a selection's rows) that layer's own
    // kernel sums it after.
    bool dbias_on_the_way = false;
    if (gpu::takes_warp_rows(vector, C)) {
      gpu::with_warp_row_groups(C, [&](auto groups) {
        layerscale_layernorm_backward_warp_kernel<groups.value>
            <<<grid, gpu::kWarpRowThreads, 0, stream>>>(
                dout, dyb, out, brb, gb, keep_scale, wb, mean, rstd, dx, dbrb, dgamma_partials,
                dw_partials, db_partials, rows, Tn, C, part.rows_per_chunk, slots.branch,
                slots.normed);
        DEIT_CUDA_CHECK_LAUNCH();
      });
    } else {
      dbias_on_the_way = !slots.branch;
      float* fused_dbias_partials = dbias_on_the_way ? dbias_partials : nullptr;
      gpu::with_row_variant(vector, threads, [&](auto width, auto early) {
        layerscale_layernorm_backward_kernel<width.value, early.value>
            <<<grid, threads, 0, stream>>>(dout, dyb, out, brb, gb, keep_scale, wb, mean, rstd, dx,
                                           dbrb, dgamma_partials, dw_partials, db_partials,
                                           fused_dbias_partials, rows, Tn, C, part.rows_per_chunk,
                                           slots.branch, slots.normed);
        DEIT_CUDA_CHECK_LAUNCH();
      });
    }
    if (dbias_partials && !dbias_on_the_way && dbias_part.chunks > 0)
      gpu::column_partials(dbrb, dbranch_rows, C, C, dbias_partials, dbias_part, stream);
  }
  gpu::PartialSets sums;
  sums.add(dgamma_partials, dgamma);
  sums.add(dw_partials, dln_weight);
  sums.add(db_partials, dln_bias);
  const bool dbias_with_the_others = dbias_part.chunks == part.chunks;
  if (dbias_with_the_others) sums.add(dbias_partials, dbias);
  gpu::sum_partial_sets(sums, part.chunks, C, stream);
  if (dbias && !dbias_with_the_others)
    gpu::sum_partials(dbias_partials, dbias_part.chunks, C, dbias, stream);
}

}  // namespace deit::kernels
