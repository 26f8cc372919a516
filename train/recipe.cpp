#include "train/recipe.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "data/augment_params.h"
#include "data/image_source.h"
#include "data/prefetch.h"
#include "engine/device.h"
#include "model/json_exact.h"

namespace deit::train {

namespace {

// A flag's value as the user would type it (NaN as nan, 1e-08 not 0.000000).
std::string number(double value) {
  std::ostringstream s;
  s << value;
  return s.str();
}

enum Stage { kPretrain, kFinetune, kIn21kPretrain, kIn21kFinetune };
constexpr int kStages = 4;

constexpr RecipeStage kRecipeStages[kStages] = {
    {"pretrain",
     "ImageNet-1k from scratch (the default): LAMB, weight decay 0.05, BCE, RandomResizedCrop, "
     "3-Augment and colour jitter 0.3, mixup 0.8 / cutmix 1.0, 3 repeats; batch 256 per process",
     2048, false},
    {"finetune",
     "after pretrain, at 224 (T, S and M at 384), from its weights: AdamW, weight decay 0.1, "
     "cross-entropy "
     "with smoothing 0.1, RandAugment rand-m9-mstd0.5-inc1 in place of 3-Augment and jitter, no "
     "repeats; batch 64 per process",
     512, true},
    {"in21k-pretrain",
     "ImageNet-21k: LAMB, weight decay 0.02, cross-entropy with smoothing 0.1, Simple Random "
     "Crop, cutmix alone, 3-Augment and jitter, no repeats; batch 256 per process",
     2048, false},
    {"in21k-finetune", "ImageNet-1k from in21k-pretrain's weights: as in21k-pretrain, at 224", 2048,
     true},
};

// What differs between the models at one stage.
struct ModelRecipe {
  double lr, drop_path;
  int64_t input_size, epochs;
};

// README_revenge.md's commands, one per model and stage. T and M are not in the paper: their
// values are our choice, between their neighbours'.
struct PresetRecipes {
  const char* preset;
  ModelRecipe at[kStages];
};
constexpr PresetRecipes kPresetRecipes[] = {
    // preset: {lr, drop-path, input size, epochs} at pretrain, finetune, in21k-pretrain and
    // in21k-finetune
    {"deit3_tiny",
     {{4e-3, 0.0, 224, 800}, {1e-5, 0.0, 384, 20}, {1e-3, 0.0, 224, 240}, {3e-4, 0.0, 224, 50}}},
    {"deit3_small",
     {{4e-3, 0.05, 224, 800}, {1e-5, 0.0, 384, 20}, {1e-3, 0.05, 224, 240}, {3e-4, 0.05, 224, 50}}},
    {"deit3_medium",
     {{3e-3, 0.1, 224, 800}, {1e-5, 0.1, 384, 20}, {1e-3, 0.05, 224, 240}, {3e-4, 0.1, 224, 50}}},
    {"deit3_base",
     {{3e-3, 0.2, 192, 800}, {1e-5, 0.2, 224, 20}, {1e-3, 0.1, 224, 240}, {3e-4, 0.15, 224, 50}}},
    {"deit3_large",
     {{3e-3, 0.45, 192, 800}, {1e-5, 0.45, 224, 20}, {1e-3, 0.3, 224, 240}, {3e-4, 0.4, 224, 50}}},
    {"deit3_huge",
     {{3e-3, 0.6, 160, 800}, {1e-5, 0.55, 224, 20}, {1e-3, 0.5, 128, 90}, {3e-4, 0.45, 224, 50}}},
};

// huge52 (not in the paper's recipes) trains as huge does.
const char* recipe_preset(const std::string& preset) {
  return preset == "deit3_huge52" ? "deit3_huge" : preset.c_str();
}

Stage stage_index(const std::string& name) {
  for (int i = 0; i < kStages; ++i)
    if (name == kRecipeStages[i].name) return static_cast<Stage>(i);
  std::string known;
  for (const RecipeStage& r : kRecipeStages)
    known += (known.empty() ? "" : ", ") + std::string(r.name);
  throw std::invalid_argument("unknown recipe '" + name + "' (known: " + known + ")");
}

// The settings every model shares at `stage`, on the defaults (which are pretrain's).
TrainOptions stage_settings(Stage stage) {
  TrainOptions o;
  o.recipe = kRecipeStages[stage].name;
  switch (stage) {
    case kPretrain:
      break;
    case kFinetune:
      o.batch_size = 64;
      o.opt = "adamw";
      o.weight_decay = 0.1;
      o.smoothing = 0.1;
      o.bce_loss = false;
      o.repeated_aug = false;
      o.aa = "rand-m9-mstd0.5-inc1";  // timm applies it in place of the colour jitter
      o.three_augment = false;
      o.color_jitter = 0;
      break;
    case kIn21kPretrain:
    case kIn21kFinetune:
      o.weight_decay = 0.02;
      o.src = true;
      o.mixup = 0;
      o.smoothing = 0.1;
      o.bce_loss = false;
      o.repeated_aug = false;
      break;
  }
  return o;
}

}  // namespace

const std::vector<RecipeStage>& recipe_stages() {
  static const std::vector<RecipeStage> stages(std::begin(kRecipeStages), std::end(kRecipeStages));
  return stages;
}

const RecipeStage& recipe_stage(const std::string& name) {
  return kRecipeStages[stage_index(name)];
}

TrainOptions recipe_for(const std::string& preset, const std::string& recipe) {
  const Stage stage = stage_index(recipe);
  TrainOptions o = stage_settings(stage);
  o.model = model::preset(preset);
  for (const PresetRecipes& p : kPresetRecipes)
    if (std::string(recipe_preset(preset)) == p.preset) {
      const ModelRecipe& r = p.at[stage];
      o.lr = r.lr;
      o.drop_path = r.drop_path;
      o.model.input_size = r.input_size;
      o.epochs = r.epochs;
      return o;
    }
  throw std::logic_error("recipe.cpp's table has no row for preset " + preset);
}

std::string recipe_table() {
  auto cell = [](const ModelRecipe& r) {
    return number(r.lr) + ' ' + number(r.drop_path) + ' ' + std::to_string(r.input_size) + ' ' +
           std::to_string(r.epochs);
  };
  // Columns of 21 characters, the last one unpadded.
  auto row = [](const std::string& first, const std::vector<std::string>& cells) {
    std::ostringstream line;
    line << "  " << std::left << std::setw(15) << first;
    for (size_t i = 0; i + 1 < cells.size(); ++i) line << std::setw(21) << cells[i];
    line << cells.back() << "\n";
    return line.str();
  };
  std::vector<std::string> names;
  for (const RecipeStage& r : kRecipeStages) names.push_back(r.name);
  std::string table = row("", names) + row("", {"(lr, drop-path, input size, epochs)"});
  for (const std::string& preset : model::preset_names())
    for (const PresetRecipes& p : kPresetRecipes)
      if (std::string(recipe_preset(preset)) == p.preset) {
        std::vector<std::string> cells;
        for (const ModelRecipe& r : p.at) cells.push_back(cell(r));
        table += row(preset, cells);
      }
  return table;
}

void TrainOptions::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  model.validate();
  bool fine_tunes = false;
  try {
    fine_tunes = recipe_stage(recipe).starts_from_weights;
  } catch (const std::invalid_argument& e) {
    fail("--recipe: " + std::string(e.what()));
  }
  if (fine_tunes && finetune.empty() && resume.empty())
    fail("--recipe " + recipe +
         " fine-tunes pre-trained weights: give them with --finetune "
         "(a checkpoint, its run folder or exported weights)");
  if (data_dir.empty()) fail("--data is required");
  if (output_dir.empty()) fail("--output is required");
  if (epochs < 1) fail("--epochs must be at least 1, got " + std::to_string(epochs));
  if (batch_size < 1) fail("--batch-size must be at least 1, got " + std::to_string(batch_size));
  if ((mixup > 0 || cutmix > 0) && batch_size % 2 != 0)
    fail("--batch-size must be even with mixup/cutmix (samples are mixed in pairs), got " +
         std::to_string(batch_size));
  if (accum_steps < 1) fail("--accum-steps must be at least 1, got " + std::to_string(accum_steps));
  if (opt != "lamb" && opt != "adamw")
    fail("--opt must be lamb or adamw, got '" + opt + "'" +
         (opt == "fusedlamb" ? " (the reference code's fusedlamb, apex's FusedLAMB, is lamb here)"
                             : ""));
  // Every checkpoint saves the settings as JSON text: a path that is not UTF-8 (the data's, made
  // absolute, includes the working folder's) would stop the run at its first save.
  const nlohmann::json saved = to_json();  // items() refers to it: it must outlive the loop
  for (const auto& [key, value] : saved.items()) {
    if (!value.is_string()) continue;
    const std::string shown = data::shown_if_not_utf8(value.get<std::string>());
    if (!shown.empty())
      fail("--" + key + " '" + shown + "' is not UTF-8 text (a run saves its settings in its " +
           "checkpoints as text): rename it");
  }
  // Written so that NaN fails each check: every comparison with NaN is false.
  if (!(lr > 0 && std::isfinite(lr))) fail("--lr must be a finite number > 0, got " + number(lr));
  if (!(min_lr >= 0 && warmup_lr >= 0 && std::isfinite(min_lr) && std::isfinite(warmup_lr)))
    fail("--min-lr and --warmup-lr must be finite numbers >= 0, got " + number(min_lr) + " and " +
         number(warmup_lr));
  if (!(warmup_epochs >= 0 && std::isfinite(warmup_epochs)))
    fail("--warmup-epochs must be a finite number >= 0, got " + number(warmup_epochs));
  if (!(weight_decay >= 0 && std::isfinite(weight_decay)))
    fail("--weight-decay must be a finite number >= 0, got " + number(weight_decay));
  if (!(opt_eps > 0 && std::isfinite(opt_eps)))
    fail("--opt-eps must be a finite number > 0, got " + number(opt_eps));
  if (!(clip_grad >= 0 && std::isfinite(clip_grad)))
    fail("--clip-grad must be a finite number >= 0 (0: off), got " + number(clip_grad));
  if (!(drop_path >= 0 && drop_path < 1))
    fail("--drop-path must be in [0, 1), got " + number(drop_path));
  if (!(mixup >= 0 && cutmix >= 0 && std::isfinite(mixup) && std::isfinite(cutmix)))
    fail("--mixup and --cutmix must be finite numbers >= 0, got " + number(mixup) + " and " +
         number(cutmix));
  if (!(mixup_prob >= 0 && mixup_prob <= 1))
    fail("--mixup-prob must be in [0, 1], got " + number(mixup_prob));
  if (!(mixup_switch_prob >= 0 && mixup_switch_prob <= 1))
    fail("--mixup-switch-prob must be in [0, 1], got " + number(mixup_switch_prob));
  if (!(smoothing >= 0 && smoothing < 1))
    fail("--smoothing must be in [0, 1), got " + number(smoothing));
  // BCE binarises its targets (> 0 is 1, as the reference does), and smoothing makes every target
  // positive: the model would learn that every class is present.
  if (bce_loss && smoothing > 0)
    fail(
        "--smoothing with --bce-loss would make every target 1 (BCE's targets are binarised: "
        "any positive value becomes 1): give --smoothing 0, or --no-bce-loss for soft-target "
        "cross-entropy");
  if (const std::string problem = data::eval_crop_ratio_problem(eval_crop_ratio, model.input_size);
      !problem.empty())
    fail(problem);
  if (!(color_jitter >= 0 && color_jitter < 1)) fail("--color-jitter must be in [0, 1)");
  std::optional<data::RandAugmentConfig> rand_augment;
  try {
    rand_augment = data::rand_augment_option(aa);
  } catch (const std::invalid_argument& e) {
    fail("--aa: " + std::string(e.what()));
  }
  // timm's create_transform applies RandAugment or the colour jitter, never both, and the
  // reference fine-tunes without 3-Augment: a run with either beside RandAugment follows neither.
  if (rand_augment && (three_augment || color_jitter > 0)) {
    const std::string given = three_augment && color_jitter > 0
                                  ? "--three-augment and --color-jitter"
                                  : (three_augment ? "--three-augment" : "--color-jitter");
    fail("--aa " + aa + " takes the place of 3-Augment and colour jitter (timm applies " +
         "RandAugment or the colour jitter, never both): drop " + given +
         ", or give --aa none to train without RandAugment");
  }
  if (!(rrc_scale_min > 0 && rrc_scale_min <= 1)) fail("--rrc-scale-min must be in (0, 1]");
  if (!(model_ema_decay >= 0 && model_ema_decay <= 1)) fail("--model-ema-decay must be in [0, 1]");
  if (workers < 1 || workers > data::kMaxWorkers)
    fail("--workers must be in [1, " + std::to_string(data::kMaxWorkers) + "], got " +
         std::to_string(workers));
  // Its bytes must fit the reducer's size_t: a larger value, or inf, came out as buckets of one
  // byte, a collective for every tensor, where one bucket for all of them was asked for.
  constexpr int64_t kMaxBucketMb = int64_t{1} << 20;  // 1 TiB: one bucket for any model
  if (!(bucket_mb > 0 && bucket_mb <= kMaxBucketMb))
    fail("--bucket-mb must be a number of MiB in (0, " + std::to_string(kMaxBucketMb) + "], got " +
         number(bucket_mb));
  if (!(save_every_minutes >= 0 && std::isfinite(save_every_minutes)))
    fail("--save-every must be a finite number of minutes >= 0 (0: off), got " +
         number(save_every_minutes));
  if (!resume.empty() && !finetune.empty()) fail("--resume and --finetune cannot be combined");
  // As the run will read it: --dry-run says no more than the run would.
  try {
    parse_device(device);
  } catch (const std::invalid_argument& e) {
    fail("--device: " + std::string(e.what()));
  }
  if (cuda_graph && device.rfind("cuda", 0) != 0)
    fail("--cuda-graph needs --device cuda, got --device " + device);
  if (gemm_autotune && device.rfind("cuda", 0) != 0)
    fail("--gemm-autotune needs --device cuda, got --device " + device);
  if (cuda_graph && accum_steps != 1)
    fail("--cuda-graph captures whole optimizer steps: it needs --accum-steps 1, got " +
         std::to_string(accum_steps));
}

