// deit train end to end on a tiny synthetic dataset: what a run writes, that a run killed
// mid-epoch and resumed ends with exactly the weights of an uninterrupted run, and that bad input
// stops a run with a clear message without harming a good checkpoint.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/synthetic.h"
#include "engine/rng.h"
#include "model/checkpoint.h"
#include "tests/captured_stderr.h"
#include "tests/child_process.h"
#include "tests/cli_runner.h"
#include "tests/test_data_helpers.h"
#include "tests/test_distributed_helpers.h"
#include "tests/test_io_helpers.h"
#include "tests/test_model_helpers.h"
#include "train/finetune.h"
#include "train/output_folder.h"
#include "train/output_lock.h"
#include "train/recipe.h"
#include "train/run_log.h"
#include "train/run_state.h"
#include "train/step_readback.h"
#include "train/stop_request.h"
#include "train/trainer.h"

using namespace deit;
using deit::test::CliResult;
using deit::test::run_deit;

namespace {

// 4 classes of 16 x 16 images, 24 per class: an epoch of 96 images is 6 batches of 16.
std::string make_tiny_dataset(const test::TempDir& dir) {
  data::SyntheticOptions options;
  options.image_size = 16;
  options.num_classes = 4;
  options.train_per_class = 24;
  options.val_per_class = 4;
  return test::write_synthetic_dataset(dir, options);
}

std::string tiny_train_args(const std::string& data, const std::string& out, int epochs) {
  return "train --model deit3_tiny --patch 4 --dim 16 --depth 2 --heads 2 --input-size 8 "
         "--batch-size 16 --epochs " + std::to_string(epochs) + " --warmup-epochs 1 --workers 2 "
         "--no-repeated-aug --data " + data + " --output " + out;
}

std::vector<uint8_t> parameter_bytes(const std::string& checkpoint) {
  std::vector<uint8_t> bytes;
  for (const auto& [name, t] : model::read_checkpoint(checkpoint, false).model) {
    const auto* p = static_cast<const uint8_t*>(t.raw_data());
    bytes.insert(bytes.end(), p, p + t.nbytes());
  }
  return bytes;
}

// The file at `path`, as text.
std::string text_of(const std::string& path) {
  const std::vector<uint8_t> bytes = test::read_bytes(path);
  return std::string(bytes.begin(), bytes.end());
}

// A copy of the dataset at `data` whose class `from` (a folder in each split) is called `to`:
// the same images, but the folders sort into another label order when `to` sorts elsewhere.
std::string with_renamed_class(const test::TempDir& dir, const std::string& data,
                               const std::string& from, const std::string& to) {
  const std::string copy = dir.file("renamed_" + to);
  std::filesystem::copy(data, copy, std::filesystem::copy_options::recursive);
  for (const char* split : {"train", "val"})
    std::filesystem::rename(copy + "/" + split + "/" + from, copy + "/" + split + "/" + to);
  return copy;
}

}  // namespace

TEST_CASE("deit train writes the reference log keys, a checkpoint and a summary", "[train]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  const CliResult r = run_deit(tiny_train_args(data, out, 2));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("top-1") && Catch::Contains("checkpoint.safetensors"));
  // What the run is about to do, with the global batch the recipe's learning rate assumes.
  CHECK_THAT(
      r.output,
      Catch::Contains("training deit3_tiny (custom) at 8 px with the pretrain recipe on " + data +
                      " (96 images, 4 "
                      "classes), 2 epochs of 6 optimizer steps, on cpu\n"
                      "global batch 16 = 16 per process x 1 process; the "
                      "deit3_tiny pretrain recipe's is 2048, which its lr "
                      "assumes"));
  // Each epoch's line says how long the rest will take, at its pace.
  CHECK_THAT(r.output,
             Catch::Contains("s; 1 more epoch, about ") && !Catch::Contains("0 more epochs"));
  std::ifstream log(out + "/log.txt");
  std::string line;
  int lines = 0;
  while (std::getline(log, line)) {
    const auto j = nlohmann::json::parse(line);
    for (const char* key : {"epoch", "train_loss", "train_lr", "test_loss", "test_acc1",
                            "test_acc5", "n_parameters", "train_images_per_s"})
      CHECK(j.contains(key));
    CHECK(j["epoch"] == lines);
    CHECK(std::isfinite(j["train_loss"].get<double>()));
    ++lines;
  }
  CHECK(lines == 2);
  const model::Checkpoint ck = model::read_checkpoint(out + "/checkpoint.safetensors");
  CHECK(ck.state["epoch"] == 1);
  CHECK(ck.config.num_classes == 4);  // taken from the dataset

  // The run's folder names its checkpoint, to deit info, eval and export alike.
  const CliResult info = run_deit("info --checkpoint " + out);
  INFO(info.output);
  REQUIRE(info.exit_code == 0);
  CHECK_THAT(info.output,
             Catch::Contains("trained          2 of 2 epochs; 12 optimizer steps, 1 process") &&
                 Catch::Contains("classes          4 (checkerboard, concentric_rings, ") &&
                 Catch::Contains("data             " + std::filesystem::absolute(data).string()) &&
                 Catch::Contains("differ from the deit3_tiny pretrain recipe in\n") &&
                 Catch::Contains("   batch_size 16 (recipe: 256)\n") &&
                 Catch::Contains("   epochs 2 (recipe: 800)\n") && Catch::Contains("finished "));
  CHECK_THAT(info.output, !Catch::Contains("patch 4 (recipe"));  // the model lines show it
  CHECK(run_deit("eval --checkpoint " + out + " --data " + data).exit_code == 0);
  CHECK(run_deit("export --checkpoint " + out + " --out " + dir.file("w.safetensors")).exit_code ==
        0);

  // The moving average of the weights the run kept (--model-ema, on by default) is evaluated and
  // exported on request: exactly the averages the checkpoint holds.
  // After a few steps at the recipe's decay it is still mostly the initial weights, and both say
  // so.
  const CliResult ema_eval = run_deit("eval --ema --checkpoint " + out + " --data " + data);
  CHECK(ema_eval.exit_code == 0);
  CHECK_THAT(ema_eval.output, Catch::Contains("warning: the moving average in '" + out +
                                              "/checkpoint.safetensors' has had 12 optimizer steps "
                                              "at decay 0.99996: 100% of it is still the weights"));
  const std::string averaged = dir.file("ema.safetensors");
  const CliResult ema_export = run_deit("export --ema --checkpoint " + out + " --out " + averaged);
  REQUIRE(ema_export.exit_code == 0);
  CHECK_THAT(ema_export.output, Catch::Contains("warning: the moving average in '" + out +
                                                "/checkpoint.safetensors' has had 12 optimizer "
                                                "steps at decay 0.99996: 100% of it is still the "
                                                "weights") &&
                                    Catch::Contains("(moving average)"));
  const model::Checkpoint with_ema = model::read_checkpoint(out + "/checkpoint.safetensors");
  const model::SafetensorsContents exported = model::read_safetensors(averaged);
  int compared = 0;
  for (const auto& [name, t] : with_ema.extra) {
    if (name != "ema.pos_embed" && name != "ema.head.weight") continue;
    for (const auto& [exported_name, e] : exported.tensors)
      if (exported_name == name.substr(4)) {
        CHECK(e.to_vector<float>() == t.to_vector<float>());
        ++compared;
      }
  }
  CHECK(compared == 2);

  // A fine-tune, resumed, is still one: its first lines and deit info say what it started from.
  const std::string tuned = dir.file("tuned");
  const CliResult tuning =
      run_deit(tiny_train_args(data, tuned, 1) + " --recipe finetune --finetune " + out);
  INFO(tuning.output);
  REQUIRE(tuning.exit_code == 0);
  // The note on a fine-tune with another recipe's values is not for the finetune recipe's.
  CHECK_THAT(tuning.output, Catch::Contains("with the finetune recipe on") &&
                                !Catch::Contains("note: fine-tuning with"));
  const CliResult resumed = run_deit("train --resume " + tuned + " --epochs 2");
  INFO(resumed.output);
  REQUIRE(resumed.exit_code == 0);
  CHECK_THAT(resumed.output, Catch::Contains("with the finetune recipe on") &&
                                 Catch::Contains("the deit3_tiny finetune recipe's is 512") &&
                                 !Catch::Contains("note: fine-tuning with"));
  // A dry run of resuming it: the settings it saved, the one given changed.
  // (The warning the resumed run would print comes first, on stderr.)
  const CliResult dry = run_deit("train --resume " + tuned + " --epochs 3 --dry-run");
  INFO(dry.output);
  REQUIRE(dry.exit_code == 0);
  CHECK_THAT(dry.output, Catch::StartsWith("warning: resuming '" + tuned +
                                           "/checkpoint.safetensors' with settings that differ "
                                           "from its run's: epochs 2 -> 3."));
  const nlohmann::json settings = nlohmann::json::parse(dry.output.substr(dry.output.find('{')));
  CHECK(settings["recipe"] == "finetune");
  CHECK(settings["epochs"] == 3);
  CHECK(settings["batch_size"] == 16);
  CHECK(settings["num_classes"] == 4);
  CHECK_THAT(run_deit("info --checkpoint " + tuned).output,
             Catch::Contains("started from     " + std::filesystem::absolute(out).string() +
                             "/checkpoint.safetensors (--finetune)") &&
                 Catch::Contains("differ from the deit3_tiny finetune recipe in\n") &&
                 Catch::Contains("   epochs 2 (recipe: 20)\n"));
}

TEST_CASE("deit train --recompute-gelu or --grad-checkpointing trains bit for bit as without",
          "[train]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  REQUIRE(run_deit(tiny_train_args(data, dir.file("kept"), 1)).exit_code == 0);
  const std::vector<uint8_t> kept = parameter_bytes(dir.file("kept") + "/checkpoint.safetensors");
  for (const std::string flag : {"--recompute-gelu", "--grad-checkpointing"}) {
    INFO(flag);
    const std::string out = dir.file(flag.substr(2));
    const CliResult r = run_deit(tiny_train_args(data, out, 1) + " " + flag);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK(parameter_bytes(out + "/checkpoint.safetensors") == kept);
  }
}

TEST_CASE("deit eval reports what training logged, from a checkpoint or exported weights",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1)).exit_code == 0);
  std::ifstream log(out + "/log.txt");
  std::string line;
  std::getline(log, line);
  const auto logged = nlohmann::json::parse(line);

  const std::string model = "--model deit3_tiny --patch 4 --dim 16 --depth 2 --heads 2 ";
  CliResult r = run_deit("eval " + model + "--checkpoint " + out +
                         "/checkpoint.safetensors --data " + data + " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  auto j = nlohmann::json::parse(r.output);
  CHECK(j["acc1"].get<double>() == Approx(logged["test_acc1"].get<double>()));
  CHECK(j["loss"].get<double>() == Approx(logged["test_loss"].get<double>()));
  CHECK(j["images"] == 16);
  CHECK(j["skipped"] == 0);
  r = run_deit("eval " + model + "--checkpoint " + out + "/checkpoint.safetensors --data " + data +
               " --batch-size 0");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--batch-size: Value 0 not in range 1"));

  // A run's --eval-crop-ratio is the evaluation's, unless --eval-crop-ratio says otherwise.
  const std::string cropped = dir.file("cropped");
  REQUIRE(run_deit(tiny_train_args(data, cropped, 1) + " --eval-crop-ratio 0.5").exit_code == 0);
  const double cropped_loss = test::log_lines(cropped + "/log.txt").at(0)["test_loss"];
  r = run_deit("eval --checkpoint " + cropped + " --data " + data + " --json");
  REQUIRE(r.exit_code == 0);
  // The same images, batches and weights as the run's evaluation: the same sum (this near-chance
  // model's loss moves in the 7th digit with the crop).
  CHECK(nlohmann::json::parse(r.output)["loss"].get<double>() == cropped_loss);
  r = run_deit("eval --checkpoint " + cropped + " --data " + data + " --json --eval-crop-ratio 1");
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.output)["loss"].get<double>() != cropped_loss);
  r = run_deit("eval --checkpoint " + cropped + " --data " + data + " --eval-crop-ratio 1.5");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--eval-crop-ratio must be in (0, 1]"));

  // An unusable image is left out, not scored as the image that stands in for it.
  const std::string damaged = dir.file("damaged");
  std::filesystem::copy(data, damaged, std::filesystem::copy_options::recursive);
  test::write_bytes(damaged + "/val/" + data::synthetic_class_names()[1] + "/empty.png", {});
  // (Without --model: the checkpoint describes its model.)
  r = run_deit("eval --checkpoint " + out + "/checkpoint.safetensors --data " + damaged +
               " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: skipped") && Catch::Contains("empty.png"));
  j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  CHECK(j["images"] == 16);
  CHECK(j["skipped"] == 1);
  CHECK(j["acc1"].get<double>() == Approx(logged["test_acc1"].get<double>()));
  CHECK(j["loss"].get<double>() == Approx(logged["test_loss"].get<double>()));

  // Per class: the dataset's classes in label order, their images, and hits that add up to top-1.
  r = run_deit("eval --checkpoint " + out + "/checkpoint.safetensors --data " + data +
               " --json --per-class");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  j = nlohmann::json::parse(r.output);
  REQUIRE(j["per_class"].size() == 4);
  double hits = 0;
  for (size_t k = 0; k < 4; ++k) {
    const auto& row = j["per_class"][k];
    CHECK(row["class"] == data::synthetic_class_names()[k]);
    CHECK(row["images"] == 4);
    hits += row["acc1"].get<double>() / 100 * row["images"].get<double>();
    if (row["acc1"].get<double>() < 100) {
      CHECK(row["most_confused_images"].get<int>() > 0);
      CHECK(row["most_confused_with"] != row["class"]);
    } else {
      CHECK(row["most_confused_with"].is_null());
    }
  }
  CHECK(100 * hits / 16 == Approx(j["acc1"].get<double>()));

  const std::string weights = dir.file("weights.safetensors");
  REQUIRE(run_deit("export --checkpoint " + out + "/checkpoint.safetensors --out " + weights)
              .exit_code == 0);
  r = run_deit("eval " + model + "--input-size 8 --weights " + weights + " --data " + data +
               " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  j = nlohmann::json::parse(r.output);
  CHECK(j["acc1"].get<double>() == Approx(logged["test_acc1"].get<double>()));
  // Without --input-size: the resolution its position embedding was trained at (8 px, 2x2).
  r = run_deit("eval " + model + "--weights " + weights + " --data " + data + " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, !Catch::Contains("resized"));
  CHECK(nlohmann::json::parse(r.output)["acc1"].get<double>() ==
        Approx(logged["test_acc1"].get<double>()));
  // Without --model: the export names its model, as the checkpoint does.
  r = run_deit("eval --weights " + weights + " --data " + data + " --json");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(nlohmann::json::parse(r.output)["acc1"].get<double>() ==
        Approx(logged["test_acc1"].get<double>()));
  // At another resolution than trained at (8 px, 2x2 patches), from either file: the position
  // embedding resized, and a note says so.
  for (const std::string& source : {"--checkpoint " + out,
                                    "--model deit3_tiny --patch 4 --dim 16 --depth 2 --heads 2 "
                                    "--weights " +
                                        weights}) {
    INFO(source);
    r = run_deit("eval " + source + " --input-size 12 --data " + data + " --json");
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.output, Catch::Contains("note: evaluating at 12 px weights trained at another "
                                         "resolution: their position embedding is resized to a "
                                         "3x3 patch grid"));
    CHECK(nlohmann::json::parse(r.output.substr(r.output.find('{')))["images"] == 16);
  }

  // Both files name the classes the model learned; a dataset whose label 0 is another class is
  // refused, as is one with fewer classes.
  const std::vector<std::string> classes(data::synthetic_class_names().begin(),
                                         data::synthetic_class_names().begin() + 4);
  CHECK(model::read_checkpoint(out + "/checkpoint.safetensors", false).class_names == classes);
  CHECK(model::read_class_names(weights) == classes);
  const std::string renamed = with_renamed_class(dir, data, classes[0], "zigzag");
  for (const std::string& source :
       {"--checkpoint " + out + "/checkpoint.safetensors", "--input-size 8 --weights " + weights}) {
    INFO(source);
    r = run_deit("eval " + model + source + " --data " + renamed);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("was trained on other classes than split 'val'") &&
                             Catch::Contains("class 0 is 'checkerboard' in the weights, "
                                             "'concentric_rings' in the split"));
  }
  std::filesystem::remove_all(renamed + "/train/zigzag");
  std::filesystem::remove_all(renamed + "/val/zigzag");
  r = run_deit("eval " + model + "--checkpoint " + out + "/checkpoint.safetensors --data " +
               renamed);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("4 classes in the weights, 3 in the split; only in the "
                                       "weights: 'checkerboard'"));
}

