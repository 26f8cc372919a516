// LAMB, AdamW, the global gradient norm and the weight EMA over every parameter tensor of a model
// per launch ("multi-tensor apply"), on fp32 master weights and moments.
// Fuses: the gradient-clipping factor into the moment update (read from the device, so no host
// round trip); the bf16 weight copy into the parameter update; LAMB's ||p||^2 and ||update||^2
// partial sums into the moment pass. LAMB's update vector is never stored: the parameter pass
// recomputes it from the stored moments with the same fp32 operations (explicit fmaf, so the
// compiler cannot contract one pass differently from the other), which costs less memory traffic
// than writing it and reading it back.
// Launch: every tensor is cut into chunks of kCudaOptimizerChunk elements; the chunk kernels run
// one block of 256 threads per chunk, 8-element (16-byte bf16, 2 x 16-byte fp32) vectors where
// all of a tensor's pointers are 16-byte aligned, scalar otherwise. Reductions: a fixed shuffle
// tree per block (chunk partials), then one block of 1024 threads for the global norm and one
// thread per tensor adding its chunks in order for LAMB's trust ratio. Deterministic throughout.
// The step's scalars (learning rate, bias corrections, weight decay) and the gradient factor are
// read from device memory once per block, so a captured graph of these launches applies the values
// set_step_cuda wrote before each replay.
// Measured speed: not yet measured on a GPU.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
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
  bool decay;  // takes weight decay
  bool vec;    // every pointer 16-byte aligned: 8-element vector accesses
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

AdamScalars adam_scalars(const char* fn, const AdamStep& s) {
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
  float scale;                     // *grad_scale and *step_source, read by load()
  StepScalars step;
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

}  // namespace

// The table's device arrays, typed, for the launches below.
struct CudaParamTableAccess {
  static const Slot* slots(const CudaParamTable& t) { return static_cast<const Slot*>(t.slots_); }
  static const Chunk* chunks(const CudaParamTable& t) {
    return static_cast<const Chunk*>(t.chunk_list_);
  }
  static float* partials(const CudaParamTable& t) { return t.partials_; }
  static float* trust(const CudaParamTable& t) { return t.trust_; }
  static float* scalars(const CudaParamTable& t) { return t.scalars_; }
  static StepScalars* step(const CudaParamTable& t) { return static_cast<StepScalars*>(t.step_); }
  static void mark_step_set(CudaParamTable& t) { t.step_set_ = true; }
  static bool step_set(const CudaParamTable& t) { return t.step_set_; }

  static void free_all(CudaParamTable& t) {
    for (void* p : {t.slots_, t.chunk_list_, static_cast<void*>(t.partials_),
                    static_cast<void*>(t.trust_), static_cast<void*>(t.scalars_), t.step_})
      if (p) cudaFree(p);
    t.slots_ = t.chunk_list_ = t.step_ = nullptr;
    t.partials_ = t.trust_ = t.scalars_ = nullptr;
  }

  template <typename Op>
  static void launch(const CudaParamTable& t, const Op& op, cudaStream_t stream) {
    if (t.chunks_ == 0) return;
    chunk_kernel<Op><<<static_cast<unsigned>(t.chunks_), kThreads, 0, stream>>>(
        slots(t), chunks(t), op, t.partials_);
    DEIT_CUDA_CHECK_LAUNCH();
  }
};

namespace {

template <typename T>
void upload(T** dst, const std::vector<T>& host) {
  // At least one element, so that every array exists even for an empty table.
  DEIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(dst), std::max<size_t>(host.size(), 1) * sizeof(T)));
  if (host.empty()) return;
  DEIT_CUDA_CHECK(cudaMemcpy(*dst, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before its last DMA lands, and the kernels that
  // read the table run on the compute stream, which does not wait for the legacy stream.
  DEIT_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
}

}  // namespace

CudaParamTable::CudaParamTable(const std::vector<CudaParam>& params) {
  std::vector<Slot> slots;
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < params.size(); ++i) {
    const CudaParam& p = params[i];
    if (!p.param || p.n < 0)
      throw std::invalid_argument("CudaParamTable: tensor " + std::to_string(i) +
                                  " has a null parameter pointer or a negative size");
    if (!p.param_bf16 || !p.grad || !p.exp_avg || !p.exp_avg_sq) {
      if (!p.ema)
        throw std::invalid_argument("CudaParamTable: tensor " + std::to_string(i) +
                                    " has neither optimizer state nor an EMA");
      has_optimizer_state_ = false;
    }
    Slot s{};
    s.param = p.param;
    s.param_bf16 = gpu::as_bf16(p.param_bf16);
    s.grad = p.grad;
    s.exp_avg = p.exp_avg;
    s.exp_avg_sq = p.exp_avg_sq;
    s.ema = p.ema;
    s.first_chunk = static_cast<int64_t>(chunks.size());
    s.index = static_cast<int32_t>(i);
    s.decay = p.weight_decay;
    s.vec = gpu::aligned16(p.param, p.param_bf16, p.grad, p.exp_avg, p.exp_avg_sq, p.ema);
    for (int64_t b = 0; b < p.n; b += kCudaOptimizerChunk)
      chunks.push_back({b, std::min(p.n, b + kCudaOptimizerChunk), s.index});
    s.num_chunks = static_cast<int64_t>(chunks.size()) - s.first_chunk;
    slots.push_back(s);
  }
  tensors_ = static_cast<int64_t>(slots.size());
  chunks_ = static_cast<int64_t>(chunks.size());
  try {
    upload(reinterpret_cast<Slot**>(&slots_), slots);
    upload(reinterpret_cast<Chunk**>(&chunk_list_), chunks);
    upload(&partials_, std::vector<float>(2 * chunks.size()));
    upload(&trust_, std::vector<float>(slots.size()));
    upload(&scalars_, std::vector<float>{0.f, 1.f});
    upload(reinterpret_cast<StepScalars**>(&step_), std::vector<StepScalars>(1, StepScalars{}));
  } catch (...) {
    CudaParamTableAccess::free_all(*this);
    throw;
  }
}

