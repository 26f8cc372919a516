// The prefetch pipeline: batches identical whatever the thread count, resumable mid-epoch, bad
// images replaced and counted, worker errors surfacing in the trainer's thread.
#include <pthread.h>
#include <sys/resource.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <future>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "data/prefetch.h"
#include "tests/child_process.h"
#include "tests/test_data_helpers.h"

namespace {

using namespace deit::data;
using Catch::Matchers::Contains;
using deit::test::gradient_image;
using deit::test::MemorySource;
using namespace std::chrono_literals;

constexpr int kCrop = 4;

// A random kCrop x kCrop crop, scaled to [0, 1]: enough randomness to see the streams at work.
void random_crop(const ImageU8& image, deit::Rng& rng, SampleOutput out) {
  const int top = static_cast<int>(rng.below(image.height - kCrop + 1));
  const int left = static_cast<int>(rng.below(image.width - kCrop + 1));
  for (int y = 0; y < kCrop; ++y) {
    for (int x = 0; x < kCrop; ++x) {
      for (int c = 0; c < 3; ++c) {
        const uint8_t value = image.at(top + y, left + x)[c];
        const size_t i = (static_cast<size_t>(y) * kCrop + x) * 3 + c;
        if (out.f32) out.f32[i] = value / 255.0f;
        if (out.u8) out.u8[i] = value;
      }
    }
  }
}

struct Delivered {
  std::vector<std::vector<float>> data;
  std::vector<std::vector<uint8_t>> data_u8;
  std::vector<std::vector<int32_t>> labels;
  std::vector<std::vector<uint64_t>> indices;
  bool operator==(const Delivered& o) const {
    return data == o.data && data_u8 == o.data_u8 && labels == o.labels && indices == o.indices;
  }
};

PrefetchOptions loader_options(int workers, int prefetch, bool drop_last = true,
                               PixelFormat format = PixelFormat::kFloat32) {
  PrefetchOptions options;
  options.batch_size = 8;
  options.sample_elements = kCrop * kCrop * 3;
  options.format = format;
  options.drop_last = drop_last;
  options.num_workers = workers;
  options.prefetch_batches = prefetch;
  return options;
}

SamplerOptions sampler_options(size_t n, uint32_t repeats = 1) {
  SamplerOptions options;
  options.dataset_size = n;
  options.seed = 7;
  options.repeats = repeats;
  return options;
}

// Takes up to `max_batches` batches (all by default) and copies out their valid rows.
Delivered drain(PrefetchLoader& loader, size_t max_batches = SIZE_MAX) {
  Delivered out;
  const size_t row = kCrop * kCrop * 3;
  for (size_t b = 0; b < max_batches; ++b) {
    const Batch* batch = loader.next_batch();
    if (!batch) break;
    if (!batch->f32.empty())
      out.data.emplace_back(batch->f32.begin(), batch->f32.begin() + batch->size * row);
    if (!batch->u8.empty())
      out.data_u8.emplace_back(batch->u8.begin(), batch->u8.begin() + batch->size * row);
    out.labels.push_back(batch->labels);
    out.indices.push_back(batch->indices);
  }
  return out;
}

Delivered run_epoch(std::shared_ptr<const ImageSource> source, PrefetchOptions options,
                    uint64_t epoch, uint32_t repeats = 1) {
  PrefetchLoader loader(source, Sampler(sampler_options(source->size(), repeats)), options,
                        random_crop);
  loader.start_epoch(epoch);
  return drain(loader);
}

}  // namespace

TEST_CASE("Prefetched batches do not depend on the number of workers", "[data]") {
  auto source = std::make_shared<MemorySource>(203);
  const Delivered one = run_epoch(source, loader_options(1, 1), 2, 3);
  REQUIRE(one.labels.size() == 203 / 8);  // drop_last
  for (int workers : {2, 3, 5}) {
    for (int prefetch : {1, 4}) {
      INFO("workers " << workers << ", prefetch " << prefetch);
      CHECK(run_epoch(source, loader_options(workers, prefetch), 2, 3) == one);
    }
  }
  // Another epoch is another order with other random crops.
  CHECK_FALSE(run_epoch(source, loader_options(2, 2), 3, 3) == one);
}

