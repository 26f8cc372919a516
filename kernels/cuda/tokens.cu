// The token plumbing around the transformer blocks, all memory-bound gathers:
//  - patch unfold: image (B, Cin, H, W) fp32 -> patches (B, gh*gw, Cin*P*P) bf16, fusing the cast
//    the patch-embedding GEMM needs; patch fold is its adjoint (fp32 image gradient, zero margins);
//  - position embedding + class token: out[:, 0] = cls, out[:, 1:] = x + pos in one pass; its
//    backward copies dx and sums dpos and dcls over the batch in one pass over dout, each block
//    summing 16 column vectors over the batch in 16 sample lanes, then the lanes in a fixed tree
//    in shared memory (deterministic without partials in global memory). It replaced a thread per
//    column vector looping over the batch (9.5k threads for ViT-S, 37 blocks, a quarter of an
//    H200's SMs), measured at 0.143 ms a deit3_small step;
//  - class-token select and its backward (zero except token 0).
// The residual stream is fp32 on CUDA (in bf16, LayerScale's small block updates would round
// away): pos_embed_cls writes it (from the bf16 patch embedding and the fp32 pos and cls master
// weights) and takes its fp32 gradient, cls_select reads it; the patch tensors stay bf16.
// Launch: the elementwise launcher (256 threads, grid-stride over 8-element vectors of the output
// when C % 8 == 0 and every pointer is 16-byte aligned, scalar otherwise; fold gathers element by
// element and stores 8 at a time, and so does unfold unless P % 8 == 0, where a vector is 8
// pixels of one image row, loaded as two 16-byte words). pos_embed_cls backward: blocks of 16 x 16
// threads, 16 column vectors of 8 (or single columns) of a (1 + N, C) sample by 16 sample lanes,
// grid-striding over the column groups: 591 blocks for ViT-S.
// Measured speed (one H200, 2026-12-04, commit 2868e8c,
// bench/results/2026-12-04-nvidia-h200-compare-small-base.md; deit3_small's step at 224, batch
// 256): patch unfold
// 0.130 ms (index by index; the pixel vectors are not yet measured), position embedding + class
// token 0.034 ms forward and 0.143 ms backward (a thread per column vector; the lanes are not yet
// measured, bench/PREDICTIONS.md), class-token select 0.005 / 0.045 ms.
//
// Files: the device code is kernels/cuda/tokens_kernels.cuh; this file is the host side (argument
// checks, launches). The kernels also run, lane by lane on the host, in the CTest entry
// ops_emulated (tests/emulated/ops_emulated.cpp), which checks them against the CPU twins without a
// GPU; its launches mirror the ones below, so change them together.
#include <climits>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/tokens.h"
// The device code, after what it uses.
#include "kernels/cuda/tokens_kernels.cuh"

namespace deit::kernels {
namespace {

// The geometry of a patch unfold / fold, once its sizes are known to fit its 32-bit arithmetic.
PatchGeometry patch_geometry(const char* fn, int64_t B, int64_t Cin, int64_t H, int64_t W,
                             int64_t P) {
  gpu::check_sizes(fn, {B, Cin, H, W});
  if (P < 1) throw std::invalid_argument(std::string(fn) + ": patch size must be >= 1");
  if (Cin * P * P > INT_MAX || H > INT_MAX || W > INT_MAX || (H / P) * (W / P) > INT_MAX)
    throw std::invalid_argument(std::string(fn) + ": image or patch too large");
  return PatchGeometry(Cin, H, W, P);
}

}  // namespace

void patch_unfold_cuda(const float* image, bf16_bits* patches, int64_t B, int64_t Cin, int64_t H,
                       int64_t W, int64_t P, cudaStream_t stream) {
  const PatchGeometry g = patch_geometry("patch_unfold_cuda", B, Cin, H, W, P);
  gpu::launch_elementwise(PatchUnfoldOp::make(image, gpu::as_bf16(patches), g),
                          B * g.patches * g.patch_len, gpu::aligned16(patches), stream);
}

void patch_fold_cuda(const bf16_bits* dpatches, float* dimage, int64_t B, int64_t Cin, int64_t H,
                     int64_t W, int64_t P, cudaStream_t stream) {
  const PatchGeometry g = patch_geometry("patch_fold_cuda", B, Cin, H, W, P);
  gpu::launch_elementwise(PatchFoldOp{gpu::as_bf16(dpatches), dimage, g}, B * Cin * H * W,
                          gpu::aligned16(dimage), stream);
}

void pos_embed_cls_forward_cuda(const bf16_bits* x, const float* pos, const float* cls, float* out,
                                int64_t B, int64_t N, int64_t C, cudaStream_t stream) {
  gpu::check_sizes("pos_embed_cls_forward_cuda", {B, N, C});
  const PosEmbedClsForwardOp op{gpu::as_bf16(x), pos, cls, out, N, C};
  gpu::launch_elementwise(op, B * (N + 1) * C, C % kVec == 0 && gpu::aligned16(x, pos, cls, out),
                          stream);
}

void pos_embed_cls_backward_cuda(const float* dout, bf16_bits* dx, float* dpos, float* dcls,
                                 int64_t B, int64_t N, int64_t C, cudaStream_t stream) {
  gpu::check_sizes("pos_embed_cls_backward_cuda", {B, N, C});
  if (C == 0 || !(dx || dpos || dcls)) return;
  auto* dxb = gpu::as_bf16(dx);
  const int64_t cols = (N + 1) * C;
  const dim3 block(kPosVectors, kPosLanes);
  if (C % kVec == 0 && gpu::aligned16(dout, dx, dpos, dcls))
    pos_embed_cls_backward_kernel<kVec>
        <<<gpu::grid_for(cols / kVec, kPosVectors), block, 0, stream>>>(dout, dxb, dpos, dcls, B, N,
                                                                        C);
  else
    pos_embed_cls_backward_kernel<1>
        <<<gpu::grid_for(cols, kPosVectors), block, 0, stream>>>(dout, dxb, dpos, dcls, B, N, C);
  DEIT_CUDA_CHECK_LAUNCH();
}

void cls_select_forward_cuda(const float* x, float* out, int64_t B, int64_t Tn, int64_t C,
                             cudaStream_t stream) {
  gpu::check_sizes("cls_select_forward_cuda", {B, Tn, C});
  if (Tn == 0) return;
  gpu::launch_elementwise(ClsSelectForwardOp{x, out, Tn, C}, B * C,
                          C % kVec == 0 && gpu::aligned16(x, out), stream);
}

void cls_select_backward_cuda(const float* dout, float* dx, int64_t B, int64_t Tn, int64_t C,
                              cudaStream_t stream) {
  gpu::check_sizes("cls_select_backward_cuda", {B, Tn, C});
  gpu::launch_elementwise(ClsSelectBackwardOp{dout, dx, Tn, C}, B * Tn * C,
                          C % kVec == 0 && gpu::aligned16(dout, dx), stream);
}

}  // namespace deit::kernels
