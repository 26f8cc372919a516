// Whole samples picked by index (kernels/samples.h): the kept samples of a residual branch under
// drop-path, gathered before the branch runs and scattered back, with zeros for the dropped ones,
// after it. Copies only, so float and double give the same values bit for bit.
#include "kernels/samples.h"

#include <algorithm>

namespace deit::kernels {

template <typename T>
void gather_samples_cpu(const T* x, const int32_t* index, T* out, int64_t n, int64_t S) {
  // x: (B, S), index: (n) -> out: (n, S), out[j] = x[index[j]].
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    const T* src = x + static_cast<int64_t>(index[j]) * S;
    std::copy(src, src + S, out + j * S);
  }
}

template <typename T>
void scatter_samples_cpu(const T* y, const int32_t* slot, T* out, int64_t B, int64_t S) {
  // y: (n, S), slot: (B) -> out: (B, S), out[b] = y[slot[b]] where slot[b] >= 0, else zeros.
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    T* dst = out + b * S;
    if (slot[b] >= 0) {
      const T* src = y + static_cast<int64_t>(slot[b]) * S;
      std::copy(src, src + S, dst);
    } else {
      std::fill(dst, dst + S, T(0));
    }
  }
}

#define DEIT_INSTANTIATE(T)                                                            \
  template void gather_samples_cpu<T>(const T*, const int32_t*, T*, int64_t, int64_t); \
  template void scatter_samples_cpu<T>(const T*, const int32_t*, T*, int64_t, int64_t);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
