// The token plumbing around the transformer blocks:
//  - patch unfold: the patch x patch, stride patch convolution written as unfold + linear;
//  - position embedding + class token: pos is added to the patch tokens, then the class token is
//    put in front (DeiT III's pos_embed has no slot for the class token);
//  - class-token select: the head reads token 0 after the final norm.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// image: (B, Cin, H, W) -> patches: (B, gh*gw, Cin*P*P), gh = H / P, gw = W / P (floored: pixels
// past the last whole patch are not read). Each patch vector is ordered (cin, ky, kx), matching a
// conv weight (dim, Cin, P, P) flattened to (dim, Cin*P*P).
template <typename T>
void patch_unfold_cpu(const T* image, T* patches, int64_t B, int64_t Cin, int64_t H, int64_t W,
                      int64_t P);

// dpatches: (B, gh*gw, Cin*P*P) -> dimage: (B, Cin, H, W), overwritten (zero where unread).
template <typename T>
void patch_fold_cpu(const T* dpatches, T* dimage, int64_t B, int64_t Cin, int64_t H, int64_t W,
                    int64_t P);

// x: (B, N, C), pos: (N, C), cls: (C) -> out: (B, 1 + N, C); out[:, 0] = cls, out[:, 1:] = x + pos
template <typename T>
void pos_embed_cls_forward_cpu(const T* x, const T* pos, const T* cls, T* out, int64_t B,
                               int64_t N, int64_t C);

// dout: (B, 1 + N, C) -> dx: (B, N, C), dpos: (N, C), dcls: (C). Any may be nullptr.
template <typename T>
void pos_embed_cls_backward_cpu(const T* dout, T* dx, T* dpos, T* dcls, int64_t B, int64_t N,
                                int64_t C);

// x: (B, T, C) -> out: (B, C) = x[:, 0]
template <typename T>
void cls_select_forward_cpu(const T* x, T* out, int64_t B, int64_t Tn, int64_t C);

// dout: (B, C) -> dx: (B, T, C), zero except token 0
template <typename T>
void cls_select_backward_cpu(const T* dout, T* dx, int64_t B, int64_t Tn, int64_t C);

#if DEIT_HAVE_CUDA
// CUDA. The patch tensors (unfold's output, pos_embed_cls's x and dx) are bf16, the operands of
// the patch-embedding GEMM. The residual stream that pos_embed_cls starts and cls_select ends is
// fp32, and so is its gradient (dout of pos_embed_cls, both sides of cls_select): in bf16,
// LayerScale's small block updates would round away. pos and cls are the fp32 master weights,
// read unrounded (out = x + pos is one fp32 addition, as on the CPU in fp32; the class token is
// copied as it is); dpos and dcls are fp32, summed over the batch in sample order
// (deterministic). The image is fp32 (the augmentation stage's normalised output), so unfold also
// does the cast to bf16 that the patch-embedding GEMM needs; the image gradient (only for
// completeness: training never needs it) is fp32 likewise.
void patch_unfold_cuda(const float* image, bf16_bits* patches, int64_t B, int64_t Cin, int64_t H,
                       int64_t W, int64_t P, cudaStream_t stream);
void patch_fold_cuda(const bf16_bits* dpatches, float* dimage, int64_t B, int64_t Cin, int64_t H,
                     int64_t W, int64_t P, cudaStream_t stream);
void pos_embed_cls_forward_cuda(const bf16_bits* x, const float* pos, const float* cls, float* out,
                                int64_t B, int64_t N, int64_t C, cudaStream_t stream);
void pos_embed_cls_backward_cuda(const float* dout, bf16_bits* dx, float* dpos, float* dcls,
                                 int64_t B, int64_t N, int64_t C, cudaStream_t stream);
void cls_select_forward_cuda(const float* x, float* out, int64_t B, int64_t Tn, int64_t C,
                             cudaStream_t stream);
void cls_select_backward_cuda(const float* dout, float* dx, int64_t B, int64_t Tn, int64_t C,
                              cudaStream_t stream);
#endif

}  // namespace deit::kernels
