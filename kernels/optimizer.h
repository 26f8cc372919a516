// Optimizer arithmetic, one parameter tensor at a time: the Adam moments LAMB and AdamW share,
// LAMB's update direction and its scaled step, AdamW's decoupled-decay step, the sums of squares
// behind the global gradient norm and LAMB's trust ratio, and the weight EMA. engine/optimizer.h
// decides which tensors, with which scalars (learning rate, trust ratio, clipping factor).
//
// Each element is computed in double from the stored T values and rounded back to T once per
// stored quantity (moment, update, parameter). Elements are independent and sums of squares add in
// a fixed order, so the same inputs give the same bits whatever the number of OpenMP threads.
//
// The CUDA twins (end of this file) compute the same steps on fp32 master weights and state, but
// over every parameter tensor of a model per launch rather than one tensor per call.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/bf16.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// The scalars of one Adam-style step over one tensor.
struct AdamStep {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  // The moments start at 0, so after t steps m is (1 - beta1^t) times a weighted mean of the
  // gradients (the weights (1 - beta1) beta1^k sum to 1 - beta1^t): dividing by that undoes the
  // pull towards 0 of the early steps (Kingma & Ba, Adam, section 3).
  double bias_correction1 = 1;  // 1 - beta1^t, t the step number (t = 1 at the first step)
  double bias_correction2 = 1;  // 1 - beta2^t
  double grad_scale = 1;        // the gradient is read as grad * grad_scale (global-norm clipping)
};

// x: (n) -> sum_i x[i]^2, in double, added in a fixed order.
template <typename T>
double sum_squares_cpu(const T* x, int64_t n);

// LAMB, first half. param, grad, exp_avg, exp_avg_sq, update: (n). With g = grad * grad_scale:
//   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2            (in place)
//   update = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + weight_decay * param
// eps is added to sqrt(v_hat), not to v_hat, as timm's Lamb and apex's FusedLAMB do.
template <typename T>
void lamb_update_cpu(const T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* update,
                     int64_t n, const AdamStep& step, double weight_decay);

// x, y: (n) -> x += alpha * y. LAMB's second half: param += (-lr * trust_ratio) * update, with
// trust_ratio = ||param|| / ||update|| (sum_squares_cpu of each) for a tensor whose weight decay
// is nonzero, and 1 for the others (biases, norms, LayerScale, pos_embed, cls_token: timm's
// always_adapt=False) or when either norm is 0; engine/lamb.cpp computes it between the halves.
template <typename T>
void add_scaled_cpu(T* x, const T* y, double alpha, int64_t n);

// AdamW as torch.optim.AdamW, in place. param, grad, exp_avg, exp_avg_sq: (n).
//   param *= 1 - lr * weight_decay                                     (decoupled decay first)
//   m, v as in lamb_update_cpu;  param -= lr * (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)
template <typename T>
void adamw_update_cpu(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n,
                      const AdamStep& step, double lr, double weight_decay);

// ema, value: (n) -> ema = decay * ema + (1 - decay) * value (timm's ModelEma / ModelEmaV2).
template <typename T>
void ema_update_cpu(T* ema, const T* value, double decay, int64_t n);

#if DEIT_HAVE_CUDA
// ---------------------------------------------------------------------------------------------
// CUDA: "multi-tensor apply". The tensors are cut into chunks of kCudaOptimizerChunk elements and
// every launch runs one block per chunk of every tensor, so a ViT's ~150 parameter tensors take a
// handful of launches per step:
//   set_step_cuda    1 launch (one thread): the step's scalars into the table's device memory
//   set_grads_cuda   1 launch per 256 tensors: the step's gradient pointers into the table
//   grad_norm_cuda   2 launches: per-chunk sums of squares, then the norm and the gradient factor
//   lamb_step_cuda   3 launches: moments + per-chunk ||p||^2, ||update||^2; per-tensor trust
//                    ratios; the parameter update
//   adamw_step_cuda  1 launch;  ema_update_cuda 1 launch
// fp32 arithmetic on fp32 master weights, gradients and moments; every update also writes the
// bf16 copy of the weights that the forward reads. The reductions are deterministic (fixed chunks,
// fp32 partials added in a fixed order, no atomics), and nothing waits on the host: the gradient
// norm, the clipping factor and the trust ratios stay on the device.
//
// The scalars that change from step to step (learning rate, Adam bias corrections) are read from
// device memory that set_step_cuda writes, not passed by value: a CUDA graph that captured the
// update kernels (engine/cuda_graph.h) then applies whatever set_step_cuda, run outside the graph
// before each replay, wrote last.

constexpr int64_t kCudaOptimizerChunk = 16384;

// One parameter tensor: device pointers to n elements each. A table that only serves
// ema_update_cuda (engine/ema.h keeps the average apart from the optimizer) needs param and ema
// alone and may leave param_bf16, grad and the moments null; the optimizer steps refuse such a
// table. A table whose gradients are new tensors every step (the engine's) leaves grad null and
// points at them with set_grads_cuda before each step.
struct CudaParam {
  float* param = nullptr;           // fp32 master weights
  bf16_bits* param_bf16 = nullptr;  // their bf16 copy, rewritten by every update
  const float* grad = nullptr;      // fp32 gradient; null: set_grads_cuda sets it
  float* exp_avg = nullptr;         // Adam moments
  float* exp_avg_sq = nullptr;
  float* ema = nullptr;  // fp32 EMA of the master weights; nullptr: not tracked
  int64_t n = 0;
  bool weight_decay = false;  // takes weight decay and, under LAMB, the trust ratio
};

