// The CPU side of the GPU augmentation stage: the batch twin of the augment kernels, the loaders
// that hand out sources and parameters instead of augmented floats (what the GPU stage reads),
// evaluation's transform as a crop, the binarised targets, and `deit bench data --device cpu`.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/augment_params.h"
#include "data/image_source.h"
#include "data/mixup.h"
#include "data/prefetch.h"
#include "data/transforms.h"
#include "engine/rng.h"
#include "kernels/augment.h"
#include "kernels/augment_fused.h"
#include "tests/cli_runner.h"
#include "tests/scoped_environment.h"
#include "tests/test_data_helpers.h"
#include "train/data_pipeline.h"
#include "train/input_feed.h"
#include "train/recipe.h"

using namespace deit;

namespace {

data::ImageU8 noise_image(int height, int width, Rng& rng) {
  data::ImageU8 image{height, width, std::vector<uint8_t>(static_cast<size_t>(height) * width * 3)};
  for (uint8_t& v : image.pixels) v = static_cast<uint8_t>(rng.below(256));
  return image;
}

// A synthetic dataset of 3 classes at 40 pixels a side, 6 training images (4 batches of 4 and 2
// left over) and 3 val images each, written under `dir`; `split` opens one of its splits.
struct SmallDataset {
  std::string root;
  std::shared_ptr<const data::ImageSource> split(const char* name) const {
    return std::shared_ptr<const data::ImageSource>(data::open_dataset_split(root, name));
  }
};

SmallDataset small_dataset(const test::TempDir& dir) {
  data::SyntheticOptions synthetic;
  synthetic.image_size = 40;
  synthetic.num_classes = 3;
  synthetic.train_per_class = 6;
  synthetic.val_per_class = 3;
  return {test::write_synthetic_dataset(dir, synthetic)};
}

// deit3_tiny's recipe at input 24, batches of 4.
train::TrainOptions small_run(int workers) {
  train::TrainOptions o = train::recipe_for("deit3_tiny");
  o.model.input_size = 24;
  o.batch_size = 4;
  o.workers = workers;
  return o;
}

}  // namespace

TEST_CASE("the batch twin augments each packed source as augment_train + normalize do",
          "[augment]") {
  Rng rng(7001);
  data::AugmentConfig config;
  config.input_size = 24;
  data::Batch batch;
  std::vector<float> expected;
  for (int i = 0; i < 5; ++i) {
    const int h = 10 + static_cast<int>(rng.below(60)), w = 10 + static_cast<int>(rng.below(60));
    batch.sources.push_back(noise_image(h, w, rng));
    batch.params.push_back(data::sample_augment_params(config, h, w, rng));
    batch.labels.push_back(i);
    ++batch.size;
    std::vector<float> planes(3 * 24 * 24);
    data::normalize(data::augment_train(batch.sources.back(), batch.params.back()), planes.data());
    expected.insert(expected.end(), planes.begin(), planes.end());
  }
  const train::PackedLayout layout = train::packed_layout(batch);
  // Each part starts on 16 bytes, as train/input_feed.h promises for the buffer the GPU reads its
  // arrays from (5 labels are 20 bytes: unpadded, the pixels would start off a boundary).
  CHECK(layout.sources % 16 == 0);
  CHECK(layout.labels % 16 == 0);
  CHECK(layout.pixels % 16 == 0);
  std::vector<uint8_t> packed(layout.bytes);
  train::pack_batch(batch, layout, packed.data());
  const auto* sources =
      reinterpret_cast<const kernels::SourceImage*>(packed.data() + layout.sources);
  auto* params = reinterpret_cast<kernels::AugmentParams*>(packed.data() + layout.params);
  const auto* labels = reinterpret_cast<const int32_t*>(packed.data() + layout.labels);
  CHECK(std::vector<int32_t>(labels, labels + 5) == batch.labels);
  CHECK(sources[4].height == batch.sources[4].height);
  std::vector<float> got(expected.size());
  kernels::augment_batch_cpu(packed.data() + layout.pixels, sources, params, 5, 24, got.data());
  CHECK(got == expected);

  params[3].crop.w = 500;  // outside its source
  CHECK_THROWS_WITH(
      kernels::augment_batch_cpu(packed.data() + layout.pixels, sources, params, 5, 24, got.data()),
      Catch::Contains("not inside"));
}

