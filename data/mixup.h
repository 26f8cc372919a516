// Mixup and CutMix per batch, as timm's Mixup(mode='batch') does in the reference code: one
// lambda for the whole batch, mixup or cutmix chosen with the switch probability, every sample i
// mixed with sample B-1-i (the batch flipped), and the one-hot targets mixed with the same
// lambda. For CutMix the lambda is corrected to the pasted box's actual area.
//
// The parameters are drawn on the host (sample_mix_params) and applied by the CPU reference here
// or by the GPU stage, like the per-sample AugmentParams.
#pragma once
#include <cstdint>

#include "engine/rng.h"
#include "kernels/augment.h"

namespace deit::data {

// The recipe's values are the defaults (RECIPE.md section 2).
struct MixupConfig {
  double mixup_alpha = 0.8;   // Beta(alpha, alpha) for mixup's lambda; 0 disables mixup
  double cutmix_alpha = 1.0;  // Beta(alpha, alpha) for cutmix's lambda; 0 disables cutmix
  double prob = 1.0;          // probability that a batch is mixed at all
  double switch_prob = 0.5;   // probability of cutmix when both are enabled
};

// One batch's mixing: the augment kernels' own struct (kernels/augment.h), which the CPU reference
// and the GPU stage both apply.
using kernels::MixParams;

// One batch's parameters for images of height x width (timm's _params_per_batch, rand_bbox and
// cutmix_bbox_and_lam with correct_lam=True).
MixParams sample_mix_params(const MixupConfig& config, int height, int width, Rng& rng);

// Mixes a batch in place. images: (batch, channels, height, width) float, NCHW. Sample i takes
// from sample batch-1-i, as timm's x.flip(0). batch must be even (timm asserts it too).
void apply_mix(const MixParams& params, float* images, int batch, int channels, int height,
               int width);

// timm's mixup_target: one-hot targets with label smoothing (off = smoothing / classes,
// on = 1 - smoothing + off), mixed as lambda * y[i] + (1 - lambda) * y[batch-1-i].
// labels: (batch) -> targets: (batch, num_classes). Each row sums to 1; with `binarize`, each
// target then becomes 1 where it is > 0 and 0 elsewhere (the reference's BCE targets).
// Throws std::invalid_argument for a label outside [0, num_classes).
void mix_targets(const MixParams& params, const int32_t* labels, int batch, int num_classes,
                 double label_smoothing, float* targets, bool binarize = false);

// A Beta(a, b) draw (two Gamma draws, Marsaglia-Tsang), exposed for its tests. In [0, 1] for any
// positive a and b, however small (both draws underflowing is handled through their logarithms).
double sample_beta(double a, double b, Rng& rng);

}  // namespace deit::data