TEST_CASE("a run killed mid-epoch and resumed ends with the uninterrupted run's weights",
          "[train][resume]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  const std::string straight = dir.file("straight"), resumed = dir.file("resumed");
  // Settings off the recipe's, which the resumed run must take from the checkpoint.
  const std::string settings = " --seed 7 --lr 0.002 --no-model-ema --mixup-prob 0.5";
  REQUIRE(run_deit(tiny_train_args(data, straight, 3) + settings).exit_code == 0);

  // Killed after the epoch-1 checkpoint, halfway through epoch 2 (progress lines come every tenth
  // of an epoch when stderr is not a terminal).
  const auto killed = test::run_and_signal_at(tiny_train_args(data, resumed, 3) + settings,
                                              "epoch 2/3  3/6", SIGKILL);
  REQUIRE(killed);
  REQUIRE(WIFSIGNALED(killed->status));
  // Normally the checkpoint of epoch index 0; on a very loaded machine the run may have saved the
  // one of the epoch it was in (index 1) before the signal landed. Either way it did not finish,
  // and resuming must finish it exactly.
  CHECK(model::read_checkpoint(resumed + "/checkpoint.safetensors", false).state["epoch"] <= 1);
  // --resume alone: the model, data, output folder and every setting come from the checkpoint.
  const CliResult r = run_deit("train --resume " + resumed + "/checkpoint.safetensors");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, !Catch::Contains("warning: resuming"));  // the same settings
  CHECK(parameter_bytes(resumed + "/checkpoint.safetensors") ==
        parameter_bytes(straight + "/checkpoint.safetensors"));

  // With --save-every (here: after every step), the killed run loses no more than a step: its
  // checkpoint is of a step within epoch 2, and the run goes on from there.
  const std::string saving = dir.file("saving");
  const auto killed_saving =
      test::run_and_signal_at(tiny_train_args(data, saving, 3) + settings + " --save-every 1e-6",
                              "epoch 2/3  3/6", SIGKILL);
  REQUIRE(killed_saving);
  REQUIRE(WIFSIGNALED(killed_saving->status));
  const nlohmann::json saved =
      model::read_checkpoint_header(saving + "/checkpoint.safetensors").state;
  INFO(saved.dump());
  REQUIRE(saved.contains("within_epoch"));
  CHECK(saved["within_epoch"]["epoch"] == 1);
  // Step 2's save came before the line of step 3 was printed.
  CHECK(saved["within_epoch"]["batches"].get<double>() >= 2);
  const CliResult s = run_deit("train --resume " + saving + "/checkpoint.safetensors");
  INFO(s.output);
  REQUIRE(s.exit_code == 0);
  CHECK(parameter_bytes(saving + "/checkpoint.safetensors") ==
        parameter_bytes(straight + "/checkpoint.safetensors"));
}

TEST_CASE("a run stopped by SIGTERM saves the step it is at and resumes from there exactly",
          "[train][resume]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  const std::string straight = dir.file("straight"), stopped = dir.file("stopped");
  // 24 batches an epoch, so that the signal lands well inside one, in optimizer steps of two.
  const std::string small_steps = " --batch-size 4 --accum-steps 2";
  REQUIRE(run_deit(tiny_train_args(data, straight, 3) + small_steps).exit_code == 0);

  // Early in epoch 2: the run stops after the optimizer step it is in, a few batches later.
  const auto signalled = test::run_and_signal_at(tiny_train_args(data, stopped, 3) + small_steps,
                                                 "epoch 2/3  3/24", SIGTERM);
  REQUIRE(signalled);
  INFO(signalled->output);
  // It ends as SIGTERM would have ended it (so a script running it stops too), after saying
  // where it saved and how to go on.
  REQUIRE(WIFSIGNALED(signalled->status));
  CHECK(WTERMSIG(signalled->status) == SIGTERM);
  CHECK_THAT(signalled->output, Catch::Contains("deit: stopping once this optimizer step") &&
                                    Catch::Contains("stopped by SIGTERM in epoch 2, after ") &&
                                    Catch::Contains(" of its 24 batches") &&
                                    Catch::Contains("continue:  " + std::string(DEIT_BINARY) +
                                                    " train --resume " + stopped));
  // Where a step ends: after an even number of batches.
  const nlohmann::json at =
      model::read_checkpoint_header(stopped + "/checkpoint.safetensors").state.at("within_epoch");
  CHECK(at.at("epoch") == 1);
  const auto batches_done = static_cast<int64_t>(at.at("batches").get<double>());
  CHECK(batches_done % 2 == 0);
  // Steps of 26 x 2 images cannot begin where steps of 4 x 2 stopped (a multiple of 8 below 96).
  const CliResult refused =
      run_deit("train --resume " + stopped + " --batch-size 26 --accum-steps 2");
  CHECK(refused.exit_code != 0);
  CHECK_THAT(refused.output, Catch::Contains("where no optimizer step of --batch-size 26 x "
                                             "--accum-steps 2 begins: resume it with its own, "
                                             "4 x 2"));
  CHECK_THAT(refused.output, !Catch::Contains("warning: resuming"));
  // Nor can steps of the same batch accumulated over more of them, though each batch can.
  const std::string longer_steps = std::to_string(batches_done + 1);
  const CliResult refused_longer =
      run_deit("train --resume " + stopped + " --batch-size 4 --accum-steps " + longer_steps);
  CHECK(refused_longer.exit_code != 0);
  CHECK_THAT(refused_longer.output,
             Catch::Contains("where no optimizer step of --batch-size 4 x --accum-steps " +
                             longer_steps + " begins"));
  // deit info says where it stands and how to go on.
  const CliResult info = run_deit("info --json --checkpoint " + stopped);
  REQUIRE(info.exit_code == 0);
  const nlohmann::json run = nlohmann::json::parse(info.output).at("checkpoint");
  INFO(run.dump());
  CHECK(run["epochs_done"] == 1);
  CHECK(run["epochs"] == 3);
  CHECK(run["within_epoch"]["epoch"] == 1);
  CHECK(run["within_epoch"]["batches_per_process"] == batches_done);
  CHECK(run["within_epoch"]["epoch_batches_per_process"] == 24);
  CHECK(run["within_epoch"]["images"] == 4 * batches_done);
  CHECK(run["within_epoch"]["images"].is_number_integer());
  CHECK(run["optimizer_steps"] == 12 + batches_done / 2);
  CHECK(run["off_recipe"]["accum_steps"] == nlohmann::json({{"saved", 2}, {"recipe", 1}}));
  CHECK(run["options"]["batch_size"] == 4);
  CHECK_THAT(run_deit("info --checkpoint " + stopped).output,
             Catch::Contains("trained          1 of 3 epochs, then " +
                             std::to_string(batches_done) + " of the 24 batches of epoch 2 (" +
                             std::to_string(4 * batches_done) + " images)") &&
                 Catch::Contains("continue         " + std::string(DEIT_BINARY) +
                                 " train --resume " + stopped + "/checkpoint.safetensors"));
  const CliResult r = run_deit("train --resume " + stopped + "/checkpoint.safetensors");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("resuming " + stopped +
                                       "/checkpoint.safetensors in epoch 2 "
                                       "after " +
                                       std::to_string(batches_done) +
                                       " of its batches\n"
                                       "global batch 8 = 4 per process x 2 accumulated x 1 "
                                       "process;"));
  CHECK_THAT(r.output, Catch::Contains("trained 2 epochs (the first resumed at its batch " +
                                       std::to_string(batches_done + 1) + " of 24) in "));
  CHECK(parameter_bytes(stopped + "/checkpoint.safetensors") ==
        parameter_bytes(straight + "/checkpoint.safetensors"));
  // The log has each epoch once, with the whole epoch's loss, summed in the same order.
  const std::vector<nlohmann::json> a = test::log_lines(straight + "/log.txt");
  const std::vector<nlohmann::json> b = test::log_lines(stopped + "/log.txt");
  REQUIRE(b.size() == 3);
  for (size_t e = 0; e < 3; ++e) {
    CHECK(b[e]["epoch"] == e);
    CHECK(b[e]["train_loss"] == a[e]["train_loss"]);
    CHECK(b[e]["test_acc1"] == a[e]["test_acc1"]);
  }
}

TEST_CASE("a run stopped by a signal that also ended the reader of its output saves all the same",
          "[train][resume]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  const std::string piped = dir.file("piped");
  // Ctrl-C on `deit train ... | tee run.txt` ends tee too: deit's writes to the pipe (the stop's
  // announcement, progress lines, the summary) then fail, and must not end the run (SIGPIPE)
  // before it has saved the step it stopped at.
  const auto signalled =
      test::run_and_signal_at(tiny_train_args(data, piped, 3) + " --batch-size 4 --accum-steps 2",
                              "epoch 2/3  3/24", SIGTERM, /*reader_gone=*/true);
  REQUIRE(signalled);
  REQUIRE(WIFSIGNALED(signalled->status));
  CHECK(WTERMSIG(signalled->status) == SIGTERM);
  const nlohmann::json state =
      model::read_checkpoint_header(piped + "/checkpoint.safetensors").state;
  INFO(state.dump());
  REQUIRE(state.contains("within_epoch"));
  CHECK(state["within_epoch"]["epoch"] == 1);
  const CliResult r = run_deit("train --resume " + piped);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK(test::log_lines(piped + "/log.txt").size() == 3);
}

TEST_CASE("a stop asked for during an evaluation stops at that epoch's checkpoint, or finishes",
          "[train][resume]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  // An epoch is one step: a stop asked for in it is seen after its evaluation.
  train::TrainOptions o = test::tiny_run(data, dir.file("two"), 96);
  o.epochs = 2;
  train::request_stop(SIGUSR1);
  const train::TrainSummary at_first = train::train(o);
  CHECK(at_first.stop.signal == SIGUSR1);
  CHECK(at_first.stop.epoch == 1);
  CHECK_FALSE(at_first.stop.finished);
  CHECK(at_first.epochs_run == 1);
  CHECK(model::read_checkpoint_header(o.output_dir + "/checkpoint.safetensors").state["epoch"] ==
        0);

  o.output_dir = dir.file("one");
  o.epochs = 1;
  train::request_stop(SIGUSR1);
  const train::TrainSummary at_last = train::train(o);
  CHECK(at_last.stop.signal == SIGUSR1);
  CHECK(at_last.stop.finished);
  CHECK(at_last.epochs_run == 1);
}

TEST_CASE("the first stop signal says what the run will do, for one process or several",
          "[train][resume]") {
  // What a signal makes rank 0 print, on the stderr of a child that installs the handlers.
  auto announcement = [](train::StopSignals::Announce announce) {
    return test::run_in_child([announce] {
             int fds[2];
             if (pipe(fds) != 0 || dup2(fds[1], STDERR_FILENO) < 0) return std::string("no pipe");
             const train::StopSignals signals(announce);
             raise(SIGUSR1);
             close(fds[1]);
             close(STDERR_FILENO);
             std::string printed(4096, '\0');
             const ssize_t n = read(fds[0], printed.data(), printed.size());
             printed.resize(n > 0 ? static_cast<size_t>(n) : 0);
             return printed;
           })
        .message;
  };
  const std::string one = announcement(train::StopSignals::Announce::kOneProcess);
  const std::string several = announcement(train::StopSignals::Announce::kSeveralProcesses);
  CHECK_THAT(one, Catch::StartsWith("\ndeit: stopping once this optimizer step (or evaluation) "
                                    "is done, to save a checkpoint there (send the signal again"));
  // A process that died stops the others' collectives: the checkpoint is not promised.
  CHECK_THAT(several, Catch::Contains("to save a checkpoint there with every process of the run "
                                      "(if one has died, the run ends without it; send the "
                                      "signal again"));
  CHECK(announcement(train::StopSignals::Announce::kNothing).empty());
}

TEST_CASE("SIGHUP (the terminal closed) stops a run as the other stop signals do",
          "[train][resume]") {
  // A run started from a terminal whose ssh session drops gets SIGHUP: recorded, so that the run
  // saves where it stops, rather than ending it at once with the work of its epoch. Often twice
  // (`deit train ... | tee` over ssh lost its step 1 time in 6): bash passes its hangup on to its
  // jobs, and the kernel sends the terminal's foreground job another as bash exits. The second is
  // no one asking to stop at once.
  const test::ChildResult child = test::run_in_child([] {
    std::signal(SIGHUP, SIG_DFL);  // as in a terminal's session, whatever the test runner has
    const train::StopSignals signals(train::StopSignals::Announce::kNothing);
    raise(SIGHUP);
    raise(SIGHUP);
    SingleProcessCommunicator comm(Device::cpu(), 0);
    return train::signal_name(train::after_step(comm, false).signal);
  });
  CHECK(WIFEXITED(child.status));
  CHECK(child.message == "SIGHUP");
  // Another stop signal sent again still stops at once, as the first one's announcement says.
  const test::ChildResult twice = test::run_in_child([] {
    std::signal(SIGTERM, SIG_DFL);
    const train::StopSignals signals(train::StopSignals::Announce::kNothing);
    raise(SIGTERM);
    raise(SIGTERM);
    return std::string("not stopped");
  });
  CHECK(WIFSIGNALED(twice.status));
  CHECK(WTERMSIG(twice.status) == SIGTERM);
}

TEST_CASE("stop handlers leave an ignored signal ignored and put back what was there before",
          "[train][resume]") {
  const test::ChildResult child = test::run_in_child([] {
    SingleProcessCommunicator comm(Device::cpu(), 0);
    std::signal(SIGPIPE, SIG_DFL);  // as a process starts, whatever the test runner has
    // A shell starts a background job with SIGINT ignored: a Ctrl-C meant for the script must
    // not stop the run.
    std::signal(SIGINT, SIG_IGN);
    static volatile sig_atomic_t own_handler_ran = 0;
    std::signal(SIGUSR1, [](int) { own_handler_ran = 1; });
    std::string seen;
    {
      const train::StopSignals signals(train::StopSignals::Announce::kNothing);
      raise(SIGINT);
      seen += "ignored SIGINT: " + std::to_string(train::after_step(comm, false).signal) + "\n";
      raise(SIGUSR1);
      seen += "SIGUSR1: " + train::signal_name(train::after_step(comm, false).signal) + "\n";
    }
    // Out of scope: no stop is left pending for a later run in this process, and the handlers
    // that were there before are back.
    seen += "after: " + std::to_string(train::after_step(comm, false).signal) + "\n";
    raise(SIGUSR1);
    seen += "own handler ran: " + std::to_string(own_handler_ran) + "\n";
    struct sigaction on_pipe = {};
    sigaction(SIGPIPE, nullptr, &on_pipe);
    seen += std::string("SIGPIPE default: ") + (on_pipe.sa_handler == SIG_DFL ? "yes" : "no");
    return seen + "\n";
  });
  CHECK(WIFEXITED(child.status));
  CHECK(child.message ==
        "ignored SIGINT: 0\nSIGUSR1: SIGUSR1\nafter: 0\nown handler ran: 1\n"
        "SIGPIPE default: yes\n");
}

TEST_CASE("resuming with settings other than the run's names each one that changed",
          "[train][resume]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  // Started with paths relative to the folder it ran in...
  const std::string folder = std::filesystem::path(out).parent_path().string();
  REQUIRE(std::filesystem::path(data).parent_path() == folder);
  REQUIRE(run_deit(tiny_train_args("data", "run", 1), folder).exit_code == 0);
  // ...and resumed from elsewhere, by its folder: the checkpoint knows where the data is. More
  // workers and no progress leave the run's course alone; more epochs stretch its cosine
  // schedule: named. What a save cut short had left is cleared away.
  const std::string leftover = out + "/checkpoint.safetensors.tmp.12345";
  test::write_bytes(leftover, {1, 2, 3});
  CliResult r = run_deit("train --epochs 2 --workers 1 --quiet --resume " + out, "/");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_FALSE(std::filesystem::exists(leftover));
  CHECK_THAT(r.output, Catch::Contains("with settings that differ from its run's: epochs 1 -> 2."));
  // A smaller batch, another learning rate and the EMA left behind: each named.
  r = run_deit(tiny_train_args(data, out, 3) + " --batch-size 8 --lr 0.001 --no-model-ema " +
               "--resume " + out + "/checkpoint.safetensors");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains(
                           "warning: resuming '" + out + "/checkpoint.safetensors' " +
                           "with settings that differ from its run's: batch_size " +
                           "16 -> 8, epochs 2 -> 3, lr 0.004 -> 0.001, model_ema true -> false."));
}

