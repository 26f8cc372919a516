// [gpu] checks of the GPU augmentation stage (kernels/cuda/augment.cu) against its CPU twin
// (kernels/cpu/augment.cpp, itself checked against Pillow by tests/test_augment_reference.cpp):
// same sources, same parameters, device outputs poisoned with NaN (and scratch with 0xFF) before
// every call, every value compared.
//
// Every comparison is exact, bit for bit: both sides evaluate the same integer, fixed-point and
// float expressions, each float operation rounded on its own (kernels/augment_arith.h). A
// tolerance would hide exactly the bug these tests exist for, an operation the device fuses (FMA)
// or rounds differently, which moves a value by one level in a few places only. A normalised
// value that differs is mapped back to its uint8 level (normalisation is one-to-one per channel),
// so that the report counts levels, as the Pillow reference does.
// Also: the CUDA input feed (train/input_feed.h: pinned uploads on a copy stream, two slots,
// events) delivers exactly the CPU feed's batches over whole epochs.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/augment_params.h"
#include "data/image.h"
#include "data/prefetch.h"
#include "engine/rng.h"
#include "engine/stream.h"
#include "kernels/augment.h"
#include "tests/cuda_test_util.h"
#include "tests/test_data_helpers.h"
#include "train/data_pipeline.h"
#include "train/input_feed.h"
#include "train/recipe.h"

using namespace deit;
using namespace deit::kernels;
using namespace deit::test;

namespace {

// A batch of sources and their parameters, as a source loader hands it out.
struct HostBatch {
  data::Batch batch;

  void add(const data::ImageU8& image, const AugmentParams& p) {
    batch.sources.push_back(image);
    batch.params.push_back(p);
    batch.labels.push_back(0);
    ++batch.size;
  }
};

// The batch packed as the GPU stage uploads it (train/input_feed.h).
struct Packed {
  train::PackedLayout layout;
  std::vector<uint8_t> bytes;
  int64_t size;

  explicit Packed(const HostBatch& b)
      : layout(train::packed_layout(b.batch)),
        bytes(layout.bytes),
        size(static_cast<int64_t>(b.batch.size)) {
    train::pack_batch(b.batch, layout, bytes.data());
  }
  template <typename T>
  T* at(uint8_t* base, size_t offset) const {
    return reinterpret_cast<T*>(base + offset);
  }
};

// Noise over a smooth gradient: every level occurs, and neighbours differ (resampling and blur
// weights all matter) without being pure noise.
data::ImageU8 test_image(int height, int width, Rng& rng) {
  data::ImageU8 image{height, width, std::vector<uint8_t>(static_cast<size_t>(height) * width * 3)};
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int c = 0; c < 3; ++c) {
        const int smooth = (x * (3 + c) + y * (5 - c)) % 256;
        const int v = smooth + static_cast<int>(rng.below(61)) - 30;
        image.at(y, x)[c] = static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
      }
  return image;
}

std::vector<float> run_cpu(const HostBatch& b, int size) {
  Packed p(b);
  std::vector<float> out(static_cast<size_t>(p.size) * 3 * size * size);
  uint8_t* base = p.bytes.data();
  augment_batch_cpu(base + p.layout.pixels, p.at<SourceImage>(base, p.layout.sources),
                    p.at<AugmentParams>(base, p.layout.params), p.size, size, out.data());
  return out;
}

std::vector<float> run_gpu(const HostBatch& b, int size, const Stream& stream) {
  Packed p(b);
  uint8_t* host = p.bytes.data();
  const int64_t scratch =
      plan_augment_cuda(p.at<SourceImage>(host, p.layout.sources),
                        p.at<AugmentParams>(host, p.layout.params), p.size, size);
  const DeviceBuffer<uint8_t> packed(p.bytes);
  DeviceBuffer<uint8_t> workspace(static_cast<size_t>(scratch));  // 0xFF: unwritten scratch shows
  F32Buffer out(static_cast<size_t>(p.size) * 3 * size * size);   // NaN
  uint8_t* base = packed.get();
  augment_batch_cuda(base + p.layout.pixels, p.at<SourceImage>(base, p.layout.sources),
                     p.at<AugmentParams>(base, p.layout.params), p.size, size, out.get(),
                     workspace.get(), stream);
  stream.sync();
  return out.download();
}

