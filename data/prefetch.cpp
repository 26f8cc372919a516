#include "data/prefetch.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>

namespace deit::data {
namespace {

// How many images in a row may be unusable before the loader gives up: more means the dataset
// itself is broken (a wrong path, a failing disk), not a few bad files.
constexpr uint64_t kMaxConsecutiveUnusable = 64;

constexpr uint64_t kNoBatch = UINT64_MAX;

}  // namespace

PrefetchLoader::PrefetchLoader(std::shared_ptr<const ImageSource> source, Sampler sampler,
                               PrefetchOptions options, SampleTransform transform)
    : source_(std::move(source)),
      sampler_(std::move(sampler)),
      options_(options),
      transform_(std::move(transform)),
      loaded_per_class_(source_ ? source_->class_names().size() : 0) {
  if (!source_ || !transform_)
    throw std::invalid_argument("prefetch: no image source or transform");
  if (sampler_.options().dataset_size != source_->size()) {
    throw std::invalid_argument("prefetch: the sampler covers " +
                                std::to_string(sampler_.options().dataset_size) +
                                " images, the source has " + std::to_string(source_->size()));
  }
  const bool fixed_size = options_.format != PixelFormat::kSource;
  if (options_.batch_size == 0 || (fixed_size && options_.sample_elements == 0) ||
      options_.num_workers < 1 || options_.prefetch_batches < 1) {
    throw std::invalid_argument(
        "prefetch: batch size, sample size, workers and prefetch depth must be positive");
  }
  // One slot for the batch the trainer holds, the others filled ahead of it.
  slots_.resize(static_cast<size_t>(options_.prefetch_batches) + 1);
  const size_t values = options_.batch_size * options_.sample_elements;
  for (Slot& slot : slots_) {
    switch (options_.format) {
      case PixelFormat::kFloat32:
        slot.batch.f32.resize(values);
        break;
      case PixelFormat::kUint8:
        slot.batch.u8.resize(values);
        break;
      case PixelFormat::kSource:
        slot.batch.sources.resize(options_.batch_size);
        slot.batch.params.resize(options_.batch_size);
        break;
    }
    slot.batch.number = kNoBatch;
  }
  // A thread can fail to start (a process or memory limit): the ones started are stopped before
  // the error leaves, as the destructor, which does not run for a constructor that throws, would.
  try {
    for (int i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (const std::system_error& e) {
    const size_t started = workers_.size();
    stop_workers();
    throw std::runtime_error("prefetch: cannot start worker thread " + std::to_string(started + 1) +
                             " of " + std::to_string(options_.num_workers) + " (" + e.what() +
                             "); ask for fewer workers");
  } catch (...) {
    stop_workers();
    throw;
  }
}

std::vector<uint64_t> PrefetchLoader::loaded_per_class() const {
  std::vector<uint64_t> loaded(loaded_per_class_.size());
  for (size_t label = 0; label < loaded.size(); ++label) loaded[label] = loaded_per_class_[label];
  return loaded;
}

PrefetchLoader::~PrefetchLoader() { stop_workers(); }

void PrefetchLoader::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void PrefetchLoader::start_epoch(uint64_t epoch, uint64_t position) {
  std::unique_lock<std::mutex> lock(mutex_);
  // Let the samples already claimed finish before their buffers and picks are replaced; with no
  // samples left in the epoch, no worker claims another meanwhile.
  samples_in_epoch_ = 0;
  batch_ready_.wait(lock, [this] { return in_flight_ == 0; });

  picks_ = sampler_.epoch_picks(epoch, position);
  epoch_ = epoch;
  start_position_ = position;
  const uint64_t batch = options_.batch_size;
  samples_in_epoch_ = options_.drop_last ? picks_.size() / batch * batch : picks_.size();
  num_batches_ = (samples_in_epoch_ + batch - 1) / batch;
  next_sample_ = 0;
  delivered_ = 0;
  released_ = 0;
  error_ = nullptr;
  for (Slot& slot : slots_) {
    slot.batch.number = kNoBatch;
    slot.done = 0;
  }
  lock.unlock();
  work_ready_.notify_all();
}

void PrefetchLoader::resume(const SamplerState& state) {
  sampler_.check_resumable(state);
  start_epoch(state.epoch, state.position);
}

SamplerState PrefetchLoader::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t consumed = std::min<uint64_t>(delivered_ * options_.batch_size, picks_.size());
  return sampler_.state(epoch_, start_position_ + consumed);
}

const Batch* PrefetchLoader::next_batch() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (delivered_ >= num_batches_) return nullptr;
  // The trainer is done with the batch it held: its slot may be refilled.
  released_ = delivered_;
  work_ready_.notify_all();

  Slot& slot = slots_[delivered_ % slots_.size()];
  batch_ready_.wait(lock, [&] {
    return error_ || (slot.batch.number == delivered_ && slot.done == slot.batch.size);
  });
  if (error_) std::rethrow_exception(error_);
  ++delivered_;
  return &slot.batch;
}

// Batch b fills slot b % slots, so it may start once the trainer has released batch b - slots,
// the slot's last: the slots hold the batch the trainer has and those filled ahead of it.
bool PrefetchLoader::can_claim() const {
  return !error_ && next_sample_ < samples_in_epoch_ &&
         next_sample_ / options_.batch_size < released_ + slots_.size();
}

void PrefetchLoader::worker_loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    work_ready_.wait(lock, [this] { return stopping_ || can_claim(); });
    if (stopping_) return;