int64_t micro_batches_in_step(int64_t micro_batch, int64_t batches, int64_t accum_steps) {
  const int64_t before = (micro_batch - 1) / accum_steps * accum_steps;  // in earlier steps
  return std::min(accum_steps, batches - before);
}

namespace {

// Calls f(key, member) for every setting a run saves, under the names to_json() gives them; one
// list serves saving and restoring.
template <typename Options, typename F>
void for_each_setting(Options& o, F&& f) {
  f("recipe", o.recipe);
  f("model", o.model.name);
  f("patch", o.model.patch);
  f("dim", o.model.dim);
  f("depth", o.model.depth);
  f("heads", o.model.heads);
  f("num_classes", o.model.num_classes);
  f("input_size", o.model.input_size);
  f("data", o.data_dir);
  f("output", o.output_dir);
  f("device", o.device);
  f("epochs", o.epochs);
  f("batch_size", o.batch_size);
  f("accum_steps", o.accum_steps);
  f("opt", o.opt);
  f("lr", o.lr);
  f("min_lr", o.min_lr);
  f("warmup_lr", o.warmup_lr);
  f("warmup_epochs", o.warmup_epochs);
  f("weight_decay", o.weight_decay);
  f("opt_eps", o.opt_eps);
  f("clip_grad", o.clip_grad);
  f("drop_path", o.drop_path);
  f("three_augment", o.three_augment);
  f("src", o.src);
  f("rrc_scale_min", o.rrc_scale_min);
  f("color_jitter", o.color_jitter);
  f("aa", o.aa);
  f("eval_crop_ratio", o.eval_crop_ratio);
  f("repeated_aug", o.repeated_aug);
  f("mixup", o.mixup);
  f("cutmix", o.cutmix);
  f("mixup_switch_prob", o.mixup_switch_prob);
  f("mixup_prob", o.mixup_prob);
  f("smoothing", o.smoothing);
  f("bce_loss", o.bce_loss);
  f("model_ema", o.model_ema);
  f("model_ema_decay", o.model_ema_decay);
  f("resume", o.resume);
  f("finetune", o.finetune);
  f("seed", o.seed);
  f("workers", o.workers);
  f("zero", o.zero);
  f("cuda_graph", o.cuda_graph);
  f("recompute_gelu", o.recompute_gelu);
  f("whole_batch_branches", o.whole_batch_branches);
  f("grad_checkpointing", o.grad_checkpointing);
  f("gemm_autotune", o.gemm_autotune);
  f("bucket_mb", o.bucket_mb);
  f("save_every_minutes", o.save_every_minutes);
}

}  // namespace