// The uint8 level of a normalised value of channel c, or -1 when it is no level's value.
int level_of(float v, int c) {
  static const std::vector<std::vector<float>> tables = [] {
    std::vector<std::vector<float>> t(3, std::vector<float>(256));
    std::vector<uint8_t> pixel(3);
    std::vector<float> planes(3);
    for (int level = 0; level < 256; ++level) {
      pixel.assign(3, static_cast<uint8_t>(level));
      normalize_cpu(pixel.data(), 1, 1, planes.data());
      for (int ch = 0; ch < 3; ++ch) t[ch][level] = planes[ch];
    }
    return t;
  }();
  for (int level = 0; level < 256; ++level)
    if (tables[c][level] == v) return level;
  return -1;
}

// Compares two normalised batches (B, 3, size, size): they must be equal. A value that differs is
// described by its uint8 level, so that the report says how far off the stage is.
void check_exact(const std::string& what, const std::vector<float>& got,
                 const std::vector<float>& ref, int size) {
  REQUIRE(got.size() == ref.size());
  const size_t plane = static_cast<size_t>(size) * size;
  size_t differing = 0, not_a_level = 0;
  int worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == ref[i]) continue;
    ++differing;
    const int c = static_cast<int>(i / plane % 3);
    const int g = level_of(got[i], c), r = level_of(ref[i], c);
    if (g < 0) {
      ++not_a_level;
    } else {
      worst = std::max(worst, std::abs(g - r));
    }
  }
  INFO(what << ": " << differing << " of " << got.size() << " values differ; " << not_a_level
            << " of them are no level (NaN: never written?), the others by at most " << worst
            << " level(s)");
  CHECK(differing == 0);
}

// A size x size source viewed whole: the crop resamples nothing (identity taps), so what follows
// is the op alone.
AugmentParams identity_view(int size) {
  AugmentParams p;
  p.crop.mode = CropMode::kRandomResized;
  p.crop.size = p.crop.w = p.crop.h = size;
  return p;
}

// What the input feed's cases compare CPU and CUDA feeds on: a synthetic dataset of 4 classes of
// 48-pixel images, and the deit3_tiny recipe's options at 32 pixels, 2 workers, no repeated
// augmentation.
struct FeedDataset {
  std::string root;
  train::TrainOptions options;
};

FeedDataset feed_dataset(const TempDir& dir, int train_per_class, int val_per_class,
                         int64_t batch_size) {
  data::SyntheticOptions synthetic;
  synthetic.image_size = 48;
  synthetic.num_classes = 4;
  synthetic.train_per_class = train_per_class;
  synthetic.val_per_class = val_per_class;
  FeedDataset d{write_synthetic_dataset(dir, synthetic), train::recipe_for("deit3_tiny")};
  d.options.model.input_size = 32;
  d.options.batch_size = batch_size;
  d.options.workers = 2;
  d.options.repeated_aug = false;
  return d;
}

}  // namespace