// The device-side table of the tensors and their chunks, plus the scratch of the reductions and
// the two scalars grad_norm_cuda writes. Built once, before training: the constructor allocates
// device memory and uploads synchronously (std::invalid_argument for a null parameter pointer, a
// negative size, or a tensor with neither optimizer state nor an EMA). The pointers must stay
// valid while the table is used, and one table serves one stream at a time (its scratch is shared
// by the launches).
class CudaParamTable {
 public:
  explicit CudaParamTable(const std::vector<CudaParam>& params);
  ~CudaParamTable();
  CudaParamTable(const CudaParamTable&) = delete;
  CudaParamTable& operator=(const CudaParamTable&) = delete;

  int64_t tensors() const { return tensors_; }
  // False when some tensor lacks param_bf16 or a moment: the table serves the EMA only.
  bool has_optimizer_state() const { return has_optimizer_state_; }
  // Whether every tensor has a gradient: given to the constructor, or set by set_grads_cuda.
  bool has_grads() const { return has_grads_; }
  int64_t chunks() const { return chunks_; }
  // Device floats written by grad_norm_cuda (or grad_factor_cuda): the global norm of the
  // gradients as given, and the factor the updates read the gradients with.
  const float* grad_norm() const { return scalars_; }
  const float* grad_scale() const { return scalars_ + 1; }

 private:
  friend struct CudaParamTableAccess;  // kernels/cuda/optimizer.cu
  void* slots_ = nullptr;              // device: one entry per tensor
  void* chunk_list_ = nullptr;         // device: one entry per chunk
  float* partials_ = nullptr;          // device: two floats per chunk
  float* trust_ = nullptr;             // device: one float per tensor
  float* scalars_ = nullptr;           // device: grad norm, grad scale
  void* step_ = nullptr;               // device: the scalars set_step_cuda writes
  int64_t tensors_ = 0;
  int64_t chunks_ = 0;
  bool has_optimizer_state_ = true;
  bool has_grads_ = true;
  bool step_set_ = false;  // set_step_cuda has run at least once
};

// The global gradient norm over every tensor of the table (what engine/optimizer.h's
// global_grad_norm computes), and the gradient factor: clip_grad_coefficient(norm, clip_grad),
// then, when max_grad_norm > 0 (LAMB), divided by norm' / max_grad_norm where the clipped norm
// norm' = norm * factor exceeds max_grad_norm. A non-finite norm sets the factor to NaN, and the
// steps below then leave everything unchanged (where the CPU optimizer throws NonFiniteGradient);
// the caller learns of it by reading grad_norm() back after the step. Run it before every step.
void grad_norm_cuda(CudaParamTable& table, double clip_grad, double max_grad_norm,
                    cudaStream_t stream);

// grad_norm_cuda in two halves, for a table over one rank's share of the parameters (ZeRO-1,
// engine/sharded_optimizer.h), whose norm must be that of every rank's gradients:
// grad_sum_squares_cuda writes the sum of squares of the table's gradients to the device float
// `sum_squares`, which the caller then sums over the ranks in place; grad_factor_cuda derives
// grad_norm() and grad_scale() from the sum as grad_norm_cuda does. On one rank the two give
// grad_norm_cuda's bits.
void grad_sum_squares_cuda(CudaParamTable& table, float* sum_squares, cudaStream_t stream);
void grad_factor_cuda(CudaParamTable& table, const float* sum_squares, double clip_grad,
                      double max_grad_norm, cudaStream_t stream);

// Writes the scalars of the next update to the table's device memory, in stream order: the Adam
// scalars of `step` (its step number's bias corrections; step.grad_scale must be 1, as the factor
// comes from grad_norm_cuda), the learning rate and the weight decay of the tensors that take it.
// Run it before every lamb_step_cuda / adamw_step_cuda and, when those are replayed from a CUDA
// graph, outside the graph (std::invalid_argument for step.grad_scale != 1).
void set_step_cuda(CudaParamTable& table, const AdamStep& step, double lr, double weight_decay,
                   cudaStream_t stream);

// Points tensor i of the table at grads[i] (n elements, as the table was built with) for the
// launches queued on `stream` after this, in place of copying each step's gradients into fixed
// buffers. The pointers go by value in the launches' arguments, so the host may reuse the vector
// at once, and a CUDA graph that captured them replays them. std::invalid_argument unless there is
// one non-null pointer per tensor, or for a table without optimizer state.
void set_grads_cuda(CudaParamTable& table, const std::vector<const float*>& grads,
                    cudaStream_t stream);

// The functions that read gradients (grad_norm_cuda, its two halves, lamb_step_cuda and
// adamw_step_cuda) throw std::logic_error for a table built without them until set_grads_cuda
// has run on it.

// LAMB over every tensor, as engine/lamb.cpp: lamb_update_cpu's moments and update direction with
// the gradients read as grad * grad_scale(), trust = ||p|| / ||update|| for tensors with weight
// decay when weight_decay != 0 and both norms are nonzero (else 1), p -= lr * trust * update;
// the scalars are set_step_cuda's (std::logic_error if it never ran on this table).
void lamb_step_cuda(CudaParamTable& table, cudaStream_t stream);

// adamw_update_cpu over every tensor (weight decay only on those that take it), gradients read as
// grad * grad_scale(), with set_step_cuda's scalars (std::logic_error if it never ran).
void adamw_step_cuda(CudaParamTable& table, cudaStream_t stream);

// ema_update_cpu(ema, param) for every tensor with an ema pointer.
void ema_update_cuda(CudaParamTable& table, double decay, cudaStream_t stream);
#endif

}  // namespace deit::kernels