nlohmann::json TrainOptions::to_json() const {
  nlohmann::json j = nlohmann::json::object();
  for_each_setting(*this, [&j](const char* key, const auto& value) { j[key] = value; });
  // Absolute, so that a run resumed from another folder finds its data.
  if (!data_dir.empty()) j["data"] = std::filesystem::absolute(data_dir).string();
  // What a fine-tune started from, also once resumed (deit info shows it).
  if (!finetune.empty())
    j["finetune"] = std::filesystem::absolute(finetune).string();
  else
    j["finetune"] = finetuned_from;
  return j;
}

TrainOptions recipe_of(const model::ViTConfig& model, const std::string& recipe) {
  const std::string preset = model::preset_of(model);
  return recipe_for(preset.empty() ? "deit3_small" : preset, recipe);
}

TrainOptions resume_options(const model::ViTConfig& model, const nlohmann::json& saved) {
  auto not_a_value = [&saved](const std::string& key) {
    return std::runtime_error("its saved option '" + key + "' is " + saved.at(key).dump() +
                              ", not a value of that option");
  };
  if (!saved.is_object()) throw std::runtime_error("its saved options are not an object");
  // The stage the run started from fills in what an older checkpoint lacks. Before recipes were
  // saved, every run started from pretrain's values (a fine-tune set its own by flags): those
  // fill in, and a run that started from weights is called a fine-tune.
  std::string recipe = "pretrain";
  const bool labelled = saved.contains("recipe");
  if (labelled) {
    if (!saved.at("recipe").is_string()) throw not_a_value("recipe");
    recipe = saved.at("recipe").get<std::string>();
    try {
      recipe_stage(recipe);
    } catch (const std::invalid_argument&) {
      throw not_a_value("recipe");
    }
  }
  TrainOptions o = recipe_of(model, recipe);
  if (!labelled && saved.contains("finetune") && saved.at("finetune") != "") o.recipe = "finetune";
  for_each_setting(o, [&saved, &not_a_value](const char* key, auto& value) {
    if (!saved.contains(key)) return;
    if (!model::holds_exactly<std::decay_t<decltype(value)>>(saved.at(key))) throw not_a_value(key);
    saved.at(key).get_to(value);
  });
  o.model = model;
  o.num_classes_given = true;  // the checkpoint's head decides, not the dataset
  o.output_dir.clear();
  o.resume.clear();
  o.finetuned_from = o.finetune;
  o.finetune.clear();
  return o;
}

std::vector<TrainOptions::Difference> TrainOptions::course_differences(
    const nlohmann::json& saved) const {
  // What may change between a run and its resumption without changing the run's course: moved
  // files, another device or launch, the memory savers (the same results). Not --epochs: the
  // cosine schedule spans them.
  static const std::set<std::string> kFree = {"model",
                                              "workers",
                                              "data",
                                              "output",
                                              "device",
                                              "resume",
                                              "finetune",
                                              "zero",
                                              "cuda_graph",
                                              "recompute_gelu",
                                              "whole_batch_branches",
                                              "grad_checkpointing",
                                              "gemm_autotune",
                                              "bucket_mb",
                                              "save_every_minutes"};
  const nlohmann::json now = to_json();  // items() refers to it: it must outlive the loop
  std::vector<Difference> differences;
  for (const auto& [key, value] : now.items())
    if (!kFree.count(key) && saved.contains(key) && saved.at(key) != value)
      differences.push_back({key, saved.at(key), value});
  return differences;
}

}  // namespace deit::train
