#include "data/mixup.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace deit::data {
namespace {

// A Gamma(shape, 1) draw, kept as base * u^(1 / shape): for shape < 1, Gamma(shape) is
// Gamma(shape + 1) * U^(1 / shape). For a tiny shape that power underflows to 0, so the parts are
// kept for sample_beta to take the ratio of two such draws through their logarithms.
struct GammaDraw {
  double base;  // a Gamma(shape + 1) draw when shape < 1, else the Gamma(shape) draw itself
  double u;     // the uniform in (0, 1] of the power; 1 when shape >= 1
  double shape;

  double value() const { return base * std::pow(u, 1.0 / shape); }
  // log(value()) * shape, finite even where value() underflows.
  double log_value_times_shape() const { return shape * std::log(base) + std::log(u); }
};

// Marsaglia and Tsang (2000), for shape >= 1.
double sample_gamma_at_least_one(double shape, Rng& rng) {
  const double d = shape - 1.0 / 3.0;
  const double c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    const double x = rng.normal();
    const double t = 1.0 + c * x;
    if (t <= 0.0) continue;
    const double v = t * t * t;
    const double u = rng.uniform();
    if (std::log(u) < 0.5 * x * x + d - d * v + d * std::log(v)) return d * v;
  }
}

GammaDraw sample_gamma(double shape, Rng& rng) {
  if (shape >= 1.0) return {sample_gamma_at_least_one(shape, rng), 1.0, shape};
  const double u = 1.0 - rng.uniform();  // (0, 1]
  return {sample_gamma_at_least_one(shape + 1.0, rng), u, shape};
}

// x / (x + y) from logarithms, for draws too small to add: log(y / x), scaled by the smaller
// shape so that no step overflows, is finite or infinite but never NaN. As the shapes go to 0,
// this tends to a fair coin between 0 and 1, as Beta(a, a) does.
double beta_from_logs(const GammaDraw& x, const GammaDraw& y) {
  const double scale = std::min(x.shape, y.shape);
  const double log_ratio_times_scale =
      y.log_value_times_shape() * (scale / y.shape) - x.log_value_times_shape() * (scale / x.shape);
  return 1.0 / (1.0 + std::exp(log_ratio_times_scale / scale));
}

}  // namespace

double sample_beta(double a, double b, Rng& rng) {
  if (!(a > 0.0 && b > 0.0))
    throw std::invalid_argument("Beta parameters must be positive, got " + std::to_string(a) +
                                ", " + std::to_string(b));
  const GammaDraw x = sample_gamma(a, rng);
  const GammaDraw y = sample_gamma(b, rng);
  const double sum = x.value() + y.value();
  // Below the smallest normal double, x and y have lost their precision (or are both 0, for
  // a tiny alpha such as --mixup 1e-3, and x / sum would be NaN).
  if (sum >= std::numeric_limits<double>::min()) return x.value() / sum;
  return beta_from_logs(x, y);
}

MixParams sample_mix_params(const MixupConfig& config, int height, int width, Rng& rng) {
  MixParams p;
  const bool mixup = config.mixup_alpha > 0.0;
  const bool cutmix = config.cutmix_alpha > 0.0;
  if (!(mixup || cutmix) || !rng.bernoulli(config.prob)) return p;

  p.cutmix = mixup && cutmix ? rng.bernoulli(config.switch_prob) : cutmix;
  const double alpha = p.cutmix ? config.cutmix_alpha : config.mixup_alpha;
  p.lambda = sample_beta(alpha, alpha, rng);
  if (!p.cutmix) return p;

  // rand_bbox: a box of sides int(side * sqrt(1 - lambda)) centred on a uniform pixel, clipped
  // to the image; then lambda is corrected to the area actually pasted.
  const double ratio = std::sqrt(1.0 - p.lambda);
  const int cut_h = static_cast<int>(height * ratio);
  const int cut_w = static_cast<int>(width * ratio);
  const int cy = static_cast<int>(rng.below(height));
  const int cx = static_cast<int>(rng.below(width));
  p.y0 = std::clamp(cy - cut_h / 2, 0, height);
  p.y1 = std::clamp(cy + cut_h / 2, 0, height);
  p.x0 = std::clamp(cx - cut_w / 2, 0, width);
  p.x1 = std::clamp(cx + cut_w / 2, 0, width);
  const double box_area = static_cast<double>(p.y1 - p.y0) * (p.x1 - p.x0);
  p.lambda = 1.0 - box_area / (static_cast<double>(height) * width);
  return p;
}

void apply_mix(const MixParams& params, float* images, int batch, int channels, int height,
               int width) {
  kernels::mix_images_cpu(params, images, batch, channels, height, width);
}

void mix_targets(const MixParams& params, const int32_t* labels, int batch, int num_classes,
                 double label_smoothing, float* targets, bool binarize) {
  kernels::mix_targets_cpu(params, labels, batch, num_classes, label_smoothing, binarize, targets);
}

}  // namespace deit::data
