// The samplers: shuffled permutations, the reference's repeated augmentation, sharding across
// ranks, and the saved position a resumed run continues from.
#include <algorithm>
#include <catch2/catch.hpp>
#include <numeric>
#include <set>
#include <stdexcept>
#include <vector>

#include "data/sampler.h"

namespace {

using namespace deit::data;
using Catch::Matchers::Contains;

std::vector<uint64_t> indices_of(const std::vector<SamplePick>& picks) {
  std::vector<uint64_t> indices;
  for (const SamplePick& pick : picks) indices.push_back(pick.index);
  return indices;
}

SamplerOptions options(uint64_t n, uint32_t repeats, uint32_t rank, uint32_t world) {
  SamplerOptions o;
  o.dataset_size = n;
  o.seed = 42;
  o.repeats = repeats;
  o.rank = rank;
  o.world_size = world;
  return o;
}

}  // namespace

TEST_CASE("A shuffled epoch is a permutation drawn from (seed, epoch)", "[data]") {
  const Sampler sampler(options(1000, 1, 0, 1));
  REQUIRE(sampler.epoch_length() == 1000);
  const std::vector<uint64_t> epoch0 = indices_of(sampler.epoch_picks(0));
  std::vector<uint64_t> sorted = epoch0;
  std::sort(sorted.begin(), sorted.end());
  for (uint64_t i = 0; i < 1000; ++i) REQUIRE(sorted[i] == i);

  CHECK(indices_of(Sampler(options(1000, 1, 0, 1)).epoch_picks(0)) == epoch0);  // reproducible
  CHECK(indices_of(sampler.epoch_picks(1)) != epoch0);                          // reshuffled
  SamplerOptions other_seed = options(1000, 1, 0, 1);
  other_seed.seed = 43;
  CHECK(indices_of(Sampler(other_seed).epoch_picks(0)) != epoch0);

  SamplerOptions in_order = options(10, 1, 0, 1);
  in_order.shuffle = false;
  CHECK(indices_of(Sampler(in_order).epoch_picks(5)) ==
        std::vector<uint64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
}

TEST_CASE("Repeated augmentation repeats each image 3 times with RASampler's epoch length",
          "[data]") {
  const Sampler sampler(options(1000, 3, 0, 1));
  // floor(1000 / 256) * 256 / 1 = 768 entries: 256 distinct images, 3 times each.
  REQUIRE(sampler.epoch_length() == 768);
  const std::vector<uint64_t> indices = indices_of(sampler.epoch_picks(0));
  REQUIRE(indices.size() == 768);
  std::set<uint64_t> distinct;
  for (size_t i = 0; i < indices.size(); i += 3) {
    CHECK(indices[i + 1] == indices[i]);
    CHECK(indices[i + 2] == indices[i]);
    distinct.insert(indices[i]);
  }
  CHECK(distinct.size() == 256);

  // Fewer than 256 images would give RASampler an empty epoch: ceil(n / world) instead.
  CHECK(Sampler(options(100, 3, 0, 1)).epoch_length() == 100);
  CHECK(Sampler(options(100, 3, 1, 3)).epoch_length() == 34);
  // With 8 ranks: floor(1000 / 256) * 256 / 8 = 96 per rank.
  CHECK(Sampler(options(1000, 3, 5, 8)).epoch_length() == 96);
}

TEST_CASE("Ranks share out every image, and the repeats of an image go to different ranks",
          "[data]") {
  SECTION("no repeats: the ranks' positions tile the padded epoch") {
    const uint32_t world = 4;
    std::set<uint64_t> indices, positions;
    for (uint32_t rank = 0; rank < world; ++rank) {
      const Sampler sampler(options(1001, 1, rank, world));
      REQUIRE(sampler.epoch_length() == 251);  // ceil(1001 / 4)
      for (const SamplePick& pick : sampler.epoch_picks(3)) {
        indices.insert(pick.index);
        CHECK(positions.insert(pick.global_position).second);
      }
    }
    CHECK(indices.size() == 1001);
    CHECK(positions.size() == 1004);  // 3 entries of padding
    CHECK(*positions.rbegin() == 1003);
  }
  SECTION("without padding (evaluation): every image exactly once across the ranks") {
    SamplerOptions o = options(1001, 1, 0, 4);
    o.shuffle = false;
    o.pad = false;
    std::vector<uint64_t> seen;
    for (uint32_t rank = 0; rank < 4; ++rank) {
      o.rank = rank;
      const Sampler sampler(o);
      CHECK(sampler.epoch_length() == (rank == 0 ? 251u : 250u));
      for (const SamplePick& pick : sampler.epoch_picks(0)) seen.push_back(pick.index);
    }
    std::sort(seen.begin(), seen.end());
    std::vector<uint64_t> all(1001);
    std::iota(all.begin(), all.end(), uint64_t{0});
    CHECK(seen == all);
    o.repeats = 3;
    CHECK_THROWS_WITH(Sampler(o), Contains("padding"));
  }
  SECTION("3 repeats on 3 ranks: each rank sees each selected image once") {
    std::vector<std::vector<SamplePick>> per_rank;
    for (uint32_t rank = 0; rank < 3; ++rank) {
      per_rank.push_back(Sampler(options(900, 3, rank, 3)).epoch_picks(0));
    }
    REQUIRE(per_rank[0].size() == 256);  // floor(900 / 256) * 256 / 3
    for (size_t i = 0; i < per_rank[0].size(); ++i) {
      CHECK(per_rank[1][i].index == per_rank[0][i].index);
      CHECK(per_rank[2][i].index == per_rank[0][i].index);
      // ...with different augmentation streams.
      CHECK(sample_stream(0, per_rank[1][i].global_position) !=
            sample_stream(0, per_rank[0][i].global_position));
    }
  }
}

TEST_CASE("A rank's entries are samplers.py's list operations on the epoch's permutation",
          "[data]") {
  // RASampler.__iter__ (DistributedSampler's for k = 1, without the truncation), transcribed:
  // repeat_interleave, pad from the start, take every w-th from the rank, keep the first few.
  auto reference = [](const std::vector<uint64_t>& permutation, uint32_t k, uint32_t rank,
                      uint32_t w) {
    std::vector<uint64_t> indices;
    for (uint64_t index : permutation) indices.insert(indices.end(), k, index);
    const size_t n = permutation.size();
    const size_t num_samples = (n * k + w - 1) / w;
    const size_t total_size = num_samples * w;
    for (size_t i = 0; indices.size() < total_size; ++i) indices.push_back(indices[i]);
    std::vector<uint64_t> mine;
    for (size_t i = rank; i < total_size; i += w) mine.push_back(indices[i]);
    // num_selected_samples, or, where n < 256 makes it 0, the commented-out ceil(n / w).
    size_t selected = n / 256 * 256 / w;
    if (selected == 0) selected = (n + w - 1) / w;
    if (k > 1) mine.resize(selected);
    return mine;
  };
  for (uint64_t n : {1, 5, 255, 256, 700, 1000}) {
    // The permutation of (seed, epoch), as a sampler of one rank without repeats delivers it.
    const std::vector<uint64_t> permutation =
        indices_of(Sampler(options(n, 1, 0, 1)).epoch_picks(9));
    for (uint32_t k : {1, 3}) {
      for (uint32_t w : {1, 2, 3, 8}) {
        for (uint32_t rank = 0; rank < w; ++rank) {
          INFO("n " << n << ", repeats " << k << ", rank " << rank << " of " << w);
          CHECK(indices_of(Sampler(options(n, k, rank, w)).epoch_picks(9)) ==
                reference(permutation, k, rank, w));
        }
      }
    }
  }
}

TEST_CASE("Resuming from a saved position continues the same order", "[data]") {
  const Sampler sampler(options(500, 3, 1, 2));
  const std::vector<SamplePick> whole = sampler.epoch_picks(7);
  const SamplerState saved = sampler.state(7, 100);

  const Sampler restarted(options(500, 3, 1, 2));
  REQUIRE_NOTHROW(restarted.check_resumable(saved));
  const std::vector<SamplePick> rest = restarted.epoch_picks(saved.epoch, saved.position);
  REQUIRE(rest.size() == whole.size() - 100);
  for (size_t i = 0; i < rest.size(); ++i) {
    CHECK(rest[i].index == whole[100 + i].index);
    CHECK(rest[i].global_position == whole[100 + i].global_position);
  }

  CHECK_THROWS_WITH(Sampler(options(501, 3, 1, 2)).check_resumable(saved),
                    Contains("dataset size") && Contains("500") && Contains("501"));
  CHECK_THROWS_WITH(Sampler(options(500, 3, 1, 4)).check_resumable(saved), Contains("world size"));
  CHECK_THROWS_WITH(Sampler(options(500, 1, 1, 2)).check_resumable(saved), Contains("repeat"));
  // Another rank's saved position, or an unshuffled run's, would resume another order.
  CHECK_THROWS_WITH(Sampler(options(500, 3, 0, 2)).check_resumable(saved), Contains("rank"));
  SamplerOptions in_order = options(500, 3, 1, 2);
  in_order.shuffle = false;
  CHECK_THROWS_WITH(Sampler(in_order).check_resumable(saved), Contains("shuffle"));
  SamplerState past_end = saved;
  past_end.position = sampler.epoch_length() + 1;
  CHECK_THROWS_WITH(sampler.check_resumable(past_end), Contains("past the end"));
}

TEST_CASE("Sampler options are checked", "[data]") {
  CHECK_THROWS_AS(Sampler(options(0, 1, 0, 1)), std::invalid_argument);
  CHECK_THROWS_AS(Sampler(options(10, 0, 0, 1)), std::invalid_argument);
  CHECK_THROWS_WITH(Sampler(options(10, 1, 2, 2)), Contains("rank 2"));
}

TEST_CASE("Augmentation streams never collide with each other or with the shuffles", "[data]") {
  std::set<uint64_t> streams;
  for (uint64_t epoch = 0; epoch < 4; ++epoch) {
    CHECK(streams.insert(epoch).second);  // the permutation's stream
    for (uint64_t position = 0; position < 100; ++position) {
      CHECK(streams.insert(sample_stream(epoch, position)).second);
    }
  }
}

TEST_CASE("Every ordering of a few images is drawn by some seed", "[data]") {
  // A Fisher-Yates shuffle that stops a step early, or never leaves an image in place (Sattolo's
  // variant), still gives permutations, but only some of them: epochs would share orderings.
  std::set<std::vector<uint64_t>> two, three;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    SamplerOptions o = options(2, 1, 0, 1);
    o.seed = seed;
    two.insert(indices_of(Sampler(o).epoch_picks(0)));
    o.dataset_size = 3;
    three.insert(indices_of(Sampler(o).epoch_picks(0)));
  }
  CHECK(two.size() == 2);
  CHECK(three.size() == 6);
}
