#include "kernels/linear.h"

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/reduce.h"

namespace deit::kernels {

template <typename T>
void linear_forward_cpu(const T* x, const T* weight, const T* bias, T* y, int64_t M, int64_t K,
                        int64_t N) {
  // y: (M, N) starts as the bias broadcast over rows, so the GEMM can add x W^T onto it (beta 1).
  if (bias) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] = bias[n];
  }
  // x: (M, K), weight: (N, K) read transposed as (K, N).
  gemm_cpu<T>(false, true, M, N, K, T(1), x, K, weight, K, bias ? T(1) : T(0), y, N);
}

template <typename T>
void linear_backward_cpu(const T* dy, const T* x, const T* weight, T* dx, T* dweight, T* dbias,
                         int64_t M, int64_t K, int64_t N) {
  // dx: (M, K) = dy (M, N) . weight (N, K)
  if (dx) gemm_cpu<T>(false, false, M, K, N, T(1), dy, N, weight, K, T(0), dx, K);
  // dweight: (N, K) = dy^T (N, M) . x (M, K)
  if (dweight) gemm_cpu<T>(true, false, N, K, M, T(1), dy, N, x, K, T(0), dweight, K);
  // dbias: (N) = sum over the M rows of dy
  if (dbias) linear_bias_grad(dy, dbias, M, N);
}

#define DEIT_INSTANTIATE(T)                                                                        \
  template void linear_forward_cpu<T>(const T*, const T*, const T*, T*, int64_t, int64_t,          \
                                      int64_t);                                                    \
  template void linear_backward_cpu<T>(const T*, const T*, const T*, T*, T*, T*, int64_t, int64_t, \
                                       int64_t);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