TEST_CASE("a class none of whose training images can be read is named", "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  for (const auto& file : std::filesystem::directory_iterator(data + "/train/disc"))
    std::ofstream(file.path(), std::ios::binary | std::ios::trunc) << "not an image";
  const CliResult r = run_deit(tiny_train_args(data, out, 2));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const std::string warning =
      "warning: no training image of class 'disc' could be read so far (each one met was "
      "skipped, see above): the model cannot learn that class";
  CHECK_THAT(r.output, Catch::Contains(warning) && Catch::Contains("skipped   24 unusable image "));
  // Once per run, not per epoch.
  CHECK(r.output.find(warning) == r.output.rfind(warning));
}

TEST_CASE("a class with no image in a packed train split is named by pack and by train",
          "[data][train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  for (const auto& file : std::filesystem::directory_iterator(data + "/train/disc"))
    std::ofstream(file.path(), std::ios::binary | std::ios::trunc) << "not an image";
  const std::string shard = data + "/train.shard";
  CliResult r = run_deit("pack --src " + data + "/train --out " + shard);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: " + shard + ": class 'disc' has no images"));
  std::filesystem::remove_all(data + "/train");
  r = run_deit(tiny_train_args(data, out, 1));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: " + shard + ": class 'disc' has no images: it " +
                                       "keeps its label, but nothing of it can be learned"));
}

TEST_CASE("a dataset of a single class trains with a warning that it is meaningless",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  const std::vector<std::string> classes(data::synthetic_class_names().begin(),
                                         data::synthetic_class_names().begin() + 4);
  for (const char* split : {"/train/", "/val/"})
    for (size_t k = 1; k < classes.size(); ++k)
      std::filesystem::remove_all(data + split + classes[k]);
  const CliResult r = run_deit(tiny_train_args(data, out, 1));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: '" + data + "' has a single class ('" +
                                       classes[0] + "'): a classifier of one class scores 100%"));
  // One epoch of one warm-up epoch: the learning rate never leaves its ramp.
  CHECK_THAT(r.output, Catch::Contains("warning: the run's 1 epoch trains at warm-up rates only "
                                       "(1 warm-up epoch,"));
}

TEST_CASE(
    "a run that ends before the schedule, stepped after each epoch, leaves its warm-up is "
    "warned about",
    "[train][cli]") {
  // Epoch e trains at the schedule's rate at time e - 1 (engine/schedule.h): with one warm-up
  // epoch, epochs 0 and 1 both train at --warmup-lr, and epoch 2 is the first past the ramp.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  CliResult r = run_deit(tiny_train_args(data, dir.file("two"), 2) + " --quiet");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: the run's 2 epochs train at warm-up rates only "
                                       "(1 warm-up epoch,") &&
                           Catch::Contains("its learning rate never reaches --lr"));
  // --quiet keeps the warnings and drops the progress: the run's start line and epoch lines.
  CHECK_THAT(r.output, !Catch::Contains("epoch 1/2") && !Catch::Contains("training deit3_tiny"));
  std::ifstream log(dir.file("two") + "/log.txt");
  for (std::string line; std::getline(log, line);)
    CHECK(nlohmann::json::parse(line).at("train_lr") == 1e-6);

  r = run_deit(tiny_train_args(data, dir.file("three"), 3) + " --quiet");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, !Catch::Contains("warm-up rates only"));
}

TEST_CASE("deit info names a preset's input size among the settings off its recipe",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  const CliResult trained = run_deit(
      "train --model deit3_tiny --input-size 32 --epochs 1 "
      "--batch-size 16 --warmup-epochs 0 --workers 1 --quiet "
      "--data " +
      data + " --output " + out);
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  const CliResult info = run_deit("info --json --checkpoint " + out);
  REQUIRE(info.exit_code == 0);
  const nlohmann::json off = nlohmann::json::parse(info.output).at("checkpoint").at("off_recipe");
  INFO(off.dump());
  CHECK(off.at("input_size") == nlohmann::json({{"saved", 32}, {"recipe", 224}}));
  CHECK_FALSE(off.contains("num_classes"));  // the dataset's, a shape
}

TEST_CASE("deit info counts the batches of a run of several processes per process",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1) + " --quiet").exit_code == 0);
  // The checkpoint rewritten as a run of 2 processes and 2 epochs, with 5 classes, would have
  // saved it 4 batches (2 on each process) into its second epoch: a whole file, checksums anew.
  const std::string checkpoint = out + "/checkpoint.safetensors";
  model::SafetensorsContents contents = model::read_safetensors(checkpoint);
  nlohmann::json state = nlohmann::json::parse(contents.metadata.at("deit"));
  state["world_size"] = 2;
  state["sampler"]["world_size"] = 2;
  state["options"]["epochs"] = 2;
  state["within_epoch"] = {
      {"epoch", 1}, {"batches", 4}, {"loss_sum", 5.0}, {"images", 64}, {"seconds", 1.0}};
  contents.metadata["deit"] = state.dump();
  contents.metadata["deit_classes"] = nlohmann::json({"a", "b", "c", "d", "e"}).dump();
  model::write_safetensors(checkpoint, contents.tensors, contents.metadata);

  const CliResult json = run_deit("info --json --checkpoint " + out);
  INFO(json.output);
  REQUIRE(json.exit_code == 0);
  const nlohmann::json run = nlohmann::json::parse(json.output).at("checkpoint");
  CHECK(run["world_size"] == 2);
  CHECK(run["within_epoch"]["batches_per_process"] == 2);
  CHECK(run["within_epoch"]["epoch_batches_per_process"] == 3);  // 96 images / 2 / 16
  CHECK(run["within_epoch"]["images"] == 64);
  const CliResult text = run_deit("info --checkpoint " + out);
  INFO(text.output);
  REQUIRE(text.exit_code == 0);
  CHECK_THAT(text.output,
             Catch::Contains("trained          1 of 2 epochs, then 2 of the 3 batches per process "
                             "of epoch 2 (64 images); ") &&
                 Catch::Contains("(launched as this run was, 2 processes)") &&
                 Catch::Contains("classes          5 (a, b, c, d, e)\n") &&
                 Catch::Contains("best             top-1 ") && Catch::Contains(" after epoch 1\n"));

  // A flag asks for more recomputation than the run kept (it had none): the flag counts.
  const CliResult kept = run_deit("info --json --checkpoint " + out + " --recompute-gelu");
  REQUIRE(kept.exit_code == 0);
  CHECK(nlohmann::json::parse(kept.output)["activation_bytes_per_image_f32"] <
        nlohmann::json::parse(json.output)["activation_bytes_per_image_f32"]);
  // A run that had it on is counted so without the flag.
  state["options"]["recompute_gelu"] = true;
  contents.metadata["deit"] = state.dump();
  model::write_safetensors(checkpoint, contents.tensors, contents.metadata);
  const CliResult saved = run_deit("info --json --checkpoint " + out);
  REQUIRE(saved.exit_code == 0);
  CHECK(nlohmann::json::parse(saved.output)["activation_bytes_per_image_f32"] ==
        nlohmann::json::parse(kept.output)["activation_bytes_per_image_f32"]);
  // The checkpoint's model is the one counted: a model flag is refused, not left without effect.
  const CliResult sized = run_deit("info --checkpoint " + out + " --input-size 96");
  CHECK(sized.exit_code == 1);
  CHECK_THAT(sized.output, Catch::Contains("excludes") && Catch::Contains("--input-size"));
}

TEST_CASE("settings that train without effect or against themselves are warned about",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  CliResult r = run_deit(tiny_train_args(data, dir.file("run"), 1) +
                         " --lr 1e-3 --min-lr 1e-2 --num-classes 12");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: --min-lr 0.01 is above --lr 0.001"));
  CHECK_THAT(r.output, Catch::Contains("warning: --num-classes 12 is more than the 4 classes of '" +
                                       data + "': the head's last 8 outputs have no images"));
  // Resumed after its dataset moved: the checkpoint's path is not there, and --data says where.
  std::filesystem::rename(data, data + "-moved");
  r = run_deit("train --resume " + dir.file("run") + " --epochs 2");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output,
             Catch::Contains("--data is required: the run of checkpoint") &&
                 Catch::Contains("trained on '" + data + "', which is not there now: give --data"));
  r = run_deit("train --resume " + dir.file("run") + " --epochs 2 --quiet --data " + data +
               "-moved");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, !Catch::Contains("is more than the 4 classes"));
}

TEST_CASE("deit eval --per-class says n/a for a class with no image scored", "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1)).exit_code == 0);
  for (const auto& file : std::filesystem::directory_iterator(data + "/val/disc"))
    std::filesystem::remove(file.path());
  CliResult r = run_deit("eval --checkpoint " + out + " --data " + data + " --per-class");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output,
             Catch::Contains("\n  disc" + std::string(20, ' ') + " top-1     n/a  of 0\n"));
  const std::string warning = "class 'disc' has no images";
  CHECK(r.output.find(warning) != std::string::npos);
  CHECK(r.output.find(warning) == r.output.rfind(warning));  // once
  r = run_deit("eval --checkpoint " + out + " --data " + data + " --per-class --json");
  const auto json = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  for (const auto& row : json["per_class"]) {
    INFO(row.dump());
    CHECK(row["acc1"].is_null() == (row["class"] == "disc"));
  }
}

TEST_CASE("deit eval --per-class aligns class names by characters, not bytes", "[train][cli]") {
  test::TempDir dir;
  // 'dísc': five bytes, four characters; padded by bytes, its row came out one column short.
  const std::string data = with_renamed_class(dir, make_tiny_dataset(dir), "disc", "d\xc3\xadsc");
  const std::string out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1)).exit_code == 0);
  const CliResult r = run_deit("eval --checkpoint " + out + " --data " + data + " --per-class");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("\n  d\xc3\xadsc" + std::string(20, ' ') + " top-1 "));
}

TEST_CASE("a val split that cannot be read keeps the epoch's training, to resume", "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  const std::string val = dir.file("val");
  std::filesystem::rename(data + "/val", val);
  std::filesystem::copy(val, data + "/val", std::filesystem::copy_options::recursive);
  for (const auto& file : std::filesystem::recursive_directory_iterator(data + "/val"))
    if (file.is_regular_file())
      std::ofstream(file.path(), std::ios::binary | std::ios::trunc) << "not an image";
  CliResult r = run_deit(tiny_train_args(data, out, 2));
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("all unusable: giving up") &&
                           Catch::Contains("epoch 1's training is saved, without its evaluation") &&
                           Catch::Contains("resume it there once the val split reads"));
  // No log line for an epoch that was not evaluated.
  CHECK_FALSE(std::filesystem::exists(out + "/log.txt"));
  // The last epoch's: nothing is left to resume, deit eval is the way to its evaluation.
  r = run_deit(tiny_train_args(data, dir.file("last"), 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("that was the run's last epoch: `deit eval --checkpoint " +
                                       dir.file("last") + "/checkpoint.safetensors` evaluates it"));
  CHECK(std::filesystem::exists(dir.file("last") + "/checkpoint.safetensors"));
  std::filesystem::remove_all(data + "/val");
  std::filesystem::rename(val, data + "/val");
  r = run_deit("train --resume " + out);
  CHECK(r.exit_code == 0);
  const std::vector<nlohmann::json> log = test::log_lines(out + "/log.txt");
  REQUIRE(log.size() == 1);
  CHECK(log[0]["epoch"] == 1);  // the second epoch alone
}

TEST_CASE("bad input stops deit train with a clear message", "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");

  CliResult r = run_deit(tiny_train_args(dir.file("nowhere"), out, 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("nowhere"));
  CHECK_FALSE(std::filesystem::exists(out));

  std::filesystem::create_directories(dir.file("empty/train"));
  std::filesystem::create_directories(dir.file("empty/val"));
  r = run_deit(tiny_train_args(dir.file("empty"), out, 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("empty"));

  // Splits with other classes: the first difference named, and the classes each split lacks.
  const std::string mismatched = with_renamed_class(dir, data, "checkerboard", "zigzag");
  std::filesystem::rename(mismatched + "/train/zigzag", mismatched + "/train/checkerboard");
  r = run_deit(tiny_train_args(mismatched, out, 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("have different classes (class 0 is 'checkerboard' in "
                                       "train, 'concentric_rings' in val; only in train: "
                                       "'checkerboard'; only in val: 'zigzag')"));
  // A val folder lacking a class is told how to keep the labels in line: an empty folder.
  std::filesystem::remove_all(mismatched + "/val/zigzag");
  r = run_deit(tiny_train_args(mismatched, out, 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("only in train: 'checkerboard'); an empty val folder for a "
                                       "class keeps the labels in line (evaluation then has no "
                                       "image of it): mkdir " +
                                       mismatched + "/val/checkerboard"));

  // A batch larger than an epoch: refused before room for it is made (50 million images of
  // 3 x 8 x 8 floats would ask for 38 GB).
  r = run_deit(tiny_train_args(data, dir.path() + "/huge/runs/1/", 1) + " --batch-size 50000000");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("has 96 images, fewer than one batch of 50000000; lower "
                                       "--batch-size"));
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/huge"));  // the folders it made, removed

  // An input size the patches do not tile: trained, with a warning of the pixels left unseen.
  r = run_deit(tiny_train_args(data, dir.file("odd"), 1) + " --input-size 10");
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: --input-size 10 is not a multiple of the 4-pixel "
                                       "patch: the last 2 pixels"));

  // A run folder inside a split would become one of its classes: refused, nothing made.
  r = run_deit(tiny_train_args(data, data + "/train/run", 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("lies inside the train split of '" + data + "'"));
  CHECK_FALSE(std::filesystem::exists(data + "/train/run"));

  const std::string blocked = dir.file("blocked");
  { std::ofstream(blocked) << "a file where the output folder should be"; }
  r = run_deit(tiny_train_args(data, blocked + "/run", 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("blocked"));

  // An output path a checkpoint could not hold as text is refused before the run (it would have
  // ended at the first save): nothing is made.
  const std::string latin1 = dir.file("caf\xe9");
  r = run_deit(tiny_train_args(data, latin1, 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("caf\\xe9' is not UTF-8 text"));
  CHECK_FALSE(std::filesystem::exists(latin1));

  r = run_deit(tiny_train_args(data, out, 1) + " --batch-size 15");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--batch-size"));

  // Each bad value is named, NaN included (every comparison with NaN is false), and nothing is
  // created for a run that cannot start.
  for (const std::string flag :
       {"--lr nan", "--lr -1", "--opt-eps -1", "--clip-grad nan", "--weight-decay -100",
        "--mixup-switch-prob 5", "--warmup-epochs nan", "--model-ema-decay 2", "--workers 20000",
        "--num-classes 2", "--smoothing 0.1"}) {
    INFO(flag);
    r = run_deit(tiny_train_args(data, dir.file("never"), 1) + " " + flag);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains(flag.substr(0, flag.find(' '))));
    CHECK_FALSE(std::filesystem::exists(dir.file("never")));
  }

  // Smoothing is for soft-target cross-entropy: BCE would binarise every smoothed target to 1.
  CHECK_THAT(run_deit(tiny_train_args(data, dir.file("never"), 1) + " --smoothing 0.1").output,
             Catch::Contains("--smoothing with --bce-loss would make every target 1"));
  CHECK(run_deit(tiny_train_args(data, dir.file("smoothed"), 1) + " --smoothing 0.1 --no-bce-loss")
            .exit_code == 0);

  r = run_deit("train --data " + data + " --output " + out);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--model is required (unless --resume"));

  r = run_deit(tiny_train_args(data, out, 1) + " --cuda-graph");  // the CPU has no graphs
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--cuda-graph needs --device cuda"));
  r = run_deit(tiny_train_args(data, out, 1) + " --gemm-autotune");  // nor cuBLASLt
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--gemm-autotune needs --device cuda"));
  // (Checked before any device is needed, so also on machines without a GPU.)
  train::TrainOptions graph = train::recipe_for("deit3_tiny");
  graph.data_dir = data;
  graph.output_dir = out;
  graph.device = "cuda:0";
  graph.cuda_graph = true;
  CHECK_NOTHROW(graph.validate());
  graph.accum_steps = 2;
  CHECK_THROWS_WITH(graph.validate(), Catch::Contains("--accum-steps 1"));
}

TEST_CASE("deit train --aa fine-tunes with RandAugment in place of 3-Augment and jitter",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  const std::string aa = " --aa rand-m9-mstd0.5-inc1";
  // The preset's 3-Augment and jitter are turned off by --aa; the run saves all three.
  CliResult r = run_deit(tiny_train_args(data, out, 1) + aa + " --quiet");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  nlohmann::json options =
      model::read_checkpoint_header(out + "/checkpoint.safetensors").state.at("options");
  CHECK(options["aa"] == "rand-m9-mstd0.5-inc1");
  CHECK(options["three_augment"] == false);
  CHECK(options["color_jitter"] == 0.0);
  // deit info names it among the settings off the recipe.
  r = run_deit("info --checkpoint " + out);
  INFO(r.output);
  CHECK_THAT(r.output, Catch::Contains("aa") && Catch::Contains("rand-m9-mstd0.5-inc1"));
  // Resumed, the run keeps it.
  r = run_deit("train --resume " + out + " --epochs 2 --quiet");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("differ from its run's: epochs 1 -> 2."));
  options = model::read_checkpoint_header(out + "/checkpoint.safetensors").state.at("options");
  CHECK(options["aa"] == "rand-m9-mstd0.5-inc1");
  CHECK(options["three_augment"] == false);
  // Resumed with --aa none, the recipe's 3-Augment and jitter come back (not no augmentation),
  // and the warning names all three changes.
  r = run_deit("train --resume " + out + " --epochs 3 --aa none --quiet");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("aa \"rand-m9-mstd0.5-inc1\" -> \"none\"") &&
                           Catch::Contains("three_augment false -> true") &&
                           Catch::Contains("color_jitter 0"));
  options = model::read_checkpoint_header(out + "/checkpoint.safetensors").state.at("options");
  CHECK(options["aa"] == "none");
  CHECK(options["three_augment"] == true);
  CHECK(options["color_jitter"] == 0.3);

  // Either of the pre-training augmentations asked for as well is refused, naming the flag to
  // drop; so is a spec timm would not read. Nothing is made.
  const std::string never = dir.file("never");
  r = run_deit(tiny_train_args(data, never, 1) + aa + " --three-augment");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output,
             Catch::Contains("timm applies RandAugment or the colour jitter, never both") &&
                 Catch::Contains("drop --three-augment"));
  r = run_deit(tiny_train_args(data, never, 1) + aa + " --color-jitter 0.3");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains(
                           "drop --color-jitter, or give --aa none to train without RandAugment"));
  r = run_deit(tiny_train_args(data, never, 1) + " --aa rand-m9-w0");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--aa: RandAugment spec 'rand-m9-w0'") &&
                           Catch::Contains("op weights"));
  r = run_deit(tiny_train_args(data, never, 1) + " --aa autoaugment");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--aa: RandAugment spec 'autoaugment'"));
  CHECK_FALSE(std::filesystem::exists(never));
  // Turning them off by hand is the same run as letting --aa do it: the same first epoch.
  REQUIRE(run_deit(tiny_train_args(data, never, 1) + aa + " --no-three-augment --color-jitter 0")
              .exit_code == 0);
  auto first_epoch = [](const std::string& run) {
    const nlohmann::json j = test::log_lines(run + "/log.txt").at(0);
    return std::vector<double>{j.at("train_loss"), j.at("test_loss"), j.at("test_acc1")};
  };
  CHECK(first_epoch(never) == first_epoch(out));

  // The options alone: validate() says the same.
  train::TrainOptions o = train::recipe_for("deit3_tiny");
  o.data_dir = data;
  o.output_dir = out;
  o.aa = "rand-m9-mstd0.5-inc1";
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("drop --three-augment and --color-jitter"));
  o.three_augment = false;
  o.color_jitter = 0;
  CHECK_NOTHROW(o.validate());
  o.aa = "rand-n9";
  CHECK_THROWS_WITH(o.validate(), Catch::Contains("--aa") && Catch::Contains("[1, 4]"));
  const train::TrainOptions defaults;
  CHECK(defaults.aa == "none");
}

