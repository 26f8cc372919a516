// --recipe: each stage of the reference's training (README_revenge.md's commands) as a recipe
// that every flag defaults to, seen through `deit train --dry-run`.
#include <catch2/catch.hpp>

#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/prefetch.h"
#include "model/config.h"
#include "tests/cli_runner.h"
#include "tests/test_data_helpers.h"
#include "train/recipe.h"

using deit::test::CliResult;
using deit::test::run_deit;

namespace {

// The settings `deit train FLAGS` would run with (it reads no data and writes nothing).
nlohmann::json dry_run(const std::string& flags) {
  const CliResult r =
      run_deit("train --data /datasets/imagenet --output /runs/never --dry-run " + flags);
  INFO(flags << "\n" << r.output);
  REQUIRE(r.exit_code == 0);
  return nlohmann::json::parse(r.output);
}

// What README_revenge.md's command for one model and stage passes, in deit's names: its --batch is
// per GPU, and each command names every value below or leaves main.py's default (no 3-Augment, no
// --src, bce off, colour jitter 0.3 that RandAugment replaces).
struct ReferenceCommand {
  std::string model, recipe;
  int64_t input_size, epochs, batch_size;
  std::string opt;
  double lr, weight_decay, drop_path, smoothing, mixup;
  bool bce_loss, repeated_aug, three_augment, src;
  std::string aa;
};

}  // namespace

