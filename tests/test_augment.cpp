// Augmentation parameters, mixup / cutmix, normalisation and the named ops: the parts of the
// data augmentation that are random or have no Pillow counterpart to compare with
// (test_augment_reference.cpp does the pixel comparison with Pillow).
//
// Statistical checks use N = 20000 draws from a fixed seed; the bounds are at least 5 standard
// deviations wide, so they fail only when a distribution is wrong (e.g. a rate of 0.5 has a
// standard deviation of 0.0035 at this N, and the bound is 0.02).
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/augment_params.h"
#include "data/mixup.h"
#include "data/transforms.h"
#include "engine/rng.h"
#include "kernels/augment.h"
#include "tests/test_data_helpers.h"

namespace {

using namespace deit::data;

constexpr int kDraws = 20000;

ImageU8 random_image(int height, int width, uint64_t seed) {
  deit::Rng rng(seed);
  ImageU8 image{height, width, std::vector<uint8_t>(static_cast<size_t>(height) * width * 3)};
  for (uint8_t& v : image.pixels) v = static_cast<uint8_t>(rng.below(256));
  return image;
}

bool same(const AugmentParams& a, const AugmentParams& b) {
  return a.crop.x == b.crop.x && a.crop.y == b.crop.y && a.crop.w == b.crop.w &&
         a.crop.h == b.crop.h && a.flip == b.flip && a.three_augment == b.three_augment &&
         a.blur_sigma == b.blur_sigma && a.brightness == b.brightness && a.contrast == b.contrast &&
         a.saturation == b.saturation && a.jitter_order == b.jitter_order;
}

}  // namespace

TEST_CASE("augmentation parameters follow the recipe's distributions", "[augment]") {
  const AugmentConfig config;  // the recipe: RRC 224, flip, 3-Augment, jitter 0.3
  deit::Rng rng(7);
  int flips = 0;
  std::map<ThreeAugmentOp, int> three;
  std::map<std::array<JitterOp, 3>, int> orders;
  double sigma_sum = 0.0, brightness_sum = 0.0;
  const int height = 375, width = 500;
  for (int i = 0; i < kDraws; ++i) {
    const AugmentParams p = sample_augment_params(config, height, width, rng);
    flips += p.flip;
    three[p.three_augment]++;
    orders[p.jitter_order]++;
    if (p.three_augment == ThreeAugmentOp::kBlur) {
      REQUIRE(p.blur_sigma >= 0.1f);
      REQUIRE(p.blur_sigma <= 2.0f);
      sigma_sum += p.blur_sigma;
    }
    for (float f : {p.brightness, p.contrast, p.saturation}) {
      REQUIRE(f >= 0.7f);
      REQUIRE(f <= 1.3f);
    }
    brightness_sum += p.brightness;
  }
  CHECK(std::abs(flips / double(kDraws) - 0.5) < 0.02);
  CHECK(three.count(ThreeAugmentOp::kNone) == 0);
  for (ThreeAugmentOp op :
       {ThreeAugmentOp::kGrayscale, ThreeAugmentOp::kSolarize, ThreeAugmentOp::kBlur})
    CHECK(std::abs(three[op] / double(kDraws) - 1.0 / 3.0) < 0.02);
  CHECK(std::abs(sigma_sum / three[ThreeAugmentOp::kBlur] - 1.05) <
        0.03);                                            // U(0.1, 2): sd 0.55/sqrt(6700)
  CHECK(std::abs(brightness_sum / kDraws - 1.0) < 0.01);  // U(0.7, 1.3): sd 0.17/sqrt(N)
  REQUIRE(orders.size() == 6);  // every permutation of the three jitter ops occurs
  for (const auto& [order, count] : orders)
    CHECK(std::abs(count / double(kDraws) - 1.0 / 6.0) < 0.015);
}

TEST_CASE("RandomResizedCrop boxes lie inside the image with area and ratio in range",
          "[augment]") {
  AugmentConfig config;
  config.input_size = 32;
  deit::Rng rng(11);
  const int height = 120, width = 160;
  double area_sum = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const CropParams c = sample_crop_params(config, height, width, rng);
    REQUIRE(c.mode == CropMode::kRandomResized);
    REQUIRE(c.size == 32);
    REQUIRE(c.x >= 0);
    REQUIRE(c.y >= 0);
    REQUIRE(c.w >= 1);
    REQUIRE(c.h >= 1);
    REQUIRE(c.x + c.w <= width);
    REQUIRE(c.y + c.h <= height);
    // w and h are rounded to whole pixels, so area and ratio hold up to half a pixel per side.
    const double area = double(c.w) * c.h / (double(height) * width);
    const double slack = 0.5 * (c.w + c.h + 0.5) / (double(height) * width);
    REQUIRE(area >= 0.08 - slack);
    REQUIRE(area <= 1.0 + slack);
    REQUIRE((c.w + 0.5) / (c.h - 0.5) >= 0.75);
    REQUIRE((c.w - 0.5) / (c.h + 0.5) <= 4.0 / 3.0);
    area_sum += area;
  }
  // Large boxes that do not fit are redrawn, so the mean area is below U(0.08, 1)'s 0.54:
  // torchvision 0.14's RandomResizedCrop.get_params gives 0.4365 on a 120 x 160 image (40000
  // draws); the area's sd is about 0.25, so the bound is 5 standard errors at N = 20000.
  CHECK(std::abs(area_sum / kDraws - 0.4365) < 0.01);
}

