// deit info: what a model costs before anyone trains it, and, given a checkpoint, where its run
// stands and what it was trained with.
#include <cstdio>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apps/commands.h"
#include "apps/model_options.h"
#include "data/sampler.h"
#include "model/checkpoint.h"
#include "model/cost.h"
#include "train/recipe.h"
#include "train/run_state.h"
#include "train/shell_quoted.h"

namespace deit::apps {

namespace {

struct InfoOptions {
  ModelOptions model;
  std::string checkpoint;
  bool recompute_gelu = false;
  bool grad_checkpointing = false;
  bool json = false;
};

// A checkpoint's run: its state, and the settings it was trained with where they differ from its
// model's recipe (the model's shape aside, which the model lines show, but a preset's input size).
struct SavedRun {
  std::string path;
  train::RunState state;
  std::vector<std::string> class_names;
  std::string recipe;  // what the settings are compared with, "the deit3_base pretrain recipe"
  std::vector<train::TrainOptions::Difference> off_recipe;
  int64_t epoch_batches = 0;  // of each process in an epoch (0: unknown)
};

// An epoch's batches on each process, from the saved data order and batch size (training drops
// the last partial batch); 0 when the state does not say.
int64_t batches_per_epoch(const train::RunState& s) {
  const int64_t batch_size = s.options.value("batch_size", int64_t{0});
  if (batch_size < 1) return 0;
  data::SamplerOptions order;
  order.dataset_size = s.sampler.dataset_size;
  order.seed = s.sampler.seed;
  order.shuffle = s.sampler.shuffle != 0;
  order.repeats = s.sampler.repeats;
  order.world_size = s.sampler.world_size;
  try {
    return static_cast<int64_t>(data::Sampler(order).epoch_length()) / batch_size;
  } catch (const std::invalid_argument&) {
    return 0;
  }
}

SavedRun read_saved_run(const model::Checkpoint& checkpoint) {
  SavedRun run;
  run.path = checkpoint.path;
  std::string recipe_name;
  try {
    run.state = train::run_state_from_json(checkpoint.state);
    // Also checks each saved option's type.
    recipe_name = train::resume_options(checkpoint.config, run.state.options).recipe;
  } catch (const std::exception& e) {
    throw std::runtime_error("checkpoint '" + checkpoint.path + "': " + e.what());
  }
  run.epoch_batches = batches_per_epoch(run.state);
  run.class_names = checkpoint.class_names;
  const std::string preset = model::preset_of(checkpoint.config);
  run.recipe = preset.empty()
                   ? "the deit3_small " + recipe_name + " recipe (which a custom model takes)"
                   : "the " + preset + " " + recipe_name + " recipe";
  static const std::set<std::string> kShape = {"patch", "dim",         "depth",
                                               "heads", "num_classes", "input_size"};
  // A preset's input size is a recipe setting (each stage has its own), which the shape line
  // alone would not show to differ; a custom model's is part of its shape.
  const bool preset_model = !preset.empty() && checkpoint.config.name == preset;
  for (auto& d :
       train::recipe_of(checkpoint.config, recipe_name).course_differences(run.state.options))
    if (!kShape.count(d.key) || (preset_model && d.key == "input_size"))
      run.off_recipe.push_back(std::move(d));
  return run;
}

std::string saved_string(const nlohmann::json& options, const char* key) {
  return options.contains(key) && options.at(key).is_string() ? options.at(key).get<std::string>()
                                                              : "";
}

nlohmann::ordered_json run_to_json(const SavedRun& run) {
  const train::RunState& s = run.state;
  nlohmann::ordered_json j;
  j["path"] = run.path;
  j["epochs_done"] = s.epochs_done;
  j["epochs"] = s.options.value("epochs", int64_t{0});
  if (s.within_epoch)
    j["within_epoch"] = {
        {"epoch", s.within_epoch->epoch},
        {"batches_per_process", static_cast<int64_t>(s.within_epoch->batches) / s.world_size},
        {"epoch_batches_per_process", run.epoch_batches},
        {"images", static_cast<int64_t>(s.within_epoch->images)}};
  else
    j["within_epoch"] = nullptr;
  j["best_acc1"] = s.best_acc1;
  j["best_epoch"] = s.best_epoch;
  j["optimizer_steps"] = s.optimizer_steps;
  j["world_size"] = s.world_size;
  j["classes"] = run.class_names;
  j["options"] = s.options;
  nlohmann::ordered_json off = nlohmann::ordered_json::object();
  for (const auto& d : run.off_recipe) off[d.key] = {{"saved", d.saved}, {"recipe", d.now}};
  j["off_recipe"] = off;
  return j;
}

// `program`: how deit was started (argv[0]), so that the command to go on runs as printed.
void print_run(const SavedRun& run, const std::string& program) {
  const train::RunState& s = run.state;
  const int64_t epochs = s.options.value("epochs", int64_t{0});
  std::printf("checkpoint       %s\n", run.path.c_str());
  std::printf("trained          %lld of %lld epochs", (long long)s.epochs_done, (long long)epochs);
  if (s.within_epoch) {
    std::printf(", then %lld", (long long)s.within_epoch->batches / s.world_size);
    if (run.epoch_batches > 0) std::printf(" of the %lld", (long long)run.epoch_batches);
    std::printf(" batches%s of epoch %lld (%lld images)", s.world_size > 1 ? " per process" : "",
                (long long)s.within_epoch->epoch + 1, (long long)s.within_epoch->images);
  }
  std::printf("; %lld optimizer steps, %lld process%s\n", (long long)s.optimizer_steps,
              (long long)s.world_size, s.world_size == 1 ? "" : "es");
  if (s.best_epoch >= 0)
    std::printf("best             top-1 %.2f%% after epoch %lld\n", s.best_acc1,
                (long long)s.best_epoch + 1);
  if (!run.class_names.empty()) {
    std::string names;
    constexpr size_t kShown = 5;
    for (size_t i = 0; i < run.class_names.size() && i < kShown; ++i)
      names += (i ? ", " : "") + run.class_names[i];
    if (run.class_names.size() > kShown) names += ", ... (--json lists all, in label order)";
    std::printf("classes          %zu (%s)\n", run.class_names.size(), names.c_str());
  }
  std::printf("data             %s\n", saved_string(s.options, "data").c_str());
  const std::string finetuned_from = saved_string(s.options, "finetune");
  if (!finetuned_from.empty())
    std::printf("started from     %s (--finetune)\n", finetuned_from.c_str());
  std::printf("device           %s\n", saved_string(s.options, "device").c_str());
  std::printf("settings         %s %s\n", run.off_recipe.empty() ? "those of" : "differ from",
              (run.recipe + (run.off_recipe.empty() ? "" : " in")).c_str());
  for (const auto& d : run.off_recipe)
    std::printf("                   %s %s (recipe: %s)\n", d.key.c_str(), d.saved.dump().c_str(),
                d.now.dump().c_str());
  if (s.epochs_done < epochs) {
    std::printf("continue         %s train --resume %s", shell_quoted(program).c_str(),
                shell_quoted(run.path).c_str());
    if (s.world_size > 1)
      std::printf("  (launched as this run was, %lld processes)", (long long)s.world_size);
    std::printf("\n");
  } else
    std::printf("finished         (--resume with a larger --epochs trains further)\n");
}

// A count in the text report: two significant digits below 100 (0.16, 2.5, 34), whole numbers
// from there (205, 564), where %.2g would switch to an exponent (2e+02).
std::string two_digits(double v) {
  char text[32];
  std::snprintf(text, sizeof text, v < 99.5 ? "%.2g" : "%.0f", v);
  return text;
}

// Memory in MiB, in KiB for the small test models that would read 0.0 MiB.
std::string memory_text(int64_t bytes) {
  constexpr double kKiB = 1024.0, kMiB = 1024.0 * 1024.0;
  char text[32];
  if (bytes >= 0.1 * kMiB)
    std::snprintf(text, sizeof text, "%.1f MiB", bytes / kMiB);
  else
    std::snprintf(text, sizeof text, "%.1f KiB", bytes / kKiB);
  return text;
}

void run_info(InfoOptions opts, const std::string& program) {
  if (opts.model.model.empty() && opts.checkpoint.empty())
    throw std::runtime_error("--model or --checkpoint is required");
  std::optional<SavedRun> run;
  model::ViTConfig c;
  if (!opts.checkpoint.empty()) {
    const model::Checkpoint checkpoint =
        model::read_checkpoint_header(model::checkpoint_file(opts.checkpoint));
    run = read_saved_run(checkpoint);
    c = checkpoint.config;
    // Activation memory as the run kept it, unless a flag asks for more recomputation.
    opts.recompute_gelu |= run->state.options.value("recompute_gelu", false);
    opts.grad_checkpointing |= run->state.options.value("grad_checkpointing", false);
  } else {
    c = opts.model.apply_to(model::preset(opts.model.model));
  }
  const int64_t params = model::parameter_count(c);
  const double gmacs = static_cast<double>(model::forward_macs(c)) / 1e9;
  const model::ActivationOptions kept{opts.recompute_gelu, opts.grad_checkpointing};
  const int64_t act_bf16 = model::activation_bytes_per_image(c, 2, 4, kept);
  const int64_t act_f32 = model::activation_bytes_per_image(c, 4, 4, kept);
  // With checkpointing, backward also holds the block it is recomputing.
  const int64_t recompute_bf16 = opts.grad_checkpointing ? model::block_activation_bytes_per_image(
                                                               c, 2, 4, opts.recompute_gelu)
                                                         : 0;
  if (opts.json) {
    nlohmann::ordered_json j;
    j["model"] = c.name;
    j["patch"] = c.patch;
    j["dim"] = c.dim;
    j["depth"] = c.depth;
    j["heads"] = c.heads;
    j["head_dim"] = c.head_dim();
    j["num_classes"] = c.num_classes;
    j["input_size"] = c.input_size;
    j["tokens"] = c.tokens();
    j["params"] = params;
    j["gmacs"] = gmacs;
    j["train_gflops_per_image"] = 6.0 * gmacs;
    j["activation_bytes_per_image_bf16"] = act_bf16;
    j["activation_bytes_per_image_f32"] = act_f32;
    j["recompute_bytes_per_image_bf16"] = recompute_bf16;
    if (run) j["checkpoint"] = run_to_json(*run);
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::printf("model            %s\n", c.name.c_str());
  std::printf("shape            patch %lld, dim %lld, depth %lld, heads %lld (head dim %lld), "
              "%lld classes\n",
              (long long)c.patch, (long long)c.dim, (long long)c.depth, (long long)c.heads,
              (long long)c.head_dim(), (long long)c.num_classes);
  std::printf(
      "input            %lld x %lld px -> %lld x %lld patches + class token = %lld "
      "tokens\n",
      (long long)c.input_size, (long long)c.input_size, (long long)c.grid(), (long long)c.grid(),
      (long long)c.tokens());
  // In M as the paper gives them, in K for the small test models that would read 0.0M.
  std::printf(
      params >= 100'000 ? "parameters       %lld (%.1fM)\n" : "parameters       %lld (%.1fK)\n",
      (long long)params, params >= 100'000 ? params / 1e6 : params / 1e3);
  // In G as the paper gives them, in M for the small test models that would read 0.00 GMACs.
  if (gmacs >= 0.1)
    std::printf("forward          %.2f GMACs per image (training ~%.1f GFLOP per image)\n", gmacs,
                6.0 * gmacs);
  else
    // Two significant digits, but never an exponent (%.2g printed 205 MFLOP as 2e+02).
    std::printf("forward          %s MMACs per image (training ~%s MFLOP per image)\n",
                two_digits(gmacs * 1e3).c_str(), two_digits(6e3 * gmacs).c_str());
  std::printf(
      "activations      %s per image saved for backward (CUDA: bf16, with an fp32 "
      "residual stream), %s in fp32%s\n",
      memory_text(act_bf16).c_str(), memory_text(act_f32).c_str(),
      opts.grad_checkpointing ? ", blocks checkpointed"
      : opts.recompute_gelu   ? ", GELU recomputed"
                              : "");
  if (opts.grad_checkpointing)
    std::printf("recompute        +%s per image (bf16) while backward recomputes a block\n",
                memory_text(recompute_bf16).c_str());
  if (run) print_run(*run, program);
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto opts = std::make_shared<InfoOptions>();
  CLI::App* cmd = app.add_subcommand(
      "info",
      "Parameters, GMACs and activation memory of a model; where a checkpoint's run stands");
  opts->model.add_to(*cmd, "224", "1000, ImageNet-1k's", "--checkpoint");
  CLI::Option* checkpoint = cmd->add_option(
      "--checkpoint", opts->checkpoint,
      "A checkpoint of deit train (or its run folder): its model, and where its run stands "
      "(epochs, position within an epoch, best top-1, classes) and its settings that differ "
      "from the recipe");
  for (const char* model_flag :
       {"--model", "--patch", "--dim", "--depth", "--heads", "--num-classes", "--input-size"})
    checkpoint->excludes(cmd->get_option(model_flag));
  cmd->add_flag("--recompute-gelu", opts->recompute_gelu,
                "Activation memory as deit train --recompute-gelu keeps it (with --checkpoint, "
                "also when its run had it on)");
  cmd->add_flag("--grad-checkpointing", opts->grad_checkpointing,
                "Activation memory as deit train --grad-checkpointing keeps it (likewise)");
  cmd->add_flag("--json", opts->json,
                "Print one JSON object (fields include params, gmacs; with --checkpoint, a "
                "\"checkpoint\" object, whose epoch numbers count from 0 as log.txt's do)");
  // CLI11 names the top-level app after argv[0] as it parses.
  cmd->callback([opts, cmd] { run_info(*opts, cmd->get_parent()->get_name()); });
}

}  // namespace deit::apps
