// The optimizer step's scalars as the engine computes them on the host, from the CPU twins: the
// reference of the [gpu] optimizer test (tests/test_optimizer_cuda.cpp) and of the emulated one
// (tests/emulated/optimizer_emulated.cpp). Written out rather than called from engine/, which the
// emulated test does not link.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/optimizer.h"

namespace deit::test {

struct HostNorm {
  double norm, scale;  // the global gradient norm, and the factor the gradients are scaled by
};

// engine/optimizer.cpp's global norm and clip_grad_coefficient (min(1, clip / (norm + 1e-6)),
// 1 without clipping), then engine/lamb.cpp's max_grad_norm on the clipped norm.
inline HostNorm host_grad_norm(const std::vector<std::vector<float>>& grads, double clip_grad,
                               double max_grad_norm) {
  double sum = 0;
  for (const auto& g : grads)
    sum += kernels::sum_squares_cpu<float>(g.data(), static_cast<int64_t>(g.size()));
  const double norm = std::sqrt(sum);
  double scale = clip_grad > 0 ? std::min(1.0, clip_grad / (norm + 1e-6)) : 1.0;
  if (max_grad_norm > 0 && norm * scale > max_grad_norm) scale /= norm * scale / max_grad_norm;
  return {norm, scale};
}

// Adam's bias corrections at step t (from 1), with the gradients scaled by grad_scale.
inline kernels::AdamStep adam_step(int t, double grad_scale) {
  kernels::AdamStep s;
  s.bias_correction1 = 1 - std::pow(s.beta1, t);
  s.bias_correction2 = 1 - std::pow(s.beta2, t);
  s.grad_scale = grad_scale;
  return s;
}

}  // namespace deit::test