CudaParamTable::~CudaParamTable() { CudaParamTableAccess::free_all(*this); }

namespace {

void require_optimizer_state(const char* fn, const CudaParamTable& table) {
  if (!table.has_optimizer_state())
    throw std::invalid_argument(std::string(fn) +
                                ": the table lacks gradients, moments or bf16 copies (EMA only)");
}

void require_step(const char* fn, const CudaParamTable& table) {
  require_optimizer_state(fn, table);
  if (!CudaParamTableAccess::step_set(table))
    throw std::logic_error(std::string(fn) + " before any set_step_cuda on its table");
}

}  // namespace

void grad_norm_cuda(CudaParamTable& table, double clip_grad, double max_grad_norm,
                    cudaStream_t stream) {
  using A = CudaParamTableAccess;
  require_optimizer_state("grad_norm_cuda", table);
  A::launch(table, GradSquaresOp{}, stream);
  grad_norm_finish_kernel<<<1, kNormThreads, 0, stream>>>(A::partials(table), table.chunks(),
                                                          clip_grad, max_grad_norm,
                                                          A::scalars(table));
  DEIT_CUDA_CHECK_LAUNCH();
}

void grad_sum_squares_cuda(CudaParamTable& table, float* sum_squares, cudaStream_t stream) {
  using A = CudaParamTableAccess;
  require_optimizer_state("grad_sum_squares_cuda", table);
  A::launch(table, GradSquaresOp{}, stream);
  grad_sum_kernel<<<1, kNormThreads, 0, stream>>>(A::partials(table), table.chunks(),
                                                  sum_squares);
  DEIT_CUDA_CHECK_LAUNCH();
}

void grad_factor_cuda(CudaParamTable& table, const float* sum_squares, double clip_grad,
                      double max_grad_norm, cudaStream_t stream) {
  require_optimizer_state("grad_factor_cuda", table);
  grad_factor_kernel<<<1, 1, 0, stream>>>(sum_squares, clip_grad, max_grad_norm,
                                          CudaParamTableAccess::scalars(table));
  DEIT_CUDA_CHECK_LAUNCH();
}

void set_step_cuda(CudaParamTable& table, const AdamStep& step, double lr, double weight_decay,
                   cudaStream_t stream) {
  using A = CudaParamTableAccess;
  require_optimizer_state("set_step_cuda", table);
  // Passed by value: the launch copies it, so the host may change its own right away.
  const StepScalars value{adam_scalars("set_step_cuda", step), static_cast<float>(lr),
                          static_cast<float>(weight_decay),
                          static_cast<float>(1 - lr * weight_decay)};
  set_step_kernel<<<1, 1, 0, stream>>>(A::step(table), value);
  DEIT_CUDA_CHECK_LAUNCH();
  A::mark_step_set(table);
}

void lamb_step_cuda(CudaParamTable& table, cudaStream_t stream) {
  using A = CudaParamTableAccess;
  require_step("lamb_step_cuda", table);
  const UpdateScalars scalars{table.grad_scale(), A::step(table)};
  A::launch(table, LambMomentsOp{scalars}, stream);
  if (table.tensors() > 0) {
    const unsigned grid = static_cast<unsigned>(gpu::ceil_div(table.tensors(), kTrustThreads));
    lamb_trust_kernel<<<grid, kTrustThreads, 0, stream>>>(A::slots(table), table.tensors(),
                                                          A::partials(table), A::step(table),
                                                          A::trust(table));
    DEIT_CUDA_CHECK_LAUNCH();
  }
  A::launch(table, LambApplyOp{scalars, A::trust(table)}, stream);
}

void adamw_step_cuda(CudaParamTable& table, cudaStream_t stream) {
  require_step("adamw_step_cuda", table);
  CudaParamTableAccess::launch(
      table, AdamWOp{{table.grad_scale(), CudaParamTableAccess::step(table)}}, stream);
}

void ema_update_cuda(CudaParamTable& table, double decay, cudaStream_t stream) {
  CudaParamTableAccess::launch(
      table, EmaOp{static_cast<float>(decay), static_cast<float>(1 - decay)}, stream);
}

}  // namespace deit::kernels