TEST_CASE("each --recipe stage sets the values of the reference's command for it", "[train][cli]") {
  // The batch of a process: the reference's per-GPU batch x GPUs / 8 processes (64 x 8 = 512 for
  // every fine-tune; 256 x 8 = 2048 for the rest: its 128 x 16 and 64 x 32 as well).
  const ReferenceCommand commands[] = {
      {"deit3_small", "pretrain", 224, 800, 256, "lamb", 4e-3, 0.05, 0.05, 0.0, 0.8, true, true,
       true, false, "none"},
      {"deit3_base", "pretrain", 192, 800, 256, "lamb", 3e-3, 0.05, 0.2, 0.0, 0.8, true, true, true,
       false, "none"},
      {"deit3_large", "pretrain", 192, 800, 256, "lamb", 3e-3, 0.05, 0.45, 0.0, 0.8, true, true,
       true, false, "none"},
      {"deit3_huge", "pretrain", 160, 800, 256, "lamb", 3e-3, 0.05, 0.6, 0.0, 0.8, true, true, true,
       false, "none"},
      {"deit3_small", "finetune", 384, 20, 64, "adamw", 1e-5, 0.1, 0.0, 0.1, 0.8, false, false,
       false, false, "rand-m9-mstd0.5-inc1"},
      {"deit3_base", "finetune", 224, 20, 64, "adamw", 1e-5, 0.1, 0.2, 0.1, 0.8, false, false,
       false, false, "rand-m9-mstd0.5-inc1"},
      {"deit3_large", "finetune", 224, 20, 64, "adamw", 1e-5, 0.1, 0.45, 0.1, 0.8, false, false,
       false, false, "rand-m9-mstd0.5-inc1"},
      {"deit3_huge", "finetune", 224, 20, 64, "adamw", 1e-5, 0.1, 0.55, 0.1, 0.8, false, false,
       false, false, "rand-m9-mstd0.5-inc1"},
      {"deit3_small", "in21k-pretrain", 224, 240, 256, "lamb", 1e-3, 0.02, 0.05, 0.1, 0.0, false,
       false, true, true, "none"},
      {"deit3_base", "in21k-pretrain", 224, 240, 256, "lamb", 1e-3, 0.02, 0.1, 0.1, 0.0, false,
       false, true, true, "none"},
      {"deit3_large", "in21k-pretrain", 224, 240, 256, "lamb", 1e-3, 0.02, 0.3, 0.1, 0.0, false,
       false, true, true, "none"},
      {"deit3_huge", "in21k-pretrain", 128, 90, 256, "lamb", 1e-3, 0.02, 0.5, 0.1, 0.0, false,
       false, true, true, "none"},
      {"deit3_small", "in21k-finetune", 224, 50, 256, "lamb", 3e-4, 0.02, 0.05, 0.1, 0.0, false,
       false, true, true, "none"},
      {"deit3_base", "in21k-finetune", 224, 50, 256, "lamb", 3e-4, 0.02, 0.15, 0.1, 0.0, false,
       false, true, true, "none"},
      {"deit3_large", "in21k-finetune", 224, 50, 256, "lamb", 3e-4, 0.02, 0.4, 0.1, 0.0, false,
       false, true, true, "none"},
      {"deit3_huge", "in21k-finetune", 224, 50, 256, "lamb", 3e-4, 0.02, 0.45, 0.1, 0.0, false,
       false, true, true, "none"},
  };
  for (const ReferenceCommand& c : commands) {
    INFO(c.model << " " << c.recipe);
    // Every command here shares these: cosine to 1e-5 after 5 warm-up epochs from 1e-6, cutmix
    // 1.0, the EMA kept, no random erasing (which deit has not).
    const bool fine_tunes = c.recipe == "finetune" || c.recipe == "in21k-finetune";
    const nlohmann::json s = dry_run("--model " + c.model + " --recipe " + c.recipe +
                                     (fine_tunes ? " --finetune /runs/before" : ""));
    CHECK(s["recipe"] == c.recipe);
    CHECK(s["input_size"] == c.input_size);
    CHECK(s["epochs"] == c.epochs);
    CHECK(s["batch_size"] == c.batch_size);
    CHECK(s["opt"] == c.opt);
    CHECK(s["lr"] == c.lr);
    CHECK(s["weight_decay"] == c.weight_decay);
    CHECK(s["drop_path"] == c.drop_path);
    CHECK(s["smoothing"] == c.smoothing);
    CHECK(s["mixup"] == c.mixup);
    CHECK(s["bce_loss"] == c.bce_loss);
    CHECK(s["repeated_aug"] == c.repeated_aug);
    CHECK(s["three_augment"] == c.three_augment);
    CHECK(s["src"] == c.src);
    CHECK(s["aa"] == c.aa);
    CHECK(s["color_jitter"] == (c.aa == "none" ? 0.3 : 0.0));
    CHECK(s["min_lr"] == 1e-5);
    CHECK(s["warmup_lr"] == 1e-6);
    CHECK(s["warmup_epochs"] == 5.0);
    CHECK(s["cutmix"] == 1.0);
    CHECK(s["model_ema"] == true);
    CHECK(s["finetune"] == (fine_tunes ? "/runs/before" : ""));
  }
  // The stages' global batches, which the trainer compares a run's with: their batch on the 8
  // processes of one node.
  CHECK(deit::train::recipe_stage("pretrain").global_batch == 2048);
  CHECK(deit::train::recipe_stage("finetune").global_batch == 512);
  CHECK(deit::train::recipe_stage("in21k-pretrain").global_batch == 2048);
  CHECK(deit::train::recipe_stage("in21k-finetune").global_batch == 2048);
  for (const deit::train::RecipeStage& stage : deit::train::recipe_stages())
    for (const char* preset : {"deit3_tiny", "deit3_huge52"})
      CHECK(deit::train::recipe_for(preset, stage.name).batch_size * 8 == stage.global_batch);
  // huge52 trains as huge does.
  for (const deit::train::RecipeStage& stage : deit::train::recipe_stages()) {
    const deit::train::TrainOptions huge = deit::train::recipe_for("deit3_huge", stage.name),
                                    huge52 = deit::train::recipe_for("deit3_huge52", stage.name);
    CHECK(huge52.lr == huge.lr);
    CHECK(huge52.drop_path == huge.drop_path);
    CHECK(huge52.epochs == huge.epochs);
    CHECK(huge52.model.input_size == huge.model.input_size);
  }
}