TEST_CASE("RandomResizedCrop falls back to the centred crop as torchvision does", "[augment]") {
  AugmentConfig config;
  config.input_size = 8;
  deit::Rng rng(3);
  // 10 x 1000: no box with area >= 8% and ratio <= 4/3 fits 10 rows, so all 10 tries fail and
  // the fallback takes the full height and w = round(10 * 4/3) = 13, centred.
  CropParams c = sample_crop_params(config, 10, 1000, rng);
  CHECK(c.h == 10);
  CHECK(c.w == 13);
  CHECK(c.y == 0);
  CHECK(c.x == (1000 - 13) / 2);
  // 1000 x 10 (tall): full width, h = round(10 / (3/4)) = 13.
  c = sample_crop_params(config, 1000, 10, rng);
  CHECK(c.w == 10);
  CHECK(c.h == 13);
  CHECK(c.x == 0);
  CHECK(c.y == (1000 - 13) / 2);
  // An empty image's size as deit prints every image's: width x height.
  CHECK_THROWS_WITH(sample_crop_params(config, 0, 7, rng), Catch::Contains("(7x0)"));
  CHECK_THROWS_WITH(eval_augment_params(7, 0, 8, 0.875), Catch::Contains("(0x7)"));
}

TEST_CASE("Simple Random Crop resizes the shorter side and crops inside the padded image",
          "[augment]") {
  AugmentConfig config;
  config.crop = CropMode::kSimpleRandom;
  config.input_size = 24;
  deit::Rng rng(5);
  std::vector<int> x_seen(100, 0), y_seen(100, 0);
  for (int i = 0; i < kDraws; ++i) {
    const CropParams c = sample_crop_params(config, 60, 90, rng);
    REQUIRE(c.resized_height == 24);
    REQUIRE(c.resized_width == 36);  // int(24 * 90 / 60)
    REQUIRE(c.padding == 4);
    REQUIRE(c.w == 24);
    REQUIRE(c.h == 24);
    REQUIRE(c.y >= 0);
    REQUIRE(c.y <= 8);  // 24 + 2 * 4 - 24
    REQUIRE(c.x >= 0);
    REQUIRE(c.x <= 20);  // 36 + 2 * 4 - 24
    x_seen[c.x]++;
    y_seen[c.y]++;
  }
  CHECK(std::count_if(y_seen.begin(), y_seen.begin() + 9, [](int n) { return n > 0; }) == 9);
  CHECK(std::count_if(x_seen.begin(), x_seen.begin() + 21, [](int n) { return n > 0; }) == 21);

  const ImageU8 view =
      augment_train(random_image(60, 90, 1), sample_augment_params(config, 60, 90, rng));
  CHECK(view.height == 24);
  CHECK(view.width == 24);
}

TEST_CASE("RandomResizedCrop places its box uniformly over the room the image leaves",
          "[augment]") {
  // torchvision draws the offset uniformly in [0, side - box]: its mean is half that room, and
  // both ends occur. A box kept to one half of the image would still lie inside it.
  AugmentConfig config;
  config.input_size = 32;
  deit::Rng rng(41);
  double x_sum = 0.0, y_sum = 0.0;
  int x_count = 0, y_count = 0;
  bool x_at_end = false, y_at_end = false;
  for (int i = 0; i < kDraws; ++i) {
    const CropParams c = sample_crop_params(config, 120, 160, rng);
    if (c.w < 160) {
      x_sum += double(c.x) / (160 - c.w);
      ++x_count;
      x_at_end |= c.x == 160 - c.w;
    }
    if (c.h < 120) {
      y_sum += double(c.y) / (120 - c.h);
      ++y_count;
      y_at_end |= c.y == 120 - c.h;
    }
  }
  CHECK(x_sum / x_count == Approx(0.5).margin(0.015));  // sd about 0.29 / sqrt(N)
  CHECK(y_sum / y_count == Approx(0.5).margin(0.015));
  CHECK(x_at_end);
  CHECK(y_at_end);
}

TEST_CASE("RandomResizedCrop keeps a box as wide as the image, at a random height", "[augment]") {
  // torchvision accepts w <= width: on a 100 x 400 image, half the area at ratio 1/2 is exactly
  // 100 x 200, kept on the first try at any height. Refused, it would end in the centred
  // fallback, at height 100 every time.
  AugmentConfig config;
  config.input_size = 32;
  config.scale_min = config.scale_max = 0.5;
  config.ratio_min = config.ratio_max = 0.5;
  deit::Rng rng(47);
  std::set<int> heights;
  for (int i = 0; i < 100; ++i) {
    const CropParams c = sample_crop_params(config, 400, 100, rng);
    REQUIRE(c.w == 100);
    REQUIRE(c.h == 200);
    REQUIRE(c.x == 0);
    heights.insert(c.y);
  }
  CHECK(heights.size() > 50);
}

TEST_CASE("a colour jitter above 1 gives factors from 0, never below", "[augment]") {
  // ColorJitter's range is [max(0, 1 - j), 1 + j]: a negative brightness would turn the view
  // into garbage.
  AugmentConfig config;
  config.three_augment = false;
  config.color_jitter = 1.5;
  deit::Rng rng(43);
  float lowest = 1.0f;
  for (int i = 0; i < 2000; ++i) {
    const AugmentParams p = sample_augment_params(config, 50, 60, rng);
    for (float f : {p.brightness, p.contrast, p.saturation}) {
      REQUIRE(f >= 0.0f);
      REQUIRE(f <= 2.5f);
      lowest = std::min(lowest, f);
    }
  }
  CHECK(lowest < 0.01f);
}

