// The recipe flags of `deit train`. Each flag is optional: unset, the value comes from the
// preset's recipe at the --recipe stage (train/recipe.h), so `deit train --model deit3_base`
// pre-trains with the paper's settings for ViT-B and `--recipe finetune` fine-tunes with the
// reference's; or, with --resume, from the settings the run saved in its checkpoint, so
// `deit train --resume RUN/checkpoint.safetensors` continues a run by itself.
#pragma once
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "apps/model_options.h"
#include "train/recipe.h"
#include "train/trainer.h"

namespace deit::apps {

struct TrainFlags {
  ModelOptions model;
  std::string recipe, data, output, resume, finetune, opt;
  std::optional<std::string> device, aa;
  std::optional<int64_t> epochs, batch_size, accum_steps;
  std::optional<double> lr, min_lr, warmup_lr, warmup_epochs, weight_decay, opt_eps, clip_grad,
      drop_path, rrc_scale_min, color_jitter, eval_crop_ratio, mixup, cutmix, mixup_switch_prob,
      mixup_prob, smoothing,
      model_ema_decay;
  std::optional<bool> three_augment, src, repeated_aug, bce_loss, model_ema, zero, cuda_graph,
      recompute_gelu, whole_batch_branches, grad_checkpointing, gemm_autotune;
  std::optional<uint64_t> seed;
  std::optional<int> workers;
  std::optional<double> bucket_mb, save_every;
  bool quiet = false;
  bool dry_run = false;

  void add_to(CLI::App& cmd);
  // The options to start from (recipe_for(--model), or the --resume checkpoint's) with every given
  // flag applied. Throws std::invalid_argument for a missing or contradicting flag.
  train::TrainOptions resolve() const;
  // What each --recipe stage sets, and its values for each model: for --help.
  static std::string recipes_help();

 private:
  train::TrainOptions starting_options() const;
};

// The end-of-run report of `deit train` and `deit demo`, on rank 0: accuracy, time, where things
// are. A run a signal stopped reports where it saved and how to go on, and ends deit as the
// signal would have (throws EndBySignal, on every rank). `program`: how deit was started (argv[0]),
// so that the command printed to go on runs as shown.
void report_training(const train::TrainSummary& summary, const std::string& program);

}  // namespace deit::apps
