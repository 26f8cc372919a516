#include "train/data_pipeline.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "data/augment_params.h"
#include "data/transforms.h"

namespace deit::train {

namespace {

void check_format(data::PixelFormat format) {
  if (format != data::PixelFormat::kFloat32 && format != data::PixelFormat::kSource)
    throw std::invalid_argument("input pipeline: batches are augmented floats or sources");
}

}  // namespace

std::unique_ptr<data::PrefetchLoader> make_train_loader(
    std::shared_ptr<const data::ImageSource> source, const TrainOptions& o, DataShard shard,
    data::PixelFormat format) {
  check_format(format);
  data::AugmentConfig augment;
  augment.input_size = static_cast<int>(o.model.input_size);
  augment.crop = o.src ? data::CropMode::kSimpleRandom : data::CropMode::kRandomResized;
  augment.scale_min = o.rrc_scale_min;
  augment.three_augment = o.three_augment;
  augment.color_jitter = o.color_jitter;
  augment.rand_augment = data::rand_augment_option(o.aa);

  data::SamplerOptions sampling;
  sampling.dataset_size = source->size();
  sampling.seed = o.seed;
  sampling.repeats = o.repeated_aug ? 3 : 1;
  sampling.rank = shard.rank;
  sampling.world_size = shard.world_size;

  data::PrefetchOptions prefetch;
  prefetch.batch_size = static_cast<size_t>(o.batch_size);
  prefetch.sample_elements = static_cast<size_t>(3 * o.model.input_size * o.model.input_size);
  prefetch.format = format;
  prefetch.drop_last = true;
  prefetch.num_workers = o.workers;

  auto transform = [augment](const data::ImageU8& image, Rng& rng, data::SampleOutput out) {
    const data::AugmentParams params =
        data::sample_augment_params(augment, image.height, image.width, rng);
    if (out.params) {
      *out.params = params;
    } else {
      data::normalize(data::augment_train(image, params), out.f32);
    }
  };
  // Before the loader makes room for batches: a batch larger than an epoch never fills, and the
  // room alone may exceed the machine's memory (--batch-size 2000000 was killed by the kernel).
  data::Sampler sampler(sampling);
  if (sampler.epoch_length() < prefetch.batch_size)
    throw std::runtime_error(
        (shard.world_size > 1
             ? "each of the " + std::to_string(shard.world_size) +
                   " processes trains its share of an epoch of '" + o.data_dir + "', "
             : "an epoch of '" + o.data_dir + "' has ") +
        std::to_string(sampler.epoch_length()) + " images, fewer than one batch of " +
        std::to_string(o.batch_size) + "; lower --batch-size");
  return std::make_unique<data::PrefetchLoader>(std::move(source), std::move(sampler), prefetch,
                                                transform);
}

std::unique_ptr<data::PrefetchLoader> make_eval_loader(
    std::shared_ptr<const data::ImageSource> source, int64_t input_size, double crop_ratio,
    int64_t batch_size, int workers, DataShard shard, data::PixelFormat format) {
  check_format(format);
  data::SamplerOptions sampling;
  sampling.dataset_size = source->size();
  sampling.shuffle = false;
  sampling.rank = shard.rank;
  sampling.world_size = shard.world_size;
  sampling.pad = false;

  data::PrefetchOptions prefetch;
  // A batch larger than this rank's share of the split would only hold room for images that never
  // come (deit eval --batch-size 100000 on 500 images asked for 21 GB).
  const int64_t ranks = std::max<int64_t>(1, shard.world_size);
  const int64_t share = (static_cast<int64_t>(source->size()) + ranks - 1) / ranks;
  prefetch.batch_size = static_cast<size_t>(std::max<int64_t>(1, std::min(batch_size, share)));
  prefetch.sample_elements = static_cast<size_t>(3 * input_size * input_size);
  prefetch.format = format;
  prefetch.drop_last = false;
  prefetch.unlabel_stand_ins = true;  // an unusable image is left out of the scores
  prefetch.num_workers = workers;

  const int size = static_cast<int>(input_size);
  auto transform = [size, crop_ratio](const data::ImageU8& image, Rng&, data::SampleOutput out) {
    if (out.params) {
      *out.params = data::eval_augment_params(image.height, image.width, size, crop_ratio);
    } else {
      data::normalize(data::eval_transform(image, size, crop_ratio), out.f32);
    }
  };
  return std::make_unique<data::PrefetchLoader>(std::move(source), data::Sampler(sampling),
                                                prefetch, transform);
}

Tensor batch_images(const data::Batch& batch, int64_t input_size, Device device) {
  const int64_t n = static_cast<int64_t>(batch.size);
  Tensor images = Tensor::empty({n, 3, input_size, input_size});
  std::memcpy(images.raw_data(), batch.f32.data(), images.nbytes());
  return images.to(device);
}

}  // namespace deit::train