    const uint64_t sample = next_sample_++;
    const uint64_t batch_number = sample / options_.batch_size;
    const size_t row = sample % options_.batch_size;
    Slot& slot = slots_[batch_number % slots_.size()];
    if (row == 0) {  // the first sample of a batch claims its slot, free by now (can_claim)
      slot.batch.epoch = epoch_;
      slot.batch.number = batch_number;
      slot.batch.size = std::min<uint64_t>(options_.batch_size,
                                           samples_in_epoch_ - batch_number * options_.batch_size);
      slot.batch.labels.resize(slot.batch.size);
      slot.batch.indices.resize(slot.batch.size);
      slot.done = 0;
    }
    const SamplePick pick = picks_[sample];
    const uint64_t epoch = epoch_;
    ++in_flight_;

    lock.unlock();
    std::exception_ptr error;
    try {
      process(pick, epoch, row, slot.batch);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();

    --in_flight_;
    if (error && !error_) error_ = error;
    if (!error) ++slot.done;
    if (error || slot.done == slot.batch.size || in_flight_ == 0) batch_ready_.notify_all();
  }
}

void PrefetchLoader::process(const SamplePick& pick, uint64_t epoch, size_t row, Batch& batch) {
  uint64_t used_index = pick.index;
  ImageU8 image = load_or_substitute(pick.index, &used_index);
  Rng rng(sampler_.options().seed, sample_stream(epoch, pick.global_position));
  const size_t offset = row * options_.sample_elements;
  SampleOutput out;
  switch (options_.format) {
    case PixelFormat::kFloat32:
      out.f32 = batch.f32.data() + offset;
      break;
    case PixelFormat::kUint8:
      out.u8 = batch.u8.data() + offset;
      break;
    case PixelFormat::kSource:
      out.params = &batch.params[row];
      break;
  }
  transform_(image, rng, out);
  if (options_.format == PixelFormat::kSource) batch.sources[row] = std::move(image);
  const bool stand_in = used_index != pick.index;
  batch.labels[row] =
      stand_in && options_.unlabel_stand_ins ? kUnscored : source_->label(used_index);
  batch.indices[row] = used_index;
}

ImageU8 PrefetchLoader::load_or_substitute(uint64_t index, uint64_t* used_index) const {
  const uint64_t n = source_->size();
  const uint64_t attempts = std::min(kMaxConsecutiveUnusable, n);
  for (uint64_t attempt = 0; attempt < attempts; ++attempt) {
    const uint64_t candidate = (index + attempt) % n;
    try {
      ImageU8 image = source_->load(candidate);
      *used_index = candidate;
      ++loaded_per_class_.at(static_cast<size_t>(source_->label(candidate)));
      return image;
    } catch (const DataError& error) {
      skipped_.record(source_->describe(candidate), error.what(), source_->label(candidate),
                      static_cast<int64_t>(candidate));
    }
  }
  if (n == 1)
    throw DataError(source_->describe(index) +
                    ", the dataset's only image, is unusable: giving up (is the dataset damaged?)");
  throw DataError(source_->describe(index) + " and the " + std::to_string(attempts - 1) +
                  " images after it in the dataset's order are all unusable: giving up (is the "
                  "dataset damaged?)");
}

}  // namespace deit::data