TEST_CASE("a flag overrides any value of a recipe, and a recipe that cannot apply is refused",
          "[train][cli]") {
  nlohmann::json s = dry_run(
      "--model deit3_base --recipe finetune --finetune /runs/b --lr 2e-5 "
      "--drop-path 0.1 --input-size 256");
  CHECK(s["lr"] == 2e-5);
  CHECK(s["drop_path"] == 0.1);
  CHECK(s["input_size"] == 256);
  CHECK(s["opt"] == "adamw");
  // Without RandAugment, a fine-tune is the reference's command without --aa: timm's transform
  // then jitters the colours (main.py's default 0.3), and there is no 3-Augment.
  s = dry_run("--model deit3_base --recipe finetune --finetune /runs/b --aa none");
  CHECK(s["aa"] == "none");
  CHECK(s["three_augment"] == false);
  CHECK(s["color_jitter"] == 0.3);
  // No --recipe: pretrain. The class count is the dataset's, which a dry run does not read.
  s = dry_run("--model deit3_base");
  CHECK(s["recipe"] == "pretrain");
  CHECK(s["num_classes"].is_null());
  CHECK(dry_run("--model deit3_base --num-classes 21841")["num_classes"] == 21841);

  const std::string run = "train --data /datasets/imagenet --output /runs/never --dry-run ";
  CliResult r = run_deit(run + "--model deit3_base --recipe finetune");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--recipe finetune fine-tunes pre-trained weights: give "
                                       "them with --finetune"));
  r = run_deit(run + "--model deit3_base --recipe in21k-finetune");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--recipe in21k-finetune fine-tunes pre-trained weights"));
  r = run_deit(run + "--model deit3_base --recipe warmup");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--recipe") && Catch::Contains("warmup"));
  // A flag the recipe's RandAugment excludes is named as before.
  r = run_deit(run + "--model deit3_base --recipe finetune --finetune /runs/b --three-augment");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("drop --three-augment"));
  // A flag the other settings leave without effect: taken, with a warning.
  r = run_deit(run +
               "--model deit3_base --src --rrc-scale-min 0.3 --no-model-ema "
               "--model-ema-decay 0.9");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: --rrc-scale-min has no effect with --src") &&
                           Catch::Contains("warning: --model-ema-decay has no effect without "
                                           "--model-ema"));
  CHECK_THAT(run_deit(run + "--model deit3_base --rrc-scale-min 0.3").output,
             !Catch::Contains("warning"));

  // A resumed run keeps the recipe it started with.
  deit::test::TempDir dir;
  r = run_deit("train --resume " + dir.file("run") + " --recipe finetune --dry-run");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--recipe starts a new run: a resumed run keeps its own"));

  // The options alone: validate() names the stages there are.
  deit::train::TrainOptions o = deit::train::recipe_for("deit3_tiny");
  o.data_dir = "/datasets/imagenet";
  o.output_dir = "/runs/never";
  o.recipe = "warmup";
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--recipe: unknown recipe 'warmup' (known: "
                                                  "pretrain, finetune, in21k-pretrain, "
                                                  "in21k-finetune)"));
  CHECK_THROWS_WITH(deit::train::recipe_for("deit3_tiny", "warmup"),
                    Catch::Contains("unknown recipe 'warmup'"));
}

