// The residual update of a DeiT III block, fused: out = x + keep_scale[b] * gamma[c] * branch.
// gamma is LayerScale (per channel); keep_scale is stochastic depth (drop-path) per sample:
// 0 for a dropped sample, 1/(1-rate) for a kept one, 1 everywhere at eval or with rate 0.
// The gradient with respect to x is dout itself, so backward only produces dbranch and dgamma.
//
// In a pre-norm block the residual update is followed by a LayerNorm of its result (norm2 after
// the attention branch, the next block's norm1 after the MLP branch). The fused pair below makes
// both from one read of x and branch, and in backward adds the LayerNorm's input gradient to the
// residual stream's and feeds the sum to LayerScale in the same pass (kernels/layernorm.h has the
// LayerNorm alone).
//
// A branch that drop-path drops for many samples runs on the others alone (model/vit.cpp), and so
// may the branch after the update: SampleSlots then says which samples the fused pair's branch side
// holds, so that it reads and writes those rows in place of a gather and a scatter around it.
#pragma once
#include <cstdint>

#include "kernels/bf16.h"
#include "kernels/samples.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// Shapes: B samples of T tokens (the argument Tn: T is the element type's name in the templates)
// and C channels.

// x, branch: (B, T, C), gamma: (C), keep_scale: (B)  ->  out: (B, T, C). With branch_slot (a
// selection's slot map, kernels/samples.h), branch holds the rows of the samples it selects, and
// a sample without any adds nothing (SampleSlots below).
template <typename T>
void layerscale_residual_forward_cpu(const T* x, const T* branch, const T* gamma,
                                     const T* keep_scale, T* out, int64_t B, int64_t Tn, int64_t C,
                                     const int32_t* branch_slot = nullptr);

// dout: (B, T, C)  ->  dbranch: branch's rows, dgamma: (C). Either may be nullptr.
template <typename T>
void layerscale_residual_backward_cpu(const T* dout, const T* branch, const T* gamma,
                                      const T* keep_scale, T* dbranch, T* dgamma, int64_t B,
                                      int64_t Tn, int64_t C, const int32_t* branch_slot = nullptr);

// The samples of the batch whose rows the fused pair's branch side holds, as slot maps (B) of
// selections (kernels/samples.h), each nullptr for the whole batch in order. branch: branch and
// dbranch hold (branch_samples, T, C), sample b's rows at branch_slot[b]; a sample without a slot
// has no branch rows and adds nothing to out (it is one drop-path dropped: keep_scale 0). normed:
// y and dy hold the rows of the samples it selects (the next branch's input); a sample without a
// slot has no y, and its dy is 0.
struct SampleSlots {
  const int32_t* branch = nullptr;
  int64_t branch_samples = 0;
  const int32_t* normed = nullptr;
};

// The residual update and the LayerNorm after it:
//   out = x + keep_scale[b] * gamma[c] * branch,   y = LayerNorm(out; ln_weight, ln_bias, eps)
// x: (B, T, C), branch: (B, T, C) or slots.branch's rows, gamma, ln_weight, ln_bias: (C),
// keep_scale: (B)  ->  out: (B, T, C), y: (B, T, C) or slots.normed's rows, mean, rstd: (B*T)
// saved for backward (every row's)
template <typename T>
void layerscale_residual_layernorm_forward_cpu(const T* x, const T* branch, const T* gamma,
                                               const T* keep_scale, const T* ln_weight,
                                               const T* ln_bias, T* out, T* y, T* mean, T* rstd,
                                               int64_t B, int64_t Tn, int64_t C, double eps,
                                               const SampleSlots& slots = {});

// dout: (B, T, C), the gradient reaching `out` from later in the network (nullptr: none),
// dy: the gradient of y (y's rows)  ->  dx: (B, T, C), the whole gradient of `out` (dout plus
// what flows back through the LayerNorm), which is also x's; dbranch: branch's rows; dgamma,
// dln_weight, dln_bias: (C); dbias: (C), the column sums of dbranch, i.e. the bias gradient of
// the linear layer that made branch (ops::linear_layerscale_residual_layernorm takes it from
// here instead of another pass). dbranch and the four (C) gradients may be nullptr, but dbias
// needs dbranch (std::invalid_argument without it, unless the branch has no rows). dx must not
// overlap dout or dy: the CPU twin writes the LayerNorm's share into dx before it adds dout.
template <typename T>
void layerscale_residual_layernorm_backward_cpu(
    const T* dout, const T* dy, const T* out, const T* branch, const T* gamma, const T* keep_scale,
    const T* ln_weight, const T* mean, const T* rstd, T* dx, T* dbranch, T* dgamma, T* dln_weight,
    T* dln_bias, T* dbias, int64_t B, int64_t Tn, int64_t C, const SampleSlots& slots = {});

