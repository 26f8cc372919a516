#include "train/recipe.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <stdexcept>

#include "data/prefetch.h"

namespace deit::train {

namespace {

// A flag's value as the user would type it (NaN as nan, 1e-08 not 0.000000).
std::string number(double value) {
  std::ostringstream s;
  s << value;
  return s.str();
}

}  // namespace

TrainOptions recipe_for(const std::string& preset) {
  TrainOptions o;
  o.model = model::preset(preset);
  struct PresetRecipe {
    const char* name;
    double lr, drop_path;
    int64_t input_size;
  };
  static constexpr PresetRecipe kRecipes[] = {
      {"deit3_tiny", 4e-3, 0.0, 224},   {"deit3_small", 4e-3, 0.05, 224},
      {"deit3_medium", 3e-3, 0.1, 224}, {"deit3_base", 3e-3, 0.2, 192},
      {"deit3_large", 3e-3, 0.45, 192}, {"deit3_huge", 3e-3, 0.6, 160},
      {"deit3_huge52", 3e-3, 0.6, 160},
  };
  for (const auto& r : kRecipes)
    if (preset == r.name) {
      o.lr = r.lr;
      o.drop_path = r.drop_path;
      o.model.input_size = r.input_size;
    }
  return o;
}

void TrainOptions::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  model.validate();
  if (data_dir.empty()) fail("--data is required");
  if (output_dir.empty()) fail("--output is required");
  if (epochs < 1) fail("--epochs must be at least 1, got " + std::to_string(epochs));
  if (batch_size < 1) fail("--batch-size must be at least 1, got " + std::to_string(batch_size));
  if ((mixup > 0 || cutmix > 0) && batch_size % 2 != 0)
    fail("--batch-size must be even with mixup/cutmix (samples are mixed in pairs), got " +
         std::to_string(batch_size));
  if (accum_steps < 1) fail("--accum-steps must be at least 1, got " + std::to_string(accum_steps));
  if (opt != "lamb" && opt != "adamw") fail("--opt must be lamb or adamw, got '" + opt + "'");
  // Written so that NaN fails each check: every comparison with NaN is false.
  if (!(lr > 0 && std::isfinite(lr))) fail("--lr must be positive, got " + number(lr));
  if (!(min_lr >= 0 && warmup_lr >= 0 && std::isfinite(min_lr) && std::isfinite(warmup_lr)))
    fail("--min-lr and --warmup-lr must not be negative, got " + number(min_lr) + " and " +
         number(warmup_lr));
  if (!(warmup_epochs >= 0 && std::isfinite(warmup_epochs)))
    fail("--warmup-epochs must not be negative, got " + number(warmup_epochs));
  if (!(weight_decay >= 0 && std::isfinite(weight_decay)))
    fail("--weight-decay must not be negative, got " + number(weight_decay));
  if (!(opt_eps > 0 && std::isfinite(opt_eps)))
    fail("--opt-eps must be positive, got " + number(opt_eps));
  if (!(clip_grad >= 0 && std::isfinite(clip_grad)))
    fail("--clip-grad must not be negative (0: off), got " + number(clip_grad));
  if (!(drop_path >= 0 && drop_path < 1)) fail("--drop-path must be in [0, 1)");
  if (!(mixup >= 0 && cutmix >= 0 && std::isfinite(mixup) && std::isfinite(cutmix)))
    fail("--mixup and --cutmix must not be negative, got " + number(mixup) + " and " +
         number(cutmix));
  if (!(mixup_prob >= 0 && mixup_prob <= 1)) fail("--mixup-prob must be in [0, 1]");
  if (!(mixup_switch_prob >= 0 && mixup_switch_prob <= 1))
    fail("--mixup-switch-prob must be in [0, 1]");
  if (!(smoothing >= 0 && smoothing < 1)) fail("--smoothing must be in [0, 1)");
  if (!(eval_crop_ratio > 0 && eval_crop_ratio <= 1)) fail("--eval-crop-ratio must be in (0, 1]");
  if (!(color_jitter >= 0 && color_jitter < 1)) fail("--color-jitter must be in [0, 1)");
  if (!(rrc_scale_min > 0 && rrc_scale_min <= 1)) fail("--rrc-scale-min must be in (0, 1]");
  if (!(model_ema_decay >= 0 && model_ema_decay <= 1)) fail("--model-ema-decay must be in [0, 1]");
  if (workers < 1 || workers > data::kMaxWorkers)
    fail("--workers must be in [1, " + std::to_string(data::kMaxWorkers) + "], got " +
         std::to_string(workers));
  if (!(bucket_mb > 0)) fail("--bucket-mb must be positive");
  if (!resume.empty() && !finetune.empty()) fail("--resume and --finetune cannot be combined");
  if (cuda_graph && device.rfind("cuda", 0) != 0)
    fail("--cuda-graph needs --device cuda, got --device " + device);
  if (cuda_graph && accum_steps != 1)
    fail("--cuda-graph captures whole optimizer steps: it needs --accum-steps 1, got " +
         std::to_string(accum_steps));
}