TEST_CASE("evaluation's crop parameters give torchvision's resize + centre crop", "[augment]") {
  Rng rng(7002);
  for (const auto& [h, w] : std::vector<std::pair<int, int>>{{40, 60}, {61, 33}, {50, 50}, {9, 90}})
    for (double ratio : {1.0, 0.875, 0.5}) {
      INFO(h << "x" << w << " ratio " << ratio);
      const data::ImageU8 image = noise_image(h, w, rng);
      const data::AugmentParams p = data::eval_augment_params(h, w, 8, ratio);
      CHECK(p.crop.padding == 0);
      CHECK_FALSE(p.flip);
      const data::ImageU8 reference =
          data::center_crop(data::resize_shorter_side(image, static_cast<int>(8 / ratio)), 8);
      CHECK(data::eval_transform(image, 8, ratio).pixels == reference.pixels);
      // With the identity colour ops of a default AugmentParams, the whole-view path agrees.
      CHECK(data::augment_train(image, p).pixels == reference.pixels);
    }
  CHECK_THROWS_WITH(data::eval_augment_params(10, 10, 8, 1.5),
                    Catch::Contains("--eval-crop-ratio must be in (0, 1], got 1.5"));
  CHECK_THROWS_WITH(data::eval_augment_params(0, 10, 8, 1.0), Catch::Contains("empty"));
}

TEST_CASE("binarised targets are the mixed targets thresholded at 0", "[augment]") {
  data::MixParams mix;
  mix.lambda = 0.7;
  const int32_t labels[4] = {0, 2, 2, 1};
  const double smoothing = 0.1;
  std::vector<float> soft(4 * 3), hard(4 * 3);
  data::mix_targets(mix, labels, 4, 3, smoothing, soft.data());
  data::mix_targets(mix, labels, 4, 3, smoothing, hard.data(), true);
  for (size_t i = 0; i < soft.size(); ++i) CHECK(hard[i] == (soft[i] > 0.0f ? 1.0f : 0.0f));
  data::mix_targets(mix, labels, 4, 3, 0.0, hard.data(), true);
  // Without smoothing only the two mixed classes are on: row 0 mixes classes 0 and 1.
  CHECK(hard[0] == 1.0f);
  CHECK(hard[1] == 1.0f);
  CHECK(hard[2] == 0.0f);
}

