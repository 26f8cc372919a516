#include "kernels/gelu.h"

#include <cmath>

#include "kernels/cpu/reduce.h"

namespace deit::kernels {
namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;    // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)

// The standard normal CDF Phi and density phi, in double even for float inputs. Phi goes through
// erfc because 1 + erf(x) cancels to 0 in the negative tail long before Phi itself underflows.
double normal_cdf(double x) { return 0.5 * std::erfc(-x * kInvSqrt2); }
double normal_pdf(double x) { return kInvSqrt2Pi * std::exp(-0.5 * x * x); }

}  // namespace

template <typename T>
void gelu_forward_cpu(const T* x, T* y, int64_t n) {
  // x, y: (n)
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(x[i] * normal_cdf(x[i]));
}

template <typename T>
void gelu_backward_cpu(const T* dy, const T* x, T* dx, int64_t n) {
  // d/dx [x Phi(x)] = Phi(x) + x phi(x)
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    dx[i] = static_cast<T>(dy[i] * (normal_cdf(v) + v * normal_pdf(v)));
  }
}

template <typename T>
void gelu_backward_bias_grad_cpu(const T* dy, const T* x, T* dx, T* dbias, int64_t M, int64_t N) {
  // dx: (M, N); dbias: (N) = sum over the M rows of dx
  gelu_backward_cpu<T>(dy, x, dx, M * N);
  linear_bias_grad(dx, dbias, M, N);
}

#define DEIT_INSTANTIATE(T)                                            \
  template void gelu_forward_cpu<T>(const T*, T*, int64_t);            \
  template void gelu_backward_cpu<T>(const T*, const T*, T*, int64_t); \
  template void gelu_backward_bias_grad_cpu<T>(const T*, const T*, T*, T*, int64_t, int64_t);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
