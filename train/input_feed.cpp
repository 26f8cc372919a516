#include "train/input_feed.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/augment.h"
#include "train/data_pipeline.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

#include "engine/stream.h"
#include "kernels/check.h"
#endif

namespace deit::train {

PackedLayout packed_layout(const data::Batch& batch) {
  auto align16 = [](size_t n) { return (n + 15) / 16 * 16; };
  PackedLayout l;
  l.sources = align16(l.params + batch.size * sizeof(kernels::AugmentParams));
  l.labels = align16(l.sources + batch.size * sizeof(kernels::SourceImage));
  l.pixels = align16(l.labels + batch.size * sizeof(int32_t));
  l.bytes = l.pixels;
  for (size_t i = 0; i < batch.size; ++i) l.bytes += batch.sources[i].pixels.size();
  return l;
}

void pack_batch(const data::Batch& batch, const PackedLayout& l, uint8_t* dst) {
  std::memcpy(dst + l.params, batch.params.data(), batch.size * sizeof(kernels::AugmentParams));
  std::memcpy(dst + l.labels, batch.labels.data(), batch.size * sizeof(int32_t));
  auto* sources = reinterpret_cast<kernels::SourceImage*>(dst + l.sources);
  int64_t offset = 0;
  for (size_t i = 0; i < batch.size; ++i) {
    const data::ImageU8& image = batch.sources[i];
    sources[i] = kernels::SourceImage{};
    sources[i].offset = offset;
    sources[i].height = image.height;
    sources[i].width = image.width;
    std::memcpy(dst + l.pixels + offset, image.pixels.data(), image.pixels.size());
    offset += static_cast<int64_t>(image.pixels.size());
  }
}

size_t grown_upload_bytes(size_t needed, size_t current) {
  return std::max(needed + needed / 4, 2 * current);
}

#if DEIT_HAVE_CUDA

// The CUDA path of a source feed (see the header): two upload slots, each a pinned host buffer
// and a device buffer, used alternately.
class InputFeed::DeviceStage {
 public:
  DeviceStage(Device device, int64_t input_size)
      : device_(device), size_(static_cast<int>(input_size)) {
    DEIT_CUDA_CHECK(cudaSetDevice(device.index));
    compute_ = compute_stream(device.index);
    DEIT_CUDA_CHECK(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking));
    for (Slot& slot : slots_) {
      DEIT_CUDA_CHECK(cudaEventCreateWithFlags(&slot.uploaded, cudaEventDisableTiming));
      DEIT_CUDA_CHECK(cudaEventCreateWithFlags(&slot.consumed, cudaEventDisableTiming));
    }
  }

  ~DeviceStage() {
    // Nothing may still read or write the buffers, including the kernels of the batch handed out
    // last, for which no `consumed` event was recorded (destructors do not throw: errors are
    // ignored).
    cudaStreamSynchronize(copy_);
    cudaStreamSynchronize(compute_);
    for (Slot& slot : slots_) {
      cudaFreeHost(slot.host);
      cudaFree(slot.device);
      cudaEventDestroy(slot.uploaded);
      cudaEventDestroy(slot.consumed);
    }
    cudaStreamDestroy(copy_);
  }

  bool has_staged() const { return staged_ >= 0; }

