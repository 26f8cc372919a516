#include "apps/train_flags.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "data/prefetch.h"
#include "engine/rendezvous.h"
#include "model/checkpoint.h"
#include "train/output_lock.h"

namespace deit::apps {

namespace {

template <typename T>
void override_with(const std::optional<T>& flag, T& value) {
  if (flag) value = *flag;
}

// A boolean recipe switch with its negation: --NAME / --no-NAME (each also as --NAME=false and the
// like), the last given winning, as a value given twice does. CLI11 2.1 checks the options in the
// order they were added, not given, and fires a flag's callback only when it is true: each flag
// keeps the value it was given, and both look up in the parse order which of them came last.
void add_switch(CLI::App& cmd, std::optional<bool>& value, const std::string& name,
                const std::string& help) {
  struct Pair {
    CLI::Option* on = nullptr;
    CLI::Option* off = nullptr;
    bool on_given = true, off_given = true;
  };
  auto pair = std::make_shared<Pair>();
  const auto keep = [&cmd, &value, pair](bool Pair::*given_value) {
    return [&cmd, &value, pair, given_value](const std::string& given) {
      bool flag = false;
      if (!CLI::detail::lexical_cast(given, flag))
        throw CLI::ValidationError("'" + given + "' is not true or false");
      (*pair).*given_value = flag;
      const std::vector<CLI::Option*>& order = cmd.parse_order();
      for (auto it = order.rbegin(); it != order.rend(); ++it) {
        if (*it == pair->on || *it == pair->off) {
          value = *it == pair->on ? pair->on_given : !pair->off_given;
          return;
        }
      }
    };
  };
  // add_flag(name, description) would take the description for a variable to write.
  pair->on = cmd.add_flag("--" + name)->description(help)->each(keep(&Pair::on_given));
  pair->off =
      cmd.add_flag("--no-" + name)->description("Turn off --" + name)->each(keep(&Pair::off_given));
}

// A resumed run goes on with its checkpoint's weights, which fit their own model alone: a model
// flag that changes it is refused here, naming the flag, rather than as a mismatch of the whole
// model once the weights are read. --finetune starts a new run from them with another head or
// resolution.
void refuse_another_model(const ModelOptions& flags, const model::ViTConfig& saved,
                          const std::string& checkpoint) {
  const auto refuse = [&](const std::string& asked, const std::string& kept, bool finetunes) {
    throw std::invalid_argument(asked + " does not fit the weights of checkpoint '" + checkpoint +
                                "' (" + kept + "): a resumed run keeps its model" +
                                (finetunes ? "; start a new run from those weights with "
                                             "--finetune " +
                                                 checkpoint
                                           : ""));
  };
  const auto check = [&](const char* flag, const std::optional<int64_t>& given, int64_t kept,
                         bool finetunes) {
    if (given && *given != kept)
      refuse(std::string(flag) + " " + std::to_string(*given),
             std::string(flag + 2) + " " + std::to_string(kept), finetunes);
  };
  check("--patch", flags.patch, saved.patch, false);
  check("--dim", flags.dim, saved.dim, false);
  check("--depth", flags.depth, saved.depth, false);
  check("--heads", flags.heads, saved.heads, false);
  check("--num-classes", flags.num_classes, saved.num_classes, true);
  // Another input size with the same patch grid fits the same position embedding.
  const auto grid = [](int64_t side) { return std::to_string(side) + "x" + std::to_string(side); };
  if (flags.input_size && *flags.input_size / saved.patch != saved.grid())
    refuse("--input-size " + std::to_string(*flags.input_size) + " (a " +
               grid(*flags.input_size / saved.patch) + " patch grid)",
           "a " + grid(saved.grid()) + " grid", true);
}

}  // namespace

void TrainFlags::add_to(CLI::App& cmd) {
  std::vector<std::string> stages;
  for (const train::RecipeStage& r : train::recipe_stages()) stages.push_back(r.name);
  cmd.add_option("--recipe", recipe,
                 "The stage of the reference's training whose values every other flag defaults "
                 "to (pretrain; see below)")
      ->check(CLI::IsMember(stages))
      ->type_name("STAGE");
  model.add_to(cmd, "the recipe's: pretrain T/S/M 224, B/L 192, H 160", "the dataset's",
               "--resume, or --finetune of a file that names its model");
  cmd.add_option("--data", data,
                 "Dataset root: DIR/train/<class>/*, DIR/val/<class>/* (or DIR/train.shard, "
                 "DIR/val.shard); required unless --resume");
  cmd.add_option("--output", output,
                 "Run directory, made where missing: log.txt and checkpoint.safetensors (a new "
                 "run refuses one that "
                 "holds a run; --resume continues it); required unless --resume, whose default is "
                 "the checkpoint's folder");
  cmd.add_option("--device", device,
                 "cpu or cuda[:N]; cuda alone: the GPU of this process's "
                 "local rank (cpu; when resuming, the run's)");
  cmd.add_option("--epochs", epochs, "Epochs (the recipe's; pretrain 800)");
  cmd.add_option("--batch-size", batch_size,
                 "Images per micro-batch and process (the recipe's; "
                 "pretrain 256); global batch: this x --accum-steps "
                 "x processes");
  cmd.add_option("--accum-steps", accum_steps,
                 "Micro-batches per optimizer step (default 1); an epoch's last step takes the "
                 "micro-batches left, where a --batch-size this many times larger would drop them");
  cmd.add_option("--opt", opt,
                 "Optimizer: lamb or adamw (the recipe's; finetune adamw, others lamb)");
  cmd.add_option("--lr", lr,
                 "Peak learning rate, not scaled by batch size (the recipe's; pretrain T/S 4e-3, "
                 "M/B/L/H 3e-3)");
  cmd.add_option("--min-lr", min_lr, "Final learning rate of the cosine (1e-5)");
  cmd.add_option("--warmup-lr", warmup_lr, "Learning rate warm-up starts from (1e-6)");
  cmd.add_option("--warmup-epochs", warmup_epochs, "Linear warm-up epochs (5)");
  cmd.add_option("--weight-decay", weight_decay,
                 "Weight decay on weight matrices (the recipe's; pretrain 0.05)");
  cmd.add_option("--opt-eps", opt_eps, "Optimizer epsilon (1e-8)");
  cmd.add_option("--clip-grad", clip_grad, "Global-norm clipping before the optimizer (off; "
                                           "LAMB clips at 1.0 inside)");
  cmd.add_option("--drop-path", drop_path,
                 "Stochastic depth rate, the same at every block (the recipe's; pretrain T 0, "
                 "S 0.05, M 0.1, B 0.2, L 0.45, H 0.6)");
  add_switch(cmd, three_augment, "three-augment",
             "3-Augment: grayscale, solarize or blur (on, but for finetune)");
  add_switch(cmd, src, "src",
             "Simple Random Crop instead of RandomResizedCrop (the in21k recipes' choice)");
  cmd.add_option("--rrc-scale-min", rrc_scale_min,
                 "RandomResizedCrop's smallest crop, as a fraction of the image area (0.08)");
  cmd.add_option(
      "--color-jitter", color_jitter,
      "Brightness/contrast/saturation jitter (0.3; off while --aa's RandAugment takes its "
      "place, as in finetune)");
  cmd.add_option("--aa", aa,
                 "RandAugment, timm's spec, in place of 3-Augment and colour jitter: none, but "
                 "rand-m9-mstd0.5-inc1 for finetune")
      ->type_name("SPEC");
  cmd.add_option("--eval-crop-ratio", eval_crop_ratio,
                 "Evaluation: resize to size / ratio, centre crop size (1.0, the crop of the "
                 "published top-1; the reference code's log.txt is scored at 0.875)");
  add_switch(cmd, repeated_aug, "repeated-aug",
             "Repeated augmentation, 3 repeats (pretrain's choice)");
  cmd.add_option("--mixup", mixup, "Mixup alpha, 0 = off (0.8, but 0 for the in21k recipes)");
  cmd.add_option("--cutmix", cutmix, "CutMix alpha, 0 = off (1.0)");
  cmd.add_option("--mixup-switch-prob", mixup_switch_prob,
                 "Probability of CutMix over mixup (0.5)");
  cmd.add_option("--mixup-prob", mixup_prob, "Probability that a batch is mixed at all (1.0)");
  cmd.add_option("--smoothing", smoothing,
                 "Label smoothing (0, but 0.1 where the recipe's loss is cross-entropy and "
                 "--bce-loss is not given); for --no-bce-loss, as BCE binarises its targets");
  add_switch(cmd, bce_loss, "bce-loss",
             "Binary cross-entropy on binarised targets (pretrain's "
             "choice); off: soft-target cross-entropy");
  add_switch(cmd, model_ema, "model-ema",
             "Keep an exponential moving average of the weights, saved in the checkpoint, not "
             "evaluated (on)");
  cmd.add_option("--model-ema-decay", model_ema_decay, "EMA decay (0.99996)");
  cmd.add_option("--save-every", save_every,
                 "Minutes: also save a checkpoint of the step the run is at this often within an "
                 "epoch, which --resume continues from (0, the default: at each epoch's end only)");
  cmd.add_option("--resume", resume,
                 "Continue the run saved in this checkpoint (or in a run folder's "
                 "checkpoint.safetensors), with the model, data and settings it "
                 "saved; a flag given as well changes that setting (a warning names each one "
                 "that changes the run's course)");
  cmd.add_option("--finetune", finetune,
                 "Start from these weights (a checkpoint or its run folder, or .safetensors); "
                 "pos_embed is resized, a new head made for new classes");
  cmd.add_option("--seed", seed, "Seed of every random choice (0)");
  // Here too, not only in the recipe's checks (which also see a checkpoint's value): CLI11 alone
  // answers a value past an int's range with "Could not convert", naming no range.
  cmd.add_option("--workers", workers, "Data loading threads (2)")
      ->check(CLI::Range(1, data::kMaxWorkers));
  add_switch(cmd, zero, "zero",
             "Several ranks: shard the optimizer state across them (ZeRO-1: 1/ranks of the "
             "state memory per rank; gradients reduce-scattered, updates all-gathered; the "
             "same updates up to fp32 rounding, bit for bit on two CPU ranks) (off)");
  cmd.add_option("--bucket-mb", bucket_mb, "Several ranks: gradients are averaged in buckets of "
                                           "at most this many MiB, each as soon as backward has "
                                           "finished it (25)");
  add_switch(cmd, recompute_gelu, "recompute-gelu",
             "Recompute GELU's output in backward instead of keeping it: 4 of a block's 18 "
             "saved activations, for one more GELU pass (same results) (off)");
  add_switch(cmd, whole_batch_branches, "whole-batch-branches",
             "Run every drop-path branch over the whole batch, dropped samples multiplied by 0 "
             "as timm does, instead of a branch that keeps at most 90% of the batch on the kept "
             "samples alone (same results up to rounding; more compute) (off)");
  add_switch(cmd, grad_checkpointing, "grad-checkpointing",
             "Keep only each block's two inputs and recompute its forward in backward "
             "(activation checkpointing: a fraction of the activation memory for about a third "
             "more compute; same results) (off)");
  add_switch(cmd, cuda_graph, "cuda-graph",
             "CUDA: capture the training step once as a CUDA graph and replay it for every "
             "later batch (one launch per step instead of every kernel; needs --accum-steps 1; "
             "its shapes are fixed, so drop-path's branches run on the whole batch) (off)");
  add_switch(cmd, gemm_autotune, "gemm-autotune",
             "CUDA: time every algorithm cuBLASLt offers for each GEMM on its first run and keep "
             "the fastest (a few GEMMs more in the first step; the choice may vary from run to "
             "run where two are about as fast, and with it the last bits of the results) (off)");
  cmd.add_flag("--quiet", quiet, "No progress output");
  cmd.add_flag("--dry-run", dry_run,
               "Print the settings the run would start with (JSON, under the names its checkpoint "
               "saves; num_classes null: the dataset's) and exit, reading neither data nor "
               "weights; refused as the run would be "
               "for bad settings or an --output that holds another run (not for a missing GPU)");
}

std::string TrainFlags::recipes_help() {
  std::string help = "Recipes (--recipe), the reference code's commands (README_revenge.md):\n";
  for (const train::RecipeStage& r : train::recipe_stages())
    help += "  " + std::string(r.name) + ": " + r.about + "\n";
  return help + "Their values for each model (a flag given overrides any of them):\n" +
         train::recipe_table();
}

train::TrainOptions TrainFlags::starting_options() const {
  if (resume.empty()) {
    const std::string stage = recipe.empty() ? "pretrain" : recipe;
    train::TrainOptions o;
    if (!model.model.empty()) {
      o = train::recipe_for(model.model, stage);
    } else {
      // A file that names its model (a checkpoint, deit's export) gives it: the demo's model, or
      // another of custom sizes, has no --model to name it.
      const std::optional<model::ViTConfig> source =
          finetune.empty() ? std::nullopt
                           : model::read_model_config(model::checkpoint_file(finetune));
      if (!source)
        throw std::invalid_argument(
            "--model is required (unless --resume continues a run, or --finetune starts from a "
            "file that names its model: a checkpoint, or weights deit export wrote)");
      o = train::recipe_of(*source, stage);
      // A preset at the stage's resolution (B pre-trained at 192 is fine-tuned at 224); a model of
      // other sizes at its own.
      const int64_t input_size =
          source->name == model::preset_of(*source) ? o.model.input_size : source->input_size;
      o.model = *source;
      o.model.input_size = input_size;
    }
    o.num_classes_given = model.num_classes.has_value();
    o.data_dir = data;
    o.output_dir = output;
    return o;
  }
  if (!recipe.empty())
    throw std::invalid_argument(
        "--recipe starts a new run: a resumed run keeps its own, and a "
        "flag given with --resume changes that one setting");
  const std::string checkpoint = model::checkpoint_file(resume);
  std::error_code error;
  if (const std::filesystem::path folder = std::filesystem::path(checkpoint).parent_path();
      !std::filesystem::exists(checkpoint, error) && !folder.empty() &&
      std::filesystem::exists(folder / ".lock", error) && launch_rank_or_zero() == 0) {
    // A run still in its first epoch has no checkpoint yet, but its lock file: that it runs is the
    // reason to give (the lock names its process), not the missing file. Only a folder with a
    // lock file is looked at, so that a mistyped path locks nothing; rank 0 alone looks, as
    // another rank would find rank 0 looking.
    const train::OutputLock running(folder.string(), "--resume");
  }
  const model::Checkpoint saved = model::read_checkpoint_header(checkpoint);
  const std::string saved_preset = model::preset_of(saved.config);
  if (!model.model.empty() && model.model != saved_preset)
    throw std::invalid_argument("--model " + model.model + " is not the model of checkpoint '" +
                                checkpoint + "' (" + saved.config.name +
                                "): leave --model out to resume it");
  train::TrainOptions o;
  try {
    o = train::resume_options(saved.config, saved.state.value("options", nlohmann::json::object()));
  } catch (const std::runtime_error& e) {
    throw std::runtime_error("checkpoint '" + checkpoint + "': " + e.what());
  }
  if (!data.empty()) {
    o.data_dir = data;
  } else if (o.data_dir.empty()) {
    throw std::invalid_argument("--data is required: checkpoint '" + checkpoint +
                                "' does not say where its run's data is");
  } else if (std::filesystem::path(o.data_dir).is_relative()) {
    // Saved before runs kept an absolute path: relative to a folder the checkpoint does not name.
    throw std::invalid_argument("--data is required: checkpoint '" + checkpoint +
                                "' names its data by the relative path '" + o.data_dir +
                                "', from wherever its run was started");
  } else if (!std::filesystem::exists(o.data_dir, error)) {
    throw std::invalid_argument(
        "--data is required: the run of checkpoint '" + checkpoint + "' trained on '" + o.data_dir +
        "', which " + (error ? "cannot be reached (" + error.message() + ")" : "is not there now") +
        ": give --data with where that dataset is");
  }
  const std::string folder = std::filesystem::path(checkpoint).parent_path().string();
  o.output_dir = !output.empty() ? output : folder.empty() ? "." : folder;
  o.resume = checkpoint;
  return o;
}

train::TrainOptions TrainFlags::resolve() const {
  train::TrainOptions o = starting_options();
  if (!o.resume.empty()) refuse_another_model(model, o.model, o.resume);
  o.model = model.apply_to(o.model);
  override_with(device, o.device);
  o.finetune = finetune.empty() ? "" : model::checkpoint_file(finetune);
  if (!opt.empty()) o.opt = opt;
  override_with(epochs, o.epochs);
  override_with(batch_size, o.batch_size);
  override_with(accum_steps, o.accum_steps);
  override_with(lr, o.lr);
  override_with(min_lr, o.min_lr);
  override_with(warmup_lr, o.warmup_lr);
  override_with(warmup_epochs, o.warmup_epochs);
  override_with(weight_decay, o.weight_decay);
  override_with(opt_eps, o.opt_eps);
  override_with(clip_grad, o.clip_grad);
  override_with(drop_path, o.drop_path);
  override_with(rrc_scale_min, o.rrc_scale_min);
  override_with(color_jitter, o.color_jitter);
  override_with(eval_crop_ratio, o.eval_crop_ratio);
  override_with(mixup, o.mixup);
  override_with(cutmix, o.cutmix);
  override_with(mixup_switch_prob, o.mixup_switch_prob);
  override_with(mixup_prob, o.mixup_prob);
  override_with(smoothing, o.smoothing);
  override_with(model_ema_decay, o.model_ema_decay);
  override_with(three_augment, o.three_augment);
  // RandAugment takes the place of the preset's 3-Augment and colour jitter (validate() refuses
  // both at once); either one given explicitly as well is left for validate() to name. Turned
  // off (--aa none, under --recipe finetune or resuming a run that had it), timm's transform
  // jitters the colours at main.py's default, and 3-Augment is the stage's choice (the reference's
  // fine-tuning command has none).
  if (aa && *aa != "none") {
    if (!three_augment) o.three_augment = false;
    if (!color_jitter) o.color_jitter = 0;
  } else if (aa && o.aa != "none") {
    if (!three_augment) o.three_augment = train::recipe_of(o.model, o.recipe).three_augment;
    if (!color_jitter) o.color_jitter = train::kColorJitter;
  }
  override_with(aa, o.aa);
  override_with(src, o.src);
  override_with(repeated_aug, o.repeated_aug);
  // BCE takes no smoothing (validate() says why): --bce-loss over a stage whose cross-entropy
  // smooths (in21k-pretrain) leaves the stage's smoothing behind, as --aa does its jitter.
  if (bce_loss && *bce_loss && !smoothing) o.smoothing = 0;
  override_with(bce_loss, o.bce_loss);
  override_with(model_ema, o.model_ema);
  override_with(seed, o.seed);
  override_with(workers, o.workers);
  override_with(bucket_mb, o.bucket_mb);
  override_with(save_every, o.save_every_minutes);
  override_with(zero, o.zero);
  override_with(cuda_graph, o.cuda_graph);
  override_with(recompute_gelu, o.recompute_gelu);
  override_with(whole_batch_branches, o.whole_batch_branches);
  override_with(grad_checkpointing, o.grad_checkpointing);
  override_with(gemm_autotune, o.gemm_autotune);
  o.progress = !quiet;
  // Flags given that the run's other settings leave without effect: said once, by rank 0 (a launch
  // the environment describes wrongly is for the run to refuse, not this).
  std::vector<const char*> idle;
  if (rrc_scale_min && o.src)
    idle.push_back("--rrc-scale-min has no effect with --src (Simple Random Crop draws no scale)");
  if (model_ema_decay && !o.model_ema)
    idle.push_back("--model-ema-decay has no effect without --model-ema");
  if (!idle.empty() && launch_rank_or_zero() == 0)
    for (const char* warning : idle) std::fprintf(stderr, "warning: %s\n", warning);
  return o;
}

}  // namespace deit::apps
