#include "kernels/layernorm.h"

#include <cmath>

#include <vector>

#include "kernels/cpu/reduce.h"
#include "kernels/cpu/selected_rows.h"

namespace deit::kernels {

template <typename T>
void layernorm_forward_cpu(const T* x, const T* weight, const T* bias, T* y, T* mean, T* rstd,
                           int64_t rows, int64_t C, double eps, const int32_t* y_slot, int64_t Tn) {
  // x, y: (rows, C); each row is normalised on its own.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * C;
    const int64_t y_row = selected_row(y_slot, r, Tn);
    // Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which cancels
    // catastrophically when |mean| is large against the spread: residual streams drift like that.
    double mu = 0;
    for (int64_t c = 0; c < C; ++c) mu += xr[c];
    mu /= C;
    double var = 0;
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mu) * (xr[c] - mu);
    var /= C;  // biased, as torch.nn.LayerNorm
    const double rs = 1.0 / std::sqrt(var + eps);
    if (y_row >= 0)
      for (int64_t c = 0; c < C; ++c)
        y[y_row * C + c] = static_cast<T>((xr[c] - mu) * rs * weight[c] + bias[c]);
    mean[r] = static_cast<T>(mu);
    rstd[r] = static_cast<T>(rs);
  }
}

template <typename T>
void layernorm_backward_cpu(const T* dy, const T* x, const T* weight, const T* mean, const T* rstd,
                            T* dx, T* dweight, T* dbias, int64_t rows, int64_t C,
                            const int32_t* dy_slot, int64_t Tn) {
  // xhat = (x - mean) * rstd is rebuilt from the saved statistics rather than stored.
  const auto xhat = [=](int64_t r, int64_t c) {
    return (static_cast<double>(x[r * C + c]) - mean[r]) * rstd[r];
  };
  // dy of row r, column c: 0 in a row dy does not hold.
  const std::vector<const T*> dy_rows = selected_rows(dy, dy_slot, rows, Tn, C);
  const T* const* dy_row = dy_rows.data();
  const auto dy_at = [=](int64_t r, int64_t c) { return dy_row[r] ? dy_row[r][c] : T(0); };
  // y = xhat * weight + bias, so g = dy * weight is the gradient of xhat. Each x[c] moves xhat
  // directly (rstd * g) and through the row's mean (the - mean_c(g) term) and variance (the
  // - xhat * mean_c(g * xhat) term):  dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)).
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    double g_mean = 0, gx_mean = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double g = static_cast<double>(dy_at(r, c)) * weight[c];
      g_mean += g;
      gx_mean += g * xhat(r, c);
    }
    g_mean /= C;
    gx_mean /= C;
    for (int64_t c = 0; c < C; ++c) {
      const double g = static_cast<double>(dy_at(r, c)) * weight[c];
      dx[r * C + c] = static_cast<T>(rstd[r] * (g - g_mean - xhat(r, c) * gx_mean));
    }
  }
  // dweight, dbias: (C), summed over all rows.
  if (dweight)
    column_sums(rows, C, dweight, [=](int64_t r, int64_t c) { return dy_at(r, c) * xhat(r, c); });
  if (dbias) column_sums(rows, C, dbias, [=](int64_t r, int64_t c) { return dy_at(r, c); });
}

#define DEIT_INSTANTIATE(T)                                                                     \
  template void layernorm_forward_cpu<T>(const T*, const T*, const T*, T*, T*, T*, int64_t,     \
                                         int64_t, double, const int32_t*, int64_t);             \
  template void layernorm_backward_cpu<T>(const T*, const T*, const T*, const T*, const T*, T*, \
                                          T*, T*, int64_t, int64_t, const int32_t*, int64_t);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