TEST_CASE("Batches hold the sampler's order, labels and a kept short last batch", "[data]") {
  auto source = std::make_shared<MemorySource>(21);
  const Sampler sampler(sampler_options(21));
  PrefetchLoader loader(source, sampler, loader_options(3, 2, false, PixelFormat::kUint8),
                        random_crop);
  loader.start_epoch(4);
  CHECK(loader.batches_in_epoch() == 3);
  const Delivered got = drain(loader);
  REQUIRE(got.indices.size() == 3);
  CHECK(got.indices[2].size() == 5);  // 21 = 8 + 8 + 5
  std::vector<uint64_t> delivered;
  for (const auto& batch : got.indices)
    delivered.insert(delivered.end(), batch.begin(), batch.end());
  const std::vector<SamplePick> picks = sampler.epoch_picks(4);
  for (size_t i = 0; i < picks.size(); ++i) {
    CHECK(delivered[i] == picks[i].index);
    CHECK(got.labels[i / 8][i % 8] == static_cast<int>(picks[i].index % 5));
  }
  CHECK(got.data.empty());  // uint8 output only
  CHECK(got.data_u8.size() == 3);
  CHECK(loader.next_batch() == nullptr);  // the epoch stays over
  // The short last batch ends the epoch: its state says all 21, not three whole batches.
  CHECK(loader.state().position == 21);
}

TEST_CASE("A loader resumed from a saved state delivers what the uninterrupted run did", "[data]") {
  auto source = std::make_shared<MemorySource>(150);
  const Delivered uninterrupted = run_epoch(source, loader_options(2, 2), 5, 3);

  SamplerState saved;
  Delivered first_part;
  {
    PrefetchLoader loader(source, Sampler(sampler_options(150, 3)), loader_options(2, 3),
                          random_crop);
    loader.start_epoch(5);
    first_part = drain(loader, 6);
    saved = loader.state();  // the checkpoint, written with batch 5 done
  }                          // destroyed with batches still prefetched: the run "crashed"
  CHECK(saved.epoch == 5);
  CHECK(saved.position == 6 * 8);

  PrefetchLoader resumed(source, Sampler(sampler_options(150, 3)), loader_options(3, 1),
                         random_crop);
  resumed.resume(saved);
  // A checkpoint of the resumed run, before or after more batches, counts from the epoch's start.
  CHECK(resumed.state().position == saved.position);
  const Delivered second_part = drain(resumed);
  CHECK(resumed.state().position == (first_part.data.size() + second_part.data.size()) * 8);
  REQUIRE(first_part.data.size() + second_part.data.size() == uninterrupted.data.size());
  for (size_t b = 0; b < uninterrupted.data.size(); ++b) {
    const Delivered& part = b < 6 ? first_part : second_part;
    const size_t i = b < 6 ? b : b - 6;
    CHECK(part.data[i] == uninterrupted.data[b]);
    CHECK(part.indices[i] == uninterrupted.indices[b]);
  }

  SamplerOptions other_seed = sampler_options(150, 3);
  other_seed.seed = 8;
  PrefetchLoader other(source, Sampler(other_seed), loader_options(1, 1), random_crop);
  CHECK_THROWS_WITH(other.resume(saved), Contains("seed"));
}

TEST_CASE("Starting an epoch abandons the rest of the previous one", "[data]") {
  auto source = std::make_shared<MemorySource>(100);
  const Delivered expected = run_epoch(source, loader_options(2, 2), 1);
  PrefetchLoader loader(source, Sampler(sampler_options(100)), loader_options(2, 4), random_crop);
  loader.start_epoch(0);
  REQUIRE(loader.next_batch() != nullptr);
  loader.start_epoch(1);
  CHECK(drain(loader) == expected);
}