TEST_CASE("crop sizes follow torchvision's truncation and rounding", "[augment]") {
  // Resize(32) on 100 x 333: the longer side is int(32 * 333 / 100) = int(106.56) = 106.
  const ResizedSize resized = shorter_side_resize(100, 333, 32);
  CHECK(resized.height == 32);
  CHECK(resized.width == 106);
  const ResizedSize tall = shorter_side_resize(333, 100, 32);
  CHECK(tall.height == 106);
  CHECK(tall.width == 32);
  // DeiT's eval resize is int(input_size / crop_ratio): int(13 / 0.875) = int(14.86) = 14.
  CHECK(eval_resize_side(13, 0.875) == 14);
  CHECK(eval_augment_params(50, 50, 13, 0.875).crop.resized_width == 14);
  // CenterCrop's offsets are round((side - size) / 2) with Python's round, half to even:
  // round(2.5) = 2 and round(3.5) = 4.
  CHECK(eval_augment_params(8, 13, 8, 1.0).crop.x == 2);
  CHECK(eval_augment_params(8, 15, 8, 1.0).crop.x == 4);
  CHECK(eval_augment_params(15, 8, 8, 1.0).crop.y == 4);
  CHECK(python_round(2.5) == 2);
  CHECK(python_round(-3.5) == -4);
}

TEST_CASE("crop settings no crop could honour are refused", "[augment]") {
  deit::Rng rng(1);
  AugmentConfig config;
  config.input_size = 0;
  CHECK_THROWS_WITH(sample_crop_params(config, 20, 20, rng),
                    Catch::Contains("crop size must be positive, got 0"));
  // Reflect padding needs more pixels than it mirrors: a crop of 4 with padding 4 cannot be made.
  config.crop = CropMode::kSimpleRandom;
  config.input_size = 4;
  config.src_padding = 4;
  CHECK_THROWS_WITH(sample_crop_params(config, 20, 20, rng),
                    Catch::Contains("reflect padding 4 needs a crop size above it, got 4"));
  config.input_size = 5;
  CHECK(sample_crop_params(config, 20, 20, rng).size == 5);
}

TEST_CASE("use_rand_augment turns 3-Augment and the colour jitter off, and none leaves them",
          "[augment]") {
  // --aa as deit augment and deit bench data apply it: timm applies RandAugment or 3-Augment and
  // the jitter, never both.
  AugmentConfig config;
  use_rand_augment(config, "none");
  CHECK_FALSE(config.rand_augment);
  CHECK(config.three_augment);
  CHECK(config.color_jitter == 0.3);
  use_rand_augment(config, "rand-m9-mstd0.5-inc1");
  REQUIRE(config.rand_augment);
  CHECK(config.rand_augment->magnitude == 9);
  CHECK_FALSE(config.three_augment);
  CHECK(config.color_jitter == 0.0);
}

TEST_CASE(
    "A Simple Random Crop or evaluation view is the window of the whole resized, padded "
    "image",
    "[augment]") {
  // apply_crop makes only the resized pixels its window reads; the composition below makes them
  // all. Sizes that shrink, enlarge and keep each side, with and without padding.
  deit::Rng rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    INFO("trial " << trial);
    const int height = 1 + static_cast<int>(rng.below(70));
    const int width = 1 + static_cast<int>(rng.below(70));
    const ImageU8 image = random_image(height, width, trial);
    CropParams c;
    if (trial % 2 == 0) {
      AugmentConfig config;
      config.crop = CropMode::kSimpleRandom;
      config.input_size = 8 + static_cast<int>(rng.below(56));
      c = sample_crop_params(config, height, width, rng);
    } else {
      c = eval_augment_params(height, width, 4 + static_cast<int>(rng.below(60)), 0.875).crop;
    }
    const ImageU8 resized = resize_bicubic(image, c.resized_height, c.resized_width);
    const ImageU8 whole = crop(pad_reflect(resized, c.padding), c.x, c.y, c.size, c.size);
    REQUIRE(apply_crop(image, c).pixels == whole.pixels);
  }
  // A 20000 x 2 image evaluated at 224: 224 x 224 resized pixels made, not 224 x 2,240,000.
  const CropParams wide = eval_augment_params(2, 20000, 224, 1.0).crop;
  CHECK(wide.resized_width == 2240000);
  CHECK(apply_crop(random_image(2, 20000, 1), wide).pixels.size() == 224 * 224 * 3);
}

TEST_CASE("augmentation is deterministic from the seed and stream", "[augment]") {
  const AugmentConfig config;
  const ImageU8 image = random_image(90, 70, 2);
  for (uint64_t stream : {0ull, 1ull, 12345ull}) {
    deit::Rng a(42, stream), b(42, stream);
    const AugmentParams pa = sample_augment_params(config, image.height, image.width, a);
    const AugmentParams pb = sample_augment_params(config, image.height, image.width, b);
    REQUIRE(same(pa, pb));
    CHECK(augment_train(image, pa).pixels == augment_train(image, pb).pixels);
  }
  // Different streams give different views (for this seed, at least one of a few differs).
  deit::Rng first(42, 0);
  const AugmentParams p0 = sample_augment_params(config, image.height, image.width, first);
  int differing = 0;
  for (uint64_t stream = 1; stream <= 4; ++stream) {
    deit::Rng other(42, stream);
    differing += !same(p0, sample_augment_params(config, image.height, image.width, other));
  }
  CHECK(differing == 4);
}

TEST_CASE("disabled augmentations leave the crop alone", "[augment]") {
  AugmentConfig config;
  config.input_size = 16;
  config.hflip = false;
  config.three_augment = false;
  config.color_jitter = 0.0;
  deit::Rng rng(9);
  const ImageU8 image = random_image(40, 30, 4);
  for (int i = 0; i < 50; ++i) {
    const AugmentParams p = sample_augment_params(config, image.height, image.width, rng);
    REQUIRE(!p.flip);
    REQUIRE(p.three_augment == ThreeAugmentOp::kNone);
    REQUIRE(p.brightness == 1.0f);
    REQUIRE(p.contrast == 1.0f);
    REQUIRE(p.saturation == 1.0f);
    REQUIRE(augment_train(image, p).pixels == apply_crop(image, p.crop).pixels);
  }
}

