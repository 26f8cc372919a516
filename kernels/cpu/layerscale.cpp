#include "kernels/layerscale.h"

#include <stdexcept>
#include <vector>

#include "kernels/cpu/reduce.h"
#include "kernels/cpu/selected_rows.h"
#include "kernels/layernorm.h"

namespace deit::kernels {

template <typename T>
void layerscale_residual_forward_cpu(const T* x, const T* branch, const T* gamma,
                                     const T* keep_scale, T* out, int64_t B, int64_t Tn, int64_t C,
                                     const int32_t* branch_slot) {
  // x, out: (B, T, C) seen as (B*T, C) rows; row r belongs to sample r / T. A row without branch
  // rows (a sample the branch was not computed for: dropped) adds 0.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < B * Tn; ++r) {
    const T keep = keep_scale[r / Tn];
    const int64_t branch_row = selected_row(branch_slot, r, Tn);
    for (int64_t c = 0; c < C; ++c)
      out[r * C + c] =
          x[r * C + c] + (branch_row < 0 ? T(0) : keep * gamma[c] * branch[branch_row * C + c]);
  }
}

template <typename T>
void layerscale_residual_backward_cpu(const T* dout, const T* branch, const T* gamma,
                                      const T* keep_scale, T* dbranch, T* dgamma, int64_t B,
                                      int64_t Tn, int64_t C, const int32_t* branch_slot) {
  const int64_t rows = B * Tn;
  // dbranch: branch's rows, dout * keep_scale[b] * gamma[c]; zero for a dropped sample.
  if (dbranch) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T keep = keep_scale[r / Tn];
      const int64_t branch_row = selected_row(branch_slot, r, Tn);
      if (branch_row < 0) continue;
      for (int64_t c = 0; c < C; ++c)
        dbranch[branch_row * C + c] = dout[r * C + c] * keep * gamma[c];
    }
  }
  // dgamma: (C) = sum over every (b, t) of dout * keep_scale[b] * branch.
  if (dgamma) {
    const std::vector<const T*> branch_rows = selected_rows(branch, branch_slot, rows, Tn, C);
    const T* const* branch_row = branch_rows.data();
    column_sums(rows, C, dgamma, [=](int64_t r, int64_t c) {
      return branch_row[r]
                 ? static_cast<double>(dout[r * C + c]) * keep_scale[r / Tn] * branch_row[r][c]
                 : 0.0;
    });
  }
}

template <typename T>
void layerscale_residual_layernorm_forward_cpu(const T* x, const T* branch, const T* gamma,
                                               const T* keep_scale, const T* ln_weight,
                                               const T* ln_bias, T* out, T* y, T* mean, T* rstd,
                                               int64_t B, int64_t Tn, int64_t C, double eps,
                                               const SampleSlots& slots) {
  // What the CUDA twin fuses, one op after the other: the residual update, then the LayerNorm of
  // its result. out: (B*T, C) rows; branch and y: the rows of the samples slots selects.
  layerscale_residual_forward_cpu(x, branch, gamma, keep_scale, out, B, Tn, C, slots.branch);
  layernorm_forward_cpu(out, ln_weight, ln_bias, y, mean, rstd, B * Tn, C, eps, slots.normed, Tn);
}

template <typename T>
void layerscale_residual_layernorm_backward_cpu(
    const T* dout, const T* dy, const T* out, const T* branch, const T* gamma, const T* keep_scale,
    const T* ln_weight, const T* mean, const T* rstd, T* dx, T* dbranch, T* dgamma, T* dln_weight,
    T* dln_bias, T* dbias, int64_t B, int64_t Tn, int64_t C, const SampleSlots& slots) {
  // dbias is summed from dbranch: refused up front, as the CUDA twin refuses it, rather than read
  // through a null pointer after the LayerNorm's half has run.
  const int64_t branch_rows = (slots.branch ? slots.branch_samples : B) * Tn;
  if (dbias && !dbranch && branch_rows > 0)
    throw std::invalid_argument(
        "layerscale_residual_layernorm_backward_cpu: dbias is summed from dbranch, which is null");
  // `out` feeds two consumers, the LayerNorm and the rest of the residual stream, so its gradient
  // dx: (B*T, C) is the sum of theirs; x = out - (the branch term) gets the same gradient.
  const int64_t rows = B * Tn;
  layernorm_backward_cpu(dy, out, ln_weight, mean, rstd, dx, dln_weight, dln_bias, rows, C,
                         slots.normed, Tn);
  if (dout) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows * C; ++i) dx[i] = dout[i] + dx[i];
  }
  // Then LayerScale and drop-path see dx as the gradient of their output.
  layerscale_residual_backward_cpu(dx, branch, gamma, keep_scale, dbranch, dgamma, B, Tn, C,
                                   slots.branch);
  // The branch's linear layer's bias gradient, as linear_backward_cpu takes it from its dy.
  if (dbias) linear_bias_grad(dbranch, dbias, branch_rows, C);
}

#define DEIT_INSTANTIATE(T)                                                                       \
  template void layerscale_residual_forward_cpu<T>(const T*, const T*, const T*, const T*, T*,    \
                                                   int64_t, int64_t, int64_t, const int32_t*);    \
  template void layerscale_residual_backward_cpu<T>(                                              \
      const T*, const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t, const int32_t*); \
  template void layerscale_residual_layernorm_forward_cpu<T>(                                     \
      const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*, int64_t,        \
      int64_t, int64_t, double, const SampleSlots&);                                              \
  template void layerscale_residual_layernorm_backward_cpu<T>(                                    \
      const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*,   \
      T*, T*, T*, T*, T*, T*, int64_t, int64_t, int64_t, const SampleSlots&);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