TEST_CASE("Unusable images are replaced by the next usable one and counted once", "[data]") {
  auto source = std::make_shared<MemorySource>(40, std::set<size_t>{3, 4, 17});
  SamplerOptions in_order = sampler_options(40);
  in_order.shuffle = false;
  PrefetchLoader loader(source, Sampler(in_order), loader_options(2, 2), random_crop);
  for (uint64_t epoch = 0; epoch < 2; ++epoch) {
    loader.start_epoch(epoch);
    const Delivered got = drain(loader);
    REQUIRE(got.indices.size() == 5);
    CHECK(got.indices[0] == std::vector<uint64_t>{0, 1, 2, 5, 5, 5, 6, 7});
    CHECK(got.indices[2][1] == 18);  // position 17
    CHECK(got.labels[0][3] == 0);    // image 5's label
  }
  CHECK(loader.skipped().count() == 3);
  for (uint64_t loaded : loader.loaded_per_class()) CHECK(loaded > 0);

  // Every image of class 3 (3, 8, ..., 38) unusable: the class is lost, and said to be.
  std::set<size_t> class_3;
  for (size_t i = 3; i < 40; i += 5) class_3.insert(i);
  PrefetchLoader lost(std::make_shared<MemorySource>(40, class_3), Sampler(in_order),
                      loader_options(2, 2), random_crop);
  lost.start_epoch(0);
  drain(lost);
  CHECK(lost.skipped().count_in_class(3) == 8);
  const std::vector<uint64_t> loaded = lost.loaded_per_class();
  REQUIRE(loaded.size() == 5);
  CHECK(loaded[3] == 0);
  // Each of the 8 picks of class 3 was stood in for by the next image, of class 4.
  CHECK(loaded[4] == 16);
  CHECK(loaded[0] == 8);

  // For evaluation the stand-ins are kept (the batch stays whole) but not labelled, so they are
  // not scored as the images they stand in for.
  PrefetchOptions evaluation = loader_options(2, 2, /*drop_last=*/false);
  evaluation.unlabel_stand_ins = true;
  PrefetchLoader eval_loader(source, Sampler(in_order), evaluation, random_crop);
  eval_loader.start_epoch(0);
  const Delivered got = drain(eval_loader);
  CHECK(got.indices[0] == std::vector<uint64_t>{0, 1, 2, 5, 5, 5, 6, 7});
  CHECK(got.labels[0] == std::vector<int32_t>{0, 1, 2, kUnscored, kUnscored, 0, 1, 2});
  CHECK(got.labels[2][1] == kUnscored);
}

