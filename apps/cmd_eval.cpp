// deit eval: top-1, top-5 and loss of trained weights on a split, with the evaluation transform.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "data/augment_params.h"
#include "data/image_source.h"
#include "data/prefetch.h"
#include "engine/device.h"
#include "model/checkpoint.h"
#include "train/data_pipeline.h"
#include "train/evaluate.h"
#include "train/finetune.h"
#include "train/run_state.h"

namespace deit::apps {

namespace {

struct EvalOptions {
  ModelOptions model;
  std::string checkpoint, weights, data, split = "val", device = "cpu";
  std::optional<double> crop_ratio;  // default: the checkpoint's run's, else 1
  int64_t batch_size = 128;
  int workers = 2;
  bool json = false;
  bool quiet = false;
  bool per_class = false;
  bool ema = false;
};

// One line per class: its top-1 accuracy (n/a when none of its images was scored) and the class
// its images are most often taken for.
void print_per_class(const nlohmann::json& rows) {
  for (const auto& row : rows) {
    // Padded to 24 characters, not bytes (printf's width counts bytes: 'éclair' came out short).
    // Class names are UTF-8 (data/image_folder.h); a character is a byte that is no continuation.
    const std::string name = row["class"].get<std::string>();
    size_t characters = 0;
    for (const char c : name) characters += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    std::printf("  %s%*s top-1 ", name.c_str(),
                static_cast<int>(characters < 24 ? 24 - characters : 0), "");
    if (row["acc1"].is_null())
      std::printf("%7s", "n/a");
    else
      std::printf("%6.2f%%", row["acc1"].get<double>());
    std::printf("  of %lld", (long long)row["images"].get<int64_t>());
    if (!row["most_confused_with"].is_null())
      std::printf("   most confused with %s (%lld)",
                  row["most_confused_with"].get<std::string>().c_str(),
                  (long long)row["most_confused_images"].get<int64_t>());
    std::printf("\n");
  }
}

// "" when `split` names a split inside the dataset root (val, or a relative path such as v2/val),
// else what to pass instead: an absolute path or one that climbs out through ".." would read
// another dataset's split (--data ds --split ../other/train) under --data's name.
std::string split_problem(const std::string& split) {
  const std::filesystem::path normal = std::filesystem::path(split).lexically_normal();
  if (normal.empty() || normal.is_absolute() || normal == "." || *normal.begin() == "..")
    return "'" + split + "' is not a split inside --data: give a split's name (--split val " +
           "reads --data's val/ or val.shard), and for a split of another dataset that " +
           "dataset's folder as --data";
  return "";
}

// The --eval-crop-ratio a checkpoint's run evaluated with, if it saved one.
std::optional<double> saved_crop_ratio(const model::Checkpoint& checkpoint) {
  const nlohmann::json options = checkpoint.state.value("options", nlohmann::json::object());
  const auto it = options.find("eval_crop_ratio");
  if (it == options.end()) return std::nullopt;
  if (!it->is_number())
    throw std::runtime_error("checkpoint '" + checkpoint.path + "': its saved option " +
                             "'eval_crop_ratio' is " + it->dump() + ", not a value of that option");
  return it->get<double>();
}

void run_eval(const EvalOptions& o) {
  const Device device = parse_device(o.device);
  require_device(device);
  std::shared_ptr<const data::ImageSource> source(data::open_dataset_split(o.data, o.split));
  std::optional<model::Checkpoint> checkpoint;
  // The model the file says it holds: a checkpoint's, or a deit export's (timm's weights, and
  // exports older than that entry, do not say).
  std::optional<model::ViTConfig> saved_config;
  if (!o.checkpoint.empty()) {
    checkpoint = model::read_checkpoint_model(model::checkpoint_file(o.checkpoint), o.ema);
    if (o.ema) train::warn_if_moving_average_is_young(checkpoint->path, checkpoint->state);
    saved_config = checkpoint->config;
  } else {
    std::error_code ec;
    if (std::filesystem::is_directory(o.weights, ec))
      throw std::invalid_argument("--weights '" + o.weights + "' is a folder, not a weights " +
                                  "file: a run folder of deit train is read with --checkpoint '" +
                                  o.weights + "'");
    saved_config = model::read_model_config(o.weights);
  }
  if (!saved_config && o.model.model.empty())
    throw std::invalid_argument("--model is required with --weights '" + o.weights +
                                "': the file does not say which model it holds (timm's weights "
                                "and older exports of deit do not)");
  // The file's own model unless --model names one; a preset's resolution is the one it was
  // trained at, unless told otherwise. --model and the overrides are checked against the file's
  // model when loading (load_parameters names each field that differs).
  model::ViTConfig base;
  if (o.model.model.empty()) {
    base = *saved_config;
  } else {
    base = model::preset(o.model.model);
    base.num_classes = static_cast<int64_t>(source->class_names().size());
    // Only at the file's patch size: a file's 8-pixel input is no model of 16-pixel patches, and
    // the error would blame that size rather than name the fields in which the models differ.
    if (saved_config && o.model.patch.value_or(base.patch) == saved_config->patch)
      base.input_size = saved_config->input_size;
  }
  const std::string weights_source =
      checkpoint ? "checkpoint '" + checkpoint->path + "'" : "weights file '" + o.weights + "'";
  const std::string classes_differ = data::class_difference(
      checkpoint ? checkpoint->class_names : model::read_class_names(o.weights), "the weights",
      source->class_names(), "the split");
  if (!classes_differ.empty())
    throw std::runtime_error(weights_source + " was trained on other classes than split '" +
                             o.split + "' of '" + o.data + "' holds (" + classes_differ +
                             "): its labels would be scored against the wrong classes");
  NamedTensors tensors =
      checkpoint ? std::move(checkpoint->model) : model::read_model_tensors(o.weights);
  // A weights file that does not say its model does not say its classes, but its head does:
  // those, rather than the split's (timm's ImageNet weights on a split of 10 of its classes).
  if (!saved_config && !o.model.num_classes)
    if (const Tensor* head = model::find_tensor(tensors, "head.weight"); head && head->dim() == 2)
      base.num_classes = head->size(0);
  // Nor its resolution, but its position embedding does (a patch grid of side sqrt(tokens)): the
  // default, rather than the preset's.
  if (!saved_config && !o.model.input_size)
    if (const Tensor* pos_embed = model::find_tensor(tensors, "pos_embed");
        pos_embed && pos_embed->dim() == 3) {
      const auto grid = static_cast<int64_t>(std::lround(std::sqrt(pos_embed->size(1))));
      if (grid > 0 && grid * grid == pos_embed->size(1))
        base.input_size = grid * (o.model.patch ? *o.model.patch : base.patch);
    }
  model::VisionTransformer vit(o.model.apply_to(base), device);
  // At another resolution than the weights were trained at, their position embedding is resized
  // over its patch grid (bicubic), as --finetune does. The file's model is then at that grid, in
  // its own patches: another patch size is a difference of the models, not of their grids.
  const bool resized = train::fit_pos_embed(tensors, vit.config(), weights_source);
  if (resized && saved_config) saved_config->input_size = vit.config().grid() * saved_config->patch;
  model::load_parameters(vit, tensors, weights_source, saved_config ? &*saved_config : nullptr);
  // Weights that do not name their classes (timm's) are not compared with the split's above: a
  // label past the head's outputs would be scored against logits that are not there (and counted
  // outside --per-class's matrix). Refused, as deit train refuses such a head.
  const auto classes = static_cast<int64_t>(source->class_names().size());
  if (vit.config().num_classes < classes)
    throw std::invalid_argument(weights_source + " holds a model of " +
                                std::to_string(vit.config().num_classes) + " classes, fewer than " +
                                "the " + std::to_string(classes) + " classes of split '" + o.split +
                                "' of '" + o.data + "'");
  if (resized)  // once the weights are known to be this model's
    std::fprintf(stderr,
                 "note: evaluating at %lld px weights trained at another resolution: their "
                 "position embedding is resized to a %lldx%lld patch grid (bicubic)\n",
                 (long long)vit.config().input_size, (long long)vit.config().grid(),
                 (long long)vit.config().grid());
  // A checkpoint is evaluated as its run evaluated it, unless told otherwise.
  double crop_ratio = 1.0;
  if (o.crop_ratio)
    crop_ratio = *o.crop_ratio;
  else if (checkpoint)
    crop_ratio = saved_crop_ratio(*checkpoint).value_or(crop_ratio);
  if (const std::string problem =
          data::eval_crop_ratio_problem(crop_ratio, vit.config().input_size);
      !problem.empty())
    throw std::invalid_argument(problem);
  const int64_t size = vit.config().input_size;
  if (const std::string warning =
          data::packed_below(*source, data::eval_resize_side(size, crop_ratio),
                             "evaluation at " + std::to_string(size) + " resizes to");
      !warning.empty())
    std::fprintf(stderr, "%s\n", warning.c_str());
  auto loader = train::make_eval_loader(source, size, crop_ratio, o.batch_size, o.workers);
  const train::EvalResult r = train::evaluate(vit, *loader, !o.json && !o.quiet,
                                              /*across=*/nullptr, /*with_confusion=*/o.per_class);
  const nlohmann::json per_class =
      o.per_class ? r.per_class_json(source->class_names()) : nlohmann::json();
  if (o.json) {
    nlohmann::json out = r.to_json();
    if (o.per_class) out["per_class"] = per_class;
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("top-1 %.2f%%  top-5 %.2f%%  loss %.4f  (%lld images", r.acc1, r.acc5, r.loss,
                (long long)r.images);
    if (r.skipped > 0)
      std::printf("; %lld unusable, left out: see the warnings above", (long long)r.skipped);
    std::printf(")\n");
    if (o.per_class) print_per_class(per_class);
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto opts = std::make_shared<EvalOptions>();
  CLI::App* cmd = app.add_subcommand("eval", "Top-1, top-5 and loss of trained weights on a split");
  opts->model.add_to(*cmd, "the resolution the weights were trained at",
                     "the weights' own, else the dataset's",
                     "--checkpoint, or --weights of a file deit export wrote since 2026-12-05: "
                     "both name their model");
  auto* source = cmd->add_option_group("weights", "Where the weights come from");
  source->add_option("--checkpoint", opts->checkpoint,
                     "A checkpoint of deit train (or its run folder)");
  CLI::Option* weights = source->add_option("--weights", opts->weights,
                                            "A .safetensors weights file: deit export's or timm's");
  source->require_option(1);
  cmd->add_option("--data", opts->data, "Dataset root")->required();
  cmd->add_option("--split", opts->split,
                  "Split to evaluate: DIR/SPLIT/ or DIR/SPLIT.shard of --data DIR")
      ->capture_default_str()
      ->check(split_problem);
  cmd->add_option("--eval-crop-ratio", opts->crop_ratio,
                  "Resize to size / ratio, centre crop size (default: the checkpoint's run's, "
                  "else 1)");
  cmd->add_option("--batch-size", opts->batch_size, "Images per batch")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--workers", opts->workers, "Data loading threads")
      ->capture_default_str()
      ->check(CLI::Range(1, data::kMaxWorkers));
  cmd->add_option("--device", opts->device, "cpu or cuda[:N]")->capture_default_str();
  cmd->add_flag("--ema", opts->ema,
                "With --checkpoint: evaluate the moving average of the weights its run kept "
                "(--model-ema) instead")
      ->excludes(weights);
  cmd->add_flag("--json", opts->json,
                "Print one JSON object: acc1, acc5, loss, images (scored), skipped (unusable)");
  cmd->add_flag("--quiet", opts->quiet, "No progress output");
  cmd->add_flag("--per-class", opts->per_class,
                "Also each class's top-1 and the class it is most confused with (in JSON: "
                "per_class)");
  cmd->callback([opts] { run_eval(*opts); });
}

}  // namespace deit::apps
