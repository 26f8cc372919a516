// Everything a training run is told: the DeiT III recipe (RECIPE.md section 2) as defaults, each
// preset's own values (learning rate, drop-path, resolution), and the flags that override them.
// Names follow the reference code's command line (main.py) where one exists.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"

namespace deit::train {

// The stages of the reference's training (README_revenge.md's commands), one recipe each: what
// `--recipe` names and a run saves.
struct RecipeStage {
  const char* name;
  const char* about;         // for --help
  int64_t global_batch;      // the reference's (its lr assumes it: lr is not scaled with the batch)
  bool starts_from_weights;  // a fine-tune: needs --finetune
};
const std::vector<RecipeStage>& recipe_stages();
// The stage called `name`; throws std::invalid_argument naming the stages there are.
const RecipeStage& recipe_stage(const std::string& name);

// main.py's --color-jitter default: every stage jitters the colours by it where RandAugment does
// not take its place.
constexpr double kColorJitter = 0.3;

struct TrainOptions {
  std::string recipe = "pretrain";  // the stage whose values the others started from
  model::ViTConfig model;       // the architecture; num_classes from the dataset unless given
  bool num_classes_given = false;
  std::string data_dir;
  std::string output_dir;
  std::string device = "cpu";

  int64_t epochs = 800;
  int64_t batch_size = 256;  // per process and per optimizer micro-step
  int64_t accum_steps = 1;  // micro-batches per optimizer step: global = batch * accum * ranks
  std::string opt = "lamb";
  double lr = 4e-3;
  double min_lr = 1e-5;
  double warmup_lr = 1e-6;
  double warmup_epochs = 5;
  double weight_decay = 0.05;
  double opt_eps = 1e-8;
  double clip_grad = 0;  // clip_grad_norm_ before the optimizer; LAMB clips at 1.0 inside
  double drop_path = 0.05;

  // Augmentation (RECIPE.md section 3).
  bool three_augment = true;
  bool src = false;  // Simple Random Crop instead of RandomResizedCrop (ImageNet-21k recipe)
  double rrc_scale_min = 0.08;  // RandomResizedCrop's smallest area fraction (torchvision's 0.08)
  double color_jitter = kColorJitter;
  // RandAugment, timm's spec (data/augment_params.h parse_rand_augment), in place of 3-Augment and
  // colour jitter: the recipe fine-tunes with rand-m9-mstd0.5-inc1. "none": off.
  std::string aa = "none";
  double eval_crop_ratio = 1.0;
  bool repeated_aug = true;  // 3 repeats
  double mixup = 0.8;
  double cutmix = 1.0;
  double mixup_switch_prob = 0.5;
  double mixup_prob = 1.0;  // probability that a batch is mixed at all (the recipe mixes every one)
  double smoothing = 0.0;

  bool bce_loss = true;  // BCE on binarised mixed targets; false: soft-target cross-entropy
  // Kept and saved in the checkpoint, as the reference code keeps it, but not what is evaluated.
  bool model_ema = true;
  double model_ema_decay = 0.99996;

  std::string resume;    // checkpoint to continue from
  std::string finetune;  // checkpoint or weights to start from (new resolution / classes allowed)
  std::string finetuned_from;  // a resumed fine-tune: the weights its run started from
  uint64_t seed = 0;
  int workers = 2;       // data loading threads
  double save_every_minutes = 0;  // also checkpoint the step this often within an epoch (0: off)
  bool cuda_graph = false;  // CUDA: replay one captured step after the first (train/graph_step.h)
  bool recompute_gelu = false;  // GELU recomputed in backward (model/vit.h set_recompute_gelu)
  // Drop-path branches over the whole batch (model/vit.h set_whole_batch_branches); a CUDA graph
  // run's always are.
  bool whole_batch_branches = false;
  bool grad_checkpointing = false;  // blocks recomputed in backward (set_grad_checkpointing)
  // CUDA: each GEMM's first run times the algorithms cuBLASLt offers and keeps the fastest
  // (kernels/cuda/cublaslt.h, CublasLt::set_autotune)
  bool gemm_autotune = false;

  // Data-parallel runs (one process per rank; see README "Multi-GPU / multi-node").
  bool zero = false;       // shard the optimizer state across the ranks (ZeRO stage 1)
  double bucket_mb = 25;   // gradients are averaged in buckets of at most this many MiB
  bool progress = true;  // progress display on stderr (a bar on a terminal, lines otherwise)

  // Throws std::invalid_argument naming the first bad value.
  void validate() const;
  nlohmann::json to_json() const;
  // The settings that steer a run's course (the model, batch, optimizer, schedule and its
  // --epochs, augmentation, loss, EMA and seed; not the paths, the device or the memory savers,
  // which leave it alone) where these options differ from `saved`, another run's to_json(), by
  // key in alphabetical order. Keys `saved` lacks are skipped.
  struct Difference {
    std::string key;
    nlohmann::json saved, now;
  };
  std::vector<Difference> course_differences(const nlohmann::json& saved) const;
};

// How many micro-batches make the optimizer step that micro-batch `micro_batch` (1-based, within an
// epoch of `batches`) belongs to: --accum-steps, or what is left for the epoch's last step.
int64_t micro_batches_in_step(int64_t micro_batch, int64_t batches, int64_t accum_steps);

// The reference's values for `preset` at stage `recipe` (recipe.cpp's table; RECIPE.md section
// 2): for pretrain, lr 4e-3 for S (and T), 3e-3 for M/B/L/H; drop-path S 0.05, B 0.2, L 0.45,
// H 0.6; training resolution S 224, B and L 192, H 160. T and M are not in the paper: their
// values are our choice. Throws std::invalid_argument for an unknown preset or stage.
TrainOptions recipe_for(const std::string& preset, const std::string& recipe = "pretrain");

// The recipe a run of `model` starts from: its preset's (recipe_for), or for a model of no preset
// deit3_small's, whose pretrain values are the defaults above.
TrainOptions recipe_of(const model::ViTConfig& model, const std::string& recipe = "pretrain");

// The values of each preset at each stage, as a table for --help: one line per preset.
std::string recipe_table();

// The options a run saved in its checkpoint (`saved`, its to_json()) for the run that continues
// it: every saved setting, over the preset's recipe for a key an older checkpoint lacks, with the
// checkpoint's `model`. A fine-tune's starting weights become finetuned_from (saved again under
// "finetune"). The output folder and the --resume/--finetune paths are left empty for the
// caller. Throws std::runtime_error (to be prefixed with the checkpoint) for a saved value of the
// wrong type.
TrainOptions resume_options(const model::ViTConfig& model, const nlohmann::json& saved);

}  // namespace deit::train
