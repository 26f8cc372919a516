// Non-causal multi-head self-attention over the packed qkv buffer the qkv linear writes:
// out = softmax(Q K^T * scale) V for every (batch, head), with scale = head_dim^-0.5.
// The log-sum-exp of each score row is saved so backward can rebuild the probabilities without
// storing the (T, T) matrix, as a flash-attention kernel does.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// Shapes: B images of T tokens (the argument Tn: T is the element type's name in the templates),
// H heads of D = head_dim channels each, C = H * D the model width.

// qkv: (B, T, 3, H, D)  [timm's layout: qkv linear output viewed as (B, T, 3, heads, head_dim)]
//  ->  out: (B, T, H, D) = (B, T, C), lse: (B, H, T)
template <typename T>
void attention_forward_cpu(const T* qkv, T* out, T* lse, int64_t B, int64_t Tn, int64_t H,
                           int64_t D, double scale);

// qkv, out, lse: what attention_forward_cpu read and wrote (out for the softmax backward's row
// sums, lse to rebuild the probabilities).
// dout: (B, T, H, D)  ->  dqkv: (B, T, 3, H, D), overwritten; and, unless dbias is nullptr, the
// bias gradient of the qkv linear layer that made qkv: dbias (3 H D) = the column sums of dqkv
// over its B T rows (ops::linear_attention takes it from here instead of another pass).
template <typename T>
void attention_backward_cpu(const T* qkv, const T* out, const T* lse, const T* dout, T* dqkv,
                            T* dbias, int64_t B, int64_t Tn, int64_t H, int64_t D, double scale);

// The class token's attention alone: token 0's query against every token's key and value. All a
// ViT's last block needs, since the head reads nothing but the class token (model/vit.cpp), and
// about T times less work than the whole attention.
// qkv: (B, T, 3, H, D)  ->  out: (B, H, D) = (B, C), lse: (B, H); the same values as token 0's
// row of attention_forward_cpu's out and lse.
template <typename T>
void class_attention_forward_cpu(const T* qkv, T* out, T* lse, int64_t B, int64_t Tn, int64_t H,
                                 int64_t D, double scale);

// qkv, out, lse: what class_attention_forward_cpu read and wrote.
// dout: (B, C)  ->  dqkv: (B, T, 3, H, D), overwritten: attention_backward_cpu's dqkv for a dout
// that is zero in every token but the class token's. So dq is zero past token 0, while dk and dv
// fill every token. dbias: as attention_backward_cpu's (nullptr: not computed).
template <typename T>
void class_attention_backward_cpu(const T* qkv, const T* out, const T* lse, const T* dout, T* dqkv,
                                  T* dbias, int64_t B, int64_t Tn, int64_t H, int64_t D,
                                  double scale);

// The head dims the CUDA kernels are built for (the CPU twins take any).
inline bool attention_cuda_supports_head_dim(int64_t D) {
  return D == 32 || D == 64 || D == 80 || D == 128;
}

#if DEIT_HAVE_CUDA
// CUDA (kernels/cuda/attention.cu): qkv, out, dout, dqkv in bf16, lse in fp32 (natural log, as the
// CPU twin), fp32 accumulation throughout. Head dims 32, 64, 80, 128; any T >= 0. The bf16
// buffers must be 16-byte aligned (std::invalid_argument otherwise, and for other head dims).
// Forward: lse may be nullptr (inference).
void attention_forward_cuda(const bf16_bits* qkv, bf16_bits* out, float* lse, int64_t B,
                            int64_t Tn, int64_t H, int64_t D, double scale, cudaStream_t stream);

// Backward: dqkv (B, T, 3, H, D) is overwritten with dq, dk, dv, and dbias (fp32, 3 H D; may be
// nullptr) with their column sums (each block sums the rows it computes, in fp32 before the bf16
// rounding, and the blocks' sums are added in a fixed order); deterministic (no atomics: same
// inputs, same bits). `workspace`, 16-byte aligned, holds at least
// attention_backward_cuda_workspace_floats(B, T, H, D, scores_budget_bytes) floats: the per-row
// delta = rowsum(dout * out), the score gradients dS in bf16 with rows padded to 16 (H T^2 bytes
// per image, 2 for each of its H T^2 scores) of as many images at a time as scores_budget_bytes
// holds (at least one: a larger batch runs a slice of its images at a time, the same bits), and
// the blocks' column sums (B ceil(T / 64) 3 H D); its contents are not read before written, so one
// buffer can serve every call on the same stream.
constexpr int64_t kAttentionScoresBudgetBytes = int64_t{256} << 20;
int64_t attention_backward_cuda_workspace_floats(
    int64_t B, int64_t Tn, int64_t H, int64_t D,
    int64_t scores_budget_bytes = kAttentionScoresBudgetBytes);
void attention_backward_cuda(const bf16_bits* qkv, const bf16_bits* out, const float* lse,
                             const bf16_bits* dout, bf16_bits* dqkv, float* dbias, int64_t B,
                             int64_t Tn, int64_t H, int64_t D, double scale, float* workspace,
                             cudaStream_t stream,
                             int64_t scores_budget_bytes = kAttentionScoresBudgetBytes);

// The class token's attention (kernels/cuda/class_attention.cu), with the types, head dims,
// alignment and checks of the whole attention's kernels above. Forward: out (B, C) bf16, lse
// (B, H) fp32 (may be nullptr). Backward: dqkv (B, T, 3, H, D) overwritten, every element (the
// zeros of dq past token 0 too); dbias (fp32, 3 H D, may be nullptr) the column sums of dqkv, each
// block's in fp32 before the bf16 rounding, added in a fixed order: deterministic. `workspace`,
// 16-byte aligned, holds class_attention_backward_cuda_workspace_floats(B, H, D) floats (the
// blocks' column sums; without dbias it is not used and may be nullptr); not read before written.
void class_attention_forward_cuda(const bf16_bits* qkv, bf16_bits* out, float* lse, int64_t B,
                                  int64_t Tn, int64_t H, int64_t D, double scale,
                                  cudaStream_t stream);
int64_t class_attention_backward_cuda_workspace_floats(int64_t B, int64_t H, int64_t D);
void class_attention_backward_cuda(const bf16_bits* qkv, const bf16_bits* out, const float* lse,
                                   const bf16_bits* dout, bf16_bits* dqkv, float* dbias, int64_t B,
                                   int64_t Tn, int64_t H, int64_t D, double scale, float* workspace,
                                   cudaStream_t stream);
#endif

}  // namespace deit::kernels
