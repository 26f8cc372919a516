#include "kernels/elementwise.h"

namespace deit::kernels {

// Most calls are small (a bias's or a LayerNorm's gradient, accumulated): below 2^16 elements the
// loop stays on the calling thread, where waking the OpenMP team would cost more than the loop.
// Elementwise either way, so the result is the same bits.

template <typename T>
void add_cpu(const T* a, const T* b, T* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void scale_cpu(const T* x, T s, T* out, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * s;
}

template void add_cpu(const float*, const float*, float*, int64_t);
template void add_cpu(const double*, const double*, double*, int64_t);
template void scale_cpu(const float*, float, float*, int64_t);
template void scale_cpu(const double*, double, double*, int64_t);

}  // namespace deit::kernels
