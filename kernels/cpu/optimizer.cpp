#include "kernels/optimizer.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/reduce.h"

namespace deit::kernels {

namespace {

// The optimizers run once per parameter tensor, and most of a ViT's tensors are small (biases,
// LayerNorm and LayerScale vectors): below this many elements a loop stays on the calling
// thread, where waking the OpenMP team (tens of microseconds when its threads sleep) would cost
// more than the loop. Elementwise, so the result is the same either way.
constexpr int64_t kMinParallelElements = 16384;

// One element of an Adam-style step: updates the stored moments m and v with the scaled gradient
// and returns the bias-corrected direction m_hat / (sqrt(v_hat) + eps). The direction is computed
// from the moments as stored (rounded to T), as torch computes it from its float32 state.
template <typename T>
double adam_direction(T& m, T& v, double grad, const AdamStep& s) {
  const double g = grad * s.grad_scale;
  m = static_cast<T>(s.beta1 * m + (1 - s.beta1) * g);
  v = static_cast<T>(s.beta2 * v + (1 - s.beta2) * g * g);
  const double denom = std::sqrt(static_cast<double>(v)) / std::sqrt(s.bias_correction2) + s.eps;
  return (m / s.bias_correction1) / denom;
}

}  // namespace

template <typename T>
double sum_squares_cpu(const T* x, int64_t n) {
  // Fixed blocks, each summed serially, then the block sums in block order: the association of
  // the additions depends on n only, never on how the blocks are shared among threads.
  constexpr int64_t kBlock = 4096;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  return ordered_sum(blocks, [=](int64_t b) {
    double s = 0;
    for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i)
      s += static_cast<double>(x[i]) * x[i];
    return s;
  });
}

template <typename T>
void lamb_update_cpu(const T* param, const T* grad, T* exp_avg, T* exp_avg_sq, T* update,
                     int64_t n, const AdamStep& step, double weight_decay) {
  // All operands: (n), elementwise.
#pragma omp parallel for schedule(static) if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) {
    const double direction = adam_direction(exp_avg[i], exp_avg_sq[i], grad[i], step);
    update[i] = static_cast<T>(direction + weight_decay * param[i]);
  }
}

template <typename T>
void add_scaled_cpu(T* x, const T* y, double alpha, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<T>(x[i] + alpha * y[i]);
}

template <typename T>
void adamw_update_cpu(T* param, const T* grad, T* exp_avg, T* exp_avg_sq, int64_t n,
                      const AdamStep& step, double lr, double weight_decay) {
  const double keep = 1 - lr * weight_decay;
#pragma omp parallel for schedule(static) if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) {
    const double direction = adam_direction(exp_avg[i], exp_avg_sq[i], grad[i], step);
    param[i] = static_cast<T>(param[i] * keep - lr * direction);
  }
}

template <typename T>
void ema_update_cpu(T* ema, const T* value, double decay, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) ema[i] = static_cast<T>(decay * ema[i] + (1 - decay) * value[i]);
}

#define DEIT_INSTANTIATE(T)                                                                      \
  template double sum_squares_cpu<T>(const T*, int64_t);                                         \
  template void lamb_update_cpu<T>(const T*, const T*, T*, T*, T*, int64_t, const AdamStep&,     \
                                   double);                                                      \
  template void add_scaled_cpu<T>(T*, const T*, double, int64_t);                                \
  template void adamw_update_cpu<T>(T*, const T*, T*, T*, int64_t, const AdamStep&, double,      \
                                    double);                                                     \
  template void ema_update_cpu<T>(T*, const T*, double, int64_t);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
