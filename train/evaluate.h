// Evaluation as the reference code reports it: top-1 and top-5 accuracy (percent) and the mean
// cross-entropy over every image of a split, whatever loss the model was trained with.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/prefetch.h"
#include "engine/communicator.h"
#include "model/vit.h"
#include "train/input_feed.h"

namespace deit::train {

struct EvalResult {
  double acc1 = 0;
  double acc5 = 0;
  double loss = 0;
  int64_t images = 0;   // scored
  int64_t skipped = 0;  // unusable, not scored (each warned about while loading)
  // (K, K) image counts, K the model's outputs: row = true class, column = top-1 prediction (ties
  // to the lower class). Empty unless evaluate() was asked for it.
  int64_t outputs = 0;  // K
  std::vector<int64_t> confusion;

  // acc1, acc5, loss, images, skipped.
  nlohmann::json to_json() const;
  // Per class of the dataset (`class_names`, at most K: a model may have outputs of no class):
  // images, top-1 accuracy (percent; null when no image of it was scored), and the class its
  // images are most often mistaken for (null when never; "output k (no class)" for an output
  // beyond the dataset's classes), from `confusion` (std::logic_error without it).
  nlohmann::json per_class_json(const std::vector<std::string>& class_names) const;
};

// Runs the whole epoch 0 of `loader` (an evaluation loader: no shuffling, nothing dropped). With
// `across`, a collective: each rank evaluates its shard of the split (make_eval_loader's
// DataShard) and the counts of every rank are summed before the percentages, so every rank returns
// the result over the whole split. Runs on the model's device; on CUDA each batch's logits (bf16)
// come back to the host, which scores them in double. `with_confusion` also fills
// EvalResult::confusion: K^2 counts, 3.8 GB for ImageNet-21k's 21,841 classes, so the trainer's
// evaluation after every epoch leaves it out (deit eval --per-class asks for it).
EvalResult evaluate(const model::VisionTransformer& model, data::PrefetchLoader& loader,
                    bool show_progress, Communicator* across = nullptr,
                    bool with_confusion = false);
// The same through a feed on the model's device (a source loader's feed augments on the GPU).
EvalResult evaluate(const model::VisionTransformer& model, InputFeed& feed, bool show_progress,
                    Communicator* across = nullptr, bool with_confusion = false);

}  // namespace deit::train