TEST_CASE("normalisation gives (v / 255 - mean) / std in channel planes", "[augment]") {
  // Pixel (y, x) has value v = 40 y + 7 x + 30 c in channel c, so every plane position is checked.
  ImageU8 image{3, 5, std::vector<uint8_t>(3 * 5 * 3)};
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 5; ++x)
      for (int c = 0; c < 3; ++c) image.at(y, x)[c] = static_cast<uint8_t>(40 * y + 7 * x + 30 * c);
  std::vector<float> out(3 * 3 * 5, std::nanf(""));
  normalize(image, out.data());
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 5; ++x) {
        const double v = 40 * y + 7 * x + 30 * c;
        const double expected = (v / 255.0 - kImageNetMean[c]) / kImageNetStd[c];
        REQUIRE(out[c * 15 + y * 5 + x] == Approx(expected).epsilon(1e-6).margin(1e-6));
      }

  // Over a uniformly random image the normalised channels have mean (127.5 / 255 - m) / s and
  // std (73.9 / 255) / s: the statistics the model expects.
  const ImageU8 noise = random_image(64, 64, 8);
  std::vector<float> planes(3 * 64 * 64);
  normalize(noise, planes.data());
  for (int c = 0; c < 3; ++c) {
    const float* p = planes.data() + c * 64 * 64;
    const double mean = std::accumulate(p, p + 64 * 64, 0.0) / (64 * 64);
    double var = 0.0;
    for (int i = 0; i < 64 * 64; ++i) var += (p[i] - mean) * (p[i] - mean);
    const double sd = std::sqrt(var / (64 * 64));
    CHECK(mean == Approx((127.5 / 255 - kImageNetMean[c]) / kImageNetStd[c]).margin(0.05));
    CHECK(sd == Approx(73.9 / 255 / kImageNetStd[c]).epsilon(0.03));
  }
}

TEST_CASE("mixup and cutmix lambdas follow their Beta distributions and the switch probability",
          "[augment]") {
  const MixupConfig config;  // mixup 0.8, cutmix 1.0, switch 0.5
  deit::Rng rng(13);
  int cutmix = 0, mixup = 0;
  double mix_sum = 0.0, mix_sq = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const MixParams p = sample_mix_params(config, 32, 32, rng);
    REQUIRE(p.lambda >= 0.0);
    REQUIRE(p.lambda <= 1.0);
    if (p.cutmix) {
      ++cutmix;
      continue;
    }
    ++mixup;
    mix_sum += p.lambda;
    mix_sq += p.lambda * p.lambda;
  }
  CHECK(std::abs(cutmix / double(kDraws) - 0.5) < 0.02);
  // Beta(0.8, 0.8): mean 0.5, variance a^2 / ((2a)^2 (2a + 1)) = 0.0962.
  const double mean = mix_sum / mixup;
  CHECK(mean == Approx(0.5).margin(0.015));
  CHECK(mix_sq / mixup - mean * mean == Approx(0.0962).margin(0.006));

  // Beta(1, 1) is uniform: mean 1/2, variance 1/12.
  double sum = 0.0, sq = 0.0;
  for (int i = 0; i < kDraws; ++i) {
    const double b = sample_beta(1.0, 1.0, rng);
    sum += b;
    sq += b * b;
  }
  CHECK(sum / kDraws == Approx(0.5).margin(0.01));
  CHECK(sq / kDraws - (sum / kDraws) * (sum / kDraws) == Approx(1.0 / 12).margin(0.004));

  MixupConfig off = config;
  off.prob = 0.0;
  CHECK(sample_mix_params(off, 32, 32, rng).lambda == 1.0);
  MixupConfig cutmix_only = config;
  cutmix_only.mixup_alpha = 0.0;
  for (int i = 0; i < 100; ++i) REQUIRE(sample_mix_params(cutmix_only, 32, 32, rng).cutmix);
}

TEST_CASE("a tiny mixup alpha gives lambdas of 0 or 1, as a fair coin", "[augment]") {
  // Beta(a, a) tends to a fair coin between 0 and 1 as a goes to 0: mean 1/2, variance
  // 1 / (4 (2a + 1)), about 1/4. Both Gamma draws underflow to 0 there, which once gave 0 / 0.
  for (const double alpha : {1e-3, 1e-30, 1e-320}) {
    INFO("alpha " << alpha);
    deit::Rng rng(19);
    double sum = 0.0, sq = 0.0;
    for (int i = 0; i < kDraws; ++i) {
      const double lambda = sample_beta(alpha, alpha, rng);
      REQUIRE(std::isfinite(lambda));
      REQUIRE(lambda >= 0.0);
      REQUIRE(lambda <= 1.0);
      sum += lambda;
      sq += lambda * lambda;
    }
    const double mean = sum / kDraws;
    CHECK(mean == Approx(0.5).margin(0.02));
    CHECK(sq / kDraws - mean * mean == Approx(0.25 / (2 * alpha + 1)).margin(0.01));

    MixupConfig mixup_only;
    mixup_only.mixup_alpha = alpha;
    mixup_only.cutmix_alpha = 0.0;
    const MixParams p = sample_mix_params(mixup_only, 32, 32, rng);
    CHECK((p.lambda >= 0.0 && p.lambda <= 1.0));
  }
}

