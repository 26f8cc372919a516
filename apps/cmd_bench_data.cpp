// deit bench data: how fast the input path delivers training batches.
//  - stage:    the augmentation stage alone (RandomResizedCrop, flip, 3-Augment and colour jitter
//              or, with --aa, RandAugment, normalisation: kernels/augment.h), on sources
//              already in memory (on the device for --device cuda) whose shorter side is 256, at
//              each input size.
//  - pipeline: the whole path from a shard file to a batch on the device: the loader's worker
//              threads read the records and draw the parameters, the feed (train/input_feed.h)
//              uploads them and runs the stage, as the trainer does. With --data, from that
//              dataset's train split instead (its JPEG decoding included), as deit train reads it.
// On --device cpu both measure the CPU stage: the batch twin on one thread, and the training
// loader's workers augmenting and normalising, as CPU training runs it.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "apps/removed_on_interrupt.h"
#include "data/augment_params.h"
#include "data/prefetch.h"
#include "data/shard.h"
#include "engine/device.h"
#include "engine/rng.h"
#include "kernels/augment.h"
#include "train/data_pipeline.h"
#include "train/input_feed.h"
#include "train/recipe.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

#include "bench/cuda_timing.h"
#include "engine/stream.h"
#include "kernels/check.h"
#endif

namespace deit::apps {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kSourceShortSide = 256;
constexpr int kSourceLongSide = 341;  // 4:3, the most common ImageNet shape
constexpr int kWarmupBatches = 2;
// The whole path's warm-up also takes the batches the loader prepared while the first ones were
// waited for (its prefetch_batches, and the one the CUDA feed stages ahead): timed, they arrive
// at once and the rate counts work done before the clock started (3 timed batches behind 16
// workers measured 24 times what the machine delivers).
constexpr int kPipelineWarmupBatches =
    kWarmupBatches + data::PrefetchOptions{}.prefetch_batches + 1;
// Past the warm-up the loader still hands out batches in bursts (workers time-sliced on few
// cores finish their samples together): on 2 cores with 16 workers, 5 timed batches read 20%
// above the steady rate, 20 batches 8%, and 2 batches anything up to 50 times it.
constexpr int kMinTimedBatches = 20;

struct DataBenchOptions {
  std::string device = "cuda";
  std::optional<int> input_size;  // default: 224 and 128
  int batch_size = 256;
  int batches = 20;
  int workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::string aa = "none";  // RandAugment's spec (fine-tuning) in place of 3-Augment and jitter
  std::string data;         // a dataset root whose train split the whole path reads; "": synthetic
  bool json = false;
};

// Whole images per second, with a decimal below 100 (a rate under 1 would read 0).
std::string rate_text(double images_per_s) {
  char text[32];
  std::snprintf(text, sizeof text, images_per_s < 100 ? "%.1f" : "%.0f", images_per_s);
  return text;
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Landscape and portrait sources of noise (the stage's speed does not depend on the content).
std::vector<data::ImageU8> make_sources(int count, Rng& rng) {
  std::vector<data::ImageU8> sources(count);
  for (int i = 0; i < count; ++i) {
    data::ImageU8& image = sources[i];
    image.height = i % 2 == 0 ? kSourceShortSide : kSourceLongSide;
    image.width = i % 2 == 0 ? kSourceLongSide : kSourceShortSide;
    image.pixels.resize(static_cast<size_t>(image.height) * image.width * 3);
    for (uint8_t& v : image.pixels) v = static_cast<uint8_t>(rng.below(256));
  }
  return sources;
}

// A batch of the sources with training parameters drawn for them, packed as the GPU stage
// uploads it (train/input_feed.h).
struct PackedSources {
  train::PackedLayout layout;
  std::vector<uint8_t> bytes;
  int64_t size = 0;

  const uint8_t* pixels() const { return bytes.data() + layout.pixels; }
  kernels::SourceImage* sources() {
    return reinterpret_cast<kernels::SourceImage*>(bytes.data() + layout.sources);
  }
  const kernels::AugmentParams* params() const {
    return reinterpret_cast<const kernels::AugmentParams*>(bytes.data() + layout.params);
  }
};

PackedSources pack(const std::vector<data::ImageU8>& images, int size, const std::string& aa,
                   Rng& rng) {
  data::AugmentConfig config;
  config.input_size = size;
  data::use_rand_augment(config, aa);
  data::Batch batch;
  batch.size = images.size();
  batch.sources = images;
  batch.labels.assign(images.size(), 0);
  for (const data::ImageU8& image : images)
    batch.params.push_back(data::sample_augment_params(config, image.height, image.width, rng));
  PackedSources p;
  p.layout = train::packed_layout(batch);
  p.bytes.resize(p.layout.bytes);
  train::pack_batch(batch, p.layout, p.bytes.data());
  p.size = static_cast<int64_t>(images.size());
  return p;
}

double stage_images_per_second_cpu(PackedSources& p, int size, int batches) {
  std::vector<float> out(static_cast<size_t>(p.size) * 3 * size * size);
  auto run = [&] {
    kernels::augment_batch_cpu(p.pixels(), p.sources(), p.params(), p.size, size, out.data());
  };
  for (int i = 0; i < kWarmupBatches; ++i) run();
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < batches; ++i) run();
  return static_cast<double>(p.size) * batches / seconds_since(start);
}

#if DEIT_HAVE_CUDA
double stage_images_per_second_cuda(PackedSources& p, int size, int batches, Device device) {
  // The buffers below must be on the device whose compute stream runs the stage.
  DEIT_CUDA_CHECK(cudaSetDevice(device.index));
  const int64_t scratch = kernels::plan_augment_cuda(p.sources(), p.params(), p.size, size);
  const bench::DeviceMemory packed(p.bytes.size());
  uint8_t* const base = packed.as<uint8_t>();
  DEIT_CUDA_CHECK(cudaMemcpy(base, p.bytes.data(), p.bytes.size(), cudaMemcpyHostToDevice));
  // From pageable memory the copy may return before its last DMA lands; the stage's kernels run
  // on the compute stream, which does not wait for the legacy stream.
  DEIT_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  const bench::DeviceMemory out(static_cast<size_t>(p.size) * 3 * size * size * sizeof(float));
  const bench::DeviceMemory workspace(static_cast<size_t>(scratch));
  const cudaStream_t stream = compute_stream(device.index);
  auto run = [&] {
    kernels::augment_batch_cuda(
        base + p.layout.pixels,
        reinterpret_cast<const kernels::SourceImage*>(base + p.layout.sources),
        reinterpret_cast<const kernels::AugmentParams*>(base + p.layout.params), p.size, size,
        out.as<float>(), workspace.as<uint8_t>(), stream);
  };
  for (int i = 0; i < kWarmupBatches; ++i) run();
  DEIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < batches; ++i) run();
  DEIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  return static_cast<double>(p.size) * batches / seconds_since(start);
}
#endif

// Removes a folder and what it holds when it goes out of scope.
class RemovedFolder {
 public:
  explicit RemovedFolder(fs::path dir) : dir_(std::move(dir)) {}
  ~RemovedFolder() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  RemovedFolder(const RemovedFolder&) = delete;
  RemovedFolder& operator=(const RemovedFolder&) = delete;

