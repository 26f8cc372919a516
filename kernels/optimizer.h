// Optimizer arithmetic, one parameter tensor at a time: the Adam moments LAMB and AdamW share,
// LAMB's update direction and its scaled step, AdamW's decoupled-decay step, the sums of squares
// behind the global gradient norm and LAMB's trust ratio, and the weight EMA. engine/optimizer.h
// decides which tensors, with which scalars (learning rate, trust ratio, clipping factor).
//
// Each element is computed in double from the stored T values and rounded back to T once per
// stored quantity (moment, update, parameter). Elements are independent and sums of squares add in
// a fixed order, so the same inputs give the same bits whatever the number of OpenMP threads.
// CUDA twins (fp32 master weights and state) come later with the same signatures plus a stream.
#pragma once
#include <cstdint>

namespace deit::kernels {

// The scalars of one Adam-style step over one tensor.
struct AdamStep {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double bias_correction1 = 1;  // 1 - beta1^t for the step number t (1 for the first step)
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

// x, y: (n) -> x += alpha * y. LAMB's second half: param += (-lr * trust_ratio) * update.
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

}  // namespace deit::kernels