TEST_CASE("cuda augmentation: each op alone equals the CPU twin", "[gpu][augment]") {
  Stream stream;
  Rng rng(6001);
  for (int size : {1, 2, 37, 224}) {
    const data::ImageU8 image = test_image(size, size, rng);
    struct Case {
      std::string name;
      AugmentParams p;
    };
    std::vector<Case> cases;
    cases.push_back({"identity", identity_view(size)});
    Case flip{"flip", identity_view(size)};
    flip.p.flip = true;
    cases.push_back(flip);
    for (ThreeAugmentOp op : {ThreeAugmentOp::kGrayscale, ThreeAugmentOp::kSolarize}) {
      Case c{op == ThreeAugmentOp::kGrayscale ? "grayscale" : "solarize", identity_view(size)};
      c.p.three_augment = op;
      cases.push_back(c);
    }
    for (float sigma : {0.0f, 0.1f, 0.77f, 1.3f, 2.0f, 5.5f}) {
      Case c{"blur " + std::to_string(sigma), identity_view(size)};
      c.p.three_augment = ThreeAugmentOp::kBlur;
      c.p.blur_sigma = sigma;
      cases.push_back(c);
    }
    for (float factor : {0.0f, 0.7f, 1.0f, 1.2999f, 2.5f}) {
      Case b{"brightness " + std::to_string(factor), identity_view(size)};
      b.p.brightness = factor;
      Case c{"contrast " + std::to_string(factor), identity_view(size)};
      c.p.contrast = factor;
      Case s{"saturation " + std::to_string(factor), identity_view(size)};
      s.p.saturation = factor;
      cases.insert(cases.end(), {b, c, s});
    }
    // RandAugment's ops, each with arguments at its ends and inside.
    auto step_case = [&](const std::string& name, RandAugmentStep step) {
      Case c{name, identity_view(size)};
      c.p.rand_augment[0] = step;
      cases.push_back(c);
    };
    for (RandAugmentOp op :
         {RandAugmentOp::kAutoContrast, RandAugmentOp::kEqualize, RandAugmentOp::kInvert}) {
      RandAugmentStep step;
      step.op = op;
      step_case("rand op " + std::to_string(static_cast<int>(op)), step);
    }
    const std::pair<RandAugmentOp, std::vector<int>> levels[] = {
        {RandAugmentOp::kPosterize, {0, 1, 4, 8}},
        {RandAugmentOp::kSolarize, {0, 100, 256}},
        {RandAugmentOp::kSolarizeAdd, {0, 40, 110}}};
    for (const auto& [op, values] : levels)
      for (int level : values) {
        RandAugmentStep step;
        step.op = op;
        step.level = level;
        step_case(
            "rand op " + std::to_string(static_cast<int>(op)) + " level " + std::to_string(level),
            step);
      }
    for (RandAugmentOp op : {RandAugmentOp::kColor, RandAugmentOp::kContrast,
                             RandAugmentOp::kBrightness, RandAugmentOp::kSharpness})
      for (float factor : {0.0f, 0.1f, 0.55f, 1.0f, 1.9f}) {
        RandAugmentStep step;
        step.op = op;
        step.factor = factor;
        step_case(
            "rand op " + std::to_string(static_cast<int>(op)) + " factor " + std::to_string(factor),
            step);
      }
    const double half = size / 2.0, turn = 0.5, cos_t = std::cos(turn), sin_t = std::sin(turn);
    const std::vector<std::array<double, 6>> matrices = {
        {cos_t, sin_t, half - cos_t * half - sin_t * half, -sin_t, cos_t,
         half + sin_t * half - cos_t * half},
        {1, 0.3, 0, 0, 1, 0},
        {1, 0, 0, -0.27, 1, 0},
        {1, 0, 0.45 * size, 0, 1, 0},
        {1, 0, 0, 0, 1, -7.25}};
    for (const auto& m : matrices) {
      RandAugmentStep step;
      step.op = RandAugmentOp::kAffine;
      std::copy(m.begin(), m.end(), step.affine);
      step_case("affine " + std::to_string(m[1]) + " " + std::to_string(m[2]), step);
    }
    for (const Case& c : cases) {
      INFO("size " << size << ", " << c.name);
      HostBatch batch;
      batch.add(image, c.p);
      check_exact(c.name, run_gpu(batch, size, stream), run_cpu(batch, size), size);
    }
  }
}

TEST_CASE("cuda augmentation: crops without resampling and reflect padding are exact",
          "[gpu][augment]") {
  Stream stream;
  Rng rng(6002);
  // RandomResizedCrop of a box the output size: a plain crop.
  const data::ImageU8 image = test_image(45, 61, rng);
  HostBatch boxes;
  for (int i = 0; i < 8; ++i) {
    AugmentParams p = identity_view(20);
    p.crop.x = static_cast<int>(rng.below(61 - 20 + 1));
    p.crop.y = static_cast<int>(rng.below(45 - 20 + 1));
    p.flip = i % 2 == 1;
    boxes.add(image, p);
  }
  check_exact("plain crops", run_gpu(boxes, 20, stream), run_cpu(boxes, 20), 20);
  // Simple Random Crop whose resize changes nothing (shorter side already the size): pad + crop,
  // windows in every corner so that the reflection of every edge is read.
  const data::ImageU8 square = test_image(16, 23, rng);
  HostBatch windows;
  for (int y : {0, 4, 8})
    for (int x : {0, 7, 15}) {
      AugmentParams p;
      p.crop.mode = CropMode::kSimpleRandom;
      p.crop.size = p.crop.w = p.crop.h = 16;
      p.crop.resized_height = 16;
      p.crop.resized_width = 23;
      p.crop.padding = 4;
      p.crop.x = x;
      p.crop.y = y;
      p.flip = (x + y) % 2 == 1;
      windows.add(square, p);
    }
  check_exact("reflect-padded windows", run_gpu(windows, 16, stream), run_cpu(windows, 16), 16);
}