TEST_CASE("a step's readback gives each step's losses in order and its gradient norm", "[train]") {
  // On CUDA each micro-batch's loss and the step's gradient norm reach the host through it: a
  // value lost or misplaced here would be what the progress line, the log and the divergence
  // check see. Its bookkeeping is the same on the CPU.
  SingleProcessCommunicator comm(Device::cpu(), 0);
  train::StepReadback readback(Device::cpu(), 2);
  auto scalar = [](float v) { return Tensor::from_vector(std::vector<float>{v}, {1}); };
  readback.record_loss(scalar(1.5f));
  readback.record_loss(scalar(2.5f));
  // A third loss in a step of two micro-batches would overwrite the gradient norm's slot.
  CHECK_THROWS_AS(readback.record_loss(scalar(9.0f)), std::logic_error);
  train::StepReadback::Values step = readback.read(scalar(0.75f), comm);
  CHECK(step.losses == std::vector<double>{1.5, 2.5});
  CHECK(step.grad_norm == 0.75);
  // The next step starts from its first micro-batch again; a short step (an epoch's last) gives
  // only the losses it recorded.
  readback.record_loss(scalar(4.0f));
  step = readback.read(scalar(0.5f), comm);
  CHECK(step.losses == std::vector<double>{4.0});
  CHECK(step.grad_norm == 0.5);
  readback.record_loss(scalar(5.0f));
  readback.record_loss(scalar(6.0f));
  CHECK(readback.read(scalar(0.25f), comm).losses == std::vector<double>{5.0, 6.0});
}

TEST_CASE("an epoch's last optimizer step averages the micro-batches it has", "[train]") {
  using train::micro_batches_in_step;
  // 6 micro-batches in steps of 4: 4 + 2.
  for (int64_t b = 1; b <= 4; ++b) CHECK(micro_batches_in_step(b, 6, 4) == 4);
  for (int64_t b = 5; b <= 6; ++b) CHECK(micro_batches_in_step(b, 6, 4) == 2);
  // More steps than micro-batches: one step of all of them.
  for (int64_t b = 1; b <= 3; ++b) CHECK(micro_batches_in_step(b, 3, 1000) == 3);
  for (int64_t b = 1; b <= 6; ++b) CHECK(micro_batches_in_step(b, 6, 1) == 1);
  for (int64_t b = 1; b <= 6; ++b) CHECK(micro_batches_in_step(b, 6, 3) == 3);
}

TEST_CASE("an epoch's left-over micro-batches make a step, after which the EMA is updated",
          "[train]") {
  // 6 micro-batches in steps of 4: a step of 4, then one of the 2 left (not carried into the next
  // epoch's first step, nor dropped). At --model-ema-decay 0 the average is the weights as the
  // last step left them: an EMA taken before the step would hold the weights before it.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  const CliResult r =
      run_deit(tiny_train_args(data, out, 1) + " --accum-steps 4 --model-ema-decay 0");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const model::Checkpoint ck = model::read_checkpoint(out + "/checkpoint.safetensors");
  const Tensor* steps = model::find_tensor(ck.extra, "optim.step");
  REQUIRE(steps != nullptr);
  CHECK(steps->item() == 2);
  REQUIRE(!ck.model.empty());
  for (const auto& [name, weights] : ck.model) {
    INFO(name);
    const Tensor* average = model::find_tensor(ck.extra, model::kEmaPrefix + name);
    REQUIRE(average != nullptr);
    CHECK(average->to_vector<float>() == weights.to_vector<float>());
  }
}

namespace {

// The first moments of every parameter of a run's checkpoint (LAMB's exp_avg), by name.
test::Tensors first_moments(const std::string& run) {
  test::Tensors moments;
  for (auto& [name, values] :
       test::read_tensors(model::read_checkpoint(run + "/checkpoint.safetensors").extra))
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ".exp_avg") == 0)
      moments.emplace(name, std::move(values));
  return moments;
}

}  // namespace

TEST_CASE("micro-batches accumulated over a step give the gradients of one batch of them all",
          "[train]") {
  // Each micro-batch's backward is seeded with 1 / (the step's micro-batches). LAMB's steps hardly
  // change when the gradients are scaled, so the weights cannot tell a sum from the mean; its
  // first moments, the running mean of the gradients, can. Without mixing or drop-path (one draw
  // per batch, and per sample of a batch) a step over 16 images is the same in one batch or two.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  const std::string whole = dir.file("whole"), halves = dir.file("halves");
  const std::string exact = " --mixup 0 --cutmix 0 --drop-path 0";
  REQUIRE(run_deit(tiny_train_args(data, whole, 1) + exact).exit_code == 0);
  REQUIRE(run_deit(tiny_train_args(data, halves, 1) + exact + " --batch-size 8 --accum-steps 2")
              .exit_code == 0);
  const test::Tensors a = first_moments(whole), b = first_moments(halves);
  CHECK(a.size() > 20);
  CHECK(test::max_relative_error(b, a) < 1e-3);
}

TEST_CASE("an epoch's last step of fewer micro-batches than --accum-steps averages what it has",
          "[train]") {
  // Steps of 4 micro-batches of 48 over an epoch of 96 images: one step of the 2 there are, whose
  // backwards are each seeded with 1/2 (not 1/4). Its gradient is then that of one batch of 96.
  // Without --clip-grad, LAMB's first moments are the gradient times (1 - beta1), so a step that
  // divided by --accum-steps would leave them at half of the whole batch's.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  train::TrainOptions whole = test::tiny_run(data, dir.file("whole"), 96);
  whole.clip_grad = 0;
  train::TrainOptions split = whole;
  split.output_dir = dir.file("split");
  split.batch_size = 48;
  split.accum_steps = 4;
  train::train(whole);
  train::train(split);
  const test::Tensors a = first_moments(whole.output_dir), b = first_moments(split.output_dir);
  CHECK(a.size() > 20);
  CHECK(test::max_relative_error(b, a) < 1e-3);
}

TEST_CASE("the moving average takes one update per optimizer step, after it, at its decay",
          "[train]") {
  // timm's ModelEma after each step: ema = decay * ema + (1 - decay) * weights. Epochs of one
  // step, without warm-up: a run of one epoch is the first epoch of a run of two, so the longer
  // run's average after its second step follows from the shorter one's and its own weights.
  // An average updated twice a step, or before it, or at another decay, does not.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  train::TrainOptions one = test::tiny_run(data, dir.file("one"), 96);
  one.model_ema_decay = 0.75;
  train::TrainOptions two = one;
  two.output_dir = dir.file("two");
  two.epochs = 2;
  train::train(one);
  train::train(two);
  const model::Checkpoint a = model::read_checkpoint(one.output_dir + "/checkpoint.safetensors");
  const model::Checkpoint b = model::read_checkpoint(two.output_dir + "/checkpoint.safetensors");
  REQUIRE(!b.model.empty());
  for (const auto& [name, weights] : b.model) {
    INFO(name);
    const Tensor* first = model::find_tensor(a.extra, model::kEmaPrefix + name);
    const Tensor* second = model::find_tensor(b.extra, model::kEmaPrefix + name);
    REQUIRE(first != nullptr);
    REQUIRE(second != nullptr);
    const std::vector<float> e1 = first->to_vector<float>(), w2 = weights.to_vector<float>();
    const std::vector<float> e2 = second->to_vector<float>();
    REQUIRE(e2.size() == w2.size());
    double worst = 0;
    for (size_t k = 0; k < e2.size(); ++k) {
      const double expected = 0.75 * e1[k] + 0.25 * w2[k];
      worst = std::max(worst, std::abs(e2[k] - expected) / (std::abs(expected) + 1e-6));
    }
    CHECK(worst < 1e-6);
  }
}

TEST_CASE("an epoch trains at the rate its schedule gives it, and logs the mean of its losses",
          "[train]") {
  // Epochs 0 and 1 of a warm-up train at --warmup-lr (engine/schedule.h). From a warm-up rate of
  // 0 they leave the weights as they started, whatever --lr is: two runs that differ only in
  // their --lr end alike, bit for bit. An optimizer left at the rate it was built with (--lr)
  // would move them, each its own way.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  train::TrainOptions still = test::tiny_run(data, dir.file("still"), 16);
  still.lr = 1e-3;
  still.warmup_lr = 0;
  still.warmup_epochs = 2;
  still.epochs = 2;
  train::TrainOptions ramp = test::tiny_run(data, dir.file("ramp"), 16);
  ramp.lr = 0.01;
  ramp.warmup_lr = 0;
  ramp.warmup_epochs = 1;
  const train::TrainSummary still_run = train::train(still);
  train::train(ramp);
  CHECK(parameter_bytes(ramp.output_dir + "/checkpoint.safetensors") ==
        parameter_bytes(still.output_dir + "/checkpoint.safetensors"));
  const std::vector<nlohmann::json> ramp_log = test::log_lines(ramp.output_dir + "/log.txt");
  REQUIRE(ramp_log.size() == 1);
  CHECK(ramp_log[0]["train_lr"] == 0.0);

  // The untrained model's logits are near 0, so each batch's BCE is near ln 2 and so is their
  // mean: a sum over another count (images, or none counted) lands far from it.
  const std::vector<nlohmann::json> still_log = test::log_lines(still.output_dir + "/log.txt");
  REQUIRE(still_log.size() == 2);
  for (const nlohmann::json& line : still_log) {
    INFO(line.dump());
    CHECK(line["train_lr"] == 0.0);
    CHECK(line["train_loss"].get<double>() == Approx(std::log(2.0)).margin(0.02));
  }
  // Both epochs score the same weights alike: the best is the first that reached it.
  CHECK(still_log[1]["test_acc1"] == still_log[0]["test_acc1"]);
  CHECK(still_run.best_epoch == 0);
  CHECK(still_run.epochs_run == 2);
}

TEST_CASE("a run stopped twice in one epoch carries its counts through both resumptions",
          "[train][resume]") {
  // A stop asked for before the run starts is seen after its first optimizer step: each resumed
  // run below trains one step of 16 images and saves. The second checkpoint's sums hold the first
  // one's too (carried by rank 0), and the epoch's logged loss is the uninterrupted run's.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  train::TrainOptions straight = test::tiny_run(data, dir.file("straight"), 16);
  train::train(straight);
  train::TrainOptions o = straight;
  o.output_dir = dir.file("stopped");
  const std::string checkpoint = o.output_dir + "/checkpoint.safetensors";
  const auto within = [&] {
    return model::read_checkpoint_header(checkpoint).state.at("within_epoch");
  };
  train::request_stop(SIGUSR1);
  const train::TrainSummary first = train::train(o);
  CHECK(first.stop.batches_done == 1);
  const nlohmann::json once = within();
  INFO(once.dump());
  CHECK(once["batches"] == 1);
  CHECK(once["images"] == 16);
  o.resume = checkpoint;
  train::request_stop(SIGUSR1);
  const train::TrainSummary second = train::train(o);
  CHECK(second.resumed_at_batch == 1);
  CHECK(second.stop.batches_done == 2);
  const nlohmann::json twice = within();
  INFO(twice.dump());
  CHECK(twice["batches"] == 2);
  CHECK(twice["images"] == 32);
  CHECK(twice["loss_sum"].get<double>() > once["loss_sum"].get<double>());
  const train::TrainSummary rest = train::train(o);
  CHECK(rest.epochs_run == 1);
  CHECK(rest.stop.signal == 0);
  const std::vector<nlohmann::json> a = test::log_lines(straight.output_dir + "/log.txt");
  const std::vector<nlohmann::json> b = test::log_lines(o.output_dir + "/log.txt");
  REQUIRE(a.size() == 1);
  REQUIRE(b.size() == 1);
  CHECK(b[0]["train_loss"] == a[0]["train_loss"]);
  CHECK(parameter_bytes(checkpoint) ==
        parameter_bytes(straight.output_dir + "/checkpoint.safetensors"));
}

TEST_CASE("a loss that stops being finite stops the run at the batch it came in", "[train]") {
  // AdamW at an absurd rate: the first step throws the weights out of float's range, so the
  // second batch's forward is no longer finite. The run stops there, naming the loss and the
  // batch, before its backward turns the gradients to NaN and leaves the optimizer to notice.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  train::TrainOptions o = test::tiny_run(data, dir.file("run"), 16);
  o.opt = "adamw";
  o.lr = 1e30;
  o.clip_grad = 0;
  CHECK_THROWS_AS(train::train(o), train::TrainingDiverged);
  o.output_dir = dir.file("again");
  CHECK_THROWS_WITH(train::train(o), Catch::Contains("the loss is ") &&
                                         Catch::Contains(" at epoch 1, batch 2") &&
                                         Catch::Contains("nothing since the last checkpoint"));
}

