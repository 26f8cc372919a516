// The two input pipelines of a run, built from its options: training (the sampler with repeated
// augmentation, RandomResizedCrop or Simple Random Crop, flip, 3-Augment and colour jitter or
// RandAugment (--aa), normalisation) and evaluation (resize + centre crop, every image once, in
// order). Mixup/cutmix happens per batch in the trainer.
//
// `format` says where the pixels are augmented: kFloat32, on the loader's worker threads (the CPU
// stage: CPU runs); kSource, later, by an InputFeed (train/input_feed.h; the GPU stage on CUDA):
// the workers then only decode and draw each sample's parameters. The parameters are drawn from
// the same per-sample streams either way, so both give the same views.
#pragma once
#include <cstdint>
#include <memory>

#include "data/image_source.h"
#include "data/prefetch.h"
#include "engine/tensor.h"
#include "train/recipe.h"

namespace deit::train {

// The share of the data one process of a data-parallel run reads (data/sampler.h): training
// shards like DistributedSampler (equal shares, padded); evaluation without padding, so that the
// ranks together see every image exactly once.
struct DataShard {
  uint32_t rank = 0;
  uint32_t world_size = 1;
};

std::unique_ptr<data::PrefetchLoader> make_train_loader(
    std::shared_ptr<const data::ImageSource> source, const TrainOptions& options,
    DataShard shard = {}, data::PixelFormat format = data::PixelFormat::kFloat32);

std::unique_ptr<data::PrefetchLoader> make_eval_loader(
    std::shared_ptr<const data::ImageSource> source, int64_t input_size, double crop_ratio,
    int64_t batch_size, int workers, DataShard shard = {},
    data::PixelFormat format = data::PixelFormat::kFloat32);

// The valid rows of a float batch as an image tensor (size, 3, input_size, input_size) on `device`.
Tensor batch_images(const data::Batch& batch, int64_t input_size, Device device);

}  // namespace deit::train
