// The device code of the multi-tensor optimizer (kernels/cuda/optimizer.cu says what it fuses, its
// launch shapes and its measured speed): the table's device-side layout (one slot per tensor, one
// entry per chunk, the step's scalars), the chunk kernel and its ops (gradient squares, LAMB's two
// passes, AdamW, the EMA), the global norm's finish, the gradient factor, set_step_kernel,
// set_grads_kernel and LAMB's trust ratios. Last, the host side of that layout, plain C++: the
// slots and chunks CudaParamTable uploads and the scalars set_step_cuda writes, built here so that
// the emulated test hands the kernels the very table the launchers do.
//
// Included by optimizer.cu, and by the emulated test (tests/emulated/optimizer_emulated.cpp)
// after tests/emulated/cuda_emulator.h, which runs these kernels lane by lane on machines without
// a GPU. So the device code here uses only common_device.cuh, CUDA's bf16 types and conversions,
// and the built-ins the emulator provides; anything more needs a stand-in there. Each includer is
// the only translation unit of its program with these kernels, hence the unnamed namespace.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/common_device.cuh"
#include "kernels/optimizer.h"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kThreads;
using gpu::kVec;

// One tensor of the table, on the device.
struct Slot {
  float* param;
  bf16* param_bf16;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  float* ema;
  int64_t first_chunk;  // its chunks are first_chunk .. first_chunk + num_chunks - 1
  int64_t num_chunks;
  int32_t index;
  bool decay;         // takes weight decay
  bool vec;           // every pointer 16-byte aligned: 8-element vector accesses
  bool vec_but_grad;  // every pointer but grad 16-byte aligned (set_grads_kernel derives vec)
};

// Elements [begin, end) of tensor `tensor`.
struct Chunk {
  int64_t begin, end;
  int32_t tensor;
};

constexpr int kNormThreads = 1024;
constexpr int kTrustThreads = 128;

// AdamStep in the form the kernels use.
struct AdamScalars {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, inv_bc1, inv_sqrt_bc2, eps;
};

// What set_step_cuda leaves on the device for the next update.
struct StepScalars {
  AdamScalars adam;
  float lr;
  float weight_decay;  // of the tensors that take weight decay
  float keep;          // AdamW's decoupled decay factor 1 - lr * weight_decay
};

// The moments of adam_direction in kernels/cpu/optimizer.cpp, updated in place with gradient g.
__device__ __forceinline__ void adam_moments(float g, float& m, float& v, const AdamScalars& a) {
  m = __fmaf_rn(a.beta1, m, a.one_minus_beta1 * g);
  v = __fmaf_rn(a.beta2, v, a.one_minus_beta2 * g * g);
}

// (m / bc1) / (sqrt(v) / sqrt(bc2) + eps), from the stored moments.
__device__ __forceinline__ float adam_direction(float m, float v, const AdamScalars& a) {
  return (m * a.inv_bc1) / __fmaf_rn(sqrtf(v), a.inv_sqrt_bc2, a.eps);
}

// ---------------------------------------------------------------------------------------------
// The chunk kernel: block b runs op over chunk b. Op is a trivially copyable struct with
//   static constexpr int kSums;                      partial sums per chunk (0: none)
//   __device__ void load();                          reads its device-side scalars, once per block
//   __device__ bool active(const Slot&) const;       false: the block does nothing (block-uniform)
//   template <int N> __device__ void apply(const Slot&, int64_t i, float* acc) const;
// apply handles elements [i, i + N) (N = kVec with i a multiple of kVec, or N = 1) and adds to
// acc[0 .. kSums); the block's sums go to partials[b * kSums + k].

