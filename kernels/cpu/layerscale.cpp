#include "kernels/layerscale.h"

#include "kernels/cpu/reduce.h"

namespace deit::kernels {

template <typename T>
void layerscale_residual_forward_cpu(const T* x, const T* branch, const T* gamma,
                                     const T* keep_scale, T* out, int64_t B, int64_t Tn,
                                     int64_t C) {
  // x, branch, out: (B, T, C) seen as (B*T, C) rows; row r belongs to sample r / T.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B * Tn; ++r) {
    const T keep = keep_scale[r / Tn];
    for (int64_t c = 0; c < C; ++c)
      out[r * C + c] = x[r * C + c] + keep * gamma[c] * branch[r * C + c];
  }
}

template <typename T>
void layerscale_residual_backward_cpu(const T* dout, const T* branch, const T* gamma,
                                      const T* keep_scale, T* dbranch, T* dgamma, int64_t B,
                                      int64_t Tn, int64_t C) {
  // dbranch: (B, T, C) = dout * keep_scale[b] * gamma[c]; zero for a dropped sample.
  if (dbranch) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < B * Tn; ++r) {
      const T keep = keep_scale[r / Tn];
      for (int64_t c = 0; c < C; ++c) dbranch[r * C + c] = dout[r * C + c] * keep * gamma[c];
    }
  }
  // dgamma: (C) = sum over every (b, t) of dout * keep_scale[b] * branch.
  if (dgamma)
    column_sums(B * Tn, C, dgamma, [=](int64_t r, int64_t c) {
      return static_cast<double>(dout[r * C + c]) * keep_scale[r / Tn] * branch[r * C + c];
    });
}

#define DEIT_INSTANTIATE(T)                                                                     \
  template void layerscale_residual_forward_cpu<T>(const T*, const T*, const T*, const T*, T*,  \
                                                   int64_t, int64_t, int64_t);                  \
  template void layerscale_residual_backward_cpu<T>(const T*, const T*, const T*, const T*, T*, \
                                                    T*, int64_t, int64_t, int64_t);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