TEST_CASE("every recipe flag of deit train sets the setting of its own name", "[train][cli]") {
  // Each at a value no recipe has: a flag that set another setting, or none, shows here.
  struct Given {
    std::string flags;
    std::vector<std::pair<std::string, nlohmann::json>> settings;
  };
  const std::vector<Given> runs = {
      {"--device cuda:1 --epochs 7 --batch-size 12 --accum-steps 3 --opt adamw --lr 0.002 "
       "--min-lr 2e-5 --warmup-lr 3e-6 --warmup-epochs 2 --weight-decay 0.07 --opt-eps 1e-7 "
       "--clip-grad 2.5 --drop-path 0.15 --no-three-augment --rrc-scale-min 0.25 "
       "--color-jitter 0.2 --eval-crop-ratio 0.9 --mixup 0.6 --cutmix 0.7 "
       "--mixup-switch-prob 0.4 --mixup-prob 0.9 --no-bce-loss --smoothing 0.05 "
       "--model-ema-decay 0.999 --seed 11 --workers 3 --zero --bucket-mb 10 --save-every 30 "
       "--recompute-gelu --whole-batch-branches --grad-checkpointing",
       {{"device", "cuda:1"},
        {"epochs", 7},
        {"batch_size", 12},
        {"accum_steps", 3},
        {"opt", "adamw"},
        {"lr", 0.002},
        {"min_lr", 2e-5},
        {"warmup_lr", 3e-6},
        {"warmup_epochs", 2.0},
        {"weight_decay", 0.07},
        {"opt_eps", 1e-7},
        {"clip_grad", 2.5},
        {"drop_path", 0.15},
        {"three_augment", false},
        {"rrc_scale_min", 0.25},
        {"color_jitter", 0.2},
        {"eval_crop_ratio", 0.9},
        {"mixup", 0.6},
        {"cutmix", 0.7},
        {"mixup_switch_prob", 0.4},
        {"mixup_prob", 0.9},
        {"bce_loss", false},
        {"smoothing", 0.05},
        {"model_ema_decay", 0.999},
        {"seed", 11},
        {"workers", 3},
        {"zero", true},
        {"bucket_mb", 10.0},
        {"save_every_minutes", 30.0},
        {"recompute_gelu", true},
        {"whole_batch_branches", true},
        {"grad_checkpointing", true},
        {"src", false},
        {"cuda_graph", false},
        {"gemm_autotune", false}}},
      {"--device cuda --src --no-repeated-aug --no-model-ema --cuda-graph --gemm-autotune "
       "--aa rand-m7-mstd0.5",
       {{"src", true},
        {"repeated_aug", false},
        {"model_ema", false},
        {"cuda_graph", true},
        {"gemm_autotune", true},
        {"aa", "rand-m7-mstd0.5"},
        {"three_augment", false},
        {"color_jitter", 0.0}}}};
  for (const Given& run : runs) {
    const nlohmann::json s = dry_run("--model deit3_tiny " + run.flags);
    for (const auto& [key, value] : run.settings) {
      INFO(key);
      CHECK(s[key] == value);
    }
  }
}

TEST_CASE("settings that could only fail later are refused when a run is set up", "[train]") {
  deit::train::TrainOptions o = deit::train::recipe_for("deit3_tiny");
  o.data_dir = "/datasets/imagenet";
  o.output_dir = "/runs/never";
  // An infinity is no learning rate, nor a positive one in any useful sense.
  o.lr = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--lr must be a finite number > 0, got inf"));
  o.lr = 4e-3;
  // A crop ratio that would resize the val images past any image size failed after the epoch's
  // training, in a loader thread, as "cannot resize 64x64 to -2147483648x-2147483648".
  o.eval_crop_ratio = 1e-9;
  CHECK_THROWS_WITH(o.validate(),
                    Catch::Contains("--eval-crop-ratio 1e-09 would resize images to a shorter "
                                    "side of --input-size 224 / 1e-09, more than 32768 pixels"));
  o.eval_crop_ratio = 0.875;
  CHECK_NOTHROW(o.validate());
  // Each rate's refusal names the value it was given.
  o.drop_path = 1.5;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--drop-path must be in [0, 1), got 1.5"));
  o.drop_path = 0.05;
  o.smoothing = -0.1;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--smoothing must be in [0, 1), got -0.1"));
  o.smoothing = 0;
  o.mixup_prob = 2;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--mixup-prob must be in [0, 1], got 2"));
  o.mixup_prob = 1;
  o.mixup_switch_prob = 3;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--mixup-switch-prob must be in [0, 1], got 3"));
  o.mixup_switch_prob = 0.5;
  CHECK_NOTHROW(o.validate());
  // Either of mixup and cutmix mixes the batch's samples in pairs (ImageNet-21k's recipe has
  // cutmix alone): an odd batch leaves one out.
  o.mixup = 0;
  o.batch_size = 255;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--batch-size must be even with mixup/cutmix"));
  o.cutmix = 0;
  CHECK_NOTHROW(o.validate());
  o.batch_size = 256;
  o.mixup = 0.8;
  o.cutmix = 1;
  // An infinite warm-up never reaches --lr.
  o.warmup_epochs = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(o.validate(),
                    Catch::Contains("--warmup-epochs must be a finite number >= 0, got inf"));
  o.warmup_epochs = 5;
  // The loader's most workers are allowed, one more is not.
  o.workers = deit::data::kMaxWorkers;
  CHECK_NOTHROW(o.validate());
  o.workers = deit::data::kMaxWorkers + 1;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--workers must be in [1, 256], got 257"));
  o.workers = 4;
  // A bucket past a size_t's bytes became buckets of one byte: a collective per tensor.
  for (const double mb : {std::numeric_limits<double>::infinity(), 1e30, 0.0}) {
    o.bucket_mb = mb;
    CHECK_THROWS_WITH(o.validate(),
                      Catch::Contains("--bucket-mb must be a number of MiB in (0, 1048576], got "));
  }
  o.bucket_mb = 1 << 20;
  CHECK_NOTHROW(o.validate());
  // A device the run could not name (--dry-run said nothing of it).
  for (const char* device : {"gpu", "CPU", " cpu", "cuda:abc"}) {
    o.device = device;
    CHECK_THROWS_WITH(o.validate(), Catch::Contains(std::string("--device: unknown device '") +
                                                    device + "' (expected cpu, cuda or cuda:N)"));
  }
  o.device = "cuda:99999999999";
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--device: device 'cuda:99999999999': no GPU "
                                                  "has index 99999999999"));
  o.device = "cuda:1";
  CHECK_NOTHROW(o.validate());
}

