// Evaluation as the reference code reports it: top-1 and top-5 accuracy (percent) and the mean
// cross-entropy over every image of a split, whatever loss the model was trained with.
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

#include "data/prefetch.h"
#include "engine/communicator.h"
#include "model/vit.h"

namespace deit::train {

struct EvalResult {
  double acc1 = 0;
  double acc5 = 0;
  double loss = 0;
  int64_t images = 0;

  nlohmann::json to_json() const;
};

// Runs the whole epoch 0 of `loader` (an evaluation loader: no shuffling, nothing dropped). With
// `across`, a collective: each rank evaluates its shard of the split (make_eval_loader's
// DataShard) and the counts of every rank are summed before the percentages, so every rank returns
// the result over the whole split. Runs on the model's device; on CUDA each batch's logits (bf16)
// come back to the host, which scores them in double.
EvalResult evaluate(const model::VisionTransformer& model, data::PrefetchLoader& loader,
                    bool show_progress, Communicator* across = nullptr);

}  // namespace deit::train