TEST_CASE("cuda augmentation: resized crops of awkward sources match the CPU twin",
          "[gpu][augment]") {
  Stream stream;
  Rng rng(6003);
  struct Source {
    int height, width, size;
  };
  // Shorter side 256 at 224 and 128; odd sizes; sources smaller than the crop (enlarging);
  // very elongated both ways; a one-pixel line.
  const std::vector<Source> shapes = {{256, 341, 224}, {341, 256, 128}, {97, 131, 61}, {20, 30, 64},
                                      {12, 700, 32},   {900, 9, 32},    {1, 50, 8}};
  for (const Source& s : shapes) {
    const data::ImageU8 image = test_image(s.height, s.width, rng);
    for (CropMode mode : {CropMode::kRandomResized, CropMode::kSimpleRandom}) {
      data::AugmentConfig config;
      config.input_size = s.size;
      config.crop = mode;
      HostBatch batch;
      for (int i = 0; i < 5; ++i) {
        AugmentParams p;
        p.crop = data::sample_crop_params(config, s.height, s.width, rng);
        p.flip = i % 2 == 0;
        batch.add(image, p);
      }
      // Evaluation's resize + centre crop.
      for (double ratio : {1.0, 0.875})
        batch.add(image, data::eval_augment_params(s.height, s.width, s.size, ratio));
      INFO(s.height << "x" << s.width << " -> " << s.size
                    << (mode == CropMode::kRandomResized ? " rrc" : " src"));
      check_exact("resized crops", run_gpu(batch, s.size, stream), run_cpu(batch, s.size),
                      s.size);
    }
  }
  // Batch 1.
  HostBatch one;
  one.add(test_image(256, 300, rng), data::eval_augment_params(256, 300, 224, 1.0));
  check_exact("batch of one", run_gpu(one, 224, stream), run_cpu(one, 224), 224);
}

TEST_CASE("cuda augmentation: the whole training chain matches the CPU twin", "[gpu][augment]") {
  Stream stream;
  Rng rng(6004);
  for (int size : {224, 96, 33})
    for (CropMode mode : {CropMode::kRandomResized, CropMode::kSimpleRandom})
      for (bool fine_tune : {false, true}) {
        data::AugmentConfig config;
        config.input_size = size;
        config.crop = mode;
        if (fine_tune) {  // --aa rand-m9-mstd0.5-inc1 in place of 3-Augment and the jitter
          config.rand_augment = data::RandAugmentConfig{};
          config.three_augment = false;
          config.color_jitter = 0;
        }
        HostBatch batch;
        // An odd batch of mixed sizes, every 3-Augment op and jitter order among them (or, for a
        // fine-tune, RandAugment's ops).
        for (int i = 0; i < 31; ++i) {
          const int h = 16 + static_cast<int>(rng.below(300));
          const int w = 16 + static_cast<int>(rng.below(300));
          batch.add(test_image(h, w, rng), data::sample_augment_params(config, h, w, rng));
        }
        INFO("size " << size << (mode == CropMode::kRandomResized ? " rrc" : " src")
                     << (fine_tune ? " RandAugment" : ""));
        const std::vector<float> first = run_gpu(batch, size, stream);
        check_exact("whole chain", first, run_cpu(batch, size), size);
        check_same_bits("a second run", first, run_gpu(batch, size, stream));
      }
}

