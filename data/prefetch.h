// The threaded prefetch pipeline: worker threads load (decode or copy out of a shard) and transform
// the images of an epoch while the trainer works on earlier batches, into a bounded ring of batch
// buffers that are ready to upload to a GPU.
//
// Determinism: batch b of an epoch always holds the same samples with the same content, whatever
// the number of workers and however the threads are scheduled, because
//  - the order comes from the Sampler (seed, epoch);
//  - each sample's transform gets its own Rng(seed, sample_stream(epoch, global position)), so
//    its random choices do not depend on which thread draws them or when;
//  - an unusable image is replaced by the next image of the dataset (index + 1, wrapping) that
//    loads, a rule that depends on the dataset alone. It is warned about once and counted in
//    skipped(). An evaluation loader (PrefetchOptions::unlabel_stand_ins) gives the stand-in the
//    label kUnscored, so that it is left out of the scores rather than counted twice.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "data/augment_params.h"
#include "data/image_source.h"
#include "data/sampler.h"
#include "engine/rng.h"

namespace deit::data {

// What a batch holds per sample:
// kFloat32 / kUint8: `sample_elements` values the transform writes (e.g. a normalised view);
// kSource: the decoded image itself, kept whatever its size, and the AugmentParams the transform
//          draws for it; a later stage (the GPU's, train/input_feed.h) applies them.
enum class PixelFormat { kFloat32, kUint8, kSource };

// Where a transform writes one sample: exactly one of the pointers is set, per the loader's
// PixelFormat (f32 and u8 to `sample_elements` values, params to one struct).
struct SampleOutput {
  float* f32 = nullptr;
  uint8_t* u8 = nullptr;
  AugmentParams* params = nullptr;
};

// Turns one decoded image into one sample of the batch, drawing any random choice from `rng`.
// Called concurrently from several threads.
using SampleTransform = std::function<void(const ImageU8& image, Rng& rng, SampleOutput out)>;

// The most loader (or decoding) threads a command takes: more is a typo rather than a machine, and
// creating tens of thousands of threads fails part-way.
inline constexpr int kMaxWorkers = 256;

// The label of a sample whose image was unusable, in a loader with unlabel_stand_ins: its row
// holds the image standing in for it, which must not be scored.
inline constexpr int32_t kUnscored = -1;

struct PrefetchOptions {
  size_t batch_size = 64;
  size_t sample_elements = 0;  // values per sample, e.g. 3 * 224 * 224 (unused by kSource)
  PixelFormat format = PixelFormat::kFloat32;
  bool drop_last = true;  // training drops the last partial batch, evaluation keeps it
  bool unlabel_stand_ins = false;  // evaluation: a stand-in's label is kUnscored (see above)
  int num_workers = 2;
  int prefetch_batches = 4;  // batches prepared ahead of the one the trainer holds
};

struct Batch {
  uint64_t epoch = 0;
  uint64_t number = 0;     // counted from the position the epoch was started (or resumed) at
  size_t size = 0;         // samples in this batch; only a last batch kept by !drop_last is short
  std::vector<float> f32;  // (batch_size, sample_elements), the first `size` rows valid
  std::vector<uint8_t> u8;
  std::vector<ImageU8> sources;         // kSource: (batch_size), the first `size` valid
  std::vector<AugmentParams> params;    // kSource: (batch_size), the first `size` valid
  std::vector<int32_t> labels;          // (size); kUnscored for a stand-in with unlabel_stand_ins
  std::vector<uint64_t> indices;  // dataset index of each sample (after any substitution)
};

class PrefetchLoader {
 public:
  // Starts the worker threads. Throws std::invalid_argument for unusable options, and
  // std::runtime_error, with no worker left running, when a thread cannot be started.
  PrefetchLoader(std::shared_ptr<const ImageSource> source, Sampler sampler,
                 PrefetchOptions options, SampleTransform transform);
  ~PrefetchLoader();
  PrefetchLoader(const PrefetchLoader&) = delete;
  PrefetchLoader& operator=(const PrefetchLoader&) = delete;

  // Starts delivering `epoch` from entry `position` of this rank's order (0, or a saved
  // SamplerState's position to resume mid-epoch). Abandons what is left of the previous epoch.
  void start_epoch(uint64_t epoch, uint64_t position = 0);
  // Resumes where `state` (from state() of an earlier run) left off; throws std::invalid_argument
  // when it belongs to a different configuration.
  void resume(const SamplerState& state);

  // The next batch of the epoch, or nullptr when the epoch is over. The batch stays valid until the
  // next call. Rethrows an error a worker met (a transform's exception, or a DataError when too
  // many images in a row are unusable).
  const Batch* next_batch();

  // Batches the current epoch delivers from its start position.
  uint64_t batches_in_epoch() const { return num_batches_; }
  // The position after the last batch handed out: save it with a checkpoint. A feed that takes
  // a batch ahead of the step (train/input_feed.h on CUDA) has been handed one the trainer has
  // not trained on yet; the trainer then saves the position of the batches it stepped on.
  SamplerState state() const;
  const Sampler& sampler() const { return sampler_; }
  const PrefetchOptions& options() const { return options_; }
  const SkippedImages& skipped() const { return skipped_; }
  // Images of each class (label) loaded so far, counted at every load: with skipped()'s
  // count_in_class, a class whose every image met so far was unusable (none loaded, some skipped)
  // is one a model trained on this loader never sees.
  std::vector<uint64_t> loaded_per_class() const;

 private:
  struct Slot {
    Batch batch;
    size_t done = 0;  // samples written so far
  };

  void worker_loop();
  // Tells the workers to return and joins them: destroying a std::thread still running would end
  // the process.
  void stop_workers();
  bool can_claim() const;
  void process(const SamplePick& pick, uint64_t epoch, size_t row, Batch& batch);
  ImageU8 load_or_substitute(uint64_t index, uint64_t* used_index) const;

  std::shared_ptr<const ImageSource> source_;
  Sampler sampler_;
  PrefetchOptions options_;
  SampleTransform transform_;
  mutable SkippedImages skipped_;
  mutable std::vector<std::atomic<uint64_t>> loaded_per_class_;  // by the workers

  // Everything below is guarded by mutex_.
  mutable std::mutex mutex_;
  std::condition_variable work_ready_;   // workers wait for samples they may claim
  std::condition_variable batch_ready_;  // the trainer waits for its next batch; start_epoch for
                                         // in-flight samples to finish
  std::vector<Slot> slots_;
  std::vector<SamplePick> picks_;  // this epoch's entries from start_position_
  uint64_t epoch_ = 0;
  uint64_t start_position_ = 0;
  uint64_t samples_in_epoch_ = 0;  // picks_ used (drop_last leaves out a partial batch)
  uint64_t num_batches_ = 0;
  uint64_t next_sample_ = 0;  // the next sample a worker will claim
  uint64_t delivered_ = 0;    // batches handed to the trainer
  uint64_t released_ = 0;     // batches the trainer is done with (all but the one it holds)
  uint64_t in_flight_ = 0;    // samples claimed and not yet written
  std::exception_ptr error_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace deit::data