template <typename Op>
__global__ void __launch_bounds__(kThreads)
    chunk_kernel(const Slot* slots, const Chunk* chunks, const Op op, float* partials) {
  constexpr int kAcc = Op::kSums > 0 ? Op::kSums : 1;
  const Chunk c = chunks[blockIdx.x];
  const Slot s = slots[c.tensor];
  Op local = op;
  local.load();
  if (!local.active(s)) return;
  float acc[kAcc] = {};
  // Chunks start at multiples of kCudaOptimizerChunk, so vectors never straddle a chunk.
  const int64_t vec_end = s.vec ? c.begin + (c.end - c.begin) / kVec * kVec : c.begin;
  for (int64_t i = c.begin + threadIdx.x * kVec; i < vec_end; i += blockDim.x * kVec)
    local.template apply<kVec>(s, i, acc);
  for (int64_t i = vec_end + threadIdx.x; i < c.end; i += blockDim.x)
    local.template apply<1>(s, i, acc);
  if constexpr (Op::kSums > 0) {
    __shared__ float scratch[32 * kAcc];
    gpu::block_allreduce<gpu::SumOp, kAcc>(acc, scratch);
    if (threadIdx.x == 0)
      for (int k = 0; k < kAcc; ++k) partials[blockIdx.x * kAcc + k] = acc[k];
  }
}

struct GradSquaresOp {
  static constexpr int kSums = 1;
  __device__ void load() {}
  __device__ bool active(const Slot&) const { return true; }
  template <int N>
  __device__ void apply(const Slot& s, int64_t i, float* acc) const {
    float g[N];
    gpu::load<N>(s.grad + i, g);
#pragma unroll
    for (int j = 0; j < N; ++j) acc[0] = __fmaf_rn(g[j], g[j], acc[0]);
  }
};

// The scalars of an update, as the update ops read them: the gradient factor is NaN when the norm
// is not finite, and the step then writes nothing.
struct UpdateScalars {
  const float* grad_scale;         // device: grad_norm_cuda's factor
  const StepScalars* step_source;  // device: set_step_cuda's scalars
  float scale = 0.f;               // *grad_scale and *step_source, read by load()
  StepScalars step{};
  __device__ void load() {
    scale = *grad_scale;
    step = *step_source;
  }
  __device__ bool active(const Slot&) const { return isfinite(scale); }
};

// LAMB, first pass: the moments, and sums of p^2 and update^2 per chunk.
struct LambMomentsOp : UpdateScalars {
  static constexpr int kSums = 2;
  template <int N>
  __device__ void apply(const Slot& slot, int64_t i, float* acc) const {
    const float wd = slot.decay ? step.weight_decay : 0.f;
    float p[N], g[N], m[N], v[N];
    gpu::load<N>(slot.param + i, p);
    gpu::load<N>(slot.grad + i, g);
    gpu::load<N>(slot.exp_avg + i, m);
    gpu::load<N>(slot.exp_avg_sq + i, v);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      adam_moments(g[j] * scale, m[j], v[j], step.adam);
      const float u = __fmaf_rn(wd, p[j], adam_direction(m[j], v[j], step.adam));
      acc[0] = __fmaf_rn(p[j], p[j], acc[0]);
      acc[1] = __fmaf_rn(u, u, acc[1]);
    }
    gpu::store<N>(slot.exp_avg + i, m);
    gpu::store<N>(slot.exp_avg_sq + i, v);
  }
};

// LAMB, second pass: p += (-lr * trust) * update, update recomputed from the stored moments.
struct LambApplyOp : UpdateScalars {
  static constexpr int kSums = 0;
  const float* trust;
  template <int N>
  __device__ void apply(const Slot& slot, int64_t i, float*) const {
    const float wd = slot.decay ? step.weight_decay : 0.f;
    const float alpha = -step.lr * trust[slot.index];
    float p[N], m[N], v[N];
    gpu::load<N>(slot.param + i, p);
    gpu::load<N>(slot.exp_avg + i, m);
    gpu::load<N>(slot.exp_avg_sq + i, v);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float u = __fmaf_rn(wd, p[j], adam_direction(m[j], v[j], step.adam));
      p[j] = __fmaf_rn(alpha, u, p[j]);
    }
    gpu::store<N>(slot.param + i, p);
    gpu::store<N>(slot.param_bf16 + i, p);
  }
};

struct AdamWOp : UpdateScalars {
  static constexpr int kSums = 0;
  template <int N>
  __device__ void apply(const Slot& slot, int64_t i, float*) const {
    const float k = slot.decay ? step.keep : 1.f;
    float p[N], g[N], m[N], v[N];
    gpu::load<N>(slot.param + i, p);
    gpu::load<N>(slot.grad + i, g);
    gpu::load<N>(slot.exp_avg + i, m);
    gpu::load<N>(slot.exp_avg_sq + i, v);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      adam_moments(g[j] * scale, m[j], v[j], step.adam);
      p[j] = __fmaf_rn(-step.lr, adam_direction(m[j], v[j], step.adam), p[j] * k);
    }
    gpu::store<N>(slot.param + i, p);
    gpu::store<N>(slot.param_bf16 + i, p);
    gpu::store<N>(slot.exp_avg + i, m);
    gpu::store<N>(slot.exp_avg_sq + i, v);
  }
};

