// Evaluation as the reference code reports it: top-1 and top-5 accuracy (percent) and the mean
// cross-entropy over every image of a split, whatever loss the model was trained with.
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

#include "data/prefetch.h"
#include "model/vit.h"

namespace deit::train {

struct EvalResult {
  double acc1 = 0;
  double acc5 = 0;
  double loss = 0;
  int64_t images = 0;

  nlohmann::json to_json() const;
};

// Runs the whole epoch 0 of `loader` (an evaluation loader: no shuffling, nothing dropped).
EvalResult evaluate(const model::VisionTransformer& model, data::PrefetchLoader& loader,
                    bool show_progress);

// Top-1 / top-5 hits and the summed cross-entropy of one batch of logits (B, K) on the host.
struct BatchScore {
  int64_t top1 = 0, top5 = 0;
  double loss_sum = 0;
};
BatchScore score_batch(const std::vector<float>& logits, const std::vector<int32_t>& labels,
                       int64_t num_classes);

}  // namespace deit::train