TEST_CASE("a rate at the edge of its range is refused or taken as the recipe allows", "[train]") {
  // RECIPE.md section 1: drop-path keeps a branch with probability 1 - rate and scales it by
  // 1 / (1 - rate): at 1 it would keep nothing and divide by 0. Smoothing 1 leaves no weight on
  // the label, and colour jitter 1 lets a factor reach 0 (a black or grey image). The recipe's
  // own values sit inside: they are taken.
  deit::train::TrainOptions o = deit::train::recipe_for("deit3_huge");  // drop-path 0.6
  o.data_dir = "/datasets/imagenet";
  o.output_dir = "/runs/never";
  CHECK_NOTHROW(o.validate());
  o.drop_path = 1;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--drop-path must be in [0, 1), got 1"));
  o.drop_path = 0.99;
  CHECK_NOTHROW(o.validate());
  o.drop_path = 0.6;
  o.color_jitter = 1;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--color-jitter must be in [0, 1)"));
  o.color_jitter = deit::train::kColorJitter;
  o.bce_loss = false;  // smoothing is refused beside BCE
  o.smoothing = 1;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--smoothing must be in [0, 1), got 1"));
  o.smoothing = 0.1;  // the fine-tunes' and ImageNet-21k's
  CHECK_NOTHROW(o.validate());
  // A crop keeps a share of the image's area: none is no crop, the whole image is one.
  o.rrc_scale_min = 0;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--rrc-scale-min must be in (0, 1]"));
  o.rrc_scale_min = 1;
  CHECK_NOTHROW(o.validate());
}

TEST_CASE("counts below one and a resumed fine-tune from new weights are refused by the options",
          "[train]") {
  // validate() guards train::train as well as the command line: no epoch or no micro-batch per
  // step trains nothing, and a run cannot both go on from a checkpoint and start afresh from
  // other weights.
  deit::train::TrainOptions o = deit::train::recipe_for("deit3_tiny");
  o.data_dir = "/datasets/imagenet";
  o.output_dir = "/runs/never";
  o.epochs = 0;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--epochs must be at least 1, got 0"));
  o.epochs = 1;
  o.accum_steps = 0;
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--accum-steps must be at least 1, got 0"));
  o.accum_steps = 1;
  CHECK_NOTHROW(o.validate());
  o.resume = "/runs/a/checkpoint.safetensors";
  o.finetune = "/runs/b/checkpoint.safetensors";
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--resume and --finetune cannot be combined"));
}

TEST_CASE("deit train --help shows each recipe's values for each model", "[train][cli]") {
  const CliResult r = run_deit("train --help");
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("  finetune: after pretrain, at 224 (T, S and M at 384)") &&
                           Catch::Contains("(lr, drop-path, input size, epochs)") &&
                           Catch::Contains("  deit3_huge     0.003 0.6 160 800    1e-05 0.55 224 "
                                           "20    0.001 0.5 128 90     0.0003 0.45 224 50\n"));
  // A row for every preset.
  for (const std::string& preset : deit::model::preset_names())
    CHECK_THAT(r.output, Catch::Contains("\n  " + preset + " "));
}