TEST_CASE("cutmix pastes the partner's box and its lambda is the area left", "[augment]") {
  const int batch = 4, channels = 3, height = 20, width = 28;
  const size_t sample = size_t(channels) * height * width;
  std::vector<float> original(batch * sample);
  for (size_t i = 0; i < original.size(); ++i) original[i] = float(i % 9973) * 0.01f - 3.0f;
  MixupConfig config;
  config.mixup_alpha = 0.0;  // cutmix only
  deit::Rng rng(17);
  int checked = 0;
  for (int draw = 0; draw < 200; ++draw) {
    const MixParams p = sample_mix_params(config, height, width, rng);
    REQUIRE(p.cutmix);
    REQUIRE(0 <= p.y0);
    REQUIRE(p.y0 <= p.y1);
    REQUIRE(p.y1 <= height);
    REQUIRE(0 <= p.x0);
    REQUIRE(p.x0 <= p.x1);
    REQUIRE(p.x1 <= width);
    const int box = (p.y1 - p.y0) * (p.x1 - p.x0);
    REQUIRE(p.lambda == Approx(1.0 - double(box) / (height * width)).margin(1e-12));

    std::vector<float> images = original;
    apply_mix(p, images.data(), batch, channels, height, width);
    int pasted = 0;
    for (int i = 0; i < batch; ++i)
      for (int c = 0; c < channels; ++c)
        for (int y = 0; y < height; ++y)
          for (int x = 0; x < width; ++x) {
            const size_t k = size_t(c) * height * width + size_t(y) * width + x;
            const bool inside = y >= p.y0 && y < p.y1 && x >= p.x0 && x < p.x1;
            const int from = inside ? batch - 1 - i : i;
            REQUIRE(images[i * sample + k] == original[from * sample + k]);
            pasted += inside;
          }
    REQUIRE(pasted == batch * channels * box);
    checked += box > 0;

    const int32_t labels[batch] = {0, 3, 1, 3};
    std::vector<float> targets(batch * 5);
    mix_targets(p, labels, batch, 5, 0.0, targets.data());
    for (int i = 0; i < batch; ++i) {
      const float* row = &targets[i * 5];
      REQUIRE(std::accumulate(row, row + 5, 0.0) == Approx(1.0).margin(1e-6));
      const int own = labels[i], partner = labels[batch - 1 - i];
      if (own == partner) {
        REQUIRE(row[own] == Approx(1.0).margin(1e-6));
      } else {
        REQUIRE(row[own] == Approx(p.lambda).margin(1e-6));
        REQUIRE(row[partner] == Approx(1.0 - p.lambda).margin(1e-6));
      }
    }
  }
  CHECK(checked > 150);  // most draws paste a non-empty box
}

TEST_CASE("cutmix's box is timm's rand_bbox of the drawn lambda and centre", "[augment]") {
  // The check above holds for any box that lambda is corrected to; this one replays the draws
  // (the mix, lambda, then the centre's row and column) on a copy of the generator and builds the
  // box as timm does: sides int(side * sqrt(1 - lambda)), centred, clipped. A tall, narrow image
  // shows sides or centre ranges that swap height and width.
  const int height = 40, width = 12;
  MixupConfig config;
  config.mixup_alpha = 0.0;  // cutmix only: no switch draw
  config.cutmix_alpha = 0.4;
  deit::Rng rng(29);
  int touches_bottom = 0, touches_right = 0;
  for (int draw = 0; draw < 500; ++draw) {
    INFO("draw " << draw);
    deit::Rng replay = rng;
    const MixParams p = sample_mix_params(config, height, width, rng);
    REQUIRE(replay.bernoulli(config.prob));
    const double lambda = sample_beta(config.cutmix_alpha, config.cutmix_alpha, replay);
    const int cut_h = static_cast<int>(height * std::sqrt(1.0 - lambda));
    const int cut_w = static_cast<int>(width * std::sqrt(1.0 - lambda));
    const int cy = static_cast<int>(replay.below(height));
    const int cx = static_cast<int>(replay.below(width));
    REQUIRE(p.cutmix);
    REQUIRE(p.y0 == std::clamp(cy - cut_h / 2, 0, height));
    REQUIRE(p.y1 == std::clamp(cy + cut_h / 2, 0, height));
    REQUIRE(p.x0 == std::clamp(cx - cut_w / 2, 0, width));
    REQUIRE(p.x1 == std::clamp(cx + cut_w / 2, 0, width));
    touches_bottom += p.y1 == height;
    touches_right += p.x1 == width;
  }
  // The clipping lets boxes reach the last row and column.
  CHECK(touches_bottom > 0);
  CHECK(touches_right > 0);
}

TEST_CASE("the mixup switch probability is the chance of cutmix, whatever its value", "[augment]") {
  // At the recipe's 0.5 the probability and its complement look alike; --mixup-switch-prob
  // 0.8 must give cutmix 80% of the time, not 20%.
  MixupConfig config;
  config.switch_prob = 0.8;
  deit::Rng rng(31);
  int cutmix = 0;
  for (int i = 0; i < kDraws; ++i) cutmix += sample_mix_params(config, 16, 16, rng).cutmix;
  CHECK(std::abs(cutmix / double(kDraws) - 0.8) < 0.02);  // sd 0.0028
}