TEST_CASE("a run's saved options give back every setting to the run that resumes it",
          "[train][resume]") {
  train::TrainOptions run = train::recipe_for("deit3_base", "in21k-finetune");
  run.model.dim = 96;
  run.model.name += " (custom)";
  run.model.num_classes = 7;
  run.data_dir = "/datasets/birds";
  run.output_dir = "/runs/birds";
  run.finetune = "/weights/base.safetensors";
  run.device = "cuda:1";
  run.epochs = 90;
  run.batch_size = 64;
  run.accum_steps = 4;
  run.opt = "adamw";
  run.lr = 1e-4;
  run.min_lr = 1e-7;
  run.warmup_lr = 1e-8;
  run.warmup_epochs = 2.5;
  run.weight_decay = 0.1;
  run.opt_eps = 1e-6;
  run.clip_grad = 2;
  run.drop_path = 0.3;
  run.three_augment = false;
  run.src = true;
  run.rrc_scale_min = 0.3;
  run.color_jitter = 0.1;
  run.aa = "rand-m7-n3";
  run.eval_crop_ratio = 0.875;
  run.repeated_aug = false;
  run.mixup = 0.2;
  run.cutmix = 0.5;
  run.mixup_switch_prob = 0.25;
  run.mixup_prob = 0.75;
  run.smoothing = 0.1;
  run.bce_loss = false;
  run.model_ema = false;
  run.model_ema_decay = 0.999;
  run.seed = 18446744073709551615ull;
  run.workers = 5;
  run.zero = true;
  run.cuda_graph = true;
  run.recompute_gelu = true;
  run.grad_checkpointing = true;
  run.bucket_mb = 4;
  const nlohmann::json saved = run.to_json();

  const train::TrainOptions resumed = train::resume_options(run.model, saved);
  nlohmann::json expected = saved;  // all but the output folder, which this invocation decides
  expected["output"] = "";
  CHECK(resumed.to_json() == expected);
  CHECK(resumed.num_classes_given);  // the checkpoint's head, whatever the dataset holds
  // A fine-tune resumed is no new fine-tune, but still says what it started from.
  CHECK(resumed.finetune.empty());
  CHECK(resumed.finetuned_from == "/weights/base.safetensors");

  // A checkpoint from before a setting was saved: the preset's recipe at the run's stage fills it
  // in; before the stage was saved, pretrain's.
  nlohmann::json older = saved;
  older.erase("lr");
  older.erase("drop_path");
  older.erase("aa");  // saved since RandAugment came: an older run had none
  train::TrainOptions filled = train::resume_options(run.model, older);
  CHECK(filled.lr == 3e-4);
  CHECK(filled.drop_path == 0.15);
  CHECK(filled.aa == "none");
  CHECK(filled.batch_size == 64);
  // Before recipes were saved every run started from pretrain's values, a fine-tune's as well
  // (it set its own by flags): those fill in, and a run that started from weights is a fine-tune.
  older.erase("recipe");
  filled = train::resume_options(run.model, older);
  CHECK(filled.recipe == "finetune");
  CHECK(filled.lr == train::recipe_for("deit3_base").lr);
  CHECK(filled.drop_path == train::recipe_for("deit3_base").drop_path);
  older.erase("finetune");
  CHECK(train::resume_options(run.model, older).recipe == "pretrain");

  // Each value is refused naming its option, whose type would not hold it as written: numbers
  // nlohmann converted without a word (3.5 workers became 3, 2^63 a negative count, which its
  // comparison then found equal to 2^63, and a seed of -1 became 2^64 - 1; 1e300 was undefined
  // behaviour), other types, and recipes there are none of.
  const std::vector<std::pair<std::string, nlohmann::json>> not_values = {
      {"batch_size", "lots"},
      {"recipe", "warmup"},
      {"recipe", 3},
      {"workers", 3.5},
      {"workers", uint64_t{1} << 63},
      {"batch_size", uint64_t{1} << 63},
      {"seed", -1},
      {"epochs", 1e300}};
  for (const auto& [key, value] : not_values) {
    nlohmann::json damaged = saved;
    damaged[key] = value;
    CHECK_THROWS_WITH(
        train::resume_options(run.model, damaged),
        "its saved option '" + key + "' is " + value.dump() + ", not a value of that option");
  }
  // A whole number saved as a float (4.0) is that number.
  nlohmann::json damaged = saved;
  damaged["workers"] = 4.0;
  CHECK(train::resume_options(run.model, damaged).workers == 4);
  // What the recipe of an older checkpoint is taken from, of the wrong type: refused as the
  // option it is, where nlohmann's type error said nothing of it.
  older.erase("recipe");
  older["finetune"] = 5;
  CHECK_THROWS_WITH(train::resume_options(run.model, older),
                    "its saved option 'finetune' is 5, not a value of that option");
  CHECK_THROWS_WITH(train::resume_options(run.model, "deit3_small"),
                    "its saved options are not an object");
}

TEST_CASE("a run's state reads back as it was written, an older checkpoint's with defaults",
          "[train][resume]") {
  train::RunState state;
  state.epochs_done = 7;
  state.within_epoch = train::WithinEpoch{7, 42, 12.5, 1344, 61.25};
  state.options = train::recipe_for("deit3_small").to_json();
  state.best_acc1 = 81.5;
  state.best_epoch = 5;
  state.sampler = {11, 5000, 7, 672, 3, 0, 2, 1};
  state.world_size = 2;
  state.optimizer_steps = 1234;
  // Not their defaults, so that a key read back wrong or not at all shows.
  state.val_images = 500;
  state.train_listing = "0123456789abcdef";
  state.last_log_line = {{"epoch", 6}, {"train_loss", 2.25}};
  const nlohmann::json saved = state.to_json();
  CHECK(saved["epoch"] == 6);  // the last epoch completed, as the reference code counts
  const train::RunState back = train::run_state_from_json(saved);
  CHECK(back.to_json() == saved);
  REQUIRE(back.within_epoch);
  CHECK(back.within_epoch->loss_sum == 12.5);
  CHECK(back.sampler.position == 672);
  CHECK(back.val_images == 500);
  CHECK(back.train_listing == "0123456789abcdef");
  CHECK(back.last_log_line == state.last_log_line);

  nlohmann::json older = {{"epoch", 0}, {"sampler", saved["sampler"]}};
  const train::RunState filled = train::run_state_from_json(older);
  CHECK(filled.epochs_done == 1);
  CHECK_FALSE(filled.within_epoch);
  CHECK(filled.world_size == 1);
  CHECK(filled.best_epoch == -1);
  CHECK_THROWS(train::run_state_from_json({{"epoch", 0}}));
}

TEST_CASE("a run state that contradicts itself is refused rather than resumed", "[train][resume]") {
  train::RunState state;
  state.epochs_done = 3;
  state.within_epoch = train::WithinEpoch{3, 4, 8.0, 64, 2.5};
  const nlohmann::json good = state.to_json();
  REQUIRE_NOTHROW(train::run_state_from_json(good));
  // Each of these would resume at a place no run could have saved: the position inside an epoch
  // other than the one after the last epoch done, no processes, a negative step count or epoch.
  auto with = [&](const std::string& key, const nlohmann::json& value) {
    nlohmann::json j = good;
    j[key] = value;
    return j;
  };
  nlohmann::json other_epoch = good;
  other_epoch["within_epoch"]["epoch"] = 2;
  CHECK_THROWS_WITH(train::run_state_from_json(other_epoch),
                    Catch::Contains("its run state is inconsistent"));
  CHECK_THROWS_WITH(train::run_state_from_json(with("world_size", 0)),
                    Catch::Contains("its run state is inconsistent"));
  CHECK_THROWS_WITH(train::run_state_from_json(with("optimizer_steps", -1)),
                    Catch::Contains("its run state is inconsistent"));
  nlohmann::json before_any = with("epoch", -2);
  before_any.erase("within_epoch");
  CHECK_THROWS_WITH(train::run_state_from_json(before_any),
                    Catch::Contains("its run state is inconsistent"));
  CHECK_THROWS_WITH(train::run_state_from_json(with("options", "deit3_small")),
                    Catch::Contains("its saved options are not an object"));
}

TEST_CASE("a run state's numbers are read only where their fields hold them exactly",
          "[train][resume]") {
  train::RunState state;
  state.epochs_done = 3;
  state.within_epoch = train::WithinEpoch{3, 4, 8.0, 64, 2.5};
  const nlohmann::json good = state.to_json();
  auto refusal = [](const nlohmann::json& saved) -> std::string {
    try {
      train::run_state_from_json(saved);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "read";
  };
  // Each was converted without a word (1e300 into an integer is undefined behaviour; a fuzzer's
  // finding), or ended the command with a JSON type error that named no field.
  nlohmann::json changed = good;
  changed["epoch"] = 1e300;
  CHECK(refusal(changed) == "'epoch' is 1e+300, not a whole number of its range");
  changed = good;
  changed["sampler"]["seed"] = -1;
  CHECK(refusal(changed) == "its sampler's 'seed' is -1, not a whole number of its range");
  changed = good;
  changed["sampler"]["rank"] = uint64_t{1} << 32;
  CHECK(refusal(changed) == "its sampler's 'rank' is 4294967296, not a whole number of its range");
  changed = good;
  changed["within_epoch"]["epoch"] = "3";
  CHECK(refusal(changed) == "its within_epoch's 'epoch' is \"3\", not a whole number of its range");
  changed = good;
  changed["within_epoch"]["loss_sum"] = nullptr;
  CHECK(refusal(changed) == "its within_epoch's 'loss_sum' is null, not a number of its range");
  changed = good;
  changed["best_acc1"] = "81.5";
  CHECK(refusal(changed) == "'best_acc1' is \"81.5\", not a number of its range");
  changed = good;
  changed["train_listing"] = 5;
  CHECK(refusal(changed) == "'train_listing' is 5, not a string");
  // The last epoch index there is: the epochs done, one more, would not fit.
  changed = good;
  changed.erase("within_epoch");
  changed["epoch"] = INT64_MAX;
  CHECK(refusal(changed) == "its 'epoch' is 9223372036854775807: no epoch can follow it");
  // Whole numbers written as floats are those numbers.
  changed = good;
  changed["sampler"]["position"] = 672.0;
  CHECK(train::run_state_from_json(changed).sampler.position == 672);
}

TEST_CASE("the moving average is warned about only while over a tenth of it is the start weights",
          "[train][resume]") {
  test::TempDir dir;
  auto warning = [&](int64_t steps) {
    const nlohmann::json state = {{"optimizer_steps", steps},
                                  {"options", {{"model_ema_decay", 0.99}}}};
    return test::stderr_of(dir.file("stderr.txt"), [&] {
      train::warn_if_moving_average_is_young("run/checkpoint.safetensors", state);
    });
  };
  // 0.99^229 is just above 0.1, 0.99^230 just below: it takes 230 steps to fall to a tenth.
  const std::string young = warning(229);
  CHECK_THAT(young, Catch::Contains("warning: the moving average in 'run/checkpoint.safetensors' "
                                    "has had 229 optimizer steps at decay 0.99: 10% of it is still "
                                    "the weights its run started from (to fall to 10% it needs "
                                    "230 steps)"));
  CHECK(warning(230).empty());
  CHECK(warning(100000).empty());
  // A checkpoint of a deit that did not count its steps: nothing to say, and no error.
  const nlohmann::json uncounted = {{"options", {{"model_ema_decay", 0.99}}}};
  CHECK(test::stderr_of(dir.file("stderr.txt"), [&] {
          train::warn_if_moving_average_is_young("old.safetensors", uncounted);
        }).empty());
  // Nor for one that does not say them as numbers (edited by hand): it threw a JSON type error,
  // which ended deit eval --ema and export --ema naming no file.
  for (const nlohmann::json& unsaid :
       {nlohmann::json{{"optimizer_steps", "229"}, {"options", {{"model_ema_decay", 0.99}}}},
        nlohmann::json{{"optimizer_steps", 229}, {"options", {{"model_ema_decay", "0.99"}}}},
        nlohmann::json{{"optimizer_steps", 1e300}, {"options", {{"model_ema_decay", 0.99}}}},
        nlohmann::json{{"optimizer_steps", 229}, {"options", "deit3_small"}}}) {
    INFO(unsaid.dump());
    CHECK(test::stderr_of(dir.file("stderr.txt"), [&] {
            train::warn_if_moving_average_is_young("edited.safetensors", unsaid);
          }).empty());
  }
}

TEST_CASE("a saved log line is written back only for the epoch the checkpoint says",
          "[train][resume]") {
  test::TempDir dir;
  const std::string log = dir.file("log.txt");
  train::RunState saved;
  saved.epochs_done = 3;
  // An epoch that is not a whole number (the checkpoint edited by hand) threw a JSON type error
  // that ended the resume; 2^64 - 1 read as an int64_t is -1, so it matched a run of no epoch.
  for (const nlohmann::json& epoch :
       {nlohmann::json("2"), nlohmann::json(2.5), nlohmann::json::parse("18446744073709551615")}) {
    INFO(epoch.dump());
    test::write_bytes(log, {});
    saved.last_log_line = {{"epoch", epoch}, {"train_loss", 2.25}};
    CHECK_NOTHROW(train::restore_last_log_line(log, saved));
    CHECK(test::read_bytes(log).empty());
  }
  saved.epochs_done = 0;
  saved.last_log_line = {{"epoch", nlohmann::json::parse("18446744073709551615")}};
  train::restore_last_log_line(log, saved);
  CHECK(test::read_bytes(log).empty());
  saved.epochs_done = 3;
  saved.last_log_line = {{"epoch", 2}, {"train_loss", 2.25}};
  const std::string written =
      test::stderr_of(dir.file("stderr.txt"), [&] { train::restore_last_log_line(log, saved); });
  CHECK_THAT(written, Catch::Contains("lacked the line of epoch 3"));
  const std::vector<uint8_t> line = test::read_bytes(log);
  CHECK(std::string(line.begin(), line.end()) == "{\"epoch\":2,\"train_loss\":2.25}\n");
}

TEST_CASE("a saved log line is written back only after a line of an earlier epoch",
          "[train][resume]") {
  test::TempDir dir;
  const std::string log = dir.file("log.txt");
  auto said = [&](const std::function<void()>& check) {
    return test::stderr_of(dir.file("stderr.txt"), check);
  };
  train::RunState saved;
  saved.epochs_done = 3;
  saved.last_log_line = {{"epoch", 2}, {"train_loss", 2.25}};
  const std::string line = "{\"epoch\":2,\"train_loss\":2.25}\n";
  // The log holds the epoch's line already, or ends in a line that is no epoch's (edited by hand):
  // left as it is, and unremarked.
  for (const std::string& kept :
       {"{\"epoch\":1}\n" + line, std::string("{\"epoch\":1}\nnotes\n")}) {
    INFO(kept);
    test::write_bytes(log, {kept.begin(), kept.end()});
    CHECK(said([&] { train::restore_last_log_line(log, saved); }).empty());
    CHECK(text_of(log) == kept);
  }
  // A checkpoint whose line is of an epoch before its last (written by another build): not its
  // last epoch's, so not written as that.
  test::write_bytes(log, {});
  saved.last_log_line["epoch"] = 1;
  train::restore_last_log_line(log, saved);
  CHECK(text_of(log).empty());
  // A log that cannot take the line: the line is given with the warning, and nothing says it was
  // written.
  saved.last_log_line["epoch"] = 2;
  const std::string unwritable = dir.file("folder");
  std::filesystem::create_directory(unwritable);
  CHECK(said([&] { train::restore_last_log_line(unwritable, saved); }) ==
        "warning: the line of epoch 3 cannot be appended to " + unwritable +
            " (Is a directory); it reads: " + line);
}

TEST_CASE("a diverging run, another model's checkpoint or a new run never replaces a good one",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1) + " --no-model-ema").exit_code == 0);
  const std::string checkpoint = out + "/checkpoint.safetensors";
  const std::vector<uint8_t> good = test::read_bytes(checkpoint);
  const std::vector<uint8_t> log = test::read_bytes(out + "/log.txt");
  CliResult r = run_deit("eval --ema --checkpoint " + out + " --data " + data);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("holds no moving average of its weights (its run had "
                                       "--no-model-ema)"));

  // A new run in the finished run's folder, the run resumed past its end, and resumed with an EMA
  // it never kept: each refused, saying why.
  r = run_deit(tiny_train_args(data, out, 1) + " --seed 5");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("already holds a run") && Catch::Contains("--resume"));
  // --dry-run refuses it too (it reads no data, but knows where the run would write).
  r = run_deit(tiny_train_args(data, out, 1) + " --seed 5 --dry-run");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("already holds a run"));
  // An --output that is a file, or lies under one: the run could not make its folder.
  for (const std::string& in_file : {checkpoint, checkpoint + "/sub"}) {
    r = run_deit(tiny_train_args(data, in_file, 1) + " --dry-run");
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("'" + checkpoint + "' is a file, not a folder"));
  }
  r = run_deit(tiny_train_args(data, out, 1) + " --resume " + checkpoint);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("nothing is left to train"));
  // --dry-run reads the checkpoint's header: it refuses as the run would.
  r = run_deit("train --resume " + out + " --dry-run");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("nothing is left to train"));
  r = run_deit("train --resume " + out + " --epochs 2 --opt adamw --dry-run");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("was trained with --opt lamb, this run asks for adamw"));
  r = run_deit("train --resume " + checkpoint + " --model deit3_small --epochs 2");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--model deit3_small is not the model of checkpoint") &&
                           Catch::Contains("(deit3_tiny (custom))"));
  r = run_deit(tiny_train_args(data, out, 2) + " --resume " + checkpoint + " --model-ema");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("no EMA weights") && Catch::Contains("--no-model-ema"));
  // Resumed into the folder of another run: refused as a new run there would be.
  const std::string other = dir.file("other");
  REQUIRE(run_deit(tiny_train_args(data, other, 1) + " --no-model-ema").exit_code == 0);
  const std::vector<uint8_t> other_checkpoint = test::read_bytes(other + "/checkpoint.safetensors");
  r = run_deit("train --epochs 2 --resume " + checkpoint + " --output " + other);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("already holds a run"));
  CHECK(test::read_bytes(other + "/checkpoint.safetensors") == other_checkpoint);
  // Resumed from a copy of its checkpoint kept beside it (its folder is the default --output):
  // the run's own checkpoint.safetensors is not written over.
  const std::string kept = out + "/epoch1.safetensors";
  std::filesystem::copy_file(checkpoint, kept);
  r = run_deit("train --epochs 2 --resume " + kept);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("already holds a run (checkpoint.safetensors)") &&
                           Catch::Contains("give another --output"));
  CHECK(test::read_bytes(checkpoint) == good);
  std::filesystem::remove(kept);
  // A folder with a log and no checkpoint (its first save failed): no advice to resume it.
  const std::string log_only = dir.file("log_only");
  std::filesystem::create_directories(log_only);
  std::filesystem::copy_file(out + "/log.txt", log_only + "/log.txt");
  r = run_deit(tiny_train_args(data, log_only, 1));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("holds the log of a run but no checkpoint"));
  // Resumed on a dataset whose labels mean other classes.
  const std::string renamed = with_renamed_class(dir, data, "checkerboard", "zigzag");
  r = run_deit(tiny_train_args(renamed, out, 2) + " --resume " + checkpoint);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("was trained on other classes than '" + renamed + "'") &&
                           Catch::Contains("--finetune"));
  CHECK(test::read_bytes(out + "/log.txt") == log);
  // Resumed on a dataset of more classes than its model has: said as such, not as a --num-classes
  // the command did not give.
  const std::string more = dir.file("more");
  std::filesystem::copy(data, more, std::filesystem::copy_options::recursive);
  for (const char* split : {"/train/", "/val/"})
    std::filesystem::copy(more + split + "checkerboard", more + split + "zzz_extra",
                          std::filesystem::copy_options::recursive);
  r = run_deit("train --epochs 2 --resume " + checkpoint + " --data " + more);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("checkpoint '" + checkpoint + "' holds a model of ") &&
                           Catch::Contains("resume it on its own dataset") &&
                           !Catch::Contains("--num-classes"));
  // A model flag that changes the model is refused, naming the flag, before the weights are read
  // (the classes as well: not said as the checkpoint's).
  r = run_deit("train --epochs 2 --resume " + checkpoint + " --data " + more + " --num-classes 2");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--num-classes 2 does not fit the weights of checkpoint '" +
                                       checkpoint +
                                       "' (num-classes 4): a resumed run keeps its "
                                       "model; start a new run from those weights with "
                                       "--finetune " +
                                       checkpoint));
  r = run_deit("train --epochs 2 --resume " + checkpoint + " --input-size 16");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--input-size 16 (a 4x4 patch grid) does not fit the "
                                       "weights of checkpoint '" +
                                       checkpoint + "' (a 2x2 grid)"));
  // Each other size alike, where the whole model would be refused only once its weights are
  // read (--patch 2 at 4 px keeps the 2x2 grid, so that --patch is what is named).
  for (const auto& [flags, refusal] : std::vector<std::pair<std::string, std::string>>{
           {" --patch 2 --input-size 4", "--patch 2 does not fit the weights of checkpoint '"},
           {" --heads 4", "--heads 4 does not fit the weights of checkpoint '"},
           {" --depth 1", "--depth 1 does not fit the weights of checkpoint '"}}) {
    r = run_deit("train --epochs 2 --resume " + checkpoint + flags);
    INFO(flags << "\n" << r.output);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains(refusal) && !Catch::Contains("--finetune"));
  }
  CHECK(test::read_bytes(out + "/log.txt") == log);

  // AdamW with an absurd learning rate: the weights blow up and the loss stops being finite.
  // (--finetune takes the run's folder as well as its checkpoint.)
  r = run_deit(tiny_train_args(data, dir.file("diverge"), 3) +
               " --opt adamw --lr 1e30 --warmup-epochs 0 --finetune " + out);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("loss") || Catch::Contains("gradient"));
  CHECK_THAT(r.output, Catch::Contains(" at epoch 1"));  // counted from 1, as the progress lines
  CHECK_THAT(r.output, Catch::Contains("nothing since the last checkpoint was saved"));
  CHECK_THAT(r.output, Catch::Contains("note: fine-tuning with the pretrain recipe's values where "
                                       "no flag sets them; --recipe finetune"));
  CHECK_FALSE(std::filesystem::exists(dir.file("diverge") + "/checkpoint.safetensors"));

  r = run_deit(tiny_train_args(data, out, 3) + " --lr 1e30 --warmup-epochs 0 --opt lamb "
               "--resume " + checkpoint + " --dim 32");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("dim 16") && Catch::Contains("dim 32"));
  CHECK(test::read_bytes(checkpoint) == good);
}

