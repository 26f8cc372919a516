// deit demo: the whole job on a small scale. Makes the synthetic dataset if it is absent, trains a
// small ViT on it with the full DeiT III recipe (RandomResizedCrop, 3-Augment, colour jitter,
// repeated augmentation, mixup/cutmix, BCE, LAMB with warm-up and cosine, drop-path, LayerScale),
// evaluates after every epoch and reports.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "apps/commands.h"
#include "apps/train_flags.h"
#include "data/synthetic.h"
#include "train/trainer.h"

namespace deit::apps {

namespace {

struct DemoOptions {
  std::string out = "demo-out";
  std::string device = "cpu";
  int64_t epochs = 0;  // 0: the demo's own
  uint64_t seed = 0;
  bool quiet = false;
};

// A ViT small enough to train in minutes on two CPU cores, with the recipe's shape otherwise.
train::TrainOptions demo_recipe(const DemoOptions& d, const std::string& data_dir) {
  train::TrainOptions o = train::recipe_for("deit3_small");
  o.model.name = "demo (deit3, patch 8, dim 96, depth 4, heads 3)";
  o.model.patch = 8;
  o.model.dim = 96;
  o.model.depth = 4;
  o.model.heads = 3;
  o.model.input_size = 32;
  o.data_dir = data_dir;
  o.output_dir = (std::filesystem::path(d.out) / "run").string();
  o.device = d.device;
  o.epochs = d.epochs > 0 ? d.epochs : 20;
  o.warmup_epochs = 2;
  o.batch_size = 64;
  o.lr = 4e-3;
  o.drop_path = 0.05;
  o.seed = d.seed;
  o.progress = !d.quiet;
  return o;
}

void run_demo(const DemoOptions& d) {
  namespace fs = std::filesystem;
  const std::string data_dir = (fs::path(d.out) / "data").string();
  if (!fs::exists(fs::path(data_dir) / "synthetic.json")) {
    std::fprintf(stderr, "making the synthetic dataset in %s ...\n", data_dir.c_str());
    data::SyntheticOptions synthetic;
    synthetic.seed = d.seed;
    data::generate_synthetic_dataset(data_dir, synthetic);
  }
  const train::TrainOptions o = demo_recipe(d, data_dir);
  std::fprintf(stderr, "training %s on %s, %lld epochs\n", o.model.name.c_str(), data_dir.c_str(),
               (long long)o.epochs);
  print_train_summary(train::train(o));
  std::printf("next: build/deit eval --model deit3_small --patch 8 --dim 96 --depth 4 --heads 3 "
              "--num-classes 10 --input-size 32 --checkpoint %s/run/checkpoint.safetensors "
              "--data %s\n",
              d.out.c_str(), data_dir.c_str());
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto opts = std::make_shared<DemoOptions>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Make a synthetic dataset (if absent), train a small ViT on it with the DeiT III "
              "recipe, evaluate and report");
  cmd->add_option("--out", opts->out, "Where the dataset and the run go")->capture_default_str();
  cmd->add_option("--device", opts->device, "cpu or cuda[:N]")->capture_default_str();
  cmd->add_option("--epochs", opts->epochs, "Epochs (default: the demo's 20)");
  cmd->add_option("--seed", opts->seed, "Seed of the dataset and the run")->capture_default_str();
  cmd->add_flag("--quiet", opts->quiet, "No progress output");
  cmd->callback([opts] { run_demo(*opts); });
}

}  // namespace deit::apps