#if DEIT_HAVE_CUDA
// CUDA: the residual stream x, out and its gradient dout are fp32: with LayerScale's small gamma
// (1e-4 at init) most updates keep_scale * gamma * branch are under half a bf16 ulp of x, and a
// bf16 stream would round them away. branch and dbranch are bf16; gamma is the bf16 copy of the
// parameter; keep_scale (B) is fp32; dgamma is fp32 (it feeds the fp32 master weight), summed
// over rows deterministically: same inputs, same bits. Forward: out may alias x (in-place
// residual update).
void layerscale_residual_forward_cuda(const float* x, const bf16_bits* branch,
                                      const bf16_bits* gamma, const float* keep_scale, float* out,
                                      int64_t B, int64_t Tn, int64_t C, cudaStream_t stream);

// Backward needs device scratch for the per-chunk column partials of dgamma: `workspace` holds
// at least layerscale_residual_backward_cuda_workspace_floats(B, Tn, C) floats (nullptr is fine
// when dgamma is nullptr); it is not read before written. C <= kLayerNormCudaMaxWidth
// (kernels/layernorm.h; std::invalid_argument beyond).
int64_t layerscale_residual_backward_cuda_workspace_floats(int64_t B, int64_t Tn, int64_t C);
void layerscale_residual_backward_cuda(const float* dout, const bf16_bits* branch,
                                       const bf16_bits* gamma, const float* keep_scale,
                                       bf16_bits* dbranch, float* dgamma, int64_t B, int64_t Tn,
                                       int64_t C, float* workspace, cudaStream_t stream);

// CUDA, fused with the LayerNorm: the residual stream (x, out) and its gradient (dout, dx) in
// fp32, as above; the branch side (branch, y, dy, dbranch) in bf16; gamma, ln_weight and ln_bias
// are the bf16 copies of the parameters; keep_scale, mean and rstd are fp32. The LayerNorm
// normalises `out` as stored (fp32), so its statistics match what backward reads. Forward: out
// may alias x; mean and rstd may be nullptr (inference).
// Backward keeps dx in fp32 between the LayerNorm and LayerScale halves, and sums dgamma,
// dln_weight, dln_bias and dbias (fp32; dbias from dbranch as stored, in bf16, the bits
// linear_backward_cuda would sum from it) over rows deterministically through `workspace`, at
// least
// layerscale_residual_layernorm_backward_cuda_workspace_floats(B, Tn, C, slots) floats (nullptr
// is fine when all four are nullptr). C <= kLayerNormCudaMaxWidth (kernels/layernorm.h;
// std::invalid_argument beyond, for a dbias without dbranch, and for branch_samples outside
// [0, B] with a branch slot map). The slot maps are device arrays, trusted to hold what
// kernels/samples.h says.
void layerscale_residual_layernorm_forward_cuda(const float* x, const bf16_bits* branch,
                                                const bf16_bits* gamma, const float* keep_scale,
                                                const bf16_bits* ln_weight,
                                                const bf16_bits* ln_bias, float* out, bf16_bits* y,
                                                float* mean, float* rstd, int64_t B, int64_t Tn,
                                                int64_t C, double eps, cudaStream_t stream,
                                                const SampleSlots& slots = {});

int64_t layerscale_residual_layernorm_backward_cuda_workspace_floats(int64_t B, int64_t Tn,
                                                                     int64_t C,
                                                                     const SampleSlots& slots = {});
void layerscale_residual_layernorm_backward_cuda(
    const float* dout, const bf16_bits* dy, const float* out, const bf16_bits* branch,
    const bf16_bits* gamma, const float* keep_scale, const bf16_bits* ln_weight, const float* mean,
    const float* rstd, float* dx, bf16_bits* dbranch, float* dgamma, float* dln_weight,
    float* dln_bias, float* dbias, int64_t B, int64_t Tn, int64_t C, float* workspace,
    cudaStream_t stream, const SampleSlots& slots = {});
#endif

}  // namespace deit::kernels
