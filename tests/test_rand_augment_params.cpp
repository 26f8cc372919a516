// RandAugment's host side: timm's spec parsed, its random choices drawn as timm 0.3.2 draws them
// (statistics over many views from a fixed seed), Pillow's rotation matrix reproduced bit for bit,
// and the named ops of `deit augment` that apply one step. The pixels of the steps are checked
// against Pillow in test_augment_reference.cpp.
//
// Statistical checks use 20000 views of 2 steps from a fixed seed; each bound is at least 5
// standard deviations wide.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/augment_params.h"
#include "data/transforms.h"
#include "engine/rng.h"
#include "tests/test_data_helpers.h"

namespace {

using namespace deit::data;

constexpr int kViews = 20000;
constexpr int kSize = 224;

// What a drawn step is, among timm's 15 ops: the affine ones told apart by their matrix.
enum class Kind {
  kSkipped,
  kAutoContrast,
  kEqualize,
  kInvert,
  kRotate,
  kPosterize,
  kSolarize,
  kSolarizeAdd,
  kColor,
  kContrast,
  kBrightness,
  kSharpness,
  kShearX,
  kShearY,
  kTranslateX,
  kTranslateY,
};

Kind kind_of(const RandAugmentStep& s) {
  switch (s.op) {
    case RandAugmentOp::kNone:
      return Kind::kSkipped;
    case RandAugmentOp::kAutoContrast:
      return Kind::kAutoContrast;
    case RandAugmentOp::kEqualize:
      return Kind::kEqualize;
    case RandAugmentOp::kInvert:
      return Kind::kInvert;
    case RandAugmentOp::kPosterize:
      return Kind::kPosterize;
    case RandAugmentOp::kSolarize:
      return Kind::kSolarize;
    case RandAugmentOp::kSolarizeAdd:
      return Kind::kSolarizeAdd;
    case RandAugmentOp::kColor:
      return Kind::kColor;
    case RandAugmentOp::kContrast:
      return Kind::kContrast;
    case RandAugmentOp::kBrightness:
      return Kind::kBrightness;
    case RandAugmentOp::kSharpness:
      return Kind::kSharpness;
    case RandAugmentOp::kAffine:
      break;
  }
  const double* a = s.affine;
  if (a[0] != 1.0) return Kind::kRotate;
  if (a[1] != 0.0) return Kind::kShearX;
  if (a[3] != 0.0) return Kind::kShearY;
  if (a[2] != 0.0) return Kind::kTranslateX;
  return Kind::kTranslateY;
}

// The steps of `views` views of a 300 x 400 image, drawn with `spec` from one seed.
std::vector<RandAugmentStep> draw_steps(const std::string& spec, int views, double prob = 0.5) {
  AugmentConfig config;
  config.input_size = kSize;
  config.three_augment = false;
  config.color_jitter = 0;
  config.rand_augment = parse_rand_augment(spec);
  config.rand_augment->prob = prob;
  deit::Rng rng(11);
  std::vector<RandAugmentStep> steps;
  for (int i = 0; i < views; ++i) {
    const AugmentParams p = sample_augment_params(config, 300, 400, rng);
    for (int k = 0; k < deit::kernels::kMaxRandAugmentSteps; ++k) {
      if (k < config.rand_augment->num_layers)
        steps.push_back(p.rand_augment[k]);
      else
        REQUIRE(p.rand_augment[k].op == RandAugmentOp::kNone);  // beyond n: never drawn
    }
  }
  return steps;
}

// The rotation of a drawn matrix, in degrees (counterclockwise positive, as Image.rotate takes it).
double degrees_of(const RandAugmentStep& s) {
  return -std::atan2(s.affine[1], s.affine[0]) * 180.0 / M_PI;
}

std::string parse_error(const std::string& spec) {
  try {
    parse_rand_augment(spec);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

// Field by field: memcmp of whole steps would compare their padding bytes, which are
// indeterminate (AddressSanitizer's builds fill them differently).
bool same_step(const RandAugmentStep& a, const RandAugmentStep& b) {
  return a.op == b.op && a.level == b.level && a.factor == b.factor &&
         std::equal(std::begin(a.affine), std::end(a.affine), std::begin(b.affine));
}

uint64_t bits(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

// Values in [lo, hi), so that autocontrast and equalize have something to do.
ImageU8 random_image(int height, int width, uint64_t seed, int lo = 0, int hi = 256) {
  deit::Rng rng(seed);
  ImageU8 image{height, width, std::vector<uint8_t>(static_cast<size_t>(height) * width * 3)};
  for (uint8_t& v : image.pixels) v = static_cast<uint8_t>(lo + rng.below(hi - lo));
  return image;
}

}  // namespace

TEST_CASE("RandAugment specs parse as timm reads them", "[augment]") {
  const RandAugmentConfig recipe = parse_rand_augment("rand-m9-mstd0.5-inc1");
  CHECK(recipe.num_layers == 2);
  CHECK(recipe.magnitude == 9);
  CHECK(recipe.magnitude_std == 0.5);
  CHECK(recipe.increasing);
  CHECK(recipe.prob == 0.5);
  // The config's defaults are the recipe's spec.
  const RandAugmentConfig defaults;
  CHECK(defaults.num_layers == recipe.num_layers);
  CHECK(defaults.magnitude == recipe.magnitude);
  CHECK(defaults.magnitude_std == recipe.magnitude_std);
  CHECK(defaults.increasing == recipe.increasing);

  // What a spec leaves out takes timm's defaults: m 10, n 2, mstd 0, timm's non-increasing ops.
  const RandAugmentConfig bare = parse_rand_augment("rand");
  CHECK(bare.magnitude == 10);
  CHECK(bare.num_layers == 2);
  CHECK(bare.magnitude_std == 0);
  CHECK_FALSE(bare.increasing);
  const RandAugmentConfig three = parse_rand_augment("rand-m7-n3");
  CHECK(three.magnitude == 7);
  CHECK(three.num_layers == 3);
  CHECK(three.magnitude_std == 0);
  CHECK_FALSE(three.increasing);
  const RandAugmentConfig plain = parse_rand_augment("rand-m9-mstd0.5");
  CHECK(plain.magnitude_std == 0.5);
  CHECK_FALSE(plain.increasing);
  CHECK_FALSE(parse_rand_augment("rand-inc0-m9").increasing);
  const RandAugmentConfig uniform = parse_rand_augment("rand-mstdinf-m5");
  CHECK(uniform.magnitude == 5);
  CHECK(std::isinf(uniform.magnitude_std));
  CHECK(parse_rand_augment("rand-m9.5-n4").magnitude == 9.5);

  CHECK_FALSE(rand_augment_option("none"));
  REQUIRE(rand_augment_option("rand-m7-n3"));
  CHECK(rand_augment_option("rand-m7-n3")->num_layers == 3);
}

TEST_CASE("RandAugment specs timm would not read, or deit cannot apply, are refused by name",
          "[augment]") {
  for (const char* spec : {"", "rand9", "randaugment-m9", "m9-rand", "none-m9"})
    CHECK_THAT(parse_error(spec), Catch::Contains("'" + std::string(spec) + "'") &&
                                      Catch::Contains("must start with 'rand'"));
  CHECK_THAT(parse_error("rand-m9-w0"),
             Catch::Contains("rand-m9-w0") && Catch::Contains("op weights (section 'w0')"));
  CHECK_THAT(parse_error("rand-x5"), Catch::Contains("unknown section 'x5'"));
  CHECK_THAT(parse_error("rand-m9-"), Catch::Contains("unknown section ''"));
  CHECK_THAT(parse_error("rand-m"), Catch::Contains("section 'm' has no value"));
  // '-' separates sections, so a negative value is a section without one.
  CHECK_THAT(parse_error("rand-m9-mstd-0.5"), Catch::Contains("section 'mstd' has no value"));
  CHECK_THAT(parse_error("rand-m9x"), Catch::Contains("'9x' in section 'm9x' is not a number"));
  CHECK_THAT(parse_error("rand-mnan"), Catch::Contains("unknown section 'mnan'"));
  for (const char* n : {"rand-n0", "rand-n5", "rand-n2.5"})
    CHECK_THAT(parse_error(n), Catch::Contains("number of ops n must be a whole number in [1, 4]"));
  for (const char* m : {"rand-m11", "rand-m10.5", "rand-minf"})
    CHECK_THAT(parse_error(m), Catch::Contains("magnitude m must be in [0, 10]"));
  CHECK_THAT(parse_error("rand-inc2"), Catch::Contains("inc must be 0 or 1, got 2"));
  CHECK_THAT(parse_error("rand-m9-n2-m8"), Catch::Contains("section 'm' is given twice"));
  // Every message says what the syntax is.
  CHECK_THAT(parse_error("rand-x5"), Catch::Contains("rand-m9-mstd0.5-inc1"));
}

TEST_CASE("RandAugment draws timm's 15 ops uniformly and skips each with probability 0.5",
          "[augment]") {
  // prob 1: every drawn op applied, so each of the 15 shows.
  std::map<Kind, int> counts;
  const std::vector<RandAugmentStep> all = draw_steps("rand-m9-mstd0.5-inc1", kViews / 2, 1.0);
  for (const RandAugmentStep& s : all) counts[kind_of(s)]++;
  CHECK(counts.count(Kind::kSkipped) == 0);
  REQUIRE(counts.size() == 15);
  for (const auto& [kind, count] : counts) {
    INFO("op " << static_cast<int>(kind) << ": " << count << " of " << all.size());
    CHECK(std::abs(count / double(all.size()) - 1.0 / 15.0) < 0.01);  // sd 0.0018
  }

  // The recipe's 0.5.
  const std::vector<RandAugmentStep> steps = draw_steps("rand-m9-mstd0.5-inc1", kViews);
  int skipped = 0;
  for (const RandAugmentStep& s : steps) skipped += s.op == RandAugmentOp::kNone;
  CHECK(std::abs(skipped / double(steps.size()) - 0.5) < 0.02);  // sd 0.0025
}

TEST_CASE("RandAugment's arguments follow timm's level-to-argument functions", "[augment]") {
  SECTION("increasing ops at m9 mstd0.5") {
    std::map<int, int> posterize_bits;
    int rotations[2] = {0, 0}, shears[2] = {0, 0}, translations[2] = {0, 0}, enhances[2] = {0, 0};
    for (const RandAugmentStep& s : draw_steps("rand-m9-mstd0.5-inc1", kViews)) {
      for (double v : s.affine) REQUIRE(std::isfinite(v));
      switch (kind_of(s)) {
        case Kind::kRotate: {
          // Magnitudes ~ N(9, 0.5) clipped to 10: 27 +- 1.5 degrees, at most 30, either way.
          const double degrees = degrees_of(s);
          REQUIRE(std::abs(degrees) <= 30.0 + 1e-9);
          REQUIRE(std::abs(degrees) >= 15.0);
          rotations[degrees > 0]++;
          break;
        }
        case Kind::kPosterize:
          posterize_bits[s.level]++;  // 4 - int(m / 10 * 4)
          break;
        case Kind::kSolarize:
          REQUIRE(s.level >= 0);  // 256 - int(m / 10 * 256): 26 at m9, 0 at m10
          REQUIRE(s.level <= 256 - static_cast<int>(0.6 * 256));  // m >= 6: 6 sd
          break;
        case Kind::kSolarizeAdd:
          REQUIRE(s.level >= static_cast<int>(0.6 * 110));  // int(m / 10 * 110): 99 at m9
          REQUIRE(s.level <= 110);
          break;
        case Kind::kColor:
        case Kind::kContrast:
        case Kind::kBrightness:
        case Kind::kSharpness:
          // 1 +- m / 10 * 0.9, either way.
          REQUIRE(s.factor >= 0.1f);
          REQUIRE(s.factor <= 1.9f);
          REQUIRE(std::abs(s.factor - 1.0f) >= 0.5f);
          enhances[s.factor > 1.0f]++;
          break;
        case Kind::kShearX:
          REQUIRE(std::abs(s.affine[1]) <= 0.3);
          shears[s.affine[1] > 0]++;
          break;
        case Kind::kShearY:
          REQUIRE(std::abs(s.affine[3]) <= 0.3);
          shears[s.affine[3] > 0]++;
          break;
        case Kind::kTranslateX:
        case Kind::kTranslateY: {
          // A fraction m / 10 * 0.45 of the view's side.
          const double pixels = s.affine[2] + s.affine[5];
          REQUIRE(std::abs(pixels) <= 0.45 * kSize + 1e-9);
          translations[pixels > 0]++;
          break;
        }
        default:
          break;
      }
    }
    for (const int* sides : {rotations, shears, translations, enhances}) {
      CHECK(sides[0] > 0);
      CHECK(std::abs(sides[0] - sides[1]) < 0.15 * (sides[0] + sides[1]));  // sd ~0.03
    }
    int posterized = 0;
    for (const auto& [level, count] : posterize_bits) {
      REQUIRE(level >= 0);
      REQUIRE(level <= 4);
      posterized += count;
    }
    // 4 - int(3.6 +- 0.2): 1, or 0 when the magnitude is clipped to 10 (2.3%).
    CHECK(posterize_bits[1] > 0.9 * posterized);
    CHECK(posterize_bits[0] > 0);
  }

  SECTION("without mstd the arguments are exact") {
    std::map<Kind, int> seen;
    for (const RandAugmentStep& s : draw_steps("rand-m9-inc1", kViews / 4)) {
      const Kind kind = kind_of(s);
      seen[kind]++;
      if (kind == Kind::kRotate) {
        const RandAugmentStep left = rotate_step(27.0, kSize, kSize);
        const RandAugmentStep right = rotate_step(-27.0, kSize, kSize);
        REQUIRE((std::memcmp(s.affine, left.affine, sizeof left.affine) == 0 ||
                 std::memcmp(s.affine, right.affine, sizeof right.affine) == 0));
      }
      if (kind == Kind::kPosterize) REQUIRE(s.level == 1);
      if (kind == Kind::kSolarize) REQUIRE(s.level == 256 - 230);
      if (kind == Kind::kSolarizeAdd) REQUIRE(s.level == 99);
      if (kind == Kind::kShearX) REQUIRE(std::abs(s.affine[1]) == 0.9 * 0.3);
      if (kind == Kind::kShearY) REQUIRE(std::abs(s.affine[3]) == 0.9 * 0.3);
      if (kind == Kind::kTranslateX) REQUIRE(std::abs(s.affine[2]) == 0.9 * 0.45 * kSize);
      if (kind == Kind::kTranslateY) REQUIRE(std::abs(s.affine[5]) == 0.9 * 0.45 * kSize);
      if (kind == Kind::kColor)
        REQUIRE((s.factor == static_cast<float>(1.0 + 0.9 * 0.9) ||
                 s.factor == static_cast<float>(1.0 - 0.9 * 0.9)));
    }
    CHECK(seen.size() == 16);  // the 15 ops and skipped steps
  }

  SECTION("timm's default ops weaken with the magnitude") {
    for (const RandAugmentStep& s : draw_steps("rand-m9", kViews / 4)) {
      const Kind kind = kind_of(s);
      if (kind == Kind::kPosterize) REQUIRE(s.level == 3);   // int(0.9 * 4)
      if (kind == Kind::kSolarize) REQUIRE(s.level == 230);  // int(0.9 * 256)
      if (kind == Kind::kSharpness) REQUIRE(s.factor == static_cast<float>(0.9 * 1.8 + 0.1));
    }
  }

  SECTION("mstd inf draws the magnitude uniformly in [0, m]") {
    double sum = 0;
    int count = 0;
    for (const RandAugmentStep& s : draw_steps("rand-m10-mstdinf", kViews, 1.0)) {
      if (kind_of(s) != Kind::kSolarizeAdd) continue;
      sum += s.level;  // int(U(0, 1) * 110): mean 54.5
      ++count;
    }
    CHECK(std::abs(sum / count - 54.5) < 3.0);  // sd 32 / sqrt(2700)

    // Below m10 the range is [0, m], not timm's whole [0, 10]: at m5, int(U(0, 0.5) * 110).
    sum = 0;
    count = 0;
    for (const RandAugmentStep& s : draw_steps("rand-m5-mstdinf", kViews, 1.0)) {
      if (kind_of(s) != Kind::kSolarizeAdd) continue;
      REQUIRE(s.level <= 55);
      sum += s.level;
      ++count;
    }
    CHECK(std::abs(sum / count - 27.0) < 1.5);  // sd 16 / sqrt(2700)
  }

  SECTION("magnitudes drawn below 0 are clipped to 0") {
    // N(1, 5) falls below 0 four times in ten; timm clips the magnitude to [0, 10] before any
    // level-to-argument function, so no argument leaves its range.
    int posterized = 0;  // the range checks below ran
    for (const RandAugmentStep& s : draw_steps("rand-m1-mstd5-inc1", kViews, 1.0)) {
      switch (kind_of(s)) {
        case Kind::kPosterize:
          REQUIRE(s.level >= 0);
          REQUIRE(s.level <= 4);
          ++posterized;
          break;
        case Kind::kSolarize:
          REQUIRE(s.level >= 0);
          REQUIRE(s.level <= 256);
          break;
        case Kind::kSolarizeAdd:
          REQUIRE(s.level >= 0);
          REQUIRE(s.level <= 110);
          break;
        case Kind::kColor:
        case Kind::kContrast:
        case Kind::kBrightness:
        case Kind::kSharpness:
          REQUIRE(std::abs(s.factor - 1.0f) <= 0.9f + 1e-6f);
          break;
        default:
          break;
      }
    }
    CHECK(posterized > 0);
  }
}

TEST_CASE("RandAugment views are reproducible, applied after the crop, and absent in evaluation",
          "[augment]") {
  AugmentConfig config;
  config.input_size = 16;
  config.three_augment = false;
  config.color_jitter = 0;
  config.rand_augment = parse_rand_augment("rand-m9-mstd0.5-inc1-n4");
  const ImageU8 image = random_image(40, 30, 5);
  int changed = 0;
  for (uint64_t stream = 0; stream < 64; ++stream) {
    deit::Rng a(3, stream), b(3, stream);
    const AugmentParams pa = sample_augment_params(config, image.height, image.width, a);
    const AugmentParams pb = sample_augment_params(config, image.height, image.width, b);
    REQUIRE(std::equal(pa.rand_augment.begin(), pa.rand_augment.end(), pb.rand_augment.begin(),
                       same_step));
    // The view is the cropped (and flipped) view with the steps applied in order.
    ImageU8 expected = apply_crop(image, pa.crop);
    if (pa.flip) expected = hflip(expected);
    for (const RandAugmentStep& step : pa.rand_augment)
      expected = rand_augment_step(expected, step);
    const ImageU8 view = augment_train(image, pa);
    REQUIRE(view.pixels == expected.pixels);
    changed += view.pixels != apply_crop(image, pa.crop).pixels;
  }
  CHECK(changed > 32);

  const AugmentParams eval = eval_augment_params(300, 400, 224, 0.875);
  for (const RandAugmentStep& step : eval.rand_augment) CHECK(step.op == RandAugmentOp::kNone);

  config.rand_augment->num_layers = deit::kernels::kMaxRandAugmentSteps + 1;
  deit::Rng rng(1);
  CHECK_THROWS_WITH(sample_augment_params(config, 40, 30, rng),
                    Catch::Contains("5 ops per view, at most 4"));
}

TEST_CASE("rotate_step gives Pillow 9.4's Image.rotate matrix bit for bit", "[augment]") {
  // From Pillow 9.4 itself: Image.new('RGB', (w, h)).rotate(angle, Image.BICUBIC) with
  // Image.Image.transform wrapped to record its data, each value printed with float.hex(). At 0
  // (and at 90 on the square image) rotate takes a fast path without a matrix: those are its
  // expressions evaluated in Python.
  struct Case {
    double degrees;
    int width, height;
    double matrix[6];
  };
  const Case cases[] = {
      {13.5,
       224,
       224,
       {0x1.f1da785f71bd2p-1, -0x1.de189a594fbbdp-3, 0x1.d3d8e1c017ae4p+4, 0x1.de189a594fbbdp-3,
        0x1.f1da785f71bd2p-1, -0x1.70d22c5c33da8p+4}},
      {-30.0,
       224,
       224,
       {0x1.bb67ae8584ca5p-1, 0x1.0000000000000p-1, -0x1.47f57169a8620p+5, -0x1.0000000000000p-1,
        0x1.bb67ae8584ca5p-1, 0x1.1c05474b2bcf0p+6}},
      {29.7,
       224,
       224,
       {0x1.bcbd451592ef5p-1, -0x1.fb598465bf619p-2, 0x1.18d18d79a3295p+6, 0x1.fb598465bf619p-2,
        0x1.bcbd451592ef5p-1, -0x1.46398cbec8980p+5}},
      {0.0, 224, 224, {0x1.0p+0, -0x0.0p+0, 0x0.0p+0, 0x0.0p+0, 0x1.0p+0, 0x0.0p+0}},
      {-7.25,
       224,
       224,
       {0x1.fbe812a0b0628p-1, 0x1.02749ae9d1846p-3, -0x1.a7a4917e01590p+3, -0x1.02749ae9d1846p-3,
        0x1.fbe812a0b0628p-1, 0x1.e0f38cb45bf60p+3}},
      {90.0, 224, 224, {0x0.0p+0, -0x1.0p+0, 0x1.cp+7, 0x1.0p+0, 0x0.0p+0, 0x0.0p+0}},
      {13.5,
       48,
       40,
       {0x1.f1da785f71bd2p-1, -0x1.de189a594fbbdp-3, 0x1.553ff7597c9e0p+2, 0x1.de189a594fbbdp-3,
        0x1.f1da785f71bd2p-1, -0x1.4334a0b198258p+2}},
      {-30.0,
       48,
       40,
       {0x1.bb67ae8584ca5p-1, 0x1.0000000000000p-1, -0x1.b2370b908e5f0p+2, -0x1.0000000000000p-1,
        0x1.bb67ae8584ca5p-1, 0x1.d5be65d91a032p+3}},
      {29.7,
       48,
       40,
       {0x1.bcbd451592ef5p-1, -0x1.fb598465bf619p-2, 0x1.a1fc0b1f3b360p+3, 0x1.fb598465bf619p-2,
        0x1.bcbd451592ef5p-1, -0x1.286fb9a747344p+3}},
      {0.0, 48, 40, {0x1.0p+0, -0x0.0p+0, 0x0.0p+0, 0x0.0p+0, 0x1.0p+0, 0x0.0p+0}},
      {90.0, 48, 40, {0x0.0p+0, -0x1.0p+0, 0x1.6p+5, 0x1.0p+0, 0x0.0p+0, -0x1.0p+2}},
  };
  for (const Case& c : cases) {
    const RandAugmentStep step = rotate_step(c.degrees, c.width, c.height);
    CHECK(step.op == RandAugmentOp::kAffine);
    for (int i = 0; i < 6; ++i) {
      INFO(c.degrees << " degrees, " << c.width << " x " << c.height << ", value " << i << ": "
                     << step.affine[i] << " vs Pillow's " << c.matrix[i]);
      CHECK(bits(step.affine[i]) == bits(c.matrix[i]));
    }
  }
  // Python's angle % 360: -30 and 330 are the same rotation, to the bit.
  const RandAugmentStep a = rotate_step(-30.0, 48, 40), b = rotate_step(330.0, 48, 40);
  CHECK(std::memcmp(a.affine, b.affine, sizeof a.affine) == 0);

  const RandAugmentStep shear = shear_x_step(0.25);
  CHECK(std::vector<double>(shear.affine, shear.affine + 6) ==
        std::vector<double>{1, 0.25, 0, 0, 1, 0});
  const RandAugmentStep shear_y = shear_y_step(-0.25);
  CHECK(std::vector<double>(shear_y.affine, shear_y.affine + 6) ==
        std::vector<double>{1, 0, 0, -0.25, 1, 0});
  const RandAugmentStep tx = translate_x_step(7.5), ty = translate_y_step(-3);
  CHECK(std::vector<double>(tx.affine, tx.affine + 6) == std::vector<double>{1, 0, 7.5, 0, 1, 0});
  CHECK(std::vector<double>(ty.affine, ty.affine + 6) == std::vector<double>{1, 0, 0, 0, 1, -3});
}

TEST_CASE("the RandAugment named ops apply one step with their argument", "[augment]") {
  const ImageU8 image = random_image(20, 30, 6, 40, 190);
  deit::Rng rng(1);
  auto step_of = [](RandAugmentOp op, int level = 0, float factor = 1.0f) {
    RandAugmentStep s;
    s.op = op;
    s.level = level;
    s.factor = factor;
    return s;
  };
  const std::vector<std::pair<std::string, RandAugmentStep>> cases = {
      {"autocontrast", step_of(RandAugmentOp::kAutoContrast)},
      {"equalize", step_of(RandAugmentOp::kEqualize)},
      {"invert", step_of(RandAugmentOp::kInvert)},
      {"posterize:3", step_of(RandAugmentOp::kPosterize, 3)},
      {"solarize", step_of(RandAugmentOp::kSolarize, 128)},
      {"solarize:77", step_of(RandAugmentOp::kSolarize, 77)},
      {"solarize-add:40", step_of(RandAugmentOp::kSolarizeAdd, 40)},
      {"sharpness:1.63", step_of(RandAugmentOp::kSharpness, 0, 1.63f)},
      {"rotate:-21.3", rotate_step(-21.3, 30, 20)},
      {"shear-x:0.27", shear_x_step(0.27)},
      {"shear-y:-0.1", shear_y_step(-0.1)},
      {"translate-x:-9.5", translate_x_step(-9.5)},
      {"translate-y:4.25", translate_y_step(4.25)},
  };
  for (const auto& [spec, step] : cases) {
    INFO(spec);
    const ImageU8 out = apply_named_op(image, spec, rng);
    CHECK(out.height == 20);
    CHECK(out.width == 30);
    CHECK(out.pixels == rand_augment_step(image, step).pixels);
    CHECK(out.pixels != image.pixels);
  }
  // Bare solarize is still 3-Augment's.
  CHECK(apply_named_op(image, "solarize", rng).pixels == solarize(image).pixels);

  auto message = [&](const std::string& spec) { return deit::test::named_op_error(image, spec); };
  CHECK_THAT(message("invert:1"), Catch::Contains("'invert' takes no argument"));
  CHECK_THAT(message("posterize"), Catch::Contains("needs 1 argument"));
  CHECK_THAT(message("posterize:2.5"), Catch::Contains("not an integer"));
  CHECK_THAT(message("posterize:9"), Catch::Contains("posterize bits must be in [0, 8]"));
  CHECK_THAT(message("solarize:257"), Catch::Contains("solarize threshold must be in [0, 256]"));
  CHECK_THAT(message("solarize:1,2"), Catch::Contains("needs 1 argument"));
  CHECK_THAT(message("solarize-add:-1"), Catch::Contains("solarize-add amount"));
  CHECK_THAT(message("sharpness:-0.5"), Catch::Contains("factor"));
  CHECK_THAT(message("rotate:left"),
             Catch::Contains("'left' is not a number") && Catch::Contains("rotate:DEGREES"));
  CHECK_THAT(message("rotate:inf"), Catch::Contains("'inf' is not a number"));
  CHECK_THAT(message("shear-x"), Catch::Contains("needs 1 argument"));
  CHECK_THAT(message("translate-y:1,2"), Catch::Contains("needs 1 argument"));
  CHECK_THAT(message("rotate"), Catch::Contains("needs 1 argument"));
}

TEST_CASE("RandAugment's enhance ops are the colour jitter's Pillow ops", "[augment]") {
  // timm's enhance ops are ImageEnhance.Color, Contrast and Brightness, as torchvision's
  // adjust_saturation, adjust_contrast and adjust_brightness on a PIL image are (those are checked
  // against Pillow in test_augment_reference.cpp).
  const ImageU8 image = random_image(12, 17, 8);
  auto step_of = [](RandAugmentOp op, float factor) {
    RandAugmentStep s;
    s.op = op;
    s.factor = factor;
    return s;
  };
  for (const float factor : {0.0f, 0.4f, 1.6f}) {
    INFO("factor " << factor);
    CHECK(rand_augment_step(image, step_of(RandAugmentOp::kColor, factor)).pixels ==
          adjust_saturation(image, factor).pixels);
    CHECK(rand_augment_step(image, step_of(RandAugmentOp::kContrast, factor)).pixels ==
          adjust_contrast(image, factor).pixels);
    CHECK(rand_augment_step(image, step_of(RandAugmentOp::kBrightness, factor)).pixels ==
          adjust_brightness(image, factor).pixels);
  }
}
