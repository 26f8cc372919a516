// deit demo: the whole job on a small scale. Makes the synthetic dataset if it is absent, trains a
// small ViT on it with the DeiT III recipe (RandomResizedCrop, 3-Augment, colour jitter,
// mixup/cutmix, BCE, LAMB with a cosine schedule, drop-path, LayerScale), evaluates after every
// epoch and reports.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include "apps/commands.h"
#include "apps/train_flags.h"
#include "data/made_folder.h"
#include "data/synthetic.h"
#include "engine/communicator.h"
#include "engine/device.h"
#include "train/output_lock.h"
#include "train/shell_quoted.h"
#include "train/trainer.h"

namespace deit::apps {

namespace {

constexpr int64_t kDemoEpochs = 14;

struct DemoOptions {
  std::string out = "demo-out";
  std::string device = "cpu";
  int64_t epochs = 0;  // 0: the demo's own
  uint64_t seed = 0;
  bool quiet = false;
};

// A ViT small enough to train in minutes on two CPU cores, with every element of the recipe on.
// Where a small dataset and few optimizer steps need it, strengths differ from the paper's:
//  - LAMB at 1e-2 instead of 4e-3 and no warm-up: LAMB moves each weight matrix by about lr of
//    its norm per step, and so few steps favour a larger rate (14 epochs: 1e-2 ends at 94.8%,
//    5e-3 at 94.2% after trailing through the middle epochs), but not too large (2e-2 stalls near
//    70% until the cosine brings it down); with a warm-up, the reference's once-per-epoch
//    schedule would spend whole epochs at the warm-up start;
//  - 14 epochs (about 1100 steps): 12 end at 91.8%, 18 at 94.2%;
//  - RandomResizedCrop keeps at least half the image (not 8%): a 64-pixel image has little to
//    spare;
//  - 10% of the batches are mixed (mixup 0.8 / cutmix 1.0): mixing more of them with binarised
//    BCE targets slows a tiny ViT down (half of them: 91.0% after 14 epochs);
//  - no repeated augmentation: with 5000 images, three repeats would show a third of them per
//    epoch;
//  - the moving average of the weights decays at 0.995 a step (not 0.99996, whose average would
//    still be 96% the initial weights after 1100 steps): `deit eval --ema` scores it.
// Measured: see README.md and bench/results/ (*-cpu-demo.md).
train::TrainOptions demo_recipe(const DemoOptions& d, const std::string& data_dir) {
  train::TrainOptions o = train::recipe_for("deit3_small");
  o.model.name = "demo (deit3, patch 16, dim 96, depth 4, heads 3)";
  o.model.patch = 16;
  o.model.dim = 96;
  o.model.depth = 4;
  o.model.heads = 3;
  o.model.input_size = 64;
  o.data_dir = data_dir;
  o.output_dir = (std::filesystem::path(d.out) / "run").string();
  o.device = d.device;
  o.epochs = d.epochs > 0 ? d.epochs : kDemoEpochs;
  o.warmup_epochs = 0;
  o.batch_size = 64;
  o.lr = 1e-2;
  o.rrc_scale_min = 0.5;
  o.mixup_prob = 0.1;
  o.repeated_aug = false;
  o.drop_path = 0.05;
  o.model_ema_decay = 0.995;
  o.seed = d.seed;
  o.progress = !d.quiet;
  return o;
}

// The first entry of `run_dir` that is none of what the next demo replaces, "" when there is none:
// what a demo run writes (its log, its checkpoint, its lock file and the temporary file of a save
// it did not finish, all a killed run may leave) and the curves scripts/plot_log.py draws beside
// them. Anything else (weights exported next to the checkpoint, notes) is someone's own.
std::string first_entry_not_of_a_demo_run(const std::filesystem::path& run_dir) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(run_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (name != "log.txt" && name != "checkpoint.safetensors" && name != ".lock" &&
        name != "curves.png" && name.rfind("checkpoint.safetensors.tmp.", 0) != 0)
      return entry.path().string();
  }
  return error ? run_dir.string() + " (" + error.message() + ")" : "";
}

// `program`: how deit was started (argv[0]), so the command printed at the end runs as shown.
void run_demo(const DemoOptions& d, const std::string& program) {
  namespace fs = std::filesystem;
  // Before anything is made or replaced: a device this machine lacks ends the demo at once.
  require_device(parse_device(d.device));
  // One demo at a time in --out: a second would remake the dataset or remove the run under it.
  const data::MadeFolder out_folder(d.out);
  const train::OutputLock one_demo(d.out, "--out");
  const std::string data_dir = (fs::path(d.out) / "data").string();
  const train::TrainOptions o = demo_recipe(d, data_dir);
  o.validate();  // before the previous run is removed
  // A demo starts over: the previous demo run's log and checkpoint would otherwise mix with this
  // one's (deit train appends to log.txt, as the reference code does). A folder that is no demo
  // run is refused before the dataset is made, which takes a while; the run is removed after, so
  // that a dataset the demo refuses to replace leaves it too.
  const fs::path run_dir = o.output_dir;
  std::optional<train::OutputLock> run_lock;
  bool previous_run = false;
  if (fs::exists(run_dir)) {
    // Under the run's own lock: a deit train still writing there (the demo run resumed by hand)
    // is refused, not removed.
    run_lock.emplace(run_dir, "--out");
    previous_run =
        fs::exists(run_dir / "log.txt") || fs::exists(run_dir / "checkpoint.safetensors");
    if (const std::string foreign = first_entry_not_of_a_demo_run(run_dir); !foreign.empty())
      throw std::runtime_error(
          previous_run ? o.output_dir + " holds what the demo did not make (" + foreign +
                             "): not removing it to replace the previous demo run; move that "
                             "out or give deit demo another --out"
                       : o.output_dir +
                             " exists and is not a demo run; give deit demo another "
                             "--out");
  }
  data::SyntheticOptions synthetic;
  synthetic.seed = d.seed;
  const std::string difference = data::synthetic_dataset_difference(data_dir, synthetic);
  if (!difference.empty()) {
    // Only a synthetic dataset (of another seed, or damaged) is replaced, and only while it holds
    // nothing else: never a folder of someone else's, nor a file someone put in the demo's.
    if (fs::exists(fs::path(data_dir) / "synthetic.json")) {
      const std::string foreign = data::first_file_not_synthetic(data_dir);
      if (!foreign.empty())
        throw std::runtime_error(data_dir + " is not the demo's dataset (" + difference +
                                 ") and holds what the demo did not make (" + foreign +
                                 "): not removing it to make the dataset again; move that out "
                                 "or give deit demo another --out");
      std::fprintf(stderr, "%s is not the demo's dataset (%s): making it again\n", data_dir.c_str(),
                   difference.c_str());
      fs::remove_all(data_dir);
    } else if (fs::exists(data_dir)) {
      throw std::runtime_error(data_dir + " exists and is not a deit synthetic dataset; give "
                               "deit demo another --out");
    }
    std::fprintf(stderr, "making the synthetic dataset in %s ...\n", data_dir.c_str());
    data::generate_synthetic_dataset(data_dir, synthetic);
  }
  if (run_lock) {
    if (previous_run)
      std::fprintf(stderr, "replacing the previous demo run in %s\n", o.output_dir.c_str());
    fs::remove_all(run_dir);
    run_lock.reset();
  }
  // As one process, whatever launch variables it inherited: main refuses a launch of several, and
  // a stray one (RANK alone) describes no launch of the demo's.
  const std::unique_ptr<Communicator> alone = make_communicator(parse_device(o.device), {});
  report_training(train::train(o, *alone), program);
  std::printf("next: %s eval --checkpoint %s --data %s --per-class\n",
              shell_quoted(program).c_str(),
              shell_quoted((fs::path(d.out) / "run" / "checkpoint.safetensors").string()).c_str(),
              shell_quoted(data_dir).c_str());
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto opts = std::make_shared<DemoOptions>();
  CLI::App* cmd = app.add_subcommand(
      "demo", "Make a synthetic dataset (if absent), train a small ViT on it with the DeiT III "
              "recipe, evaluate and report");
  cmd->add_option("--out", opts->out,
                  "Where the dataset (DIR/data, kept for the next demo) and the run (DIR/run, "
                  "replaced by the next demo while it holds nothing of yours) go")
      ->capture_default_str();
  cmd->add_option("--device", opts->device, "cpu or cuda[:N]")->capture_default_str();
  cmd->add_option("--epochs", opts->epochs,
                  "Epochs (default: the demo's " + std::to_string(kDemoEpochs) + ")")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--seed", opts->seed, "Seed of the dataset and the run")->capture_default_str();
  cmd->add_flag("--quiet", opts->quiet, "No progress output");
  // CLI11 names the top-level app after argv[0] as it parses.
  cmd->callback([opts, cmd] { run_demo(*opts, cmd->get_parent()->get_name()); });
}

}  // namespace deit::apps