TEST_CASE("the loaders take the run's sampling and crop settings and keep whole training batches",
          "[augment][data]") {
  test::TempDir dir;
  const SmallDataset dataset = small_dataset(dir);  // 18 training images, 9 val
  auto split = [&](const char* name) { return dataset.split(name); };
  train::TrainOptions o = small_run(1);
  // Each epoch's batches, as the dataset index of each of their samples.
  auto epoch = [](data::PrefetchLoader& loader) {
    std::vector<std::vector<uint64_t>> batches;
    loader.start_epoch(0);
    while (const data::Batch* batch = loader.next_batch())
      batches.emplace_back(batch->indices.begin(), batch->indices.begin() + batch->size);
    return batches;
  };

  // Without repeated augmentation: each image at most once, and the 2 left over after the last
  // whole batch are not trained on (a short batch would change the step's statistics).
  o.repeated_aug = false;
  const auto once = train::make_train_loader(split("train"), o, {}, data::PixelFormat::kSource);
  CHECK(once->state().repeats == 1);
  const std::vector<std::vector<uint64_t>> plain = epoch(*once);
  CHECK(plain.size() == 4);
  std::vector<uint64_t> seen;
  for (const std::vector<uint64_t>& batch : plain) {
    CHECK(batch.size() == 4);
    seen.insert(seen.end(), batch.begin(), batch.end());
  }
  std::sort(seen.begin(), seen.end());
  CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
  // With it (the recipe's default): each image three times over, one after another.
  o.repeated_aug = true;
  const auto thrice = train::make_train_loader(split("train"), o, {}, data::PixelFormat::kSource);
  CHECK(thrice->state().repeats == 3);
  const std::vector<std::vector<uint64_t>> repeated = epoch(*thrice);
  REQUIRE_FALSE(repeated.empty());
  CHECK(repeated[0][0] == repeated[0][1]);
  CHECK(repeated[0][1] == repeated[0][2]);

  // --rrc-scale-min bounds the area each random resized crop keeps: at 0.95 nearly all of it
  // (rounding aside), where the default 0.08 would keep far less for most of 18 images.
  o.repeated_aug = false;
  o.rrc_scale_min = 0.95;
  const auto large = train::make_train_loader(split("train"), o, {}, data::PixelFormat::kSource);
  large->start_epoch(0);
  int crops = 0;
  while (const data::Batch* batch = large->next_batch())
    for (size_t i = 0; i < batch->size; ++i, ++crops) {
      const data::ImageU8& source = batch->sources[i];
      const auto& crop = batch->params[i].crop;
      INFO("crop " << crop.w << " x " << crop.h << " of " << source.width << " x "
                   << source.height);
      CHECK(crop.w * crop.h >= 0.85 * source.width * source.height);
    }
  CHECK(crops == 16);

  // Evaluation is not padded: rank 1 of 2 scores its 4 of the 9 images, each once, and no image
  // of rank 0's share (a padded split would count one image twice).
  const auto val = train::make_eval_loader(split("val"), 24, 0.875, 100, 1, {1, 2});
  std::vector<uint64_t> scored;
  for (const std::vector<uint64_t>& batch : epoch(*val))
    scored.insert(scored.end(), batch.begin(), batch.end());
  CHECK(scored == std::vector<uint64_t>{1, 3, 5, 7});

  // The loaders make augmented floats or sources for the input feed, nothing else.
  CHECK_THROWS_AS(train::make_train_loader(split("train"), o, {}, data::PixelFormat::kUint8),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      train::make_eval_loader(split("val"), 24, 0.875, 4, 1, {}, data::PixelFormat::kUint8),
      std::invalid_argument);
}

TEST_CASE("source loaders draw the float loaders' parameters, and a CPU feed augments them alike",
          "[augment][data]") {
  test::TempDir dir;
  const SmallDataset dataset = small_dataset(dir);
  auto split = [&](const char* name) { return dataset.split(name); };
  train::TrainOptions o = small_run(2);
  o.src = GENERATE(false, true);
  const bool fine_tune = GENERATE(false, true);  // --aa: RandAugment steps in the parameters
  if (fine_tune) {
    o.aa = "rand-m9-mstd0.5-inc1";
    o.three_augment = false;
    o.color_jitter = 0;
  }
  INFO("simple random crop: " << o.src << ", RandAugment: " << fine_tune);

  auto floats = train::make_train_loader(split("train"), o);
  auto sources = train::make_train_loader(split("train"), o, {}, data::PixelFormat::kSource);
  auto val_floats = train::make_eval_loader(split("val"), 24, 0.875, 4, 2);
  // An evaluation batch holds no more room than the rank's share of the split's 9 images.
  CHECK(val_floats->options().batch_size == 4);
  CHECK(train::make_eval_loader(split("val"), 24, 0.875, 100000, 1)->options().batch_size == 9);
  CHECK(train::make_eval_loader(split("val"), 24, 0.875, 100000, 1, {1, 2})->options().batch_size ==
        5);
  auto val_sources =
      train::make_eval_loader(split("val"), 24, 0.875, 4, 2, {}, data::PixelFormat::kSource);
  train::InputFeed float_feed(*floats, Device::cpu(), 24);
  train::InputFeed source_feed(*sources, Device::cpu(), 24);
  train::InputFeed val_float_feed(*val_floats, Device::cpu(), 24);
  train::InputFeed val_source_feed(*val_sources, Device::cpu(), 24);

  auto compare = [](train::InputFeed& a, train::InputFeed& b, uint64_t epoch) {
    a.start_epoch(epoch);
    b.start_epoch(epoch);
    int batches = 0;
    while (const train::FeedBatch* want = a.next()) {
      const train::FeedBatch* got = b.next();
      REQUIRE(got != nullptr);
      b.prefetch();  // nothing to do on the CPU
      CHECK(got->number == want->number);
      CHECK(*got->labels == *want->labels);
      CHECK(got->device_labels == nullptr);
      CHECK(got->images.to_vector<float>() == want->images.to_vector<float>());
      ++batches;
    }
    CHECK(b.next() == nullptr);
    return batches;
  };
  CHECK(compare(float_feed, source_feed, 0) > 0);
  CHECK(compare(float_feed, source_feed, 1) > 0);
  CHECK(compare(val_float_feed, val_source_feed, 0) == 3);

  // The source batches themselves: decoded images and the parameters drawn for them, with
  // RandAugment steps exactly when the run asks for them.
  sources->start_epoch(0);
  size_t views = 0, with_steps = 0;
  while (const data::Batch* batch = sources->next_batch()) {
    REQUIRE(batch->sources.size() >= batch->size);
    for (size_t i = 0; i < batch->size; ++i) {
      CHECK(batch->sources[i].height == 40);
      CHECK(batch->params[i].crop.size == 24);
      if (fine_tune) CHECK(batch->params[i].three_augment == data::ThreeAugmentOp::kNone);
      ++views;
      with_steps += kernels::augment_fused::has_rand_augment(batch->params[i]);
    }
  }
  REQUIRE(views >= 12);
  if (fine_tune)
    CHECK(with_steps >= views / 2);  // each view keeps a step with probability 3/4
  else
    CHECK(with_steps == 0);
}