TEST_CASE("deit train --finetune says what it changed of the weights it starts from",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  const auto& names = data::synthetic_class_names();
  const std::vector<std::string> ten(names.begin(), names.begin() + 10),
      four(names.begin(), names.begin() + 4), other_four(names.begin() + 4, names.begin() + 8);
  const std::string args =
      "train --model deit3_tiny --patch 4 --dim 16 --depth 2 --heads 2 "
      "--batch-size 16 --epochs 1 --warmup-epochs 0 --workers 2 "
      "--no-repeated-aug --data " +
      data;

  // 10 classes at 8 px (2x2 patches) -> the dataset's 4 at 16 px (4x4): a new head, a resized
  // position embedding, one line each.
  const std::string ten_at_8 = dir.file("ten/checkpoint.safetensors");
  model::save_checkpoint(ten_at_8, test::tiny_cli_model(10, 8, 5), {}, {{"epoch", 0}}, ten);
  CliResult r = run_deit(args + " --input-size 16 --output " + dir.file("a") + " --finetune " +
                         dir.file("ten"));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("--finetune: head: new, 10 -> 4 classes") &&
                           Catch::Contains("--finetune: pos_embed resized (bicubic), grid 2x2 -> "
                                           "4x4") &&
                           !Catch::Contains("head: kept"));

  // Another head count fits every tensor's shape, but not the model the source names.
  r = run_deit(args + " --input-size 16 --output " + dir.file("heads") + " --finetune " +
               dir.file("ten") + " --heads 4");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--finetune source '" + ten_at_8 +
                                       "' is for deit3_tiny "
                                       "(custom) (heads 2) but the model is deit3_tiny (custom) "
                                       "(heads 4)"));

  // As many classes, under other names (a weights file, which names them too): the head is kept,
  // with a warning; the same classes at the same size: nothing to say.
  const std::string other = dir.file("other.safetensors"), same = dir.file("same.safetensors");
  model::save_weights(other, test::tiny_cli_model(4, 8, 5), other_four);
  model::save_weights(same, test::tiny_cli_model(4, 8, 5), four);
  r = run_deit(args + " --input-size 8 --output " + dir.file("b") + " --finetune " + other);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output,
             Catch::Contains("warning: --finetune: head: kept (4 classes), although "
                             "--finetune source '" +
                             other +
                             "' was trained on other "
                             "classes than the dataset's (class 0 is '" +
                             other_four[0] + "' in the source, '" + four[0] + "' in the dataset") &&
                 !Catch::Contains("head: new") && !Catch::Contains("pos_embed"));
  r = run_deit(args + " --input-size 8 --output " + dir.file("c") + " --finetune " + same);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, !Catch::Contains("--finetune:"));

  // Without --model, the model the source names: one of custom sizes at its own resolution, a
  // preset at the stage's (not the 96 it was trained at).
  const std::string no_model = "train --dry-run --data " + data + " --output " + dir.file("d");
  r = run_deit(no_model + " --finetune " + dir.file("ten"));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  nlohmann::json options = nlohmann::json::parse(r.output);
  CHECK(options["model"] == "deit3_tiny (custom)");
  CHECK(options["dim"] == 16);
  CHECK(options["depth"] == 2);
  CHECK(options["heads"] == 2);
  CHECK(options["input_size"] == 8);
  model::ViTConfig tiny_at_96 = model::preset("deit3_tiny");
  tiny_at_96.input_size = 96;
  const std::string preset_weights = dir.file("preset.safetensors");
  model::save_weights(preset_weights, model::VisionTransformer(tiny_at_96), ten);
  r = run_deit(no_model + " --finetune " + preset_weights + " --recipe finetune");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  options = nlohmann::json::parse(r.output);
  CHECK(options["model"] == "deit3_tiny");
  const train::TrainOptions finetune_recipe = train::recipe_for("deit3_tiny", "finetune");
  CHECK(options["input_size"] == finetune_recipe.model.input_size);
  CHECK(options["lr"] == finetune_recipe.lr);
  // A file that does not name its model (timm's) leaves --model to be given.
  const std::string bare = dir.file("bare.safetensors");
  model::write_safetensors(bare, test::parameters_of(test::tiny_cli_model(4, 8, 5)));
  r = run_deit(no_model + " --finetune " + bare);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--model is required (unless --resume continues a run, or "
                                       "--finetune starts from a file that names its model"));
}

TEST_CASE("the position embedding is resized as torch's bicubic interpolate does", "[train]") {
  // f(x, y) = x^2 / 4 + y on a 4 x 4 grid (channel 1; channel 0 is constant), resized to 6 x 6.
  // Expected values: torch.nn.functional.interpolate(mode='bicubic', align_corners=False) in
  // float64 on the same grid.
  const int64_t C = 2;
  std::vector<float> values;
  for (int64_t y = 0; y < 4; ++y)
    for (int64_t x = 0; x < 4; ++x) {
      values.push_back(1.5f);
      values.push_back(static_cast<float>(x * x * 0.25 + y));
    }
  const Tensor resized = train::resize_pos_embed(Tensor::from_vector(values, {1, 16, C}), 4, 6);
  REQUIRE(resized.shape() == Shape{1, 36, C});
  const std::vector<float> r = resized.to_vector<float>();
  for (int64_t i = 0; i < 36; ++i) CHECK(r[i * C] == Approx(1.5f));
  const double row2[] = {1.191261574074, 1.267650462963, 1.570601851852,
                         2.001157407407, 2.908275462963, 3.571469907407};
  const double column5[] = {2.271701388889, 2.764756944444, 3.571469907407,
                            4.145543981481, 4.952256944444, 5.4453125};
  for (int64_t i = 0; i < 6; ++i) {
    CHECK(r[(2 * 6 + i) * C + 1] == Approx(row2[i]).epsilon(1e-6));
    CHECK(r[(i * 6 + 5) * C + 1] == Approx(column5[i]).epsilon(1e-6));
  }
}

TEST_CASE("a pos_embed with a class-token slot is named as another ViT's", "[train]") {
  model::ViTConfig c;
  c.patch = 4;
  c.dim = 8;
  c.heads = 2;
  c.depth = 1;
  c.input_size = 16;  // a 4 x 4 grid; the file's is 3 x 3 + 1 (DeiT I's layout)
  NamedTensors tensors = {{"pos_embed", Tensor::zeros({1, 10, 8})}};
  CHECK_THROWS_WITH(train::fit_pos_embed(tensors, c, "'w.safetensors'"),
                    Catch::Contains("'w.safetensors': pos_embed") &&
                        Catch::Contains("is not a square patch grid (3x3 + 1: the weights of a "
                                        "ViT with a class-token slot in its pos_embed"));
  tensors = {{"pos_embed", Tensor::zeros({1, 11, 8})}};
  CHECK_THROWS_WITH(train::fit_pos_embed(tensors, c, "'w.safetensors'"),
                    Catch::EndsWith("is not a square patch grid"));
}

TEST_CASE("resize_pos_embed interpolates as torch's bicubic, with align_corners=False", "[train]") {
  // timm resizes with F.interpolate(mode="bicubic", align_corners=False): its cubic kernel with
  // a = -0.75, source positions between pixel centres, taps clamped at the edges. A ramp 0, 1
  // widened to 4 overshoots at both ends there. Channel 0 rises along x and channel 1 along y, so
  // a transposed grid shows too.
  std::vector<float> ramp;  // (1, 2 x 2, 2)
  for (int y = 0; y < 2; ++y)
    for (int x = 0; x < 2; ++x) {
      ramp.push_back(float(x));
      ramp.push_back(float(y));
    }
  const std::vector<float> wide =
      train::resize_pos_embed(Tensor::from_vector(ramp, {1, 4, 2}), 2, 4).to_vector<float>();
  REQUIRE(wide.size() == 4 * 4 * 2);
  const double torch[] = {-0.10546875, 0.2265625, 0.7734375, 1.10546875};
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 4; ++x) {
      INFO("y " << y << ", x " << x);
      CHECK(wide[(y * 4 + x) * 2] == Approx(torch[x]).margin(1e-6));
      CHECK(wide[(y * 4 + x) * 2 + 1] == Approx(torch[y]).margin(1e-6));
    }
  // To the same grid, every value is its own (the taps beside it weigh 0).
  std::vector<float> values;
  for (int i = 0; i < 3 * 3 * 2; ++i) values.push_back(float(i * i % 7) - 2.5f);
  CHECK(train::resize_pos_embed(Tensor::from_vector(values, {1, 9, 2}), 3, 3).to_vector<float>() ==
        values);
  // A pos_embed of no position is no grid to resize (its taps would read before its start).
  model::ViTConfig c;
  c.patch = 4;
  c.dim = 8;
  c.heads = 2;
  c.depth = 1;
  c.input_size = 16;
  NamedTensors empty = {{"pos_embed", Tensor::zeros({1, 0, 8})}};
  CHECK_THROWS_WITH(train::fit_pos_embed(empty, c, "'w.safetensors'"),
                    Catch::EndsWith("is not a square patch grid"));
}

TEST_CASE("a run's output folder is locked: a second run into it is refused while it trains",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1) + " --quiet").exit_code == 0);
  const std::string checkpoint = out + "/checkpoint.safetensors";
  const std::vector<uint8_t> saved = test::read_bytes(checkpoint);
  const std::vector<uint8_t> log = test::read_bytes(out + "/log.txt");
  // What a live run's save looks like halfway: a second run must not delete it.
  const std::string unfinished = checkpoint + ".tmp.999999";
  { std::ofstream(unfinished) << "half a checkpoint"; }
  {
    const train::OutputLock held(out, "--output");  // as the run writing the folder holds it
    for (const std::string& args :
         {"train --resume " + out + " --epochs 2", tiny_train_args(data, out, 1) + " --seed 2"}) {
      const CliResult r = run_deit(args);
      INFO(r.output);
      CHECK(r.exit_code != 0);
      CHECK_THAT(r.output, Catch::Contains("deit: error: '" + out +
                                           "' is in use by another deit "
                                           "process (pid " +
                                           std::to_string(getpid()) + " on ") &&
                               Catch::Contains("): wait for it to end, or give another --output"));
    }
    CHECK(std::filesystem::exists(unfinished));
    CHECK(test::read_bytes(checkpoint) == saved);
    CHECK(test::read_bytes(out + "/log.txt") == log);
    // A dry run writes nothing, and may plan the run that follows the one holding the folder.
    CHECK(run_deit("train --resume " + out + " --epochs 2 --dry-run").exit_code == 0);
  }
  {
    // A run in its first epoch has no checkpoint yet: a resume of it is told it runs.
    const std::string folder = dir.path() + "/starting";
    std::filesystem::create_directories(folder);
    const train::OutputLock held(folder, "--output");
    const CliResult r = run_deit("train --resume " + folder);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("'" + folder + "' is in use by another deit process"));
  }
  // Released, the resume runs: it clears what an interrupted save left, and its lock file goes.
  CliResult r = run_deit("train --resume " + out + " --epochs 2 --quiet");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_FALSE(std::filesystem::exists(unfinished));
  CHECK_FALSE(std::filesystem::exists(out + "/.lock"));
  CHECK(test::log_lines(out + "/log.txt").size() == 2);
  // The lock file a killed run leaves is no lock: the kernel dropped its lock with the process.
  { std::ofstream(out + "/.lock") << "pid 999999 on a node that crashed\n"; }
  r = run_deit("train --resume " + out + " --epochs 3 --quiet");
  CHECK(r.exit_code == 0);
  CHECK_FALSE(std::filesystem::exists(out + "/.lock"));
  // A file where the folder should be is named as such (it was blamed on permissions).
  CHECK_THROWS_WITH(train::OutputLock(checkpoint, "--out"),
                    Catch::Contains("'" + checkpoint + "' is not a folder"));
}