TEST_CASE("deit train --help says how to launch several processes and how long they wait",
          "[train][cli]") {
  const CliResult r = run_deit("train --help");
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("launch this command with mpirun -np N, torchrun "
                                       "--nproc-per-node N --no-python, or srun") &&
                           Catch::Contains("DEIT_COMM_TIMEOUT seconds (600)"));
}

TEST_CASE("deit3_tiny and deit3_medium keep the recipe values chosen for them at every stage",
          "[train]") {
  // T and M are not in the paper (RECIPE.md section 2 lists S, B, L and H): recipe.h documents
  // the values chosen for them, between their neighbours', and --help shows them. Each is pinned
  // here, as nothing else (a dry run of a reference command) would notice one changed.
  struct Row {
    const char* preset;
    const char* recipe;
    double lr, drop_path;
    int64_t input_size, epochs;
  };
  const Row rows[] = {
      // Pretrain: lr 4e-3 for T (as S), 3e-3 for M (as B/L/H); at 224, 800 epochs.
      {"deit3_tiny", "pretrain", 4e-3, 0.0, 224, 800},
      {"deit3_medium", "pretrain", 3e-3, 0.1, 224, 800},
      // Fine-tuning of the models pretrained at 224: at 384, as S (--help: "T, S and M at 384").
      {"deit3_tiny", "finetune", 1e-5, 0.0, 384, 20},
      {"deit3_medium", "finetune", 1e-5, 0.1, 384, 20},
      {"deit3_tiny", "in21k-pretrain", 1e-3, 0.0, 224, 240},
      {"deit3_medium", "in21k-pretrain", 1e-3, 0.05, 224, 240},
      {"deit3_tiny", "in21k-finetune", 3e-4, 0.0, 224, 50},
      {"deit3_medium", "in21k-finetune", 3e-4, 0.1, 224, 50},
  };
  for (const Row& row : rows) {
    INFO(row.preset << " " << row.recipe);
    const deit::train::TrainOptions o = deit::train::recipe_for(row.preset, row.recipe);
    CHECK(o.recipe == row.recipe);
    CHECK(o.model.name == row.preset);
    CHECK(o.lr == row.lr);
    CHECK(o.drop_path == row.drop_path);
    CHECK(o.model.input_size == row.input_size);
    CHECK(o.epochs == row.epochs);
    // Between the neighbours: no more drop-path than the next larger model's, no less than the
    // smaller one's.
    const std::string larger =
        row.preset == std::string("deit3_tiny") ? "deit3_small" : "deit3_base";
    const std::string smaller = row.preset == std::string("deit3_tiny") ? "" : "deit3_small";
    CHECK(o.drop_path <= deit::train::recipe_for(larger, row.recipe).drop_path);
    if (!smaller.empty())
      CHECK(o.drop_path >= deit::train::recipe_for(smaller, row.recipe).drop_path);
  }
}

TEST_CASE("a model of no preset starts from deit3_small's recipe, the trainer's defaults",
          "[train]") {
  // recipe.h: a model of custom sizes takes deit3_small's values, which are the defaults of
  // TrainOptions (RECIPE.md section 2: lr 4e-3, drop-path 0.05 at 224 for S). A resumed run of
  // such a model whose checkpoint predates a setting is filled in from them.
  deit::model::ViTConfig custom = deit::model::preset("deit3_base");
  custom.name = "vit_custom";  // a preset's name, or one it starts, is that preset's
  REQUIRE(deit::model::preset_of(custom).empty());
  for (const deit::train::RecipeStage& stage : deit::train::recipe_stages()) {
    INFO(stage.name);
    const deit::train::TrainOptions of = deit::train::recipe_of(custom, stage.name),
                                    small = deit::train::recipe_for("deit3_small", stage.name);
    CHECK(of.lr == small.lr);
    CHECK(of.drop_path == small.drop_path);
    CHECK(of.epochs == small.epochs);
    CHECK(of.model.input_size == small.model.input_size);
  }
  const deit::train::TrainOptions defaults;
  const deit::train::TrainOptions pretrain = deit::train::recipe_of(custom);
  CHECK(pretrain.lr == defaults.lr);
  CHECK(pretrain.drop_path == defaults.drop_path);
  CHECK(pretrain.model.input_size == 224);
}