 private:
  fs::path dir_;
};

// The benchmark's shard, `copies` times the images (enough for one epoch to span every measured
// batch, since a new epoch restarts the loader's read-ahead, which a real epoch of thousands of
// batches rarely does), in a folder of its own under the temporary directory, removed when the
// benchmark ends, however it ends.
class TemporaryShard {
 public:
  TemporaryShard(const std::vector<data::ImageU8>& images, int copies, bool quiet)
      : dir_(temporary_folder()),
        interrupted_({path(), data::ShardWriter::partial_path(path()), dir_.string()}),
        removed_(dir_) {
    make_folder(dir_);
    if (!quiet)
      std::fprintf(stderr, "writing a temporary shard of %zu images to %s\n",
                   images.size() * copies, path().c_str());
    data::ShardWriter writer(path(), {"a", "b"}, images.size() * copies, kSourceShortSide);
    for (int copy = 0; copy < copies; ++copy)
      for (size_t i = 0; i < images.size(); ++i) writer.add(images[i], static_cast<int>(i % 2));
    writer.finish();
  }
  std::string path() const { return (dir_ / "train.shard").string(); }

 private:
  // The system's temporary directory. An empty TMPDIR means an unset one, /tmp, as POSIX tools
  // take it: temp_directory_path() would take it for a folder named "" and fail.
  static fs::path temporary_directory(std::error_code& error) {
    const char* tmpdir = std::getenv("TMPDIR");
    if (tmpdir && *tmpdir == '\0') return "/tmp";
    return fs::temp_directory_path(error);
  }