int64_t micro_batches_in_step(int64_t micro_batch, int64_t batches, int64_t accum_steps) {
  const int64_t before = (micro_batch - 1) / accum_steps * accum_steps;  // in earlier steps
  return std::min(accum_steps, batches - before);
}

nlohmann::json TrainOptions::to_json() const {
  return {{"model", model.name},
          {"patch", model.patch},
          {"dim", model.dim},
          {"depth", model.depth},
          {"heads", model.heads},
          {"num_classes", model.num_classes},
          {"input_size", model.input_size},
          {"data", data_dir},
          {"output", output_dir},
          {"device", device},
          {"epochs", epochs},
          {"batch_size", batch_size},
          {"accum_steps", accum_steps},
          {"opt", opt},
          {"lr", lr},
          {"min_lr", min_lr},
          {"warmup_lr", warmup_lr},
          {"warmup_epochs", warmup_epochs},
          {"weight_decay", weight_decay},
          {"opt_eps", opt_eps},
          {"clip_grad", clip_grad},
          {"drop_path", drop_path},
          {"three_augment", three_augment},
          {"src", src},
          {"rrc_scale_min", rrc_scale_min},
          {"color_jitter", color_jitter},
          {"eval_crop_ratio", eval_crop_ratio},
          {"repeated_aug", repeated_aug},
          {"mixup", mixup},
          {"cutmix", cutmix},
          {"mixup_switch_prob", mixup_switch_prob},
          {"mixup_prob", mixup_prob},
          {"smoothing", smoothing},
          {"bce_loss", bce_loss},
          {"model_ema", model_ema},
          {"model_ema_decay", model_ema_decay},
          {"resume", resume},
          {"finetune", finetune},
          {"seed", seed},
          {"zero", zero},
          {"cuda_graph", cuda_graph},
          {"recompute_gelu", recompute_gelu},
          {"grad_checkpointing", grad_checkpointing},
          {"bucket_mb", bucket_mb}};
}

std::vector<std::string> TrainOptions::differences_from(const nlohmann::json& saved) const {
  // What may change between a run and its resumption without changing the run's course: more
  // epochs, moved files, another device or launch, the memory savers (the same results).
  static const std::set<std::string> kFree = {"model",
                                              "data",
                                              "output",
                                              "device",
                                              "epochs",
                                              "resume",
                                              "finetune",
                                              "zero",
                                              "cuda_graph",
                                              "recompute_gelu",
                                              "grad_checkpointing",
                                              "bucket_mb"};
  const nlohmann::json now = to_json();  // items() refers to it: it must outlive the loop
  std::vector<std::string> differences;
  for (const auto& [key, value] : now.items())
    if (!kFree.count(key) && saved.contains(key) && saved.at(key) != value)
      differences.push_back(key + " " + saved.at(key).dump() + " -> " + value.dump());
  return differences;
}

}  // namespace deit::train