struct EmaOp {
  static constexpr int kSums = 0;
  float decay, one_minus_decay;
  __device__ void load() {}
  __device__ bool active(const Slot& s) const { return s.ema != nullptr; }
  template <int N>
  __device__ void apply(const Slot& s, int64_t i, float*) const {
    float e[N], p[N];
    gpu::load<N>(s.ema + i, e);
    gpu::load<N>(s.param + i, p);
#pragma unroll
    for (int j = 0; j < N; ++j) e[j] = __fmaf_rn(decay, e[j], one_minus_decay * p[j]);
    gpu::store<N>(s.ema + i, e);
  }
};

// ---------------------------------------------------------------------------------------------
// The reductions across chunks.

// The sum of the chunk sums of squares, on every thread of the block.
__device__ float sum_partials(const float* partials, int64_t chunks, float* scratch) {
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < chunks; i += blockDim.x) sum += partials[i];
  return gpu::block_sum(sum, scratch);
}

// scalars[0] = sqrt(sum), scalars[1] = the gradient factor.
__device__ void write_norm_and_factor(float sum, double clip_grad, double max_grad_norm,
                                      float* scalars) {
  const double norm = sqrt(static_cast<double>(sum));
  double factor = NAN;
  if (isfinite(norm)) {
    // clip_grad_coefficient (engine/optimizer.cpp), then LAMB's max_grad_norm (engine/lamb.cpp).
    factor = clip_grad > 0 ? fmin(1.0, clip_grad / (norm + 1e-6)) : 1.0;
    const double clipped = norm * factor;
    if (max_grad_norm > 0 && clipped > max_grad_norm) factor /= clipped / max_grad_norm;
  }
  scalars[0] = static_cast<float>(norm);
  scalars[1] = static_cast<float>(factor);
}

__global__ void __launch_bounds__(kNormThreads)
    grad_norm_finish_kernel(const float* partials, int64_t chunks, double clip_grad,
                            double max_grad_norm, float* scalars) {
  __shared__ float scratch[32];
  const float sum = sum_partials(partials, chunks, scratch);
  if (threadIdx.x == 0) write_norm_and_factor(sum, clip_grad, max_grad_norm, scalars);
}

__global__ void __launch_bounds__(kNormThreads)
    grad_sum_kernel(const float* partials, int64_t chunks, float* sum_squares) {
  __shared__ float scratch[32];
  const float sum = sum_partials(partials, chunks, scratch);
  if (threadIdx.x == 0) *sum_squares = sum;
}

__global__ void grad_factor_kernel(const float* sum_squares, double clip_grad,
                                   double max_grad_norm, float* scalars) {
  write_norm_and_factor(*sum_squares, clip_grad, max_grad_norm, scalars);
}

__global__ void set_step_kernel(StepScalars* step, StepScalars value) { *step = value; }

// Up to kGradsPerLaunch gradient pointers, for the tensors from `first` on, passed by value.
constexpr int kGradsPerLaunch = 256;
struct GradPointers {
  const float* grad[kGradsPerLaunch];
  int64_t first;
  int32_t count;
};

// Points slots first .. first + count - 1 at their gradients (one thread each).
__global__ void __launch_bounds__(kGradsPerLaunch)
    set_grads_kernel(Slot* slots, const GradPointers grads) {
  const int i = static_cast<int>(threadIdx.x);
  if (i >= grads.count) return;
  Slot& s = slots[grads.first + i];
  s.grad = grads.grad[i];
  s.vec = s.vec_but_grad && reinterpret_cast<uintptr_t>(s.grad) % 16 == 0;
}

