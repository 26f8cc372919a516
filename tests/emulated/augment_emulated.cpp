// augment_emulated: the GPU augmentation stage (kernels/cuda/augment_kernels.cuh: taps_kernel,
// resample_rows_kernel, resample_columns_kernel, finish_kernel, rand_augment_kernel, then
// mixup_kernel, cutmix_kernel and mix_targets_kernel), from the very source nvcc compiles, run on
// the host by the emulator of cuda_emulator.h and checked against the CPU twin
// (kernels/cpu/augment.cpp) the way the [gpu] tests (tests/test_augment_cuda.cpp) check it on a
// GPU: fresh random sources and parameters, outputs poisoned (NaN) and the workspace filled with
// 0xFF before every call, every value compared, and every comparison exact, bit for bit, as there.
// A second run under other schedules must give the same bits. CI machines have no GPU: this is what
// checks an edit to these kernels there, including out-of-bounds accesses (sources, parameters,
// workspace and outputs end at a guard page), missing barriers and misused shuffles (see
// cuda_emulator.h).
//
// What it cannot check: the device's own rounding. The host compiler evaluates
// kernels/augment_arith.h's host branch (plain operators, no FMA under -ffp-contract=off), not
// the __dmul_rn / __fadd_rn intrinsics nvcc compiles; only the [gpu] tests see those.
//
// The launches are augment.cu's, with the grids, block sizes and scratch plan of
// kernels/cuda/augment_launch.h, which both use.
//
// Usage: augment_emulated [--full] [--seed N]
//   (default)  six batches: RandomResizedCrop at S = 32 (shorter side 64 = 256 / 4, odd and
//              elongated sources, a 1-pixel line, a 1-pixel-wide box, enlarging and shrinking
//              boxes, an identity view), Simple Random Crop with reflect padding 4 at S = 48
//              (windows in the 4 corners, sources enlarged, shrunk and not resized), evaluation's
//              resize + centre crop at S = 33, one sample at S = 131 (taps_kernel's second
//              block), views of 1 and 2 pixels; every 3-Augment op with and without the flip,
//              colour jitter in random orders (factors 0 and 2.5 among them), RandAugment's
//              ops (every fifth training sample, and two batches of fine-tuning views at S = 32
//              and 5, each op first twice, random arguments and extremes); then mixup and
//              cutmix of the even batches (targets too) and of the [gpu] test's 6 x 3 x 17 x 23
//              images. About 1.5 s on one core of the development machine: the CTest entry
//              augment_emulated.
//   --full     adds S = 224 and 96 batches of sources with shorter side 256 (RandomResizedCrop,
//              Simple Random Crop, evaluation). About 10 s.
//   --seed N   repeats a run: the inputs and every schedule come from N; each run prints its
//              seed first.
// Exit status: 0 when every batch passes; 1 on a mismatch (after all batches; each FAIL line
// names the batch and what differs, and the samples that differ are listed) or at the first
// emulation failure (its message names the batch, kernel, block and thread); 2 on bad arguments.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/augment.h"
#include "kernels/cuda/augment_launch.h"
#include "tests/emulated/cuda_emulator.h"
#include "tests/emulated/test_support.h"
// The kernels, after the emulator's stand-ins for what they use.
#include "kernels/cuda/augment_kernels.cuh"

