// LayerNorm over the last dimension: y = (x - mean) * rstd * weight + bias, where
// rstd = 1/sqrt(var + eps) of the biased variance, as torch.nn.LayerNorm. DeiT III uses eps = 1e-6.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// x: (rows, C), weight, bias: (C)  ->  y: (rows, C), mean, rstd: (rows) saved for backward.
// With y_slot, the rows are B samples of Tn tokens, and y holds the rows of the samples the slot
// map selects alone (kernels/samples.h; the next branch's input when a branch runs on some
// samples, kernels/layerscale.h), every row's mean and rstd still saved.
template <typename T>
void layernorm_forward_cpu(const T* x, const T* weight, const T* bias, T* y, T* mean, T* rstd,
                           int64_t rows, int64_t C, double eps, const int32_t* y_slot = nullptr,
                           int64_t Tn = 1);

// x, mean, rstd: the forward's input and saved statistics (the normalised rows are rebuilt from
// them, not stored).
// dy: (rows, C)  ->  dx: (rows, C), dweight, dbias: (C). dweight/dbias may be nullptr. With
// dy_slot, dy holds the rows of the samples it selects as y did, and the others' dy is 0.
template <typename T>
void layernorm_backward_cpu(const T* dy, const T* x, const T* weight, const T* mean, const T* rstd,
                            T* dx, T* dweight, T* dbias, int64_t rows, int64_t C,
                            const int32_t* dy_slot = nullptr, int64_t Tn = 1);

// The widest row the CUDA LayerNorm and LayerScale kernels take: a block of at most 1024 threads
// holds a row in registers, 8 elements per thread (the CPU twins take any width).
inline constexpr int64_t kLayerNormCudaMaxWidth = 8192;

#if DEIT_HAVE_CUDA
// CUDA: x and dx are fp32, since x is the residual stream (block 0's norm1 and the final norm
// read it), kept in fp32 because bf16 would round away the small LayerScale updates added to it;
// y and dy are bf16 (the branch side); weight and bias are the bf16 copies of the parameters;
// mean and rstd are fp32 (statistics in fp32, variance by two passes over the row held in
// registers); dweight and dbias are fp32 (they feed the fp32 master weights) and are summed over
// rows deterministically: same inputs, same bits. C <= kLayerNormCudaMaxWidth
// (std::invalid_argument beyond).
// Forward: mean and rstd may be nullptr (inference).
void layernorm_forward_cuda(const float* x, const bf16_bits* weight, const bf16_bits* bias,
                            bf16_bits* y, float* mean, float* rstd, int64_t rows, int64_t C,
                            double eps, cudaStream_t stream);

// Backward needs device scratch for the per-chunk column partials of dweight and dbias:
// `workspace` holds at least layernorm_backward_cuda_workspace_floats(rows, C) floats (nullptr
// is fine when dweight and dbias are both nullptr). Its contents are not read before written, so
// one buffer can serve every call on the same stream.
int64_t layernorm_backward_cuda_workspace_floats(int64_t rows, int64_t C);
void layernorm_backward_cuda(const bf16_bits* dy, const float* x, const bf16_bits* weight,
                             const float* mean, const float* rstd, float* dx, float* dweight,
                             float* dbias, int64_t rows, int64_t C, float* workspace,
                             cudaStream_t stream);
#endif

}  // namespace deit::kernels