TEST_CASE("cuda mixup and cutmix match the CPU twins", "[gpu][augment]") {
  Stream stream;
  Rng rng(6005);
  const int B = 6, C = 3, H = 17, W = 23, K = 10;
  std::vector<MixParams> mixes(5);
  mixes[0].lambda = 0.3125;  // mixup
  mixes[1].lambda = 0.9;     // mixup
  mixes[2].cutmix = true;    // cutmix, box on the left edge
  mixes[2].y0 = 3, mixes[2].y1 = 11, mixes[2].x0 = 0, mixes[2].x1 = 19;
  mixes[2].lambda = 1.0 - 8.0 * 19.0 / (H * W);
  mixes[3].cutmix = true;  // cutmix, box in the bottom-right corner
  mixes[3].y0 = 12, mixes[3].y1 = H, mixes[3].x0 = 20, mixes[3].x1 = W;
  mixes[3].lambda = 1.0 - 5.0 * 3.0 / (H * W);
  mixes[4] = MixParams{};  // no mixing
  for (const MixParams& mix : mixes)
    for (int batch : {2, B}) {
      INFO("cutmix " << mix.cutmix << " lambda " << mix.lambda << " batch " << batch);
      std::vector<float> images = random_f32(rng, static_cast<size_t>(batch) * C * H * W, -2, 2);
      F32Buffer d_images(images);
      mix_images_cuda(mix, d_images.get(), batch, C, H, W, stream);
      stream.sync();
      mix_images_cpu(mix, images.data(), batch, C, H, W);
      check_same_bits("images", d_images.download(), images);

      std::vector<int32_t> labels(batch);
      for (int32_t& l : labels) l = static_cast<int32_t>(rng.below(K));
      const DeviceBuffer<int32_t> d_labels(labels);
      for (double smoothing : {0.0, 0.1})
        for (bool binarize : {false, true}) {
          std::vector<float> targets(static_cast<size_t>(batch) * K);
          mix_targets_cpu(mix, labels.data(), batch, K, smoothing, binarize, targets.data());
          F32Buffer d_targets(targets.size());
          mix_targets_cuda(mix, d_labels.get(), batch, K, smoothing, binarize, d_targets.get(),
                           stream);
          stream.sync();
          check_same_bits("targets", d_targets.download(), targets);
        }
    }
  std::vector<float> odd(3 * C * H * W);
  F32Buffer d_odd(odd);
  CHECK_THROWS_AS(mix_images_cuda(mixes[0], d_odd.get(), 3, C, H, W, stream),
                  std::invalid_argument);
}

TEST_CASE("cuda input feed delivers the CPU feed's batches over whole epochs", "[gpu][augment]") {
  TempDir dir;
  // 36 training images: 4 full batches of 8 and a dropped remainder; 12 validation images:
  // batches of 8 and 4.
  const auto [root, o] = feed_dataset(dir, 9, 3, 8);
  auto split = [&](const char* name) {
    return std::shared_ptr<const data::ImageSource>(data::open_dataset_split(root, name));
  };
  auto cpu_loader = train::make_train_loader(split("train"), o, {}, data::PixelFormat::kSource);
  auto gpu_loader = train::make_train_loader(split("train"), o, {}, data::PixelFormat::kSource);
  auto cpu_val =
      train::make_eval_loader(split("val"), 32, 0.875, 8, 2, {}, data::PixelFormat::kSource);
  auto gpu_val =
      train::make_eval_loader(split("val"), 32, 0.875, 8, 2, {}, data::PixelFormat::kSource);
  train::InputFeed cpu_feed(*cpu_loader, Device::cpu(), 32);
  train::InputFeed gpu_feed(*gpu_loader, Device::cuda(0), 32);
  train::InputFeed cpu_eval(*cpu_val, Device::cpu(), 32);
  train::InputFeed gpu_eval(*gpu_val, Device::cuda(0), 32);

  auto compare_epoch = [](train::InputFeed& cpu, train::InputFeed& gpu, uint64_t epoch,
                          bool prefetch) {
    cpu.start_epoch(epoch);
    gpu.start_epoch(epoch);
    int batches = 0;
    while (const train::FeedBatch* want = cpu.next()) {
      const train::FeedBatch* got = gpu.next();
      REQUIRE(got != nullptr);
      if (prefetch) gpu.prefetch();
      INFO("epoch " << epoch << " batch " << batches);
      CHECK(got->number == want->number);
      REQUIRE(got->size == want->size);
      CHECK(*got->labels == *want->labels);
      // Reading the images waits for the compute stream, which waited for the batch's upload on
      // the feed's copy stream: only then may the labels be read from another stream.
      check_exact("feed images", got->images.to_vector<float>(),
                      want->images.to_vector<float>(), 32);
      std::vector<int32_t> device_labels(got->size);
      DEIT_CUDA_CHECK(cudaMemcpy(device_labels.data(), got->device_labels,
                                 got->size * sizeof(int32_t), cudaMemcpyDeviceToHost));
      CHECK(device_labels == *want->labels);
      ++batches;
    }
    CHECK(gpu.next() == nullptr);
    return batches;
  };
  CHECK(compare_epoch(cpu_feed, gpu_feed, 0, true) == 4);
  CHECK(compare_epoch(cpu_feed, gpu_feed, 1, false) == 4);
  // An epoch abandoned with a batch staged, then a fresh one.
  gpu_feed.start_epoch(2);
  REQUIRE(gpu_feed.next() != nullptr);
  gpu_feed.prefetch();
  CHECK(compare_epoch(cpu_feed, gpu_feed, 3, true) == 4);
  CHECK(compare_epoch(cpu_eval, gpu_eval, 0, true) == 2);
}