  // Packs `batch` into the slot not handed out and queues its upload on the copy stream.
  void stage(const data::Batch& batch) {
    // Between batches (none handed out), not the slot handed out last: its kernels may still run,
    // and the upload would wait for them.
    const int s = 1 - (current_ >= 0 ? current_ : last_handed_);
    Slot& slot = slots_[s];
    slot.layout = packed_layout(batch);
    // The pinned buffer's previous upload must be complete before it is refilled.
    DEIT_CUDA_CHECK(cudaEventSynchronize(slot.uploaded));
    if (slot.layout.bytes > slot.host_bytes) {
      // The sizes follow the buffers only once they exist, so that a failed allocation leaves a
      // slot that is empty, not one that claims bytes it lacks.
      const size_t old_bytes = slot.host_bytes;
      DEIT_CUDA_CHECK(cudaFreeHost(slot.host));
      slot.host = nullptr;
      slot.host_bytes = 0;
      const size_t bytes = grown_upload_bytes(slot.layout.bytes, old_bytes);
      DEIT_CUDA_CHECK(cudaHostAlloc(&slot.host, bytes, cudaHostAllocDefault));
      slot.host_bytes = bytes;
    }
    pack_batch(batch, slot.layout, slot.host);
    // Checks every sample's parameters and writes the scratch offsets into the packed sources.
    slot.scratch_bytes = kernels::plan_augment_cuda(
        reinterpret_cast<kernels::SourceImage*>(slot.host + slot.layout.sources),
        reinterpret_cast<const kernels::AugmentParams*>(slot.host + slot.layout.params),
        static_cast<int64_t>(batch.size), size_);
    if (slot.layout.bytes > slot.device_bytes) {
      // The kernels that read the old buffer must be done before it is freed.
      DEIT_CUDA_CHECK(cudaEventSynchronize(slot.consumed));
      const size_t old_bytes = slot.device_bytes;
      DEIT_CUDA_CHECK(cudaFree(slot.device));
      slot.device = nullptr;
      slot.device_bytes = 0;
      // Straight from the driver, not the caching allocator (engine/allocator.h): the buffer is
      // the feed's for its whole life and written on its own copy stream, outside the allocator's
      // one-stream reuse rule (engine/stream.h). So the allocator's statistics, which a warm
      // step's "no cudaMalloc" check reads, do not count this growth.
      const size_t bytes = grown_upload_bytes(slot.layout.bytes, old_bytes);
      DEIT_CUDA_CHECK(cudaMalloc(&slot.device, bytes));
      slot.device_bytes = bytes;
    }
    // The device buffer is overwritten only after the kernels that read its previous batch.
    DEIT_CUDA_CHECK(cudaStreamWaitEvent(copy_, slot.consumed, 0));
    DEIT_CUDA_CHECK(
        cudaMemcpyAsync(slot.device, slot.host, slot.layout.bytes, cudaMemcpyHostToDevice, copy_));
    DEIT_CUDA_CHECK(cudaEventRecord(slot.uploaded, copy_));
    slot.number = batch.number;
    slot.labels.assign(batch.labels.begin(), batch.labels.begin() + batch.size);
    staged_ = s;
  }

  // Queues the augmentation of the staged batch on the compute stream, after its upload, and
  // hands it out.
  void augment_staged(FeedBatch& out) {
    Slot& slot = slots_[staged_];
    const int64_t n = static_cast<int64_t>(slot.labels.size());
    DEIT_CUDA_CHECK(cudaStreamWaitEvent(compute_, slot.uploaded, 0));
    out.images = Tensor::empty({n, 3, size_, size_}, DType::f32, device_);
    // From the compute stream's allocator: freed when this returns, reused by later work queued on
    // the same stream, so after these kernels.
    const Tensor workspace = Tensor::empty({slot.scratch_bytes}, DType::u8, device_);
    kernels::augment_batch_cuda(
        slot.device + slot.layout.pixels,
        reinterpret_cast<const kernels::SourceImage*>(slot.device + slot.layout.sources),
        reinterpret_cast<const kernels::AugmentParams*>(slot.device + slot.layout.params), n, size_,
        out.images.data<float>(), workspace.data<uint8_t>(), compute_);
    out.number = slot.number;
    out.size = static_cast<size_t>(n);
    out.labels = &slot.labels;
    out.device_labels = reinterpret_cast<const int32_t*>(slot.device + slot.layout.labels);
    current_ = last_handed_ = staged_;
    staged_ = -1;
  }