TEST_CASE("an output folder's lock refuses a second holder, naming the first on one line",
          "[train][resume]") {
  test::TempDir dir;
  const std::string folder = dir.path() + "/run";
  std::filesystem::create_directories(folder);
  char host[256] = {};
  REQUIRE(gethostname(host, sizeof host - 1) == 0);
  {
    const train::OutputLock held(folder, "--output");
    // flock conflicts between two opens of the file even within one process.
    CHECK_THROWS_WITH(train::OutputLock(folder, "--output"),
                      "'" + folder + "' is in use by another deit process (pid " +
                          std::to_string(getpid()) + " on " + host +
                          "): wait for it to end, or give another --output");
  }
  // Released: the lock file is gone, and the folder can be locked again.
  CHECK_FALSE(std::filesystem::exists(folder + "/.lock"));
  {
    const train::OutputLock again(folder, "--output");
    // The folder moved away and made again while held (by hand, or by another run that holds it
    // now): the release must not remove the lock file now at the path, which is not this lock's.
    std::filesystem::rename(folder, dir.path() + "/moved");
    std::filesystem::create_directories(folder);
    test::write_bytes(folder + "/.lock", {'x'});
  }
  CHECK(std::filesystem::exists(folder + "/.lock"));
}

namespace {

// Runs instead of this process's next flock(2), once: a holder that ends between another run's
// open and its lock, and a file system without locks, cannot be arranged from outside OutputLock.
std::function<int(int, int)> g_next_flock;

int real_flock(int fd, int operation) {
  return static_cast<int>(syscall(SYS_flock, fd, operation));
}

// What a lock file holds for its holder, this process.
std::string this_holder() {
  char host[256] = {};
  REQUIRE(gethostname(host, sizeof host - 1) == 0);
  return "pid " + std::to_string(getpid()) + " on " + host + "\n";
}

// The descriptors open in this process that refer to `path` (all of them where it is "").
std::vector<int> descriptors_of(const std::string& path = "") {
  std::vector<int> found;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code error;
    const std::filesystem::path target = std::filesystem::read_symlink(entry.path(), error);
    if (!error && (path.empty() || target == std::filesystem::canonical(path)))
      found.push_back(std::stoi(entry.path().filename().string()));
  }
  return found;
}

}  // namespace

// Takes the place of the C library's for this test binary, whose flock calls are OutputLock's.
extern "C" int flock(int fd, int operation) noexcept {
  if (!g_next_flock) return real_flock(fd, operation);
  const std::function<int(int, int)> instead = std::exchange(g_next_flock, nullptr);
  return instead(fd, operation);
}

TEST_CASE("an output folder's lock whose holder ends as it is taken is taken on the file there now",
          "[train][resume]") {
  test::TempDir dir;
  const std::string folder = dir.path() + "/run";
  std::filesystem::create_directories(folder);
  const size_t descriptors = descriptors_of().size();
  // The holder ends, removing its lock file, after the next run opened that file and before it
  // locks it; perhaps a third run makes the file anew, not yet locked, in between.
  for (const bool made_anew : {false, true}) {
    INFO("lock file made anew: " << made_anew);
    auto holder = std::make_unique<train::OutputLock>(folder, "--output");
    g_next_flock = [&](int fd, int operation) {
      holder.reset();
      if (made_anew) test::write_bytes(folder + "/.lock", {});
      return real_flock(fd, operation);
    };
    {
      const train::OutputLock next(folder, "--output");
      CHECK_FALSE(g_next_flock);
      // A lock on the removed file would keep no run out: the one at the path is this run's.
      CHECK(text_of(folder + "/.lock") == this_holder());
      CHECK_THROWS_WITH(train::OutputLock(folder, "--output"),
                        Catch::Contains("' is in use by another deit process (pid "));
    }
    CHECK_FALSE(std::filesystem::exists(folder + "/.lock"));
    // Neither the removed file's descriptor nor the refused run's is left open.
    CHECK(descriptors_of().size() == descriptors);
  }
}

TEST_CASE("an output folder's lock file holds its holder alone, open to no child process",
          "[train][resume]") {
  test::TempDir dir;
  const std::string folder = dir.path() + "/run";
  std::filesystem::create_directories(folder);
  // What a crashed run on a host of a longer name left.
  const std::string crashed = "pid 999999 on a node whose name is longer than any machine's here\n";
  test::write_bytes(folder + "/.lock", {crashed.begin(), crashed.end()});
  const train::OutputLock held(folder, "--output");
  CHECK(text_of(folder + "/.lock") == this_holder());
  // A child that kept the descriptor (a shell, a worker that execs) would hold the lock past the
  // run's end, refusing its resume.
  const std::vector<int> lock_descriptors = descriptors_of(folder + "/.lock");
  REQUIRE(lock_descriptors.size() == 1);
  CHECK((fcntl(lock_descriptors[0], F_GETFD) & FD_CLOEXEC) != 0);
}

TEST_CASE("an output folder's lock goes without on a file system without locks, and no further",
          "[train][resume]") {
  test::TempDir dir;
  const std::string folder = dir.path() + "/run";
  std::filesystem::create_directories(folder);
  const std::string lock_file = folder + "/.lock";
  const size_t descriptors = descriptors_of().size();
  // What Lustre without -o flock, and file systems that have no locks at all, answer.
  for (const int error : {ENOLCK, ENOSYS, EOPNOTSUPP}) {
    INFO(std::strerror(error));
    g_next_flock = [error](int, int) {
      errno = error;
      return -1;
    };
    std::optional<train::OutputLock> unlocked;
    CHECK(test::stderr_of(dir.file("stderr.txt"), [&] { unlocked.emplace(folder, "--output"); }) ==
          "warning: cannot lock '" + lock_file + "' (" + std::strerror(error) +
              "): a second deit train into '" + folder +
              "' at the same time would not be refused\n");
    // Written all the same: that is what shows the run can write to its folder.
    CHECK(text_of(lock_file) == this_holder());
  }
  // Any other failure stops the run.
  g_next_flock = [](int, int) {
    errno = EIO;
    return -1;
  };
  CHECK_THROWS_WITH(train::OutputLock(folder, "--output"),
                    "cannot lock '" + lock_file + "': " + std::strerror(EIO));
  CHECK(descriptors_of().size() == descriptors);
  // A holder that has locked the file but not yet written it is not named as "()".
  test::write_bytes(lock_file, {});
  const int locked = open(lock_file.c_str(), O_RDWR);
  REQUIRE(locked >= 0);
  REQUIRE(real_flock(locked, LOCK_EX) == 0);
  CHECK_THROWS_WITH(train::OutputLock(folder, "--output"),
                    "'" + folder +
                        "' is in use by another deit process: wait for it to end, or give "
                        "another --output");
  close(locked);
}

TEST_CASE(
    "an output folder is cleared of unfinished saves alone, and names its checkpoint to resume",
    "[train][resume]") {
  test::TempDir dir;
  const std::string folder = dir.path() + "/run";
  std::filesystem::create_directories(folder);
  // Two saves cut short, the run's files, and a file of the user's whose name merely holds a
  // save's.
  for (const std::string name :
       {"checkpoint.safetensors.tmp.4242", "checkpoint.safetensors.tmp.17",
        "checkpoint.safetensors", "log.txt", "old.checkpoint.safetensors.tmp.1"})
    test::write_bytes(folder + "/" + name, {'x'});
  { const train::OutputFolder resumed(folder, true); }
  std::vector<std::string> left;
  for (const auto& entry : std::filesystem::directory_iterator(folder))
    left.push_back(entry.path().filename().string());
  std::sort(left.begin(), left.end());
  CHECK(left == std::vector<std::string>{"checkpoint.safetensors", "log.txt",
                                         "old.checkpoint.safetensors.tmp.1"});
  CHECK_THROWS_WITH(
      train::OutputFolder(folder, false),
      "'" + folder + "' already holds a run (checkpoint.safetensors): continue it with --resume " +
          folder + "/checkpoint.safetensors, or give another --output");
  // The folder's own checkpoint however its path is spelled; not a copy of it beside it.
  train::TrainOptions o;
  o.output_dir = folder;
  o.resume = dir.path() + "/./run/../run/checkpoint.safetensors";
  CHECK(train::resumes_its_checkpoint(o));
  std::filesystem::copy_file(folder + "/checkpoint.safetensors", folder + "/epoch1.safetensors");
  o.resume = folder + "/epoch1.safetensors";
  CHECK_FALSE(train::resumes_its_checkpoint(o));
}

TEST_CASE("a log line that cannot be written says the epoch is saved and how to go on",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1) + " --quiet").exit_code == 0);
  // A folder where the log should be: unwritable even to root, whom permissions do not stop.
  std::filesystem::remove(out + "/log.txt");
  std::filesystem::create_directory(out + "/log.txt");
  const std::string cannot_append = "cannot append to log '" + out + "/log.txt': Is a directory; ";
  CliResult r = run_deit("train --resume " + out + " --epochs 3 --quiet");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains(cannot_append + "epoch 2 is saved in " + out +
                                       "/checkpoint.safetensors: fix the log's permissions and "
                                       "--resume (the log lacks the epoch's line: {") &&
                           Catch::Contains("\"epoch\":1,"));
  CHECK(model::read_checkpoint_header(out + "/checkpoint.safetensors").state["epoch"] == 1);
  // After the last epoch there is nothing left to resume.
  r = run_deit("train --resume " + out + " --epochs 3 --quiet");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains(cannot_append + "epoch 3, the run's last, is saved in " +
                                       out + "/checkpoint.safetensors (the log lacks"));
}

TEST_CASE("a log line that the disk cannot take is an error, not lost at the close", "[train]") {
  // The line fits the stdio buffer, so its write fails only when the file is closed, as on a full
  // disk: that must be reported as any other failed append.
  test::TempDir dir;
  const std::string log = dir.file("log.txt");
  test::write_bytes(log, std::vector<uint8_t>(100, ' '));
  const nlohmann::json line = {{"epoch", 4}, {"train_loss", 1.5}};
  {
    test::FileSizeLimit limit(100);
    CHECK_THROWS_WITH(train::append_log_line(log, line, "run/checkpoint.safetensors", false),
                      Catch::Contains("cannot append to log '" + log +
                                      "': File too large; epoch 5 "
                                      "is saved in run/checkpoint.safetensors"));
  }
  train::append_log_line(log, line, "run/checkpoint.safetensors", false);
  CHECK(std::filesystem::file_size(log) == 100 + line.dump().size() + 1);
}

TEST_CASE("a resumed run's log is left alone, and unremarked, when it holds what it should",
          "[train][resume]") {
  test::TempDir dir;
  const std::string log = dir.file("run/log.txt");
  const std::string two_lines = "{\"epoch\":0}\n{\"epoch\":1}\n";
  test::write_bytes(log, {two_lines.begin(), two_lines.end()});
  auto said = [&](const std::function<void()>& check) {
    return test::stderr_of(dir.file("stderr.txt"), check);
  };
  // A line for each epoch the checkpoint trained: no warning, and nothing cut off the log.
  CHECK(said([&] { train::warn_of_missing_log_lines(log, 2); }).empty());
  CHECK(said([&] { train::drop_unfinished_last_line(log); }).empty());
  CHECK(test::read_bytes(log) == std::vector<uint8_t>(two_lines.begin(), two_lines.end()));
  CHECK_THAT(said([&] { train::warn_of_missing_log_lines(log, 3); }),
             Catch::Contains("holds 2 epoch lines, its checkpoint 3 epochs"));
  // Resumed into another folder: only a log that starts there gets the note of where the rest
  // is, and that says so when the resumed run's log is not beside its checkpoint either.
  CHECK(said([&] { train::note_log_starts_apart(log, dir.file("gone/log.txt"), 2); }).empty());
  const std::string fresh = dir.file("branch/log.txt");
  CHECK(said([&] { train::note_log_starts_apart(fresh, dir.file("gone/log.txt"), 1); }) ==
        "note: " + fresh +
            " starts at epoch 2: the lines of the 1 epoch before were in the "
            "resumed run's log, which is not beside its checkpoint\n");
  // A log whose only line was cut short is emptied, not kept as half a line.
  const std::string half = "{\"epoch\":0,\"tra";
  test::write_bytes(fresh, {half.begin(), half.end()});
  CHECK_THAT(said([&] { train::drop_unfinished_last_line(fresh); }),
             Catch::Contains("(15 bytes, a write cut short): removed"));
  CHECK(std::filesystem::file_size(fresh) == 0);
}

TEST_CASE("a resumed run's log is told what it lacks in its own numbers", "[train][resume]") {
  test::TempDir dir;
  const std::string log = dir.file("run/log.txt");
  auto said = [&](const std::function<void()>& check) {
    return test::stderr_of(dir.file("stderr.txt"), check);
  };
  const std::string first = "{\"epoch\":0}\n";
  test::write_bytes(log, {first.begin(), first.end()});
  const std::string one_of_two = said([&] { train::warn_of_missing_log_lines(log, 2); });
  CHECK_THAT(one_of_two, Catch::StartsWith("warning: " + log +
                                           " holds 1 epoch line, its checkpoint 2 epochs: ") &&
                             Catch::EndsWith("; the log goes on from epoch 3\n"));
  // Only epoch lines count, each epoch once and only up to the checkpoint's: a note and a blank
  // line added by hand, epoch 0's line twice and a later run's line stand for no epoch 1.
  const std::string padded =
      first + "\nmoved to node 7\n" + first + "{\"epoch\":\"1\"}\n" + "{\"epoch\":4}\n";
  test::write_bytes(log, {padded.begin(), padded.end()});
  CHECK_THAT(said([&] { train::warn_of_missing_log_lines(log, 2); }),
             Catch::Contains(" holds 1 epoch line, its checkpoint 2 epochs: "));
  CHECK(said([&] { train::warn_of_missing_log_lines(log, 1); }).empty());
  test::write_bytes(log, {first.begin(), first.end()});
  const std::string fresh = dir.file("branch/log.txt");
  test::write_bytes(fresh, {});
  CHECK_THAT(said([&] { train::warn_of_missing_log_lines(fresh, 1); }),
             Catch::Contains(" holds 0 epoch lines, its checkpoint 1 epoch: ") &&
                 Catch::EndsWith("; the log goes on from epoch 2\n"));
  // An empty log has no unfinished line to cut.
  CHECK(said([&] { train::drop_unfinished_last_line(fresh); }).empty());
  CHECK(std::filesystem::exists(fresh));
  // Resumed into another folder, from a run whose log is beside its checkpoint: that one is named.
  CHECK(said([&] { train::note_log_starts_apart(fresh, log, 2); }) ==
        "note: " + fresh + " starts at epoch 3: the lines of the 2 epochs before are in " + log +
            "\n");
  // Cut short after a whole line: the half line alone goes, and is what the note counts.
  const std::string cut = first + "{\"epoch\":1,\"tr";
  test::write_bytes(log, {cut.begin(), cut.end()});
  CHECK_THAT(
      said([&] { train::drop_unfinished_last_line(log); }),
      Catch::EndsWith(" ended in an unfinished line (14 bytes, a write cut short): removed\n"));
  CHECK(text_of(log) == first);
}

TEST_CASE("a stopped run's way to continue is quoted for the shell where it has to be",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  const std::string out = dir.path() + "/it's a run";
  const auto stopped = test::run_and_signal_at(
      tiny_train_args(data, "'" + dir.path() + "/it'\\''s a run'", 1) + " --batch-size 4",
      "epoch 1/1  3/24", SIGTERM);
  REQUIRE(stopped);
  INFO(stopped->output);
  const std::string quoted = "'" + dir.path() + "/it'\\''s a run/checkpoint.safetensors'";
  const std::string command = std::string(DEIT_BINARY) + " train --resume " + quoted;
  REQUIRE_THAT(stopped->output, Catch::Contains("continue:  " + command + "\n"));
  // The command as printed, pasted into a shell, goes on with the run.
  const CliResult r = test::run_shell(command + " --quiet");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(test::log_lines(out + "/log.txt").size() == 1);
}

TEST_CASE("deit train refuses a --save-every that is not a finite number of minutes",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), never = dir.file("never");
  for (const std::string value : {"nan", "inf", "-1"}) {
    const CliResult r = run_deit(tiny_train_args(data, never, 1) + " --save-every " + value);
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("--save-every must be a finite number of minutes >= 0 "
                                         "(0: off), got " +
                                         value));
    CHECK_FALSE(std::filesystem::exists(never));
  }
}