TEST_CASE("Errors from workers reach the trainer", "[data]") {
  SECTION("a dataset of nothing but bad images") {
    std::set<size_t> all;
    for (size_t i = 0; i < 20; ++i) all.insert(i);
    auto source = std::make_shared<MemorySource>(20, all);
    PrefetchLoader loader(source, Sampler(sampler_options(20)), loader_options(2, 2), random_crop);
    loader.start_epoch(0);
    CHECK_THROWS_WITH(loader.next_batch(), Contains(" and the 19 images after it in "
                                                    "the dataset's order are all unusable"));
  }
  SECTION("a dataset of one bad image") {
    auto source = std::make_shared<MemorySource>(1, std::set<size_t>{0});
    PrefetchOptions one_batch = loader_options(1, 1, /*drop_last=*/false);
    one_batch.batch_size = 1;
    PrefetchLoader loader(source, Sampler(sampler_options(1)), one_batch, random_crop);
    loader.start_epoch(0);
    CHECK_THROWS_WITH(loader.next_batch(),
                      Contains("memory image 0, the dataset's only image, is unusable: giving up"));
  }
  SECTION("a transform that throws") {
    auto source = std::make_shared<MemorySource>(20);
    PrefetchLoader loader(source, Sampler(sampler_options(20)), loader_options(2, 2),
                          [](const ImageU8&, deit::Rng&, SampleOutput) {
                            throw std::runtime_error("transform failed");
                          });
    loader.start_epoch(0);
    CHECK_THROWS_WITH(loader.next_batch(), Contains("transform failed"));
    loader.start_epoch(1);  // the loader stays usable: a new epoch starts afresh
    CHECK_THROWS_WITH(loader.next_batch(), Contains("transform failed"));
  }
  SECTION("after an error the workers claim no more samples") {
    // The epoch cannot be delivered any more: work on it would be wasted.
    std::atomic<int> calls{0};
    auto source = std::make_shared<MemorySource>(40);
    PrefetchLoader loader(source, Sampler(sampler_options(40)), loader_options(1, 2),
                          [&](const ImageU8&, deit::Rng&, SampleOutput) {
                            ++calls;
                            throw std::runtime_error("transform failed");
                          });
    loader.start_epoch(0);
    CHECK_THROWS_WITH(loader.next_batch(), Contains("transform failed"));
    std::this_thread::sleep_for(100ms);  // time for the worker to claim more, were it to
    CHECK(calls == 1);
  }
  SECTION("an epoch after a failed one starts without the old error") {
    auto source = std::make_shared<MemorySource>(20);
    const Delivered expected = run_epoch(source, loader_options(2, 2), 1);
    std::atomic<bool> fail{true};
    PrefetchLoader loader(source, Sampler(sampler_options(20)), loader_options(2, 2),
                          [&](const ImageU8& image, deit::Rng& rng, SampleOutput out) {
                            if (fail) throw std::runtime_error("transform failed");
                            random_crop(image, rng, out);
                          });
    loader.start_epoch(0);
    CHECK_THROWS_WITH(loader.next_batch(), Contains("transform failed"));
    fail = false;  // the cause is gone (a file restored): the next epoch runs
    loader.start_epoch(1);
    CHECK(drain(loader) == expected);
  }
  SECTION("a failure other than an unusable image") {
    // Only a DataError means a bad image to stand in for; anything else (a full disk, no memory)
    // stops the loader rather than being skipped.
    class BrokenSource : public MemorySource {
     public:
      using MemorySource::MemorySource;
      ImageU8 load(size_t index) const override {
        if (index == 5) throw std::runtime_error("read failed: device gone");
        return MemorySource::load(index);
      }
    };
    auto source = std::make_shared<BrokenSource>(20);
    SamplerOptions in_order = sampler_options(20);
    in_order.shuffle = false;
    PrefetchLoader loader(source, Sampler(in_order), loader_options(2, 2), random_crop);
    loader.start_epoch(0);
    CHECK_THROWS_WITH(drain(loader), Contains("read failed: device gone"));
    CHECK(loader.skipped().count() == 0);
  }
  SECTION("a sampler for another dataset") {
    auto source = std::make_shared<MemorySource>(20);
    CHECK_THROWS_WITH(
        PrefetchLoader(source, Sampler(sampler_options(21)), loader_options(1, 1), random_crop),
        Contains("21") && Contains("20"));
  }
}

