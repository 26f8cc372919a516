// The two classification losses of the recipe, loss and gradient in one pass over the logits.
// Both take soft targets (mixup/cutmix, label smoothing). The gradient is that of the returned
// loss, i.e. for an upstream gradient of 1. An empty batch (B == 0 or K == 0) gives loss 0, on
// both sides (a mean over no terms; PyTorch would return NaN).
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// Sigmoid binary cross-entropy with logits, mean over batch x classes (DeiT III's BCE, torch's
// BCEWithLogitsLoss): every class is its own yes/no problem, so the K outputs need not sum to 1.
// loss = mean_{b,k} [ max(z,0) - z t + log(1 + exp(-|z|)) ],  dz = (sigmoid(z) - t) / (B K).
// Any t in [0, 1] works; the recipe's are 0 or 1, as DeiT III binarises the mixed targets first
// (mix_targets_cpu's `binarize`, kernels/augment.h).
// logits, targets: (B, K)  ->  *loss, dlogits: (B, K) (nullptr: loss only)
template <typename T>
void bce_with_logits_cpu(const T* logits, const T* targets, T* loss, T* dlogits, int64_t B,
                         int64_t K);

// Softmax cross-entropy with soft targets, mean over the batch (fine-tuning, evaluation):
// loss = mean_b sum_k -t_k log softmax(z)_k,  dz = (softmax(z) sum_k t_k - t) / B.
// logits, targets: (B, K)  ->  *loss, dlogits: (B, K) (nullptr: loss only)
template <typename T>
void softmax_cross_entropy_cpu(const T* logits, const T* targets, T* loss, T* dlogits, int64_t B,
                               int64_t K);

#if DEIT_HAVE_CUDA
// CUDA. logits: bf16, the head GEMM's output like every other activation. This is what
// torch.autocast does in the reference code too (the head's linear runs in reduced precision and
// the loss upcasts its input to fp32), and the tensor is tiny (B x classes), so an fp32 copy of it
// would buy nothing. targets: fp32 (soft targets from mixup / cutmix / smoothing). dlogits: bf16,
// the input of the head's backward GEMM. *loss: fp32, a device pointer, written on the stream (no
// host synchronisation). All arithmetic is fp32; the mean is a deterministic reduction.
// Both need device scratch of at least loss_cuda_workspace_floats(B, K) floats (one per row).
int64_t loss_cuda_workspace_floats(int64_t B, int64_t K);
void bce_with_logits_cuda(const bf16_bits* logits, const float* targets, float* loss,
                          bf16_bits* dlogits, int64_t B, int64_t K, float* workspace,
                          cudaStream_t stream);
void softmax_cross_entropy_cuda(const bf16_bits* logits, const float* targets, float* loss,
                                bf16_bits* dlogits, int64_t B, int64_t K, float* workspace,
                                cudaStream_t stream);
#endif

}  // namespace deit::kernels
