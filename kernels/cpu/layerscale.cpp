#include "kernels/layerscale.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/reduce.h"
#include "kernels/layernorm.h"
#include "kernels/samples.h"

namespace deit::kernels {

namespace {

// A selection's (n, S) rows in the whole batch's (B, S) order, zeros for the samples it leaves out.
template <typename T>
std::vector<T> whole_batch(const T* rows, const int32_t* slot, int64_t B, int64_t S) {
  std::vector<T> whole(static_cast<size_t>(B * S));
  scatter_samples_cpu(rows, slot, whole.data(), B, S);
  return whole;
}

// The rows of the whole batch's (B, S) that a selection holds, into its (n, S).
template <typename T>
void store_selected(const T* whole, const int32_t* slot, T* rows, int64_t B, int64_t S) {
  for (int64_t b = 0; b < B; ++b)
    if (slot[b] >= 0) std::copy(whole + b * S, whole + (b + 1) * S, rows + slot[b] * S);
}

}  // namespace

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

template <typename T>
void layerscale_residual_layernorm_forward_cpu(const T* x, const T* branch, const T* gamma,
                                               const T* keep_scale, const T* ln_weight,
                                               const T* ln_bias, T* out, T* y, T* mean, T* rstd,
                                               int64_t B, int64_t Tn, int64_t C, double eps,
                                               const SampleSlots& slots) {
  // What the CUDA twin fuses, one op after the other: the residual update, then the LayerNorm of
  // its result. out, y: (B*T, C) rows. A selection's rows are the whole batch's as a scatter before
  // (zeros for a sample without branch rows) and a gather after would give them.
  const int64_t S = Tn * C;
  std::vector<T> whole_branch, whole_y;
  if (slots.branch) whole_branch = whole_batch(branch, slots.branch, B, S);
  if (slots.normed) whole_y.resize(static_cast<size_t>(B * S));
  layerscale_residual_forward_cpu(x, slots.branch ? whole_branch.data() : branch, gamma, keep_scale,
                                  out, B, Tn, C);
  layernorm_forward_cpu(out, ln_weight, ln_bias, slots.normed ? whole_y.data() : y, mean, rstd,
                        B * Tn, C, eps);
  if (slots.normed) store_selected(whole_y.data(), slots.normed, y, B, S);
}

template <typename T>
void layerscale_residual_layernorm_backward_cpu(
    const T* dout, const T* dy, const T* out, const T* branch, const T* gamma, const T* keep_scale,
    const T* ln_weight, const T* mean, const T* rstd, T* dx, T* dbranch, T* dgamma, T* dln_weight,
    T* dln_bias, T* dbias, int64_t B, int64_t Tn, int64_t C, const SampleSlots& slots) {
  // Selections' rows in the whole batch's order, as in forward: dy and branch scattered (zeros for
  // a sample without rows), dbranch gathered at the end.
  const int64_t rows = B * Tn, S = Tn * C;
  std::vector<T> whole_dy, whole_branch, whole_dbranch;
  if (slots.normed) {
    whole_dy = whole_batch(dy, slots.normed, B, S);
    dy = whole_dy.data();
  }
  T* selected_dbranch = dbranch;
  if (slots.branch) {
    whole_branch = whole_batch(branch, slots.branch, B, S);
    branch = whole_branch.data();
    if (dbranch) {
      whole_dbranch.resize(static_cast<size_t>(B * S));
      dbranch = whole_dbranch.data();
    }
  }
  // `out` feeds two consumers, the LayerNorm and the rest of the residual stream, so its gradient
  // dx: (B*T, C) is the sum of theirs; x = out - (the branch term) gets the same gradient.
  layernorm_backward_cpu(dy, out, ln_weight, mean, rstd, dx, dln_weight, dln_bias, rows, C);
  if (dout) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows * C; ++i) dx[i] = dout[i] + dx[i];
  }
  // Then LayerScale and drop-path see dx as the gradient of their output.
  layerscale_residual_backward_cpu(dx, branch, gamma, keep_scale, dbranch, dgamma, B, Tn, C);
  // The branch's linear layer's bias gradient, as linear_backward_cpu takes it from its dy (the
  // rows of samples without branch rows are zeros: they add nothing).
  if (dbias) column_sums(rows, C, dbias, [=](int64_t r, int64_t c) { return dbranch[r * C + c]; });
  if (slots.branch && dbranch) store_selected(dbranch, slots.branch, selected_dbranch, B, S);
}

#define DEIT_INSTANTIATE(T)                                                                     \
  template void layerscale_residual_forward_cpu<T>(const T*, const T*, const T*, const T*, T*,  \
                                                   int64_t, int64_t, int64_t);                  \
  template void layerscale_residual_backward_cpu<T>(const T*, const T*, const T*, const T*, T*, \
                                                    T*, int64_t, int64_t, int64_t);             \
  template void layerscale_residual_layernorm_forward_cpu<T>(                                   \
      const T*, const T*, const T*, const T*, const T*, const T*, T*, T*, T*, T*, int64_t,      \
      int64_t, int64_t, double, const SampleSlots&);                                            \
  template void layerscale_residual_layernorm_backward_cpu<T>(                                  \
      const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*, const T*, \
      T*, T*, T*, T*, T*, T*, int64_t, int64_t, int64_t, const SampleSlots&);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