// Under an address-space limit: [address_space], which scripts/sanitize.sh leaves out
// (AddressSanitizer's shadow memory cannot live under one).
TEST_CASE("A loader whose worker threads cannot all start says which, and stops the others",
          "[data][address_space]") {
  SECTION("a worker thread that cannot be started") {
    // A child process whose address space has room for a few thread stacks, not for kMaxWorkers
    // (a limit on processes, as containers set, does not bind root, which tests may run as): the
    // threads started before the failure must be stopped, not left to end the process.
    const deit::test::ChildResult child = deit::test::run_in_child([]() -> std::string {
      size_t pages = 0;
      std::ifstream("/proc/self/statm") >> pages;
      const rlim_t room = pages * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + (64 << 20);
      const rlimit limit{room, room};
      if (setrlimit(RLIMIT_AS, &limit) != 0) return "cannot limit the address space";
      PrefetchOptions options = loader_options(kMaxWorkers, 1);
      try {
        PrefetchLoader loader(std::make_shared<MemorySource>(20), Sampler(sampler_options(20)),
                              options, random_crop);
      } catch (const std::exception& e) {
        return e.what();
      }
      return "every thread started";
    });
    REQUIRE(WIFEXITED(child.status));
    CHECK_THAT(child.message, Contains("worker thread") && Contains(std::to_string(kMaxWorkers)));
  }
  SECTION("the first worker thread cannot be started") {
    // Thread stacks larger than the address space left: no stack the runner's threads left cached
    // fits, so the very first thread fails, and the message counts it as thread 1.
    const deit::test::ChildResult child = deit::test::run_in_child([]() -> std::string {
      pthread_attr_t attributes;
      pthread_attr_init(&attributes);
      pthread_attr_setstacksize(&attributes, size_t{1} << 30);
      if (pthread_setattr_default_np(&attributes) != 0) return "cannot set the stack size";
      size_t pages = 0;
      std::ifstream("/proc/self/statm") >> pages;
      const rlim_t room = pages * static_cast<rlim_t>(sysconf(_SC_PAGESIZE)) + (64 << 20);
      const rlimit limit{room, room};
      if (setrlimit(RLIMIT_AS, &limit) != 0) return "cannot limit the address space";
      try {
        PrefetchLoader loader(std::make_shared<MemorySource>(20), Sampler(sampler_options(20)),
                              loader_options(2, 1), random_crop);
      } catch (const std::exception& e) {
        return e.what();
      }
      return "every thread started";
    });
    REQUIRE(WIFEXITED(child.status));
    CHECK_THAT(child.message, Contains("cannot start worker thread 1 of 2 ("));
  }
}

TEST_CASE("A loader refuses options it cannot work with", "[data]") {
  auto source = std::make_shared<MemorySource>(20);
  const Sampler sampler(sampler_options(20));
  CHECK_THROWS_AS(PrefetchLoader(nullptr, sampler, loader_options(1, 1), random_crop),
                  std::invalid_argument);
  CHECK_THROWS_AS(PrefetchLoader(source, sampler, loader_options(1, 1), nullptr),
                  std::invalid_argument);
  PrefetchOptions options = loader_options(1, 1);
  options.batch_size = 0;
  CHECK_THROWS_AS(PrefetchLoader(source, sampler, options, random_crop), std::invalid_argument);
  options = loader_options(1, 1);
  options.sample_elements = 0;
  CHECK_THROWS_AS(PrefetchLoader(source, sampler, options, random_crop), std::invalid_argument);
  CHECK_THROWS_AS(PrefetchLoader(source, sampler, loader_options(0, 1), random_crop),
                  std::invalid_argument);
  CHECK_THROWS_AS(PrefetchLoader(source, sampler, loader_options(1, 0), random_crop),
                  std::invalid_argument);
  // Decoded images kept whole have no fixed sample size.
  options = loader_options(1, 1, true, PixelFormat::kSource);
  options.sample_elements = 0;
  CHECK_NOTHROW(PrefetchLoader(source, sampler, options, random_crop));
}

TEST_CASE("Batches say their epoch and count from the position they start at", "[data]") {
  auto source = std::make_shared<MemorySource>(100);
  const Sampler sampler(sampler_options(100));
  PrefetchLoader loader(source, sampler, loader_options(2, 2), random_crop);
  loader.resume(sampler.state(3, 16));
  uint64_t expected_number = 0;
  while (const Batch* batch = loader.next_batch()) {
    CHECK(batch->epoch == 3);
    CHECK(batch->number == expected_number++);
  }
  CHECK(expected_number == (100 - 16) / 8);
}

TEST_CASE("Each sample's transform draws from the stream of its epoch and global position",
          "[data]") {
  // Repeats: the copies of an image differ by global position alone.
  auto source = std::make_shared<MemorySource>(40);
  const Sampler sampler(sampler_options(40, 3));
  PrefetchOptions options = loader_options(3, 2);
  options.sample_elements = 2;
  PrefetchLoader loader(source, sampler, options,
                        [](const ImageU8&, deit::Rng& rng, SampleOutput out) {
                          const float draw = static_cast<float>(rng.below(1 << 20));
                          out.f32[0] = draw;
                          out.f32[1] = -draw;
                        });
  loader.start_epoch(2);
  const std::vector<SamplePick> picks = sampler.epoch_picks(2);
  size_t i = 0;
  while (const Batch* batch = loader.next_batch()) {
    for (size_t row = 0; row < batch->size; ++row, ++i) {
      deit::Rng expected(sampler.options().seed, sample_stream(2, picks[i].global_position));
      const float draw = static_cast<float>(expected.below(1 << 20));
      INFO("sample " << i);
      CHECK(batch->f32[2 * row] == draw);
      CHECK(batch->f32[2 * row + 1] == -draw);
    }
  }
  CHECK(i == picks.size() / 8 * 8);
}

