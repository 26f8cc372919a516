#include "kernels/cast.h"

namespace deit::kernels {

// The rounding itself (nearest even, NaN kept NaN) lives in kernels/bf16.h, shared with host code.

void cast_f32_to_bf16_cpu(const float* x, bf16_bits* y, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = float_to_bf16(x[i]);
}

void cast_bf16_to_f32_cpu(const bf16_bits* x, float* y, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_float(x[i]);
}

}  // namespace deit::kernels