  static fs::path temporary_folder() {
    std::error_code error;
    const fs::path temp = temporary_directory(error);
    if (error)
      throw std::runtime_error("bench data: no folder for its temporary shard (" + error.message() +
                               "); set TMPDIR to a writable folder");
    return temp / ("deit-bench-data-" +
                   std::to_string(static_cast<uint64_t>(Clock::now().time_since_epoch().count())));
  }

  static void make_folder(const fs::path& dir) {
    std::error_code error;
    fs::create_directories(dir, error);
    if (error)
      throw std::runtime_error("bench data: cannot make its temporary folder " + dir.string() +
                               " (" + error.message() + "); set TMPDIR to a writable folder");
  }
  fs::path dir_;
  // The shard (whole or being written), then its folder. Declared before removed_, so that it
  // still stands while the folder is removed on the normal way out.
  RemovedOnInterrupt interrupted_;
  RemovedFolder removed_;
};

// Batches from `source` to the device, as the trainer takes them (with the upload of the next
// batch overlapping the current one on CUDA).
double pipeline_images_per_second(const std::shared_ptr<const data::ImageSource>& source,
                                  const DataBenchOptions& o, int size, Device device) {
  train::TrainOptions t = train::recipe_for("deit3_small");
  t.data_dir = o.data.empty() ? "the temporary shard" : o.data;  // for the loader's messages
  t.model.input_size = size;
  t.batch_size = o.batch_size;
  t.workers = o.workers;
  t.repeated_aug = false;
  if (o.aa != "none") {
    t.aa = o.aa;
    t.three_augment = false;
    t.color_jitter = 0;
  }
  auto loader = train::make_train_loader(
      source, t, {}, device.is_cuda() ? data::PixelFormat::kSource : data::PixelFormat::kFloat32);
  train::InputFeed feed(*loader, device, size);
  uint64_t epoch = 0;
  feed.start_epoch(epoch);
  auto next_batch = [&] {
    const train::FeedBatch* batch = feed.next();
    if (!batch) {
      feed.start_epoch(++epoch);
      batch = feed.next();
    }
    feed.prefetch();
    return batch->size;
  };
  for (int i = 0; i < kPipelineWarmupBatches; ++i) next_batch();
  const Clock::time_point start = Clock::now();
  size_t images = 0;
  for (int i = 0; i < o.batches; ++i) images += next_batch();
#if DEIT_HAVE_CUDA
  if (device.is_cuda()) DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(device.index)));
#endif
  return static_cast<double>(images) / seconds_since(start);
}