  // The batch handed out last is done with: everything that reads its slot is queued by now.
  void release_current() {
    if (current_ < 0) return;
    DEIT_CUDA_CHECK(cudaEventRecord(slots_[current_].consumed, compute_));
    current_ = -1;
  }

  // A batch staged from an epoch that is being abandoned: its upload completes unused.
  void drop_staged() { staged_ = -1; }

 private:
  struct Slot {
    uint8_t* host = nullptr;  // pinned
    size_t host_bytes = 0;
    uint8_t* device = nullptr;
    size_t device_bytes = 0;
    cudaEvent_t uploaded = nullptr;  // on the copy stream: the upload is complete
    cudaEvent_t consumed =
        nullptr;  // on the compute stream: every kernel reading it is queued before
    PackedLayout layout;
    int64_t scratch_bytes = 0;
    uint64_t number = 0;
    std::vector<int32_t> labels;
  };

  Device device_;
  int size_;
  cudaStream_t compute_ = nullptr;
  cudaStream_t copy_ = nullptr;
  Slot slots_[2];
  int current_ = -1;      // the slot of the batch handed out, if any
  int last_handed_ = 1;  // the slot handed out most recently (1 at first: slot 0 goes first)
  int staged_ = -1;   // the slot whose upload is queued and not yet handed out, if any
};

#else

// Without CUDA a feed never runs on a GPU; the type only needs to exist.
class InputFeed::DeviceStage {};

#endif

InputFeed::InputFeed(data::PrefetchLoader& loader, Device device, int64_t input_size)
    : loader_(loader), device_(device), input_size_(input_size) {
  const data::PixelFormat format = loader.options().format;
  if (format == data::PixelFormat::kUint8)
    throw std::invalid_argument("input feed: a uint8 loader is neither augmented nor sources");
#if DEIT_HAVE_CUDA
  if (format == data::PixelFormat::kSource && device.is_cuda())
    stage_ = std::make_unique<DeviceStage>(device, input_size);
#endif
}

InputFeed::~InputFeed() = default;

void InputFeed::start_epoch(uint64_t epoch, uint64_t position) {
#if DEIT_HAVE_CUDA
  if (stage_) {
    stage_->release_current();
    stage_->drop_staged();
  }
#endif
  loader_.start_epoch(epoch, position);
}

const FeedBatch* InputFeed::next() {
#if DEIT_HAVE_CUDA
  if (stage_) {
    stage_->release_current();
    if (!stage_->has_staged()) prefetch();
    if (!stage_->has_staged()) return nullptr;
    stage_->augment_staged(current_);
    return &current_;
  }
#endif
  const data::Batch* batch = loader_.next_batch();
  if (!batch) return nullptr;
  current_.number = batch->number;
  current_.size = batch->size;
  current_.labels = &batch->labels;
  current_.device_labels = nullptr;
  if (loader_.options().format == data::PixelFormat::kFloat32) {
    current_.images = batch_images(*batch, input_size_, device_);
    return &current_;
  }
  // A source batch on the CPU: the batch stage's CPU twin.
  const PackedLayout layout = packed_layout(*batch);
  packed_.resize(layout.bytes);
  pack_batch(*batch, layout, packed_.data());
  const int64_t n = static_cast<int64_t>(batch->size), s = input_size_;
  current_.images = Tensor::empty({n, 3, s, s});
  kernels::augment_batch_cpu(
      packed_.data() + layout.pixels,
      reinterpret_cast<const kernels::SourceImage*>(packed_.data() + layout.sources),
      reinterpret_cast<const kernels::AugmentParams*>(packed_.data() + layout.params), n,
      static_cast<int>(s), current_.images.data<float>());
  return &current_;
}

void InputFeed::prefetch() {
#if DEIT_HAVE_CUDA
  if (!stage_ || stage_->has_staged()) return;
  if (const data::Batch* batch = loader_.next_batch()) stage_->stage(*batch);
#endif
}

}  // namespace deit::train