TEST_CASE("sample_beta draws Beta(a, b) with a and b in their places", "[augment]") {
  // Mixup draws Beta(alpha, alpha) only, where a draw and one minus it look alike; a Beta of
  // two shapes tells the first from the second, and a wrongly scaled Gamma draw shows.
  struct Case {
    double a, b, mean, variance;
  };
  // Mean a / (a + b), variance ab / ((a + b)^2 (a + b + 1)); shapes below 1 take the other
  // Gamma path. Shapes so small that both draws underflow make a coin that lands on 1 with
  // probability a / (a + b).
  for (const Case& c :
       {Case{2.0, 5.0, 2.0 / 7, 10.0 / (49 * 8)}, Case{0.5, 2.0, 0.2, 1.0 / (6.25 * 3.5)},
        Case{1e-300, 3e-300, 0.25, 0.25 * 0.75}}) {
    INFO("Beta(" << c.a << ", " << c.b << ")");
    deit::Rng rng(37);
    double sum = 0.0, sq = 0.0;
    for (int i = 0; i < kDraws; ++i) {
      const double v = sample_beta(c.a, c.b, rng);
      REQUIRE(v >= 0.0);
      REQUIRE(v <= 1.0);
      sum += v;
      sq += v * v;
    }
    const double mean = sum / kDraws;
    CHECK(mean == Approx(c.mean).margin(0.02));  // sd at most 0.0035
    CHECK(sq / kDraws - mean * mean == Approx(c.variance).margin(0.01));
  }
  // Either shape unchecked would loop for ever on a negative or NaN shape: REQUIRE stops at the
  // first shape let through, which is 0 (a draw of 1, made at once).
  deit::Rng rng(1);
  for (const auto& [a, b] : {std::pair{1.0, 0.0}, std::pair{0.0, 1.0}, std::pair{1.0, -2.0},
                             std::pair{std::nan(""), 1.0}, std::pair{1.0, std::nan("")}}) {
    INFO("Beta(" << a << ", " << b << ")");
    REQUIRE_THROWS_WITH(sample_beta(a, b, rng),
                        Catch::Contains("Beta parameters must be positive"));
  }
}

TEST_CASE("mixup blends each sample and its target with its mirror in the batch", "[augment]") {
  const int batch = 6, channels = 3, height = 4, width = 5;
  const size_t sample = size_t(channels) * height * width;
  std::vector<float> original(batch * sample);
  for (size_t i = 0; i < original.size(); ++i) original[i] = std::sin(float(i)) * 2.0f;
  MixParams p;
  p.lambda = 0.3;
  std::vector<float> images = original;
  apply_mix(p, images.data(), batch, channels, height, width);
  for (int i = 0; i < batch; ++i)
    for (size_t k = 0; k < sample; ++k)
      REQUIRE(images[i * sample + k] ==
              Approx(0.3 * original[i * sample + k] + 0.7 * original[(batch - 1 - i) * sample + k])
                  .margin(1e-6));

  const int32_t labels[batch] = {2, 0, 1, 1, 4, 3};
  std::vector<float> targets(batch * 5);
  const double smoothing = 0.1;  // off = 0.02, on = 0.92
  mix_targets(p, labels, batch, 5, smoothing, targets.data());
  for (int i = 0; i < batch; ++i) {
    const float* row = &targets[i * 5];
    CHECK(std::accumulate(row, row + 5, 0.0) == Approx(1.0).margin(1e-6));
    for (int k = 0; k < 5; ++k) {
      const double own = k == labels[i] ? 0.92 : 0.02;
      const double partner = k == labels[batch - 1 - i] ? 0.92 : 0.02;
      CHECK(row[k] == Approx(0.3 * own + 0.7 * partner).margin(1e-6));
    }
  }

  std::vector<float> odd(5 * sample);
  CHECK_THROWS_AS(apply_mix(p, odd.data(), 5, channels, height, width), std::invalid_argument);
}

TEST_CASE("mixed targets refuse a label outside the classes", "[augment]") {
  MixParams p;
  std::vector<float> targets(2 * 5);
  auto mix_pair = [&](int32_t first, int32_t second) {
    const int32_t labels[2] = {first, second};
    mix_targets(p, labels, 2, 5, 0.0, targets.data());
  };
  CHECK_NOTHROW(mix_pair(0, 4));
  CHECK_THROWS_WITH(mix_pair(5, 0), Catch::Contains("label 5 is outside [0, 5)"));
  CHECK_THROWS_WITH(mix_pair(0, -1), Catch::Contains("label -1 is outside [0, 5)"));
}