void run_bench_data(const DataBenchOptions& o) {
  const Device device = parse_device(o.device);
  require_device(device);
  try {
    data::rand_augment_option(o.aa);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("--aa: " + std::string(e.what()));
  }
  const std::vector<int> sizes =
      o.input_size ? std::vector<int>{*o.input_size} : std::vector<int>{224, 128};
  Rng rng(20260101);
  const std::vector<data::ImageU8> images = make_sources(o.batch_size, rng);
  // The whole path reads the user's dataset, or a shard of the synthetic sources written for it.
  std::optional<TemporaryShard> shard;
  std::shared_ptr<const data::ImageSource> source;
  if (o.data.empty()) {
    shard.emplace(images, kPipelineWarmupBatches + o.batches + 1, o.json);
    source = data::open_image_source(shard->path());
  } else {
    source = data::open_dataset_split(o.data, "train");
    const uint64_t epoch_batches = source->size() / static_cast<uint64_t>(o.batch_size);
    const uint64_t needed = kPipelineWarmupBatches + o.batches;
    if (!o.json && epoch_batches > 0 && epoch_batches < needed)
      std::fprintf(stderr,
                   "note: an epoch of %s is %llu batches, fewer than the %llu taken here: each "
                   "new epoch restarts the loader's read-ahead, which a real epoch of thousands "
                   "of batches rarely does, so the whole path's rate reads low\n",
                   o.data.c_str(), static_cast<unsigned long long>(epoch_batches),
                   static_cast<unsigned long long>(needed));
  }

  nlohmann::json result = {{"device", device.str()},
                           {"batch_size", o.batch_size},
                           {"batches", o.batches},
                           {"workers", o.workers},
                           {"aa", o.aa},
                           {"source_size", {kSourceShortSide, kSourceLongSide}},
                           {"data", o.data.empty() ? nlohmann::json() : nlohmann::json(o.data)},
                           {"stage", nlohmann::json::array()},
                           {"pipeline", nlohmann::json::array()}};
  for (int size : sizes) {
    // Each size takes tens of seconds at the defaults on a CPU: say what is being timed.
    if (!o.json) std::fprintf(stderr, "timing input %d px ...\n", size);
    // The whole path first: its loader refuses a --data split smaller than a batch at once,
    // before the stage alone has taken its seconds.
    const double pipeline = pipeline_images_per_second(source, o, size, device);
    PackedSources packed = pack(images, size, o.aa, rng);
    double stage = 0;
    if (device.is_cpu()) {
      stage = stage_images_per_second_cpu(packed, size, o.batches);
    } else {
#if DEIT_HAVE_CUDA
      stage = stage_images_per_second_cuda(packed, size, o.batches, device);
#endif
    }
    result["stage"].push_back({{"input_size", size}, {"images_per_s", stage}});
    result["pipeline"].push_back({{"input_size", size}, {"images_per_s", pipeline}});
    if (!o.json)
      std::printf("input %3d px: stage alone %10s images/s   %s -> device batch %10s images/s\n",
                  size, rate_text(stage).c_str(), o.data.empty() ? "shard" : "train split",
                  rate_text(pipeline).c_str());
    std::fflush(stdout);  // each size's line as it is measured, also into a pipe
  }
  if (o.json) {
    std::printf("%s\n", result.dump().c_str());
  } else {
    // What each figure timed: they differ in sources and threads, so neither bounds the other.
    const std::string whole_path = o.data.empty() ? "the temporary shard of those sources"
                                                  : o.data + "'s train split (" +
                                                        std::to_string(source->size()) +
                                                        " images, of their own sizes)";
    std::printf(
        "(%s, batch %d, %d batches timed, %s; stage alone: synthetic sources of %dx%d and %dx%d "
        "in memory%s; whole path: %s, %d loader workers)\n",
        device.str().c_str(), o.batch_size, o.batches,
        o.aa == "none" ? "3-Augment and colour jitter" : ("RandAugment " + o.aa).c_str(),
        kSourceLongSide, kSourceShortSide, kSourceShortSide, kSourceLongSide,
        device.is_cpu() ? ", one thread" : "", whole_path.c_str(), o.workers);
  }
}

}  // namespace

void add_bench_data_subcommand(CLI::App& bench) {
  auto o = std::make_shared<DataBenchOptions>();
  CLI::App* data = bench.add_subcommand(
      "data",
      "Input path speed: the augmentation stage alone on sources of shorter side 256, and the "
      "whole path from a shard file to a batch on the device (at 224 and 128 by default; the "
      "shard, batches + " +
          std::to_string(kPipelineWarmupBatches + 1) +
          " batches of raw pixels, about 1.9 GB by default, is written to the temporary "
          "directory and removed after)");
  data->add_option("--device", o->device, "cpu, cuda or cuda:N (cpu: the CPU stage)")
      ->capture_default_str();
  data->add_option("--input-size", o->input_size,
                   "One input size (8 to 1024) instead of 224 and 128")
      ->check(CLI::Range(8, 1024));
  data->add_option("--batch-size", o->batch_size, "Images per batch")
      ->capture_default_str()
      ->check(CLI::Range(2, 1000000));
  data->add_option("--batches", o->batches,
                   "Timed batches per measurement (" + std::to_string(kMinTimedBatches) +
                       " or more: the loader hands out batches in bursts, and fewer timed "
                       "batches misstate its rate)")
      ->capture_default_str()
      ->check(int_at_least(kMinTimedBatches));
  data->add_option("--workers", o->workers, "Loader threads of the whole path")
      ->capture_default_str()
      ->check(CLI::Range(1, deit::data::kMaxWorkers));
  data->add_option("--aa", o->aa,
                   "RandAugment's spec (as deit train --aa: the fine-tuning augmentation) in place "
                   "of 3-Augment and colour jitter")
      ->type_name("SPEC")
      ->capture_default_str();
  data->add_option("--data", o->data,
                   "Time the whole path on this dataset's train split (DIR/train or "
                   "DIR/train.shard, as deit train --data reads it, decoding included) instead of "
                   "a temporary shard of synthetic sources; the stage alone is timed as without")
      ->type_name("DIR");
  data->add_flag(
      "--json", o->json,
      "Print one JSON object: device, batch_size, batches, workers, aa, source_size (the "
      "sources' shorter and longer side), data (null without --data), "
      "stage and pipeline (each a list of {input_size, images_per_s})");
  data->callback([o] { run_bench_data(*o); });
}

}  // namespace deit::apps