TEST_CASE("cuda input feeds refill a pinned buffer only after its upload when nothing is read back",
          "[gpu][augment]") {
  // The feed packs batch n+2 into the pinned buffer that batch n was uploaded from. Nothing in
  // a training loop waits for that upload in between (the step's one wait comes later, and a
  // loop that reads nothing back between batches has none), so the feed must itself wait for the
  // upload before it packs: else the copy, still queued, uploads batch n+2's bytes as batch n's.
  // Each batch's images and device labels are copied aside on the compute stream, and read only
  // at the end. The emulated device shows the missing wait where both the compute stream and the
  // feed's copy stream run late (a stream that runs early runs what it waits for at once): each
  // feed has a copy stream of its own, so of two feeds one has a late one. Under the
  // DEIT_EMULATED_EAGER setting that runs the compute stream early, the upload runs when its
  // batch is handed out, and only a GPU can show the missing wait.
  TempDir dir;
  // 20 training images: 5 batches of 4, each pinned slot used thrice or twice.
  const auto [root, o] = feed_dataset(dir, 5, 1, 4);
  const auto train_split =
      std::shared_ptr<const data::ImageSource>(data::open_dataset_split(root, "train"));
  auto cpu_loader = train::make_train_loader(train_split, o, {}, data::PixelFormat::kSource);
  auto first_loader = train::make_train_loader(train_split, o, {}, data::PixelFormat::kSource);
  auto second_loader = train::make_train_loader(train_split, o, {}, data::PixelFormat::kSource);
  train::InputFeed cpu_feed(*cpu_loader, Device::cpu(), 32);
  train::InputFeed first_feed(*first_loader, Device::cuda(0), 32);
  train::InputFeed second_feed(*second_loader, Device::cuda(0), 32);

  std::vector<std::vector<float>> want_images;
  std::vector<std::vector<int32_t>> want_labels;
  cpu_feed.start_epoch(0);
  while (const train::FeedBatch* want = cpu_feed.next()) {
    want_images.push_back(want->images.to_vector<float>());
    want_labels.push_back(*want->labels);
  }
  REQUIRE(want_images.size() == 5);

  int feed_index = 0;
  for (train::InputFeed* feed : {&first_feed, &second_feed}) {
    std::vector<Tensor> images, labels;
    feed->start_epoch(0);
    while (const train::FeedBatch* got = feed->next()) {
      feed->prefetch();
      images.push_back(got->images.clone());
      const int64_t n = static_cast<int64_t>(got->size);
      labels.push_back(Tensor::empty({n}, DType::i32, Device::cuda(0)));
      DEIT_CUDA_CHECK(cudaMemcpyAsync(labels.back().raw_data(), got->device_labels,
                                      got->size * sizeof(int32_t), cudaMemcpyDeviceToDevice,
                                      compute_stream(0)));
    }
    REQUIRE(images.size() == want_images.size());
    for (size_t i = 0; i < images.size(); ++i) {
      INFO("feed " << feed_index << ", batch " << i);
      CHECK(labels[i].to_vector<int32_t>() == want_labels[i]);
      check_exact("feed images", images[i].to_vector<float>(), want_images[i], 32);
    }
    ++feed_index;
  }
}