TEST_CASE("A skipped image is counted in its own class under its own index", "[data]") {
  // 3 and 4 unusable: image 3 is stood in for by 5, and 4, met on the way, is counted as itself.
  auto source = std::make_shared<MemorySource>(16, std::set<size_t>{3, 4});
  SamplerOptions in_order = sampler_options(16);
  in_order.shuffle = false;
  PrefetchLoader loader(source, Sampler(in_order), loader_options(1, 1), random_crop);
  loader.start_epoch(0);
  drain(loader);
  CHECK(loader.skipped().count() == 2);
  CHECK(loader.skipped().count_in_class(3) == 1);
  CHECK(loader.skipped().count_in_class(4) == 1);
  CHECK(loader.skipped().indices() == std::vector<int64_t>{3, 4});
}

namespace {

// Waits up to 20 s for `calls` to reach `count`.
bool reaches(const std::atomic<int>& calls, int count) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (calls < count && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  return calls >= count;
}

}  // namespace

TEST_CASE("Workers fill prefetch_batches batches ahead and leave the held one alone", "[data]") {
  auto source = std::make_shared<MemorySource>(100);
  std::atomic<int> calls{0};
  PrefetchLoader loader(source, Sampler(sampler_options(100)), loader_options(2, 3),
                        [&](const ImageU8& image, deit::Rng& rng, SampleOutput out) {
                          random_crop(image, rng, out);
                          ++calls;
                        });
  // A whole epoch first: how far the trainer got in it must not let the next one run ahead.
  loader.start_epoch(0);
  drain(loader);
  std::this_thread::sleep_for(100ms);  // every worker back to waiting: only start_epoch wakes it
  calls = 0;
  loader.start_epoch(1);
  // Before the trainer takes a batch the workers fill every slot: 4 batches of 8 samples.
  CHECK(reaches(calls, 4 * 8));
  std::this_thread::sleep_for(100ms);  // time for a worker that oversteps to do so
  CHECK(calls == 4 * 8);
  const Batch* held = loader.next_batch();
  REQUIRE(held != nullptr);
  const Batch copy = *held;
  // Then the held batch and 3 ahead of it: the same 4 batches, and the workers wait for the
  // trainer.
  std::this_thread::sleep_for(100ms);
  CHECK(calls == 4 * 8);
  CHECK(held->number == 0);
  CHECK(held->f32 == copy.f32);
  CHECK(held->indices == copy.indices);
  CHECK(held->labels == copy.labels);
}

TEST_CASE("Starting an epoch waits for the samples workers are still writing", "[data]") {
  auto source = std::make_shared<MemorySource>(100);
  const Delivered expected = run_epoch(source, loader_options(1, 1), 1);
  std::promise<void> entered;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> first{true};
  PrefetchLoader loader(source, Sampler(sampler_options(100)), loader_options(1, 1),
                        [&](const ImageU8& image, deit::Rng& rng, SampleOutput out) {
                          random_crop(image, rng, out);
                          if (first.exchange(false)) {
                            entered.set_value();
                            released.wait();
                          }
                        });
  loader.start_epoch(0);
  entered.get_future().wait();  // the only worker holds epoch 0's first sample
  auto restart = std::async(std::launch::async, [&] { loader.start_epoch(1); });
  CHECK(restart.wait_for(200ms) == std::future_status::timeout);
  release.set_value();
  REQUIRE(restart.wait_for(20s) == std::future_status::ready);
  CHECK(drain(loader) == expected);
}
