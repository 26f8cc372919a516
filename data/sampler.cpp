#include "data/sampler.h"

#include <numeric>
#include <stdexcept>
#include <string>

#include "engine/rng.h"

namespace deit::data {
namespace {

constexpr uint64_t kStreamsPerEpoch = uint64_t{1} << 40;

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

uint64_t compute_epoch_length(const SamplerOptions& options) {
  const uint64_t n = options.dataset_size;
  const uint64_t w = options.world_size;
  // Without padding: positions rank, rank + w, ... below n.
  if (!options.pad) return options.rank < n ? ceil_div(n - options.rank, w) : 0;
  if (options.repeats > 1) {
    const uint64_t reference_length = n / 256 * 256 / w;
    if (reference_length > 0) return reference_length;
  }
  return ceil_div(n, w);
}

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument(message);
}

}  // namespace

uint64_t sample_stream(uint64_t epoch, uint64_t global_position) {
  return (epoch + 1) * kStreamsPerEpoch + global_position;
}

Sampler::Sampler(const SamplerOptions& options) : options_(options) {
  require(options.dataset_size > 0, "sampler: the dataset is empty");
  require(options.repeats >= 1, "sampler: repeats must be at least 1");
  require(options.world_size >= 1 && options.rank < options.world_size,
          "sampler: rank " + std::to_string(options.rank) + " outside world size " +
              std::to_string(options.world_size));
  require(options.pad || options.repeats == 1,
          "sampler: repeated augmentation needs padding (every rank's share the same length)");
  epoch_length_ = compute_epoch_length(options);
  require(epoch_length_ * options.world_size < kStreamsPerEpoch,
          "sampler: dataset too large for the per-epoch random streams");
}

std::vector<SamplePick> Sampler::epoch_picks(uint64_t epoch, uint64_t position) const {
  const uint64_t n = options_.dataset_size;
  std::vector<uint64_t> order(n);
  std::iota(order.begin(), order.end(), uint64_t{0});
  if (options_.shuffle) {
    Rng rng(options_.seed, epoch);
    for (uint64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
  }
  // Global position p of the repeated, padded list holds order[(p mod n*k) / k]: the modulo is
  // step 3's padding from the start of the list.
  const uint64_t repeated_length = n * options_.repeats;
  std::vector<SamplePick> picks;
  picks.reserve(epoch_length_ > position ? epoch_length_ - position : 0);
  for (uint64_t local = position; local < epoch_length_; ++local) {
    const uint64_t global = local * options_.world_size + options_.rank;
    picks.push_back({order[(global % repeated_length) / options_.repeats], global});
  }
  return picks;
}

SamplerState Sampler::state(uint64_t epoch, uint64_t position) const {
  SamplerState state;
  state.seed = options_.seed;
  state.dataset_size = options_.dataset_size;
  state.epoch = epoch;
  state.position = position;
  state.repeats = options_.repeats;
  state.rank = options_.rank;
  state.world_size = options_.world_size;
  state.shuffle = options_.shuffle ? 1 : 0;
  return state;
}

void Sampler::check_resumable(const SamplerState& state) const {
  const SamplerState expected = this->state(state.epoch, state.position);
  auto check = [](uint64_t saved, uint64_t now, const char* field) {
    require(saved == now, std::string("cannot resume the data order: the saved ") + field + " is " +
                              std::to_string(saved) + ", this run's is " + std::to_string(now));
  };
  check(state.seed, expected.seed, "seed");
  check(state.dataset_size, expected.dataset_size, "dataset size");
  check(state.repeats, expected.repeats, "repeat count");
  check(state.world_size, expected.world_size, "world size");
  check(state.rank, expected.rank, "rank");
  check(state.shuffle, expected.shuffle, "shuffle flag");
  require(state.position <= epoch_length_,
          "cannot resume the data order: saved position " + std::to_string(state.position) +
              " is past the end of the epoch (" + std::to_string(epoch_length_) + ")");
}

}  // namespace deit::data