namespace deit::kernels {
namespace {

using Rng = std::mt19937_64;
using emu::tight;

int uniform_int(Rng& rng, int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}
float uniform_float(Rng& rng, float lo, float hi) {
  return std::uniform_real_distribution<float>(lo, hi)(rng);
}

// ---------------------------------------------------------------------------------------------
// Sources and parameters.

// One sample: its height x width source and everything done to it.
struct Sample {
  int height, width;
  AugmentParams p;
};

struct Batch {
  std::string name;
  int size;
  std::vector<Sample> samples;
};

// A gradient per channel plus noise: every level occurs and neighbours differ, so that every
// resampling and blur weight matters, without being pure noise.
std::vector<uint8_t> source_pixels(int height, int width, Rng& rng) {
  std::vector<uint8_t> pixels(static_cast<size_t>(height) * width * 3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c) {
        const int v = (x * (2 + c) + y * (6 - c)) % 256 + uniform_int(rng, -40, 40);
        pixels[(static_cast<size_t>(y) * width + x) * 3 + c] =
            static_cast<uint8_t>(std::clamp(v, 0, 255));
      }
  return pixels;
}

// RandomResizedCrop of the box (x, y, w, h).
AugmentParams resized_crop(int size, int x, int y, int w, int h) {
  AugmentParams p;
  p.crop.mode = CropMode::kRandomResized;
  p.crop.size = size;
  p.crop.x = x, p.crop.y = y, p.crop.w = w, p.crop.h = h;
  return p;
}

// A random box of a height x width source: any width and height, anywhere.
AugmentParams random_resized_crop(int height, int width, int size, Rng& rng) {
  const int w = uniform_int(rng, 1, width), h = uniform_int(rng, 1, height);
  return resized_crop(size, uniform_int(rng, 0, width - w), uniform_int(rng, 0, height - h), w, h);
}

// Simple Random Crop's geometry: the source resized to resized_height x resized_width, padded by
// reflection, the size x size window at (x, y) of the padded image. Evaluation's is padding 0.
AugmentParams window_crop(int size, int resized_height, int resized_width, int padding, int x,
                          int y) {
  AugmentParams p;
  p.crop.mode = CropMode::kSimpleRandom;
  p.crop.size = p.crop.w = p.crop.h = size;
  p.crop.resized_height = resized_height;
  p.crop.resized_width = resized_width;
  p.crop.padding = padding;
  p.crop.x = x, p.crop.y = y;
  return p;
}

// The shorter side resized to `side`, the longer in proportion (torchvision's Resize(int)).
std::pair<int, int> shorter_side_to(int height, int width, int side) {
  const int longer = static_cast<int>(static_cast<double>(side) * std::max(height, width) /
                                      std::min(height, width));
  return height <= width ? std::pair{side, longer} : std::pair{longer, side};
}

// Simple Random Crop (the shorter side resized to the view's size, padding 4) at a random window.
AugmentParams simple_random_crop(int height, int width, int size, Rng& rng) {
  const auto [rh, rw] = shorter_side_to(height, width, size);
  constexpr int kPadding = 4;
  return window_crop(size, rh, rw, kPadding, uniform_int(rng, 0, rw + 2 * kPadding - size),
                     uniform_int(rng, 0, rh + 2 * kPadding - size));
}

// Evaluation: the shorter side resized to int(size / ratio), the centred window.
AugmentParams eval_crop(int height, int width, int size, double ratio) {
  const auto [rh, rw] = shorter_side_to(height, width, static_cast<int>(size / ratio));
  return window_crop(size, rh, rw, 0, static_cast<int>(std::nearbyint((rw - size) / 2.0)),
                     static_cast<int>(std::nearbyint((rh - size) / 2.0)));
}

// The training chain's colour ops: `op` (blur with sigma in [0.1, 2], or the given one), the
// jitter in a random order with factors in [0.7, 1.3], or at the extremes 0 and 2.5 now and then.
void add_colour(AugmentParams& p, ThreeAugmentOp op, Rng& rng, float sigma = -1) {
  p.three_augment = op;
  if (op == ThreeAugmentOp::kBlur) p.blur_sigma = sigma >= 0 ? sigma : uniform_float(rng, 0.1, 2);
  std::shuffle(p.jitter_order.begin(), p.jitter_order.end(), rng);
  for (float* factor : {&p.brightness, &p.contrast, &p.saturation}) {
    const int draw = uniform_int(rng, 0, 9);
    *factor = draw == 0 ? 0.0f : (draw == 1 ? 2.5f : uniform_float(rng, 0.7, 1.3));
  }
}

const ThreeAugmentOp kOps[] = {ThreeAugmentOp::kNone, ThreeAugmentOp::kGrayscale,
                               ThreeAugmentOp::kSolarize, ThreeAugmentOp::kBlur};

constexpr int kRandAugmentOps = static_cast<int>(RandAugmentOp::kAffine);  // kNone not counted

// A RandAugment step of the given op with a random argument, at the extremes now and then; the
// affine ones rotate (up to 30 degrees about the centre), shear (up to 0.3) or translate (up to
// 0.45 of the view), as RandAugment draws them.
RandAugmentStep random_step(RandAugmentOp op, int size, Rng& rng) {
  RandAugmentStep s;
  s.op = op;
  const int extreme = uniform_int(rng, 0, 9);
  switch (op) {
    case RandAugmentOp::kPosterize:
      s.level = uniform_int(rng, 0, 8);
      break;
    case RandAugmentOp::kSolarize:
      s.level = uniform_int(rng, 0, 256);
      break;
    case RandAugmentOp::kSolarizeAdd:
      s.level = uniform_int(rng, 0, 110);
      break;
    case RandAugmentOp::kColor:
    case RandAugmentOp::kContrast:
    case RandAugmentOp::kBrightness:
    case RandAugmentOp::kSharpness:
      s.factor = extreme == 0 ? 0.0f : (extreme == 1 ? 1.9f : uniform_float(rng, 0.1f, 1.9f));
      break;
    case RandAugmentOp::kAffine: {
      const double half = size / 2.0, shift = uniform_float(rng, -0.45f, 0.45f) * size;
      const double shear = uniform_float(rng, -0.3f, 0.3f);
      const double angle = uniform_float(rng, -30.0f, 30.0f) * M_PI / 180.0;
      const double cos_a = std::cos(angle), sin_a = std::sin(angle);
      const double rotate[6] = {cos_a,  sin_a, half - cos_a * half - sin_a * half,
                                -sin_a, cos_a, half + sin_a * half - cos_a * half};
      const double shear_x[6] = {1, shear, 0, 0, 1, 0}, shear_y[6] = {1, 0, 0, shear, 1, 0};
      const double move_x[6] = {1, 0, shift, 0, 1, 0}, move_y[6] = {1, 0, 0, 0, 1, shift};
      const double* const kinds[] = {rotate, shear_x, shear_y, move_x, move_y};
      std::copy_n(kinds[uniform_int(rng, 0, 4)], 6, s.affine);
      break;
    }
    default:
      break;
  }
  return s;
}

// RandAugment's steps: `first` (1..kRandAugmentOps) then 1 to 3 random ones, some skipped.
void add_rand_augment(AugmentParams& p, int first, Rng& rng) {
  const int size = p.crop.size, steps = uniform_int(rng, 2, kMaxRandAugmentSteps);
  for (int j = 0; j < steps; ++j) {
    const int op = j == 0 ? first : uniform_int(rng, 0, kRandAugmentOps);
    p.rand_augment[j] = random_step(static_cast<RandAugmentOp>(op), size, rng);
  }
}

// Sample i of a training batch: the 3-Augment ops in turn, every third one flipped (so that 12
// samples in a row take every op both ways), every fifth followed by RandAugment.
Sample training_sample(int i, int height, int width, AugmentParams p, Rng& rng) {
  p.flip = i % 3 == 1;
  add_colour(p, kOps[i % 4], rng);
  if (i % 5 == 4) add_rand_augment(p, 1 + i % kRandAugmentOps, rng);
  return {height, width, p};
}

// A RandAugment view as fine-tuning makes it: no 3-Augment, no jitter; its first step takes the
// ops in turn.
Sample rand_augment_sample(int i, int height, int width, AugmentParams p, Rng& rng) {
  p.flip = i % 3 == 1;
  add_rand_augment(p, 1 + i % kRandAugmentOps, rng);
  return {height, width, p};
}

std::string describe(const Sample& s) {
  const CropParams& c = s.p.crop;
  std::string d = std::to_string(s.height) + "x" + std::to_string(s.width) + " ";
  d += c.mode == CropMode::kRandomResized
           ? "box " + std::to_string(c.w) + "x" + std::to_string(c.h) + " at (" +
                 std::to_string(c.x) + ", " + std::to_string(c.y) + ")"
           : "resized " + std::to_string(c.resized_height) + "x" + std::to_string(c.resized_width) +
                 " pad " + std::to_string(c.padding) + " window at (" + std::to_string(c.x) + ", " +
                 std::to_string(c.y) + ")";
  static const char* const kOpNames[] = {"", ", grayscale", ", solarize", ", blur"};
  d += kOpNames[static_cast<int>(s.p.three_augment)];
  static const char* const kRandOpNames[] = {"",          "autocontrast", "equalize",     "invert",
                                             "posterize", "solarize",     "solarize-add", "color",
                                             "contrast",  "brightness",   "sharpness",    "affine"};
  for (const RandAugmentStep& step : s.p.rand_augment)
    if (step.op != RandAugmentOp::kNone)
      d += std::string(", ") + kRandOpNames[static_cast<int>(step.op)];
  return d + (s.p.flip ? ", flipped" : "");
}

// RandomResizedCrop at S = 32: sources with shorter side 64 (256 scaled down by 4) both ways,
// odd, small (boxes enlarged) and elongated; a 1-pixel line; a 1-pixel-wide box, a box in the
// bottom-right corner and whole images, one of them the view's size (identity taps: the ops
// alone), blurred with a wide box.
Batch random_resized_batch(Rng& rng) {
  constexpr int S = 32;
  Batch b{"RandomResizedCrop S=32", S, {}};
  const std::pair<int, int> sources[] = {{64, 85},  {85, 64}, {97, 131}, {20, 30},
                                         {12, 200}, {150, 9}, {1, 50}};
  int i = 0;
  for (const auto& [h, w] : sources)
    b.samples.push_back(training_sample(i++, h, w, random_resized_crop(h, w, S, rng), rng));
  b.samples.push_back(training_sample(i++, 64, 85, resized_crop(S, 40, 7, 1, 50), rng));
  b.samples.push_back(training_sample(i++, 64, 85, resized_crop(S, 65, 34, 20, 30), rng));
  b.samples.push_back(training_sample(i++, 97, 131, resized_crop(S, 0, 0, 131, 97), rng));
  b.samples.push_back(training_sample(i++, 23, 31, resized_crop(S, 0, 0, 31, 23), rng));
  Sample identity = training_sample(i++, S, S, resized_crop(S, 0, 0, S, S), rng);
  add_colour(identity.p, ThreeAugmentOp::kBlur, rng, 5.5f);
  b.samples.push_back(identity);
  return b;
}

// Simple Random Crop at S = 48 with padding 4: sources shrunk, enlarged and left at their size
// (shorter side already 48: pad and window only), random windows and one in every corner of the
// padded image (so that every edge's reflection is read).
Batch simple_random_batch(Rng& rng) {
  constexpr int S = 48;
  Batch b{"Simple Random Crop S=48", S, {}};
  const std::pair<int, int> sources[] = {{64, 85}, {131, 97}, {20, 30}, {48, 57}};
  int i = 0;
  for (const auto& [h, w] : sources)
    b.samples.push_back(training_sample(i++, h, w, simple_random_crop(h, w, S, rng), rng));
  // 48 x 57 padded by 4: 56 x 65, so windows at x in [0, 17], y in [0, 8].
  for (const auto& [x, y] : {std::pair{0, 0}, std::pair{17, 0}, std::pair{0, 8}, std::pair{17, 8}})
    b.samples.push_back(training_sample(i++, 48, 57, window_crop(S, 48, 57, 4, x, y), rng));
  return b;
}

// RandAugment at S = 32 as fine-tuning draws it, and at S = 5 (the 3 x 3 filter's border is most
// of the view); every op first twice, sources enlarged, shrunk and elongated.
Batch rand_augment_batch(int S, Rng& rng) {
  Batch b{"RandAugment S=" + std::to_string(S), S, {}};
  const std::pair<int, int> sources[] = {{64, 85}, {20, 30}, {97, 131}, {12, 200}};
  for (int i = 0; i < 2 * kRandAugmentOps; ++i) {
    const auto [h, w] = sources[i % 4];
    b.samples.push_back(rand_augment_sample(i, h, w, random_resized_crop(h, w, S, rng), rng));
  }
  return b;
}

// Evaluation at S = 33 (odd): crop ratios 0.875 and 1, sources shrunk, enlarged and odd; no
// colour op, no flip, as evaluation has none.
Batch eval_batch() {
  constexpr int S = 33;
  Batch b{"eval resize + centre crop S=33", S, {}};
  for (const auto& [h, w] : {std::pair{64, 85}, std::pair{97, 40}, std::pair{20, 30}})
    for (double ratio : {0.875, 1.0}) b.samples.push_back({h, w, eval_crop(h, w, S, ratio)});
  return b;
}

// One sample at S = 131: taps_kernel's second block of columns and rows, blurred.
Batch wide_view_batch(Rng& rng) {
  constexpr int S = 131;
  Batch b{"RandomResizedCrop S=131", S, {}};
  AugmentParams p = random_resized_crop(150, 173, S, rng);
  add_colour(p, ThreeAugmentOp::kBlur, rng);
  p.flip = true;
  b.samples.push_back({150, 173, p});
  return b;
}

// A view of S = 1 or 2 pixels from sources of that size and larger, each op twice.
Batch tiny_batch(int S, Rng& rng) {
  Batch b{"tiny views S=" + std::to_string(S), S, {}};
  int i = 0;
  for (const auto& [h, w] : {std::pair{S, S}, std::pair{5, 7}})
    for (int repeat = 0; repeat < 4; ++repeat)
      b.samples.push_back(training_sample(i++, h, w, random_resized_crop(h, w, S, rng), rng));
  return b;
}

// --full: sources with shorter side 256 at S = 224 and 96, every mode.
std::vector<Batch> full_batches(Rng& rng) {
  std::vector<Batch> batches;
  const std::pair<int, int> sources[] = {{256, 341}, {341, 256}, {256, 256}, {300, 455}};
  for (int S : {224, 96}) {
    Batch rrc{"RandomResizedCrop S=" + std::to_string(S), S, {}};
    Batch src{"Simple Random Crop S=" + std::to_string(S), S, {}};
    Batch eval{"eval resize + centre crop S=" + std::to_string(S), S, {}};
    int i = 0;
    for (const auto& [h, w] : sources) {
      rrc.samples.push_back(training_sample(i, h, w, random_resized_crop(h, w, S, rng), rng));
      src.samples.push_back(training_sample(i, h, w, simple_random_crop(h, w, S, rng), rng));
      eval.samples.push_back({h, w, eval_crop(h, w, S, i % 2 == 0 ? 0.875 : 1.0)});
      ++i;
    }
    // Pillow's blur at a sigma beyond the training range: a wider box.
    src.samples.push_back(training_sample(3, 256, 341, simple_random_crop(256, 341, S, rng), rng));
    add_colour(src.samples.back().p, ThreeAugmentOp::kBlur, rng, 5.5f);
    batches.insert(batches.end(), {rrc, src, eval});
  }
  return batches;
}

// ---------------------------------------------------------------------------------------------
// The launches of augment.cu (augment_batch_cuda, mix_images_cuda, mix_targets_cuda).

// A batch packed as the GPU stage receives it: the sources back to back.
struct PackedBatch {
  std::vector<uint8_t> pixels;
  std::vector<SourceImage> sources;
  std::vector<AugmentParams> params;
};

PackedBatch pack(const Batch& b, Rng& rng) {
  PackedBatch packed;
  for (const Sample& s : b.samples) {
    SourceImage source;
    source.offset = static_cast<int64_t>(packed.pixels.size());
    source.height = s.height;
    source.width = s.width;
    const std::vector<uint8_t> pixels = source_pixels(s.height, s.width, rng);
    packed.pixels.insert(packed.pixels.end(), pixels.begin(), pixels.end());
    packed.sources.push_back(source);
    packed.params.push_back(s.p);
  }
  return packed;
}

// augment_batch_cuda's five launches -> (batch, 3, size, size).
std::vector<float> augment_batch(const PackedBatch& packed, int size) {
  std::vector<SourceImage> sources = packed.sources;
  const int64_t batch = static_cast<int64_t>(sources.size());
  const int64_t scratch_bytes =
      plan_augment_scratch(sources.data(), packed.params.data(), batch, size);
  const auto dev_pixels = tight("pixels", packed.pixels);
  const auto dev_sources = tight("sources", sources);
  const auto dev_params = tight("params", packed.params);
  const auto dev_workspace = tight<uint8_t>("workspace", static_cast<size_t>(scratch_bytes));
  const auto dev_out = tight<float>("out", static_cast<size_t>(batch) * 3 * size * size);
  const uint8_t* pixels = dev_pixels.get();
  const SourceImage* src = dev_sources.get();
  const AugmentParams* params = dev_params.get();
  uint8_t* workspace = dev_workspace.get();
  float* out = dev_out.get();

  const unsigned samples = static_cast<unsigned>(batch);
  const AugmentGrids grids = augment_grids(size);
  emu::launch({"taps_kernel", dim3(grids.taps, 2, samples), kTapThreads, 0},
              [=] { taps_kernel(src, params, size, workspace); });
  const dim3 resample_grid(grids.resample, samples);
  emu::launch({"resample_rows_kernel", resample_grid, kResampleThreads, 0},
              [=] { resample_rows_kernel(pixels, src, params, size, workspace); });
  emu::launch({"resample_columns_kernel", resample_grid, kResampleThreads, 0},
              [=] { resample_columns_kernel(src, params, size, workspace); });
  emu::launch({"finish_kernel", samples, kFinishThreads, 0},
              [=] { finish_kernel(src, params, size, workspace, out); });
  emu::launch({"rand_augment_kernel", samples, kFinishThreads, 0},
              [=] { rand_augment_kernel(src, params, size, workspace, out); });
  return dev_out.download();
}

// mix_images_cuda on a copy of `images` (batch, channels, height, width).
std::vector<float> mix_images(const MixParams& p, const std::vector<float>& images, int64_t batch,
                              int channels, int height, int width) {
  const auto dev_images = tight("images", images);
  float* data = dev_images.get();
  const int64_t n = mix_images_work(p, batch, channels, height, width);
  if (n == 0) return dev_images.download();
  const unsigned grid = gpu::grid_for(n, gpu::kThreads);
  if (p.cutmix) {
    emu::launch({"cutmix_kernel", grid, gpu::kThreads, 0},
                [=] { cutmix_kernel(data, batch, channels, height, width, p); });
  } else {
    const int64_t sample = static_cast<int64_t>(channels) * height * width;
    const auto lam = static_cast<float>(p.lambda), rest = static_cast<float>(1.0 - p.lambda);
    emu::launch({"mixup_kernel", grid, gpu::kThreads, 0},
                [=] { mixup_kernel(data, batch, sample, lam, rest); });
  }
  return dev_images.download();
}

std::vector<float> mix_targets(const MixParams& p, const std::vector<int32_t>& labels,
                               int num_classes, double smoothing, bool binarize) {
  const int64_t batch = static_cast<int64_t>(labels.size());
  const auto dev_labels = tight("labels", labels);
  const auto dev_targets = tight<float>("targets", static_cast<size_t>(batch) * num_classes);
  const int32_t* l = dev_labels.get();
  float* targets = dev_targets.get();
  const auto lam = static_cast<float>(p.lambda), rest = static_cast<float>(1.0 - p.lambda);
  emu::launch(
      {"mix_targets_kernel", gpu::grid_for(batch * num_classes, gpu::kThreads), gpu::kThreads, 0},
      [=] { mix_targets_kernel(l, batch, num_classes, smoothing, binarize, lam, rest, targets); });
  return dev_targets.download();
}

// ---------------------------------------------------------------------------------------------
// The checks.

// The whole stage against augment_batch_cpu, exactly; a second run must repeat its bits. Returns
// the reference images, for the mixing checks.
std::vector<float> check_augment(const Batch& b, Rng& rng, emu::ShapeChecks& checks) {
  checks.part("taps, resample rows, resample columns, finish, rand augment kernels");
  const PackedBatch packed = pack(b, rng);
  const int64_t batch = static_cast<int64_t>(b.samples.size());
  std::vector<float> ref(static_cast<size_t>(batch) * 3 * b.size * b.size);
  augment_batch_cpu(packed.pixels.data(), packed.sources.data(), packed.params.data(), batch,
                    b.size, ref.data());
  emu::set_context(b.name + ", augment");
  const std::vector<float> got = augment_batch(packed, b.size);
  checks.absolute("images", got, ref, 0);
  emu::set_context(b.name + ", augment, second run");
  checks.same_bits("images, second run", augment_batch(packed, b.size), got);

  const size_t per_sample = ref.size() / static_cast<size_t>(batch);
  for (size_t i = 0; i < b.samples.size(); ++i) {
    const auto first = got.begin() + static_cast<std::ptrdiff_t>(i * per_sample);
    const auto differing =
        std::inner_product(first, first + static_cast<std::ptrdiff_t>(per_sample),
                           ref.begin() + static_cast<std::ptrdiff_t>(i * per_sample), size_t{0},
                           std::plus<>(), [](float g, float r) { return g == r ? 0 : 1; });
    if (differing > 0)
      std::printf("  %s, sample %zu (%s): %zu of %zu values differ\n", b.name.c_str(), i,
                  describe(b.samples[i]).c_str(), differing, per_sample);
  }
  return ref;
}

// got and ref of several cases end to end, for one measure over all of them.
struct Compared {
  std::vector<float> got, ref;
  void add(const std::vector<float>& g, const std::vector<float>& r) {
    got.insert(got.end(), g.begin(), g.end());
    ref.insert(ref.end(), r.begin(), r.end());
  }
};

// timm's batch mixing of (batch, channels, height, width) images: mixup, cutmix boxes inside, on
// the edges and over the whole image, and lambda = 1 (no launch); the targets of each with and
// without smoothing and binarisation. All exact, as in the [gpu] test: each case's bits, then one
// measure per kernel over all its cases.
void check_mixing(const std::string& name, const std::vector<float>& images, int64_t batch,
                  int channels, int height, int width, Rng& rng, emu::ShapeChecks& checks) {
  const auto cutmix = [&](int y0, int y1, int x0, int x1) {
    MixParams p;
    p.cutmix = true;
    p.y0 = y0, p.y1 = y1, p.x0 = x0, p.x1 = x1;
    p.lambda = 1.0 - static_cast<double>(y1 - y0) * (x1 - x0) / (height * width);
    return p;
  };
  MixParams mixup;
  mixup.lambda = uniform_float(rng, 0.05f, 0.95f);
  const int y0 = uniform_int(rng, 0, height - 1), x0 = uniform_int(rng, 0, width - 1);
  const std::vector<std::pair<std::string, MixParams>> mixes = {
      {"mixup", mixup},
      {"no mixing", MixParams{}},
      {"cutmix inside",
       cutmix(y0, uniform_int(rng, y0 + 1, height), x0, uniform_int(rng, x0 + 1, width))},
      {"cutmix on the left edge", cutmix(1, height - 1, 0, width / 2 + 1)},
      {"cutmix in the bottom-right corner", cutmix(height / 2, height, width - 3, width)},
      {"cutmix of the whole image", cutmix(0, height, 0, width)},
  };
  constexpr int kClasses = 10;
  std::vector<int32_t> labels(static_cast<size_t>(batch));
  for (int32_t& l : labels) l = uniform_int(rng, 0, kClasses - 1);
  // mixup_kernel's cases (and lambda = 1), then cutmix_kernel's.
  for (const bool cutmix_cases : {false, true}) {
    checks.part(cutmix_cases ? "cutmix_kernel" : "mixup_kernel");
    Compared all;
    for (const auto& [what, p] : mixes) {
      if (p.cutmix != cutmix_cases) continue;
      emu::set_context(name + ", " + what);
      std::vector<float> ref = images;
      mix_images_cpu(p, ref.data(), batch, channels, height, width);
      const std::vector<float> got = mix_images(p, images, batch, channels, height, width);
      checks.same_bits(("images, " + what).c_str(), got, ref);
      all.add(got, ref);
    }
    checks.absolute("images", all.got, all.ref, 0);
  }
  checks.part("mix_targets_kernel");
  Compared all;
  for (const auto& [what, p] : mixes)
    for (double smoothing : {0.0, 0.1})
      for (bool binarize : {false, true}) {
        emu::set_context(name + ", targets, " + what);
        std::vector<float> ref(labels.size() * kClasses);
        mix_targets_cpu(p, labels.data(), batch, kClasses, smoothing, binarize, ref.data());
        const std::vector<float> got = mix_targets(p, labels, kClasses, smoothing, binarize);
        checks.same_bits(("targets, " + what).c_str(), got, ref);
        all.add(got, ref);
      }
  checks.absolute("targets", all.got, all.ref, 0);
}

// The smallest view check_mixing's boxes fit in.
constexpr int kMinMixedSize = 4;

bool check_batch(const Batch& b, Rng& rng) {
  emu::ShapeChecks checks(b.name + " B=" + std::to_string(b.samples.size()));
  const std::vector<float> images = check_augment(b, rng, checks);
  if (b.samples.size() % 2 == 0 && b.size >= kMinMixedSize)
    check_mixing(b.name, images, static_cast<int64_t>(b.samples.size()), 3, b.size, b.size, rng,
                 checks);
  return checks.print();
}

// The [gpu] test's mixing shape: 6 images of 3 x 17 x 23, values in [-2, 2].
bool check_mixing_alone(Rng& rng) {
  constexpr int B = 6, C = 3, H = 17, W = 23;
  emu::ShapeChecks checks("mixing B=6 C=3 H=17 W=23");
  std::vector<float> images(static_cast<size_t>(B) * C * H * W);
  for (float& v : images) v = uniform_float(rng, -2, 2);
  check_mixing("mixing of 6 x 3 x 17 x 23", images, B, C, H, W, rng, checks);
  return checks.print();
}

}  // namespace
}  // namespace deit::kernels

int main(int argc, char** argv) {
  using namespace deit::kernels;
  const emu::TestOptions options = emu::parse_test_options(argc, argv, "augment_emulated");
  Rng inputs(options.seed);

  std::vector<Batch> batches = {
      random_resized_batch(inputs),   simple_random_batch(inputs),  eval_batch(),
      wide_view_batch(inputs),        tiny_batch(1, inputs),        tiny_batch(2, inputs),
      rand_augment_batch(32, inputs), rand_augment_batch(5, inputs)};
  if (options.full) {
    const std::vector<Batch> more = full_batches(inputs);
    batches.insert(batches.end(), more.begin(), more.end());
  }
  int failed = 0;
  for (const Batch& b : batches) failed += check_batch(b, inputs) ? 0 : 1;
  failed += check_mixing_alone(inputs) ? 0 : 1;

  const emu::Totals t = emu::totals();
  std::printf(
      "%d of %zu checks failed (every batch, then the mixing alone); emulated %lld blocks, "
      "%lld warp-wide instructions, %lld thread switches\n",
      failed, batches.size() + 1, t.blocks, t.collectives, t.switches);
  return failed == 0 ? 0 : 1;
}