TEST_CASE("deit bench data --device cpu measures the CPU stage and the whole input path",
          "[augment][cli]") {
  const test::CliResult r = test::run_deit(
      "bench data --device cpu --input-size 32 --batch-size 4 --batches 20 --workers 1 --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const nlohmann::json j = nlohmann::json::parse(r.output);
  CHECK(j.at("device") == "cpu");
  CHECK(j.at("batch_size") == 4);
  CHECK(j.at("source_size") == nlohmann::json::array({256, 341}));
  for (const char* part : {"stage", "pipeline"}) {
    INFO(part);
    REQUIRE(j.at(part).size() == 1);
    CHECK(j.at(part)[0].at("input_size") == 32);
    CHECK(j.at(part)[0].at("images_per_s").get<double>() > 0);
  }

  // Without a usable temporary folder it names the variable to set.
  const test::CliResult no_temp = [] {
    const test::ScopedEnvironment no_tmpdir("TMPDIR", "/nonexistent/deit-test");
    return test::run_deit(
        "bench data --device cpu --input-size 32 --batch-size 4 --batches 20 --workers 1 --json");
  }();
  CHECK(no_temp.exit_code != 0);
  CHECK_THAT(no_temp.output, Catch::Contains("set TMPDIR to a writable folder"));
  const test::CliResult bad = test::run_deit("bench data --device cpu --batch-size 1");
  CHECK(bad.exit_code != 0);
  // Only the option at fault is named (it said "--batch-size must be >= 2, --workers >= 1").
  CHECK_THAT(bad.output, Catch::Contains("--batch-size: Value 1 not in range 2 to 1000000") &&
                             !Catch::Contains("--workers"));
  // Few timed batches gave the whole path rates the machine cannot reach (the loader's bursts),
  // and an input size is checked before the shard is written.
  const test::CliResult few = test::run_deit("bench data --device cpu --batches 3");
  CHECK(few.exit_code != 0);
  CHECK_THAT(few.output, Catch::Contains("--batches: Value 3 not in range 20 to"));
  const test::CliResult no_size = test::run_deit("bench data --device cpu --input-size 0");
  CHECK(no_size.exit_code != 0);
  CHECK_THAT(no_size.output, Catch::Contains("--input-size") && !Catch::Contains("writing"));

  // --aa measures the fine-tuning augmentation; a bad spec is refused before any work.
  const test::CliResult fine_tune = test::run_deit(
      "bench data --device cpu --input-size 32 --batch-size 4 --batches 20 --workers 1 --json "
      "--aa rand-m9-mstd0.5-inc1");
  INFO(fine_tune.output);
  REQUIRE(fine_tune.exit_code == 0);
  const nlohmann::json ft = nlohmann::json::parse(fine_tune.output);
  CHECK(ft.at("aa") == "rand-m9-mstd0.5-inc1");
  CHECK(ft.at("stage")[0].at("images_per_s").get<double>() > 0);
  CHECK(j.at("aa") == "none");
  const test::CliResult bad_spec = test::run_deit("bench data --device cpu --aa rand-w0");
  CHECK(bad_spec.exit_code != 0);
  CHECK_THAT(bad_spec.output, Catch::StartsWith("deit: error: --aa: RandAugment spec 'rand-w0'"));
  // In the words deit augment and deit train refuse it with (it was a CLI11 error of its own).
  const test::TempDir dir;
  CHECK(bad_spec.output ==
        test::run_deit("augment --data nowhere --grid " + dir.file("g.png") + " --aa rand-w0")
            .output);
  CHECK(bad_spec.output ==
        test::run_deit("train --model deit3_tiny --data nowhere --output nowhere --dry-run "
                       "--aa rand-w0")
            .output);
}

TEST_CASE("deit bench data --data times the whole path on a dataset's train split",
          "[augment][cli]") {
  test::TempDir dir;
  for (int i = 0; i < 6; ++i)
    data::write_png(
        dir.file("data/train/" + std::string(i % 2 ? "a" : "b") + "/" + std::to_string(i) + ".png"),
        test::gradient_image(40 + i, 50, i));
  const test::CliResult r =
      test::run_deit("bench data --device cpu --input-size 32 --batch-size 2 --workers 1 --data " +
                     dir.path() + "/data --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const nlohmann::json j = nlohmann::json::parse(r.output);
  CHECK(j.at("data") == dir.path() + "/data");
  CHECK(j.at("pipeline")[0].at("images_per_s").get<double>() > 0);
  // In text: the line names the split, and an epoch of 3 batches is said to read low.
  const test::CliResult text =
      test::run_deit("bench data --device cpu --input-size 32 --batch-size 2 --workers 1 --data " +
                     dir.path() + "/data");
  REQUIRE(text.exit_code == 0);
  CHECK_THAT(text.output, Catch::Contains("train split -> device batch") &&
                              Catch::Contains("is 3 batches, fewer than the 27 taken here") &&
                              Catch::Contains("whole path: " + dir.path() +
                                              "/data's train split (6 images, of their own "
                                              "sizes), 1 loader workers)") &&
                              !Catch::Contains("temporary shard"));
  // A split smaller than a batch is refused before anything is timed.
  const test::CliResult small =
      test::run_deit("bench data --device cpu --data " + dir.path() + "/data");
  CHECK(small.exit_code != 0);
  CHECK_THAT(small.output, Catch::Contains("an epoch of '" + dir.path() +
                                           "/data' has 6 images, fewer than one batch of 256"));
  const test::CliResult missing =
      test::run_deit("bench data --device cpu --data " + dir.path() + "/nothing");
  CHECK(missing.exit_code != 0);
  CHECK_THAT(missing.output, Catch::Contains(dir.path() + "/nothing"));
}

TEST_CASE("deit bench data stopped by Ctrl-C removes its temporary shard", "[augment][cli]") {
  test::TempDir dir;
  // Stopped as it starts writing its shard (what follows, writing 816 images of 256 x 341 and
  // measuring two input sizes over 400 batches, takes seconds: the signal lands within it).
  const std::optional<test::Signalled> stopped = [&] {
    const test::ScopedEnvironment tmpdir("TMPDIR", dir.path());
    return test::run_and_signal_at(
        "bench data --device cpu --batch-size 2 --batches 400 --workers 1",
        "writing a temporary shard of 816 images", SIGINT);
  }();
  REQUIRE(stopped);
  INFO(stopped->output);
  CHECK(WIFSIGNALED(stopped->status));
  CHECK(WTERMSIG(stopped->status) == SIGINT);
  CHECK(std::filesystem::is_empty(dir.path()));
}
