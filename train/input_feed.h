// The last step of the input path: the batches of a PrefetchLoader (data/prefetch.h) become image
// tensors on the run's device.
//
// - Float loaders (augmented and normalised on the worker threads, the CPU stage): the batch is
//   copied into a tensor, and uploaded when the device is a GPU.
// - Source loaders (PixelFormat::kSource: the decoded uint8 images and their AugmentParams): the
//   augment kernels' batch stage applies the parameters (kernels/augment.h). On CUDA that is the
//   GPU stage: the feed packs each batch (parameters, labels, pixels) into a pinned host buffer
//   and uploads it on a copy stream of its own; the augmentation kernels run on the compute
//   stream once an event says the upload is complete. Two buffers alternate, so while the device
//   computes step n the host packs and uploads batch n+1 (prefetch()); events keep a buffer from
//   being refilled before the kernels that read it have run. On the CPU the batch stage's CPU twin
//   runs (tests and `deit bench data --device cpu` use it; CPU training uses float loaders).
//
// One thread drives a feed, the thread that issues the device's work.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "data/prefetch.h"
#include "engine/tensor.h"

namespace deit::train {

struct FeedBatch {
  uint64_t number = 0;  // as data::Batch::number
  size_t size = 0;
  Tensor images;  // (size, 3, S, S) float32 on the feed's device, normalised
  const std::vector<int32_t>* labels = nullptr;  // (size), host
  // CUDA source feeds: the same labels in device memory (int32, size), else nullptr.
  const int32_t* device_labels = nullptr;
};

// A source batch (PixelFormat::kSource) packed in one buffer, the bytes the GPU stage uploads as
// they are: params (size AugmentParams), sources (size kernels::SourceImage), labels (size int32),
// then every image's pixels; each part 16-byte aligned, its byte offset the same in a device copy.
struct PackedLayout {
  size_t params = 0, sources = 0, labels = 0, pixels = 0, bytes = 0;
};
PackedLayout packed_layout(const data::Batch& batch);
// dst: layout.bytes bytes.
void pack_batch(const data::Batch& batch, const PackedLayout& layout, uint8_t* dst);

// The bytes a CUDA source feed's upload buffer (pinned and device) grows to when a batch of
// `needed` bytes does not fit in its `current` bytes. Growing frees and reallocates both buffers,
// and freeing synchronises the device: a stall. Batches of source images vary in size (ImageNet's
// widely), so the buffer at least doubles, which bounds the stalls by the logarithm of the
// largest batch over the first (at most twice the largest batch is held); the first allocation
// leaves a quarter of headroom.
size_t grown_upload_bytes(size_t needed, size_t current);

class InputFeed {
 public:
  // `loader` must outlive the feed; its PixelFormat is kFloat32 or kSource, with input_size x
  // input_size views.
  InputFeed(data::PrefetchLoader& loader, Device device, int64_t input_size);
  ~InputFeed();
  InputFeed(const InputFeed&) = delete;
  InputFeed& operator=(const InputFeed&) = delete;

  // Starts the loader's `epoch` from `position` (data::PrefetchLoader::start_epoch), dropping any
  // batch staged from the previous one.
  void start_epoch(uint64_t epoch, uint64_t position = 0);
  // The next batch of the epoch, or nullptr when it is over. Valid until the next call. On CUDA
  // its images are being written by kernels queued on the compute stream.
  const FeedBatch* next();
  // CUDA source feeds: packs and uploads the following batch now, so that the upload overlaps
  // the device's work on the current one (call it after queuing a step, before waiting for it).
  // Elsewhere nothing to do.
  void prefetch();

  data::PrefetchLoader& loader() { return loader_; }

 private:
  class DeviceStage;

  data::PrefetchLoader& loader_;
  Device device_;
  int64_t input_size_;
  FeedBatch current_;
  std::vector<uint8_t> packed_;         // CPU source feeds: the packed batch
  std::unique_ptr<DeviceStage> stage_;  // CUDA source feeds
};

}  // namespace deit::train