TEST_CASE("named ops reject bad names and arguments with a message", "[augment]") {
  const ImageU8 image = random_image(20, 30, 6);
  auto message = [&](const std::string& spec) { return deit::test::named_op_error(image, spec); };
  CHECK_THAT(message("sharpen"),
             Catch::Contains("unknown op 'sharpen'") && Catch::Contains("blur:SIGMA"));
  CHECK_THAT(named_op_usage(), Catch::StartsWith("  hflip\n  grayscale\n"));
  CHECK_THAT(message("blur"), Catch::Contains("needs 1 argument"));
  CHECK_THAT(message("blur:"), Catch::Contains("nothing after the ':'") &&
                                 Catch::Contains("blur:SIGMA"));
  CHECK_THAT(message("hflip:"), Catch::Contains("nothing after the ':'"));  // was accepted
  CHECK_THAT(message("blur:abc"), Catch::Contains("'abc' is not a number"));
  CHECK_THAT(message("crop:1,,2,3"), Catch::Contains("'' is not a number"));
  CHECK_THAT(message("crop:1,2,3,"), Catch::Contains("'' is not a number"));
  // Numbers as they were written (to_string gave -1.000000 and 128.500000).
  CHECK_THAT(message("blur:-1"), Catch::Contains("sigma") && Catch::EndsWith("got -1"));
  CHECK_THAT(message("solarize:128.5"), Catch::Contains(": 128.5 is not an integer"));
  CHECK_THAT(message("solarize:1234567.5"), Catch::Contains(": 1234567.5 is not an integer"));
  CHECK_THAT(message("sharpness:1e39"), Catch::Contains("beyond a float's range"));
  CHECK_THAT(message("sharpness:-1e39"), Catch::Contains("beyond a float's range"));
  CHECK_THAT(message("hflip:2"), Catch::Contains("takes no argument"));
  CHECK_THAT(message("crop:1,2,3"), Catch::Contains("needs 4 argument"));
  CHECK_THAT(message("crop:0,0,31,5"), Catch::Contains("not inside the 30x20 image"));
  CHECK_THAT(message("resize:2.5"), Catch::Contains("not an integer"));
  CHECK_THAT(message("resize:1e12"), Catch::Contains(": 1000000000000 is out of range"));
  // 1e9 is the last number taken: a box placed there is refused as a box, not as a number.
  CHECK_THAT(message("crop:1000000000,0,1,1"), Catch::Contains("not inside the 30x20 image"));
  CHECK_THAT(message("crop:2000000000,0,1,1"), Catch::Contains(": 2000000000 is out of range"));
  CHECK_THAT(message("crop:-2000000000,0,1,1"), Catch::Contains(": -2000000000 is out of range"));
  // A result past the image limits is refused before it is allocated.
  CHECK_THAT(message("resize:1000000000"),
             Catch::Contains("1500000000x1000000000 result is larger than deit makes"));
  CHECK_THAT(message("resize:0"), Catch::Contains("a shorter side of 0"));
  CHECK_THAT(message("center-crop:21"),
             Catch::Contains("center crop size") && Catch::Contains("for the 30x20 image"));
  CHECK_THAT(message("center-crop:0"), Catch::Contains("center crop size"));
  CHECK_THAT(message("pad-reflect:20"), Catch::Contains("reflect padding"));
  // Boxes and paddings far past the image are refused as such, before their result is made.
  CHECK_THAT(message("crop:0,0,30000,30000"), Catch::Contains("not inside the 30x20 image"));
  CHECK_THAT(message("pad-reflect:20000"), Catch::Contains("reflect padding"));
  CHECK_THAT(message("contrast:-0.5"), Catch::Contains("contrast factor"));
  CHECK_THAT(message("src:4"), Catch::Contains("reflect padding"));

  // The random crops give the requested size and depend only on the rng's state.
  deit::Rng a(77), b(77);
  const ImageU8 ra = apply_named_op(image, "rrc:12", a);
  CHECK(ra.height == 12);
  CHECK(ra.width == 12);
  CHECK(ra.pixels == apply_named_op(image, "rrc:12", b).pixels);
  const ImageU8 sa = apply_named_op(image, "src:16", a);
  CHECK(sa.height == 16);
  CHECK(sa.width == 16);
}

TEST_CASE("a crop box whose far edge passes INT_MAX is refused", "[augment]") {
  // x + w in int overflowed (undefined; in practice a negative sum that passed the bounds check,
  // after which crop_cpu would read gigabytes past the source). deit augment's crop:X,Y,W,H caps
  // each number at 1e9, so only other callers of the kernel could reach it.
  constexpr int kMax = std::numeric_limits<int>::max();
  CHECK_THROWS_WITH(deit::kernels::check_crop_box(kMax, 0, 1, 1, 20, 30),
                    Catch::Contains("not inside the 30x20 image"));
  CHECK_THROWS_WITH(deit::kernels::check_crop_box(0, kMax, 1, 1, 20, 30),
                    Catch::Contains("not inside the 30x20 image"));
  CHECK_THROWS_WITH(deit::kernels::check_crop_box(2, 0, kMax, 1, 20, 30),
                    Catch::Contains("not inside the 30x20 image"));
  CHECK_NOTHROW(deit::kernels::check_crop_box(29, 19, 1, 1, 20, 30));
}

