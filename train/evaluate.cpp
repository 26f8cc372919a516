#include "train/evaluate.h"

#include <cmath>

#include "engine/autograd.h"
#include "train/data_pipeline.h"
#include "train/progress.h"

namespace deit::train {

nlohmann::json EvalResult::to_json() const {
  return {{"acc1", acc1}, {"acc5", acc5}, {"loss", loss}, {"images", images}};
}

namespace {

// Top-1 / top-5 hits and the summed cross-entropy of one batch of logits (B, K) on the host.
struct BatchScore {
  int64_t top1 = 0, top5 = 0;
  double loss_sum = 0;
};

BatchScore score_batch(const std::vector<float>& logits, const std::vector<int32_t>& labels,
                       int64_t K) {
  BatchScore score;
  for (size_t b = 0; b < labels.size(); ++b) {
    const float* row = logits.data() + b * K;
    const float truth = row[labels[b]];
    // The label's rank: how many classes score strictly higher (ties go to the label).
    int64_t higher = 0;
    double max = row[0];
    for (int64_t k = 0; k < K; ++k) {
      higher += row[k] > truth;
      max = std::max(max, static_cast<double>(row[k]));
    }
    score.top1 += higher < 1;
    score.top5 += higher < 5;
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(row[k] - max);
    score.loss_sum += max + std::log(sum) - truth;  // -log softmax(row)[label]
  }
  return score;
}

}  // namespace

EvalResult evaluate(const model::VisionTransformer& model, data::PrefetchLoader& loader,
                    bool show_progress, Communicator* across) {
  NoGrad no_grad;
  const model::ViTConfig& c = model.config();
  const Device device = model.parameters().get("cls_token").device();
  loader.start_epoch(0);
  Progress progress("eval", static_cast<int64_t>(loader.batches_in_epoch()), show_progress);
  EvalResult result;
  int64_t top1 = 0, top5 = 0, batches = 0;
  double loss_sum = 0;
  while (const data::Batch* batch = loader.next_batch()) {
    const Tensor logits = model.forward(batch_images(*batch, c.input_size, device));
    const BatchScore s = score_batch(logits.to_vector<float>(), batch->labels, c.num_classes);
    top1 += s.top1;
    top5 += s.top5;
    loss_sum += s.loss_sum;
    result.images += static_cast<int64_t>(batch->size);
    progress.update(++batches, result.images, loss_sum / result.images);
  }
  progress.finish();
  if (across) {
    std::vector<double> counts{static_cast<double>(top1), static_cast<double>(top5), loss_sum,
                               static_cast<double>(result.images)};
    across->all_reduce_sum(counts);  // counts below 2^53: exact in double
    top1 = static_cast<int64_t>(counts[0]);
    top5 = static_cast<int64_t>(counts[1]);
    loss_sum = counts[2];
    result.images = static_cast<int64_t>(counts[3]);
  }
  if (result.images > 0) {
    result.acc1 = 100.0 * top1 / result.images;
    result.acc5 = 100.0 * top5 / result.images;
    result.loss = loss_sum / result.images;
  }
  return result;
}

}  // namespace deit::train