TEST_CASE("a cuda input feed asked to prefetch again stages the next batch only once",
          "[gpu][augment]") {
  // A loop may prefetch more than once between steps (say, before and after logging); a second
  // call that packed the batch after the staged one over it would skip a batch.
  TempDir dir;
  const auto [root, o] = feed_dataset(dir, 3, 1, 4);  // 12 training images: 3 batches of 4
  const auto train_split =
      std::shared_ptr<const data::ImageSource>(data::open_dataset_split(root, "train"));
  auto cpu_loader = train::make_train_loader(train_split, o, {}, data::PixelFormat::kSource);
  auto gpu_loader = train::make_train_loader(train_split, o, {}, data::PixelFormat::kSource);
  train::InputFeed cpu_feed(*cpu_loader, Device::cpu(), 32);
  train::InputFeed gpu_feed(*gpu_loader, Device::cuda(0), 32);
  cpu_feed.start_epoch(0);
  gpu_feed.start_epoch(0);
  gpu_feed.prefetch();
  gpu_feed.prefetch();
  int batches = 0;
  while (const train::FeedBatch* want = cpu_feed.next()) {
    const train::FeedBatch* got = gpu_feed.next();
    REQUIRE(got != nullptr);
    gpu_feed.prefetch();
    gpu_feed.prefetch();
    INFO("batch " << batches);
    CHECK(got->number == want->number);
    CHECK(*got->labels == *want->labels);
    check_exact("feed images", got->images.to_vector<float>(), want->images.to_vector<float>(), 32);
    ++batches;
  }
  CHECK(batches == 3);
  CHECK(gpu_feed.next() == nullptr);
}

TEST_CASE("cuda augmentation planning rejects bad parameters before any launch", "[augment]") {
  const int H = 30, W = 40, S = 16;
  std::vector<SourceImage> sources(1);
  sources[0].height = H;
  sources[0].width = W;
  auto plan = [&](const AugmentParams& p) { return plan_augment_cuda(sources.data(), &p, 1, S); };
  AugmentParams good = identity_view(S);
  CHECK(plan(good) > 0);
  AugmentParams box = good;
  box.crop.x = W - S + 1;
  CHECK_THROWS_WITH(plan(box), Catch::Contains("not inside the 40x30 image"));
  AugmentParams size = good;
  size.crop.size = S + 1;
  CHECK_THROWS_WITH(plan(size), Catch::Contains("the view is 17 pixels"));
  AugmentParams pad = good;
  pad.crop.mode = CropMode::kSimpleRandom;
  pad.crop.resized_height = 16;
  pad.crop.resized_width = 21;
  pad.crop.padding = 16;
  CHECK_THROWS_WITH(plan(pad), Catch::Contains("reflect padding"));
  pad.crop.padding = 2;
  pad.crop.x = 10;                                                              // 10 + 16 > 21 + 4
  CHECK_THROWS_WITH(plan(pad), Catch::Contains("not inside the 25x20 image"));  // padded
  AugmentParams sigma = good;
  sigma.blur_sigma = -1.0f;
  CHECK_THROWS_WITH(plan(sigma), Catch::Contains("blur sigma"));
  AugmentParams factor = good;
  factor.contrast = std::nanf("");
  CHECK_THROWS_WITH(plan(factor), Catch::Contains("contrast factor"));
  // RandAugment steps: the check is all that stands between a bad step and a kernel (a posterize
  // of 9 bits would shift by a negative amount on the device).
  auto with_step = [&](RandAugmentStep step) {
    AugmentParams p = good;
    p.rand_augment[1] = step;
    return p;
  };
  RandAugmentStep posterize;
  posterize.op = RandAugmentOp::kPosterize;
  posterize.level = 9;
  CHECK_THROWS_WITH(plan(with_step(posterize)), Catch::Contains("posterize bits"));
  RandAugmentStep unknown;
  unknown.op = static_cast<RandAugmentOp>(99);
  CHECK_THROWS_WITH(plan(with_step(unknown)), Catch::Contains("unknown RandAugment op 99"));
  RandAugmentStep affine;
  affine.op = RandAugmentOp::kAffine;
  affine.affine[2] = std::nan("");
  CHECK_THROWS_WITH(plan(with_step(affine)), Catch::Contains("affine matrix must be finite"));
  RandAugmentStep sharpness;
  sharpness.op = RandAugmentOp::kSharpness;
  sharpness.factor = -0.5f;
  CHECK_THROWS_WITH(plan(with_step(sharpness)), Catch::Contains("enhance factor"));

  // Scratch offsets: in order, aligned, each sample's region apart from the next.
  std::vector<SourceImage> many(3, sources[0]);
  std::vector<AugmentParams> params(3, good);
  const int64_t total = plan_augment_cuda(many.data(), params.data(), 3, S);
  CHECK(many[0].scratch_offset == 0);
  CHECK(many[1].scratch_offset > 0);
  CHECK(many[2].scratch_offset - many[1].scratch_offset == many[1].scratch_offset);
  CHECK(total == 3 * many[1].scratch_offset);
  CHECK(many[1].scratch_offset % 256 == 0);
}