TEST_CASE("a train split that changed resumes between epochs, with a warning, not within one",
          "[train][resume][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  // Stopped within epoch 1 (SIGTERM: the run saves the step it is at).
  const auto stopped =
      test::run_and_signal_at(tiny_train_args(data, out, 2), "epoch 1/2  3/6", SIGTERM);
  REQUIRE(stopped);
  const std::string first =
      data + "/train/checkerboard/" +
      std::filesystem::directory_iterator(data + "/train/checkerboard")->path().filename().string();
  const std::vector<uint8_t> image = test::read_bytes(first);
  std::filesystem::remove(first);
  CliResult r = run_deit("train --resume " + out);
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("and the split holds 95 images, 96 when") &&
                           Catch::Contains("put the train split back as it was"));
  // As many images, but one under another name: the saved order would now pick other images.
  const std::string renamed = data + "/train/checkerboard/renamed.png";
  test::write_bytes(renamed, image);
  r = run_deit("train --resume " + out);
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("and the split holds other images than when '" + out +
                                       "/checkpoint.safetensors' was saved (as many, 96, but not "
                                       "the same files)") &&
                           Catch::Contains("put the train split back as it was"));
  // Put back, the epoch finishes; then, between epochs, other files and one image fewer each go on
  // with a warning.
  std::filesystem::rename(renamed, first);
  REQUIRE(run_deit("train --resume " + out + " --epochs 1").exit_code == 0);
  std::filesystem::rename(first, renamed);
  r = run_deit("train --resume " + out + " --epochs 2");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: the train split of '" + data +
                                       "' holds other images than when"));
  std::filesystem::remove(renamed);
  r = run_deit("train --resume " + out + " --epochs 3");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: the train split of '" + data +
                                       "' holds 95 images, 96 when"));
  CHECK(test::log_lines(out + "/log.txt").size() == 3);
}

TEST_CASE("a resumed run whose log lacks epochs its checkpoint trained says so", "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 2)).exit_code == 0);
  std::filesystem::remove(out + "/log.txt");
  // The last epoch's line comes back from the checkpoint; the first is lost.
  const CliResult r = run_deit("train --resume " + out + " --epochs 3");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: " + out +
                                       "/log.txt holds 1 epoch line, its "
                                       "checkpoint 2 epochs: the lines of the epochs between are "
                                       "lost"));
  const std::vector<nlohmann::json> lines = test::log_lines(out + "/log.txt");
  REQUIRE(lines.size() == 2);
  CHECK(lines[0]["epoch"] == 1);
  CHECK(lines[1]["epoch"] == 2);
  // Resumed into a folder of its own: its log starts there, and says where the rest is.
  const std::string branch = dir.file("branch");
  const CliResult apart = run_deit("train --resume " + out + " --epochs 4 --output " + branch);
  INFO(apart.output);
  REQUIRE(apart.exit_code == 0);
  CHECK_THAT(apart.output, Catch::Contains("note: " + branch +
                                           "/log.txt starts at epoch 4: the lines of the 3 epochs "
                                           "before are in " +
                                           out + "/log.txt"));
  CHECK(test::log_lines(branch + "/log.txt").size() == 1);
}

TEST_CASE("a checkpoint whose optimizer or EMA state does not fit is named when resumed",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1)).exit_code == 0);
  // A copy with one state tensor left out (a checkpoint trimmed by hand, say).
  const model::SafetensorsContents saved = model::read_safetensors(out + "/checkpoint.safetensors");
  for (const std::string left_out : {"optim.step", "ema.head.bias"}) {
    INFO(left_out);
    NamedTensors kept;
    for (const auto& [name, t] : saved.tensors)
      if (name != left_out) kept.emplace_back(name, t);
    const std::string trimmed = dir.file("trimmed.safetensors");
    model::write_safetensors(trimmed, kept, saved.metadata);
    const CliResult r = run_deit("train --resume " + trimmed + " --epochs 2 --output " +
                                 dir.file("resumed_" + left_out));
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("checkpoint '" + trimmed + "': ") &&
                             Catch::Contains(" state: missing entry '" +
                                             left_out.substr(left_out.find('.') + 1) + "'"));
  }
}

TEST_CASE("a run stopped between saving an epoch and logging it logs the epoch when resumed",
          "[train][resume][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 2)).exit_code == 0);
  const std::string log = out + "/log.txt";
  const std::vector<uint8_t> whole = test::read_bytes(log);
  const std::vector<nlohmann::json> uninterrupted = test::log_lines(log);
  // As a kill in the moment after the last epoch's save leaves it: the run had finished. The
  // refusal to train further comes with the line written back, byte for byte.
  const auto second_line = std::find(whole.begin(), whole.end(), '\n') + 1;
  test::write_bytes(log, {whole.begin(), second_line});
  CliResult r = run_deit("train --resume " + out);
  INFO(r.output);
  CHECK_THAT(r.output, Catch::Contains("note: " + log +
                                       " lacked the line of epoch 2, whose checkpoint was saved "
                                       "before the run stopped: written from the checkpoint") &&
                           Catch::Contains("nothing is left to train"));
  CHECK(test::read_bytes(log) == whole);
  // A write cut short left half the last line, without its newline: cut off, then written back
  // whole from the checkpoint (appended to, it would have made one line of two).
  const auto half_last_line = second_line + (whole.end() - second_line) / 2;
  test::write_bytes(log, {whole.begin(), half_last_line});
  r = run_deit("train --resume " + out);
  INFO(r.output);
  CHECK_THAT(r.output, Catch::Contains("note: " + log + " ended in an unfinished line (" +
                                       std::to_string(half_last_line - second_line) +
                                       " bytes, a write cut short): removed") &&
                           Catch::Contains("written from the checkpoint"));
  CHECK(test::read_bytes(log) == whole);
  // A last line edited by hand into no epoch line is left as it is (its epoch a word threw
  // nlohmann's type error, ending the resume).
  std::string edited(whole.begin(), second_line);
  edited += "{\"epoch\": \"two\"}\n";
  test::write_bytes(log, {edited.begin(), edited.end()});
  r = run_deit("train --resume " + out);
  CHECK_THAT(r.output, Catch::Contains("nothing is left to train") &&
                           !Catch::Contains("type_error") && !Catch::Contains("written from"));
  CHECK(test::read_bytes(log) == std::vector<uint8_t>(edited.begin(), edited.end()));
  // A log whose last line is there has nothing written back, whatever it lacks before: an earlier
  // gap (an epoch saved unevaluated) is only warned about.
  test::write_bytes(log, {second_line, whole.end()});
  r = run_deit("train --resume " + out + " --epochs 3");
  REQUIRE(r.exit_code == 0);
  CHECK_FALSE(Catch::Contains("note:").match(r.output));
  CHECK(test::log_lines(log).size() == 2);
  // Stopped so after the first epoch, the run goes on with a whole log: the uninterrupted run's,
  // but for the times.
  REQUIRE(run_deit(tiny_train_args(data, dir.file("first"), 1)).exit_code == 0);
  test::write_bytes(dir.file("first/log.txt"), {});
  r = run_deit("train --resume " + dir.file("first") + " --epochs 2");
  REQUIRE(r.exit_code == 0);
  auto untimed = [](std::vector<nlohmann::json> lines) {
    for (nlohmann::json& line : lines) {
      line.erase("train_images_per_s");
      line.erase("epoch_time_s");
    }
    return lines;
  };
  CHECK(untimed(test::log_lines(dir.file("first/log.txt"))) == untimed(uninterrupted));
}

TEST_CASE("shards packed smaller than training or evaluation needs are warned about",
          "[train][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), shards = dir.file("shards");
  // Packed at a shorter side of 6, the 16-pixel images are below the 8 the runs need.
  auto pack = [&](const std::string& short_side) {
    for (const char* split : {"train", "val"})
      REQUIRE(run_deit("pack --src " + data + "/" + split + " --out " + shards + "/" + split +
                       ".shard --short-side " + short_side)
                  .exit_code == 0);
  };
  pack("6");
  CliResult r = run_deit(tiny_train_args(shards, dir.file("run"), 1));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output,
             Catch::Contains("warning: " + shards +
                             "/train.shard was packed with --short-side 6, below the 8 pixels "
                             "that training at 8 needs: those of its images whose shorter side "
                             "was above 6 were shrunk to 6 and are enlarged again") &&
                 Catch::Contains("warning: " + shards +
                                 "/val.shard was packed with --short-side 6, below the 8 pixels "
                                 "that evaluation at 8 resizes to") &&
                 Catch::Contains("(deit pack --short-side 8 or more keeps them)"));
  // deit eval: at crop ratio 0.5, 8-pixel crops of images resized to 16.
  r = run_deit("eval --checkpoint " + dir.file("run") + " --data " + shards +
               " --eval-crop-ratio 0.5");
  CHECK_THAT(r.output, Catch::Contains("below the 16 pixels that evaluation at 8 resizes to"));
  // Packed at 8, nothing is enlarged at crop ratio 1.
  pack("8");
  r = run_deit(tiny_train_args(shards, dir.file("again"), 1));
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, !Catch::Contains("was packed with"));
  // Packed at 20, the 16-pixel images were kept as they are, though the runs need 24: packing
  // again would change nothing, so nothing is said.
  pack("20");
  r = run_deit(tiny_train_args(shards, dir.file("native"), 1) + " --input-size 24");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, !Catch::Contains("was packed with"));
}

TEST_CASE("a resumed run whose val split changed says its best top-1 was scored on the other",
          "[train][resume][cli]") {
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  REQUIRE(run_deit(tiny_train_args(data, out, 1)).exit_code == 0);
  std::filesystem::remove(
      std::filesystem::directory_iterator(data + "/val/" + data::synthetic_class_names()[0])
          ->path());
  const CliResult r = run_deit("train --resume " + out + " --epochs 2");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("warning: the val split of '" + data +
                                       "' holds 15 images, "
                                       "16 when") &&
                           Catch::Contains("the run's best top-1 so far"));
}

TEST_CASE("a fine-tune starts from the source's weights, with a fresh head for new classes",
          "[train]") {
  // RECIPE.md section 2: fine-tuning starts from the pre-trained weights; the position embedding
  // is resized (bicubic) over its patch grid, and the head is re-initialised only when the class
  // count changes. Every other tensor must be the source's exactly: notes about the resize and
  // the head are no proof that the weights were loaded at all.
  test::TempDir dir;
  const auto& names = data::synthetic_class_names();
  const std::vector<std::string> ten(names.begin(), names.begin() + 10),
      four(names.begin(), names.begin() + 4);
  const std::string weights = dir.file("source.safetensors");
  const model::VisionTransformer source = test::tiny_cli_model(10, 8, 5);  // a 2 x 2 grid
  model::save_weights(weights, source, ten);
  const test::Tensors source_tensors = test::read_tensors(test::parameters_of(source));

  // Another seed, 4 classes at 16 px (a 4 x 4 grid).
  model::VisionTransformer target = test::tiny_cli_model(4, 16, 6);
  const test::Tensors initial = test::read_tensors(test::parameters_of(target));
  const std::vector<std::string> notes = train::load_finetune_weights(target, weights, four);
  CHECK(notes.size() == 2);
  const test::Tensors loaded = test::read_tensors(test::parameters_of(target));
  const NamedTensors source_parameters = test::parameters_of(source);
  const Tensor* source_pos = model::find_tensor(source_parameters, "pos_embed");
  REQUIRE(source_pos != nullptr);
  const std::vector<double> resized =
      train::resize_pos_embed(*source_pos, 2, 4).to_vector<double>();
  REQUIRE(loaded.size() == initial.size());
  for (const auto& [name, values] : loaded) {
    INFO(name);
    if (name == "head.weight" || name == "head.bias")
      CHECK(values == initial.at(name));  // 10 -> 4 classes: the target's own initialisation
    else if (name == "pos_embed")
      CHECK(values == resized);
    else
      CHECK(values == source_tensors.at(name));
  }

  // Fewer classes in the source than in the dataset: a fresh head as well, not a refusal.
  model::VisionTransformer more = test::tiny_cli_model(12, 8, 6);
  const test::Tensors more_initial = test::read_tensors(test::parameters_of(more));
  const std::vector<std::string> more_notes = train::load_finetune_weights(more, weights, {});
  REQUIRE(more_notes.size() == 1);
  CHECK(more_notes[0] == "--finetune: head: new, 10 -> 12 classes (initialised afresh)");
  const test::Tensors more_loaded = test::read_tensors(test::parameters_of(more));
  CHECK(more_loaded.at("head.weight") == more_initial.at("head.weight"));
  CHECK(more_loaded.at("blocks.0.attn.qkv.weight") ==
        source_tensors.at("blocks.0.attn.qkv.weight"));

  // As many classes at the same size: every tensor, the head too, is the source's.
  model::VisionTransformer same = test::tiny_cli_model(10, 8, 6);
  CHECK(train::load_finetune_weights(same, weights, ten).empty());
  CHECK(test::read_tensors(test::parameters_of(same)) == source_tensors);

  // A source that names no classes (timm's) has none to compare with the dataset's: its head is
  // kept without a warning that the classes differ.
  const std::string unnamed = dir.file("unnamed.safetensors");
  model::save_weights(unnamed, source, {});
  model::VisionTransformer kept = test::tiny_cli_model(10, 8, 6);
  CHECK(train::load_finetune_weights(kept, unnamed, ten).empty());
}

TEST_CASE("a run trains each epoch at the rate its schedule flags give", "[train][cli]") {
  // RECIPE.md section 2: cosine from --lr to --min-lr over --epochs after a linear warm-up from
  // --warmup-lr, stepped per epoch as main.py does (engine/schedule.h): epoch e trains at the
  // schedule's value at e - 1, epoch 0 at the initial one. None of the values is the default, so a
  // flag that did not reach the schedule shows in the log's train_lr.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir), out = dir.file("run");
  const CliResult r =
      run_deit(tiny_train_args(data, out, 4) +
               " --quiet --warmup-epochs 2 --warmup-lr 2e-4 --lr 4e-3 --min-lr 1e-3");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  const std::vector<nlohmann::json> lines = test::log_lines(out + "/log.txt");
  REQUIRE(lines.size() == 4);
  const double expected[] = {
      2e-4,                      // the initial value: --warmup-lr
      2e-4,                      // time 0: the warm-up's start
      2e-4 + (4e-3 - 2e-4) / 2,  // time 1: half-way up the linear warm-up of 2 epochs
      1e-3 + 0.5 * (4e-3 - 1e-3) * (1 + std::cos(M_PI * 2 / 4)),  // time 2 of the 4-epoch cosine
  };
  for (size_t e = 0; e < lines.size(); ++e) {
    INFO("epoch " << e);
    CHECK(lines[e].at("train_lr").get<double>() == Approx(expected[e]).epsilon(1e-9));
  }
}

TEST_CASE("a run's weight decay, optimizer epsilon and gradient clipping reach its optimizer",
          "[train][cli]") {
  // Each flag steers the update (RECIPE.md section 2: weight decay 0.05 for pretraining, 0.1 for
  // fine-tuning; eps 1e-8; the reference's clipping): a run with another value of one of them
  // must end with other weights than the run with the defaults, from the same seed and data.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  const auto weights_after = [&](const std::string& name, const std::string& flags) {
    const std::string out = dir.file(name);
    const CliResult r = run_deit(tiny_train_args(data, out, 1) + " --quiet --warmup-epochs 0 " +
                                 "--mixup 0 --cutmix 0 " + flags);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    return parameter_bytes(out + "/checkpoint.safetensors");
  };
  const std::vector<uint8_t> defaults = weights_after("defaults", "");
  CHECK(weights_after("again", "") == defaults);  // the comparison means something
  CHECK(weights_after("decay", "--weight-decay 0.5") != defaults);
  CHECK(weights_after("eps", "--opt-eps 0.01") != defaults);
  CHECK(weights_after("clip", "--clip-grad 1e-6") != defaults);
}

TEST_CASE("a run says when its global batch is above its recipe's, and counts a partial step",
          "[train][cli]") {
  // The recipe's lr assumes its global batch (RECIPE.md section 2: 2048, not scaled): a larger
  // one is as far from it as a smaller one. 6 micro-batches in steps of 200: one optimizer step,
  // the epoch's left-over (micro_batches_in_step), not 0.
  test::TempDir dir;
  const std::string data = make_tiny_dataset(dir);
  CliResult r = run_deit(tiny_train_args(data, dir.file("big"), 1) + " --accum-steps 200");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("1 epoch of 1 optimizer step, on cpu\n"
                                       "global batch 3200 = 16 per process x 200 accumulated x 1 "
                                       "process; the deit3_tiny pretrain recipe's is 2048"));
  // The head has as many outputs as the dataset has classes: nothing to warn about.
  CHECK_THAT(r.output, !Catch::Contains("is more than the"));
  // A head of fewer outputs than the dataset's 4 classes could not score them all.
  r = run_deit(tiny_train_args(data, dir.file("few"), 1) + " --num-classes 3");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--num-classes 3 is fewer than the 4 classes of '" + data));
}