TEST_CASE("augment parameters are taken up to each bound and refused past it", "[augment]") {
  // The GPU stage relies on these checks alone (test_augment_cuda.cpp tries its refusals); here
  // each bound is tried on both sides, on the host.
  constexpr int kHeight = 20, kWidth = 30, kSize = 8;
  auto problem = [](const AugmentParams& p) -> std::string {
    try {
      deit::kernels::check_augment_params(p, kHeight, kWidth, kSize);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "";
  };
  AugmentParams corner;  // the view's box in the source's bottom-right corner
  corner.crop.size = corner.crop.w = corner.crop.h = kSize;
  corner.crop.x = kWidth - kSize;
  corner.crop.y = kHeight - kSize;
  CHECK(problem(corner).empty());
  CHECK_THROWS_WITH(deit::kernels::check_augment_params(corner, 0, kWidth, kSize),
                    Catch::Contains("empty source image (30x0)"));
  AugmentParams p = corner;
  ++p.crop.y;
  CHECK_THAT(problem(p), Catch::Contains("not inside the 30x20 image"));
  for (int* origin : {&p.crop.x, &p.crop.y}) {
    p = corner;
    *origin = -1;
    CHECK_THAT(problem(p), Catch::Contains("not inside the 30x20 image"));
  }
  p = corner;
  p.crop.w = 0;
  CHECK_THAT(problem(p), Catch::Contains("not inside the 30x20 image"));
  p = corner;
  p.crop.size = kSize + 1;
  CHECK_THAT(problem(p), Catch::Contains("the view is 9 pixels, the batch's 8"));
  p = corner;
  p.crop.mode = static_cast<CropMode>(2);
  CHECK_THAT(problem(p), Catch::Contains("unknown crop mode 2"));

  // Simple Random Crop: 10 x 12 resized, padded by 2 to 14 x 16, the view in its far corner.
  AugmentParams simple;
  simple.crop.mode = CropMode::kSimpleRandom;
  simple.crop.size = simple.crop.w = simple.crop.h = kSize;
  simple.crop.resized_height = 10;
  simple.crop.resized_width = 12;
  simple.crop.padding = 2;
  simple.crop.x = 16 - kSize;
  simple.crop.y = 14 - kSize;
  CHECK(problem(simple).empty());
  p = simple;
  for (int padding : {10, -1}) {  // reflection reads within the image: 0 <= padding < 10
    p.crop.padding = padding;
    CHECK_THAT(problem(p), Catch::Contains("reflect padding"));
  }
  p = simple;
  p.crop.h = kSize - 1;
  CHECK_THAT(problem(p), Catch::Contains("is not the 8-pixel view"));
  p = simple;
  p.crop.resized_width = 0;
  CHECK_THAT(problem(p), Catch::Contains("cannot resize 30x20 to 0x10"));
  CHECK_THROWS_WITH(deit::kernels::check_resize(0, 5, 4, 4), Catch::Contains("cannot resize 5x0"));

  p = corner;
  p.three_augment = ThreeAugmentOp::kBlur;
  p.blur_sigma = 1000.0f;
  CHECK(problem(p).empty());
  p.blur_sigma = std::nextafter(1000.0f, 2000.0f);
  CHECK_THAT(problem(p), Catch::Contains("blur sigma"));
  p.blur_sigma = -0.5f;
  CHECK_THAT(problem(p), Catch::Contains("blur sigma"));
  p.three_augment = static_cast<ThreeAugmentOp>(4);
  p.blur_sigma = 1.0f;
  CHECK_THAT(problem(p), Catch::Contains("unknown 3-Augment op 4"));
  p = corner;
  p.jitter_order[2] = static_cast<JitterOp>(3);
  CHECK_THAT(problem(p), Catch::Contains("unknown colour jitter op 3"));

  // RandAugment steps: each level at both ends of its range and one past.
  auto with_step = [&](RandAugmentOp op, int level, float factor) {
    AugmentParams q = corner;
    q.rand_augment[1].op = op;
    q.rand_augment[1].level = level;
    q.rand_augment[1].factor = factor;
    return q;
  };
  const struct {
    RandAugmentOp op;
    int lo, hi;
    const char* what;
  } levels[] = {{RandAugmentOp::kPosterize, 0, 8, "posterize bits must be in [0, 8]"},
                {RandAugmentOp::kSolarize, 0, 256, "solarize threshold must be in [0, 256]"},
                {RandAugmentOp::kSolarizeAdd, 0, 255, "solarize-add amount must be in [0, 255]"}};
  for (const auto& l : levels) {
    INFO(l.what);
    CHECK(problem(with_step(l.op, l.lo, 1.0f)).empty());
    CHECK(problem(with_step(l.op, l.hi, 1.0f)).empty());
    CHECK_THAT(problem(with_step(l.op, l.lo - 1, 1.0f)), Catch::Contains(l.what));
    CHECK_THAT(problem(with_step(l.op, l.hi + 1, 1.0f)), Catch::Contains(l.what));
  }
  for (RandAugmentOp op : {RandAugmentOp::kColor, RandAugmentOp::kContrast,
                           RandAugmentOp::kBrightness, RandAugmentOp::kSharpness}) {
    INFO("op " << static_cast<int>(op));
    CHECK(problem(with_step(op, 0, 0.0f)).empty());
    CHECK_THAT(problem(with_step(op, 0, -0.5f)), Catch::Contains("enhance factor"));
  }
  p = with_step(RandAugmentOp::kAffine, 0, 1.0f);
  p.rand_augment[1].affine[5] = std::numeric_limits<double>::infinity();
  CHECK_THAT(problem(p), Catch::Contains("affine matrix must be finite"));
  p.rand_augment[1].op = static_cast<RandAugmentOp>(99);
  CHECK_THAT(problem(p), Catch::Contains("unknown RandAugment op 99"));

  // The RandAugment kernels check their own argument too, for callers that skip this check.
  std::vector<uint8_t> pixel(3), out(3);
  CHECK_THROWS_WITH(deit::kernels::posterize_cpu(pixel.data(), 1, 1, 9, out.data()),
                    Catch::Contains("posterize bits"));
  CHECK_THROWS_WITH(deit::kernels::solarize_add_cpu(pixel.data(), 1, 1, 256, out.data()),
                    Catch::Contains("solarize-add amount"));
  CHECK_THROWS_WITH(deit::kernels::adjust_sharpness_cpu(pixel.data(), 1, 1, -0.5f, out.data()),
                    Catch::Contains("sharpness factor"));
}

TEST_CASE("geometry ops compose as expected", "[augment]") {
  const ImageU8 image = random_image(9, 13, 10);
  CHECK(hflip(hflip(image)).pixels == image.pixels);
  // The centre of a reflect-padded image is the image; its first padded row mirrors row 1.
  const ImageU8 padded = pad_reflect(image, 3);
  CHECK(crop(padded, 3, 3, 13, 9).pixels == image.pixels);
  CHECK(std::equal(padded.at(2, 3), padded.at(2, 3) + 13 * 3, image.at(1, 0)));
  // Solarize is idempotent: every value it outputs is below 128.
  const ImageU8 twice = solarize(solarize(image));
  CHECK(twice.pixels == solarize(image).pixels);
  // Resizing to the same size is the identity (Pillow skips both passes).
  CHECK(resize_shorter_side(image, 9).pixels == image.pixels);
}
