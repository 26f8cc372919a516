// The training loop of the DeiT III recipe, on the CPU backend (the CUDA backend plugs in below
// the same loop):
//
//   for each epoch:  lr = cosine schedule with warm-up, set once per epoch (as timm steps it)
//     for each batch of the sampler (3 repeated augmentations per image):
//       images, labels -> mixup or cutmix (one lambda per batch) -> targets, binarised for BCE
//       logits = ViT(images) with per-sample drop-path -> BCE (or soft-target cross-entropy)
//       backward; every accum_steps micro-batches: LAMB / AdamW step, grads zeroed, EMA update
//     evaluate on the validation split; append a JSON line to OUTPUT/log.txt;
//     write OUTPUT/checkpoint.safetensors (temporary file, then rename)
//
// Every random choice is drawn from a stream named by (seed, epoch, batch, purpose) or by the
// sample's position (augmentation), never from a generator carried across steps: a run resumed from
// the end of an epoch repeats, bit for bit on the CPU, what the uninterrupted run did.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "train/evaluate.h"
#include "train/recipe.h"

namespace deit::train {

// The loss became NaN or infinite; nothing of that epoch was written.
struct TrainingDiverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TrainSummary {
  int64_t epochs_run = 0;        // in this invocation
  EvalResult last;               // evaluation after the final epoch
  double best_acc1 = 0;
  int64_t best_epoch = -1;
  double seconds = 0;
  double train_images_per_second = 0;
  int64_t skipped_images = 0;    // unusable files met in the data
  std::string checkpoint;        // path of the last checkpoint
  std::string log;               // path of log.txt
  int64_t parameters = 0;
};

TrainSummary train(TrainOptions options);

}  // namespace deit::train
