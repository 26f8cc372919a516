// Which images an epoch visits, in which order, on which rank: the reference code's samplers
// (facebookresearch/deit samplers.py RASampler; torch DistributedSampler otherwise), driven by the
// project's Rng instead of torch.randperm. The reference's main.py takes them at any world size,
// one process included (its `if True:  # args.distributed:`), and so does deit.
//
// An epoch, for a dataset of n images, `repeats` = k, `world_size` = w and rank r:
//  1. order: a permutation of 0..n-1 drawn from Rng(seed, epoch) (the identity when not shuffling;
//     RASampler seeds torch.randperm with the epoch alone, DistributedSampler with seed + epoch);
//  2. repeat: each entry of the order repeated k times in place: a a a b b b c c c ... (k = 1: no
//     repetition);
//  3. pad: to total = ceil(n * k / w) * w entries, by continuing from the start of the repeated
//     list, so every rank gets the same count;
//  4. shard: rank r takes global positions r, r + w, r + 2w, ...;
//  5. truncate: with k > 1, rank r keeps only its first floor(floor(n / 256) * 256 / w) entries,
//     exactly as RASampler does, so an epoch has the usual length (about n / w per rank) and sees
//     roughly 1/k of the distinct images, each k times (on k different ranks when w >= k, since
//     the k copies hold consecutive global positions). For n < 256 that length would be 0; we
//     then keep ceil(n / w) (RASampler's commented-out formula). With k = 1 nothing is
//     truncated: ceil(n / w) per rank, like DistributedSampler(drop_last=False).
// Batches (and dropping the last partial one) are the loader's business, not the sampler's.
// Evaluation shards without padding (pad = false, repeats 1): rank r takes positions r, r + w, ...
// below n, so across the ranks every image is seen exactly once, and the ranks' epoch lengths
// differ by at most one.
//
// Random streams (Rng(seed, stream)) are laid out so that none is used twice:
//   stream = epoch                                   the permutation of `epoch`
//   stream = (epoch + 1) * 2^40 + global position    the augmentation of one sample (sample_stream)
// The global position (step 4's index before sharding) identifies a sample across ranks, so the
// k repeats of an image, whichever ranks they land on, are augmented differently.
#pragma once
#include <cstdint>
#include <vector>

namespace deit::data {

struct SamplerOptions {
  uint64_t dataset_size = 0;
  uint64_t seed = 0;
  bool shuffle = true;
  uint32_t repeats = 1;  // 3 for DeiT III's repeated augmentation
  uint32_t rank = 0;
  uint32_t world_size = 1;
  bool pad = true;  // false: steps 3 and 5 are skipped (evaluation; needs repeats 1)
};

// Where a run is in its data: saved with a checkpoint so a resumed run sees the same order. The
// other fields let a restore refuse a state that belongs to a different configuration.
struct SamplerState {
  uint64_t seed = 0;
  uint64_t dataset_size = 0;
  uint64_t epoch = 0;
  uint64_t position = 0;  // entries of this rank's epoch already delivered
  uint32_t repeats = 1;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  uint32_t shuffle = 1;
};

// One entry of a rank's epoch: the image to load and its global position (step 4 above).
struct SamplePick {
  uint64_t index;
  uint64_t global_position;
};

// The Rng stream that augments the sample at `global_position` of `epoch`.
uint64_t sample_stream(uint64_t epoch, uint64_t global_position);

class Sampler {
 public:
  // Throws std::invalid_argument for an empty dataset, repeats < 1, rank >= world_size, or
  // repeats > 1 without padding.
  explicit Sampler(const SamplerOptions& options);

  const SamplerOptions& options() const { return options_; }
  // Entries per epoch on this rank.
  uint64_t epoch_length() const { return epoch_length_; }
  // This rank's entries for `epoch`, from `position` to the end.
  std::vector<SamplePick> epoch_picks(uint64_t epoch, uint64_t position = 0) const;

  SamplerState state(uint64_t epoch, uint64_t position) const;
  // Throws std::invalid_argument naming the first field where `state` differs from this sampler's
  // configuration, or when its position lies past the end of the epoch.
  void check_resumable(const SamplerState& state) const;

 private:
  SamplerOptions options_;
  uint64_t epoch_length_;
};

}  // namespace deit::data
