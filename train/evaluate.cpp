#include "train/evaluate.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "engine/autograd.h"
#include "train/progress.h"

namespace deit::train {

nlohmann::json EvalResult::to_json() const {
  return {{"acc1", acc1}, {"acc5", acc5}, {"loss", loss}, {"images", images}, {"skipped", skipped}};
}

nlohmann::json EvalResult::per_class_json(const std::vector<std::string>& class_names) const {
  const int64_t K = outputs, named = static_cast<int64_t>(class_names.size());
  if (confusion.size() != static_cast<size_t>(K * K) || named > K)
    throw std::logic_error("per_class_json: no confusion matrix of " + std::to_string(named) +
                           " classes or more (evaluate's with_confusion)");
  auto name_of = [&](int64_t k) {
    return k < named ? class_names[k] : "output " + std::to_string(k) + " (no class)";
  };
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t truth = 0; truth < named; ++truth) {
    const int64_t* row = confusion.data() + truth * K;
    int64_t count = 0, confused_with = -1;
    for (int64_t k = 0; k < K; ++k) {
      count += row[k];
      if (k != truth && row[k] > 0 && (confused_with < 0 || row[k] > row[confused_with]))
        confused_with = k;
    }
    nlohmann::json entry = {
        {"class", class_names[truth]},
        {"images", count},
        {"acc1", count > 0 ? nlohmann::json(100.0 * row[truth] / count) : nlohmann::json(nullptr)}};
    entry["most_confused_with"] =
        confused_with < 0 ? nlohmann::json(nullptr) : nlohmann::json(name_of(confused_with));
    entry["most_confused_images"] = confused_with < 0 ? 0 : row[confused_with];
    rows.push_back(entry);
  }
  return rows;
}

namespace {

// Top-1 / top-5 hits and the summed cross-entropy of one batch of logits (B, K) on the host; the
// top-1 predictions go into `confusion` (K, K) unless it is empty.
struct BatchScore {
  int64_t scored = 0, unscored = 0, top1 = 0, top5 = 0;
  double loss_sum = 0;
};

// Whether class `a` comes before class `b` when an image's scores `row` are sorted as torch's
// topk sorts them: NaN before every number, a larger score before a smaller, and a tie to the lower
// class index (argmax's first maximum). A model whose outputs are all equal, or all NaN, scores at
// chance, where ties going to the label had scored it 100%.
bool comes_before(const float* row, int64_t a, int64_t b) {
  const bool a_nan = std::isnan(row[a]), b_nan = std::isnan(row[b]);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && row[a] != row[b]) return row[a] > row[b];
  return a < b;
}

BatchScore score_batch(const std::vector<float>& logits, const std::vector<int32_t>& labels,
                       int64_t K, std::vector<int64_t>& confusion) {
  BatchScore score;
  for (size_t b = 0; b < labels.size(); ++b) {
    if (labels[b] == data::kUnscored) {  // an unusable image's stand-in
      ++score.unscored;
      continue;
    }
    ++score.scored;
    const float* row = logits.data() + b * K;
    const int64_t label = labels[b];
    // The label's rank (classes before it) and the prediction (the class before all others).
    int64_t ahead = 0, predicted = 0;
    double max = row[0];
    for (int64_t k = 0; k < K; ++k) {
      ahead += k != label && comes_before(row, k, label);
      if (comes_before(row, k, predicted)) predicted = k;
      max = std::max(max, static_cast<double>(row[k]));
    }
    score.top1 += ahead < 1;
    if (!confusion.empty()) ++confusion[label * K + predicted];  // == label exactly when ahead == 0
    score.top5 += ahead < 5;
    double sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += std::exp(row[k] - max);
    score.loss_sum += max + std::log(sum) - row[label];  // -log softmax(row)[label]
  }
  return score;
}

}  // namespace

EvalResult evaluate(const model::VisionTransformer& model, data::PrefetchLoader& loader,
                    bool show_progress, Communicator* across, bool with_confusion) {
  InputFeed feed(loader, model.parameters().get("cls_token").device(), model.config().input_size);
  return evaluate(model, feed, show_progress, across, with_confusion);
}

EvalResult evaluate(const model::VisionTransformer& model, InputFeed& feed, bool show_progress,
                    Communicator* across, bool with_confusion) {
  NoGrad no_grad;
  const model::ViTConfig& c = model.config();
  feed.start_epoch(0);
  const int64_t batches_in_share = static_cast<int64_t>(feed.loader().batches_in_epoch());
  Progress progress("eval", batches_in_share, show_progress);
  // Each process scores its share: as in training, the rate shown is this one's times the
  // processes, and the last line, after the counts are summed, the run's images/s and loss.
  const int processes = across ? across->world_size() : 1;
  EvalResult result;
  result.outputs = c.num_classes;
  if (with_confusion) result.confusion.assign(c.num_classes * c.num_classes, 0);
  int64_t top1 = 0, top5 = 0, batches = 0;
  double loss_sum = 0;
  while (const FeedBatch* batch = feed.next()) {
    const Tensor logits = model.forward(batch->images);
    feed.prefetch();  // CUDA: the next batch goes up while the device runs this one
    const BatchScore s = score_batch(logits.to_vector<float>(), *batch->labels, c.num_classes,
                                     result.confusion);
    top1 += s.top1;
    top5 += s.top5;
    loss_sum += s.loss_sum;
    result.images += s.scored;
    result.skipped += s.unscored;
    if (++batches < batches_in_share)
      progress.update(batches, result.images * processes,
                      result.images ? loss_sum / result.images : 0.0);
  }
  if (across) {
    std::vector<double> counts{static_cast<double>(top1), static_cast<double>(top5), loss_sum,
                               static_cast<double>(result.images),
                               static_cast<double>(result.skipped)};
    across->all_reduce_sum(counts);  // counts below 2^53: exact in double
    top1 = static_cast<int64_t>(counts[0]);
    top5 = static_cast<int64_t>(counts[1]);
    loss_sum = counts[2];
    result.images = static_cast<int64_t>(counts[3]);
    result.skipped = static_cast<int64_t>(counts[4]);
    if (with_confusion) {
      std::vector<double> confusion(result.confusion.begin(), result.confusion.end());
      across->all_reduce_sum(confusion);
      for (size_t i = 0; i < confusion.size(); ++i)
        result.confusion[i] = static_cast<int64_t>(confusion[i]);
    }
  }
  if (result.images > 0) {
    result.acc1 = 100.0 * top1 / result.images;
    result.acc5 = 100.0 * top5 / result.images;
    result.loss = loss_sum / result.images;
  }
  progress.finish(batches, result.images, result.loss);
  return result;
}

}  // namespace deit::train