// trust[t] = ||p|| / ||update|| of tensor t from its chunks' partials (added in chunk order), or 1
// without weight decay or when either norm is 0.
__global__ void __launch_bounds__(kTrustThreads)
    lamb_trust_kernel(const Slot* slots, int64_t tensors, const float* partials,
                      const StepScalars* step, float* trust) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= tensors) return;
  const Slot s = slots[t];
  float ratio = 1.f;
  if (s.decay && step->weight_decay != 0.f) {
    float pp = 0.f, uu = 0.f;
    for (int64_t k = s.first_chunk; k < s.first_chunk + s.num_chunks; ++k) {
      pp += partials[2 * k];
      uu += partials[2 * k + 1];
    }
    const float param_norm = sqrtf(pp), update_norm = sqrtf(uu);
    if (param_norm > 0.f && update_norm > 0.f) ratio = param_norm / update_norm;
  }
  trust[t] = ratio;
}

// ---------------------------------------------------------------------------------------------
// The host side of the table: what CudaParamTable uploads and what set_step_cuda writes.

// The slots and chunks of a table over `params`, in tensor order: tensor i's chunks are
// [b, min(n, b + kCudaOptimizerChunk)) for b = 0, kCudaOptimizerChunk, ... below its n.
struct TableLayout {
  std::vector<Slot> slots;
  std::vector<Chunk> chunks;
  bool has_optimizer_state = true;  // false: some tensor lacks param_bf16 or a moment
  bool has_grads = true;            // false: some tensor's gradient is left to set_grads_cuda
};

// std::invalid_argument for a null parameter pointer, a negative size, or a tensor with neither
// optimizer state nor an EMA.
inline TableLayout table_layout(const std::vector<CudaParam>& params) {
  TableLayout t;
  for (size_t i = 0; i < params.size(); ++i) {
    const CudaParam& p = params[i];
    if (!p.param || p.n < 0)
      throw std::invalid_argument("CudaParamTable: tensor " + std::to_string(i) +
                                  " has a null parameter pointer or a negative size");
    if (!p.param_bf16 || !p.exp_avg || !p.exp_avg_sq) {
      if (!p.ema)
        throw std::invalid_argument("CudaParamTable: tensor " + std::to_string(i) +
                                    " has neither optimizer state nor an EMA");
      t.has_optimizer_state = false;
    }
    if (!p.grad) t.has_grads = false;
    Slot s{};
    s.param = p.param;
    s.param_bf16 = reinterpret_cast<bf16*>(p.param_bf16);
    s.grad = p.grad;
    s.exp_avg = p.exp_avg;
    s.exp_avg_sq = p.exp_avg_sq;
    s.ema = p.ema;
    s.first_chunk = static_cast<int64_t>(t.chunks.size());
    s.index = static_cast<int32_t>(i);
    s.decay = p.weight_decay;
    s.vec_but_grad = gpu::aligned16(p.param, p.param_bf16, p.exp_avg, p.exp_avg_sq, p.ema);
    s.vec = s.vec_but_grad && gpu::aligned16(p.grad);
    for (int64_t b = 0; b < p.n; b += kCudaOptimizerChunk)
      t.chunks.push_back({b, std::min(p.n, b + kCudaOptimizerChunk), s.index});
    s.num_chunks = static_cast<int64_t>(t.chunks.size()) - s.first_chunk;
    t.slots.push_back(s);
  }
  return t;
}

inline AdamScalars adam_scalars(const char* fn, const AdamStep& s) {
  if (s.grad_scale != 1)
    throw std::invalid_argument(std::string(fn) +
                                ": step.grad_scale must be 1; the CUDA step reads the gradient "
                                "factor grad_norm_cuda left on the device");
  return {static_cast<float>(s.beta1),
          static_cast<float>(1 - s.beta1),
          static_cast<float>(s.beta2),
          static_cast<float>(1 - s.beta2),
          static_cast<float>(1 / s.bias_correction1),
          static_cast<float>(1 / std::sqrt(s.bias_correction2)),
          static_cast<float>(s.eps)};
}

// The scalars set_step_cuda writes for an update at learning rate lr, where the tensors that take
// weight decay take `weight_decay` (std::invalid_argument naming fn unless step.grad_scale is 1).
inline StepScalars step_scalars(const char* fn, const AdamStep& step, double lr,
                                double weight_decay) {
  return {adam_scalars(fn, step), static_cast<float>(lr), static_cast<float>(weight_decay),
          static_cast<float>(1 - lr * weight_decay)};
}

}  // namespace
}  // namespace deit::kernels