TEST_CASE("a resumed run's course differences name every setting that steers training",
          "[train][resume]") {
  // Each of these changes what the resumed run trains (its optimizer, schedule, augmentation,
  // loss or data order): a resumption with another value must be named, not pass in silence.
  using deit::train::TrainOptions;
  const TrainOptions run = deit::train::recipe_for("deit3_small", "finetune");
  const nlohmann::json saved = run.to_json();
  CHECK(run.course_differences(saved).empty());
  const std::vector<std::pair<std::string, std::function<void(TrainOptions&)>>> changes = {
      {"recipe", [](TrainOptions& o) { o.recipe = "in21k-finetune"; }},
      {"input_size", [](TrainOptions& o) { o.model.input_size = 224; }},
      {"epochs", [](TrainOptions& o) { o.epochs = 30; }},
      {"batch_size", [](TrainOptions& o) { o.batch_size = 32; }},
      {"accum_steps", [](TrainOptions& o) { o.accum_steps = 2; }},
      {"opt", [](TrainOptions& o) { o.opt = "lamb"; }},
      {"lr", [](TrainOptions& o) { o.lr = 2e-5; }},
      {"min_lr", [](TrainOptions& o) { o.min_lr = 0; }},
      {"warmup_lr", [](TrainOptions& o) { o.warmup_lr = 0; }},
      {"warmup_epochs", [](TrainOptions& o) { o.warmup_epochs = 1; }},
      {"weight_decay", [](TrainOptions& o) { o.weight_decay = 0.05; }},
      {"opt_eps", [](TrainOptions& o) { o.opt_eps = 1e-6; }},
      {"clip_grad", [](TrainOptions& o) { o.clip_grad = 1; }},
      {"drop_path", [](TrainOptions& o) { o.drop_path = 0.1; }},
      {"three_augment", [](TrainOptions& o) { o.three_augment = true; }},
      {"src", [](TrainOptions& o) { o.src = true; }},
      {"rrc_scale_min", [](TrainOptions& o) { o.rrc_scale_min = 0.3; }},
      {"color_jitter", [](TrainOptions& o) { o.color_jitter = 0.3; }},
      {"aa", [](TrainOptions& o) { o.aa = "none"; }},
      {"eval_crop_ratio", [](TrainOptions& o) { o.eval_crop_ratio = 0.875; }},
      {"repeated_aug", [](TrainOptions& o) { o.repeated_aug = true; }},
      {"mixup", [](TrainOptions& o) { o.mixup = 0; }},
      {"cutmix", [](TrainOptions& o) { o.cutmix = 0; }},
      {"mixup_switch_prob", [](TrainOptions& o) { o.mixup_switch_prob = 0; }},
      {"mixup_prob", [](TrainOptions& o) { o.mixup_prob = 0.5; }},
      {"smoothing", [](TrainOptions& o) { o.smoothing = 0; }},
      {"bce_loss", [](TrainOptions& o) { o.bce_loss = true; }},
      {"model_ema", [](TrainOptions& o) { o.model_ema = false; }},
      {"model_ema_decay", [](TrainOptions& o) { o.model_ema_decay = 0.999; }},
      {"seed", [](TrainOptions& o) { o.seed = 1; }},
  };
  for (const auto& [key, change] : changes) {
    INFO(key);
    TrainOptions now = run;
    change(now);
    const std::vector<TrainOptions::Difference> differences = now.course_differences(saved);
    REQUIRE(differences.size() == 1);
    CHECK(differences[0].key == key);
    CHECK(differences[0].saved == saved.at(key));
  }
  // Where the files are, the device and the loader's threads leave the course alone.
  TrainOptions moved = run;
  moved.data_dir = "/elsewhere/imagenet";
  moved.output_dir = "/elsewhere/run";
  moved.device = "cuda:1";
  moved.workers = 7;
  CHECK(moved.course_differences(saved).empty());
}
