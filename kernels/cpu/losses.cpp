#include "kernels/losses.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/reduce.h"

namespace deit::kernels {
namespace {

// 1 / (1 + exp(-z)), through exp(-|z|) so that no exp overflows for large |z|.
double sigmoid(double z) {
  const double e = std::exp(-std::abs(z));
  return z >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

}  // namespace

template <typename T>
void bce_with_logits_cpu(const T* logits, const T* targets, T* loss, T* dlogits, int64_t B,
                         int64_t K) {
  // logits, targets, dlogits: (B, K). Every (b, k) is its own binary problem.
  const double count = static_cast<double>(B * K);
  if (count == 0) {  // an empty mean: 0, as the CUDA twin writes (not 0 / 0 = NaN)
    *loss = T(0);
    return;
  }
  const double total = ordered_sum(B, [=](int64_t b) {
    double row = 0;
    for (int64_t k = b * K; k < (b + 1) * K; ++k) {
      const double z = logits[k], t = targets[k];
      // With s the sigmoid, -t log s(z) - (1 - t) log(1 - s(z)) = log(1 + e^z) - t z, written as
      // max(z, 0) + log(1 + e^-|z|) - t z so that neither log(0) nor an overflowing exp occurs.
      row += std::max(z, 0.0) - z * t + std::log1p(std::exp(-std::abs(z)));
      // d/dz [log(1 + e^z) - t z] = s(z) - t, divided by the count the loss is a mean over.
      if (dlogits) dlogits[k] = static_cast<T>((sigmoid(z) - t) / count);
    }
    return row;
  });
  *loss = static_cast<T>(total / count);
}

template <typename T>
void softmax_cross_entropy_cpu(const T* logits, const T* targets, T* loss, T* dlogits, int64_t B,
                               int64_t K) {
  // logits, targets, dlogits: (B, K). -log softmax(z)_k = lse(z) - z_k.
  if (B == 0) {  // an empty mean: 0, as the CUDA twin writes (not 0 / 0 = NaN)
    *loss = T(0);
    return;
  }
  // K == 0 needs no case of its own: each row's sum is empty, so the loss is 0 / B = 0.
  const double total = ordered_sum(B, [=](int64_t b) {
    const T* z = logits + b * K;
    const T* t = targets + b * K;
    const double lse = logsumexp(z, K);
    double row = 0, t_sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      row += t[k] * (lse - z[k]);
      t_sum += t[k];
    }
    // d/dz_k sum_j t_j (lse - z_j) = softmax(z)_k sum_j t_j - t_k: exact even for targets that
    // do not sum to 1.
    if (dlogits)
      for (int64_t k = 0; k < K; ++k)
        dlogits[b * K + k] = static_cast<T>((std::exp(z[k] - lse) * t_sum - t[k]) / B);
    return row;
  });
  *loss = static_cast<T>(total / B);
}

#define DEIT_INSTANTIATE(T)                                                           \
  template void bce_with_logits_cpu<T>(const T*, const T*, T*, T*, int64_t, int64_t); \
  template void softmax_cross_entropy_cpu<T>(const T*, const T*, T*, T*, int64_t, int64_t);
DEIT_INSTANTIATE(float)
DEIT_INSTANTIATE(double)
#undef DEIT_INSTANTIATE

}  // namespace deit::kernels
