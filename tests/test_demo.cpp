// deit demo end to end, one epoch: it makes the synthetic dataset, trains, evaluates and reports;
// a second run reuses the dataset and replaces the first run instead of appending to its log.
// (The full demo's accuracy and time are measured by hand: README.md, bench/results/.)
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "data/synthetic.h"
#include "tests/cli_runner.h"
#include "tests/test_data_helpers.h"
#include "train/output_lock.h"

using deit::test::CliResult;
using deit::test::log_lines;
using deit::test::run_deit;

TEST_CASE("deit demo makes its dataset, trains, evaluates and reports", "[demo][slow]") {
  deit::test::TempDir dir;
  const std::string out = dir.file("demo");
  CliResult r = run_deit("demo --epochs 1 --quiet --out " + out);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("making the synthetic dataset") &&
                           Catch::Contains("top-1") && Catch::Contains("checkpoint.safetensors"));
  CHECK(std::filesystem::exists(out + "/data/synthetic.json"));
  CHECK(std::filesystem::exists(out + "/run/checkpoint.safetensors"));
  auto lines = log_lines(out + "/run/log.txt");
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["test_acc1"].get<double>() > 10);  // ten classes: above chance after one epoch
  // The command it suggests next runs as printed (from wherever deit was started).
  const size_t next = r.output.find("next: ");
  REQUIRE(next != std::string::npos);
  std::string suggested = r.output.substr(next + 6);
  suggested = suggested.substr(0, suggested.find('\n'));
  REQUIRE(suggested.rfind(std::string(DEIT_BINARY) + " eval ", 0) == 0);
  const CliResult evaluated = run_deit(suggested.substr(std::string(DEIT_BINARY).size() + 1));
  INFO(evaluated.output);
  CHECK(evaluated.exit_code == 0);
  CHECK_THAT(evaluated.output, Catch::Contains("top-1") && Catch::Contains("checkerboard"));

  // Again, its dataset made, and with a stray launch variable (torchrun's RANK alone), which
  // describes no launch of the demo's.
  r = deit::test::run_shell("RANK=1 " + std::string(DEIT_BINARY) +
                            " demo --epochs 1 --quiet --out " + out);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, !Catch::Contains("making the synthetic dataset"));
  CHECK(log_lines(out + "/run/log.txt").size() == 1);

  // A dataset of its own that lost a class is made again, not trained on (nor the run replaced
  // first, to fail on it).
  std::filesystem::remove_all(out + "/data/val/rays");
  r = run_deit("demo --epochs 1 --quiet --out " + out);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("is not the demo's dataset (" + out +
                                       "/data/val does not hold its 10 class folders alone): "
                                       "making it again"));
  CHECK(std::filesystem::exists(out + "/data/val/rays"));
}

TEST_CASE("deit demo leaves a data folder that is not its own alone", "[demo]") {
  deit::test::TempDir dir;
  const std::string mine = dir.file("demo/data/train/cat/keep.txt");
  std::ofstream(mine) << "not a demo file";
  const CliResult r = run_deit("demo --epochs 1 --quiet --out " + dir.file("demo"));
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("is not a deit synthetic dataset"));
  CHECK(std::filesystem::exists(mine));
}

TEST_CASE("deit demo makes its dataset again only while it holds nothing else", "[demo]") {
  // A synthetic dataset of other settings, to which someone added a class and a note, beside a
  // previous demo run: refused before anything is made or removed, all of it left as it was.
  deit::test::TempDir dir;
  const std::string out = dir.file("demo");
  deit::data::SyntheticOptions other;
  other.train_per_class = 2;
  other.val_per_class = 1;
  deit::data::generate_synthetic_dataset(out + "/data", other);
  const std::string added = out + "/data/train/zz_mine/photo.png";
  std::filesystem::create_directories(out + "/data/train/zz_mine");
  std::filesystem::copy_file(out + "/data/train/disc/disc_00000.png", added);
  std::filesystem::create_directories(out + "/run");
  std::ofstream(out + "/run/log.txt") << "{}\n";
  const CliResult r = run_deit("demo --epochs 1 --quiet --out " + out);
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output,
             Catch::Contains("holds what the demo did not make (" + out + "/data/train/zz_mine)") &&
                 Catch::Contains("not removing it"));
  CHECK(std::filesystem::exists(added));
  CHECK(std::filesystem::exists(out + "/data/synthetic.json"));
  CHECK(std::filesystem::exists(out + "/run/log.txt"));

  // A run folder that is no demo run's is refused before the dataset is made, not after.
  const std::string fresh = dir.file("fresh");
  std::filesystem::create_directories(fresh + "/run");
  std::ofstream(fresh + "/run/notes.txt") << "mine";
  const CliResult refused = run_deit("demo --epochs 1 --quiet --out " + fresh);
  INFO(refused.output);
  CHECK(refused.exit_code != 0);
  CHECK_THAT(refused.output, Catch::Contains("exists and is not a demo run"));
  CHECK_FALSE(std::filesystem::exists(fresh + "/data"));
  CHECK(std::filesystem::exists(fresh + "/run/notes.txt"));
}

TEST_CASE("deit demo replaces its previous run only while the run holds nothing else", "[demo]") {
  // Weights exported beside the previous demo's checkpoint are someone's: refused before anything
  // is made or removed. What the run and scripts/plot_log.py wrote alone is replaced.
  deit::test::TempDir dir;
  const std::string out = dir.file("demo");
  std::filesystem::create_directories(out + "/run");
  std::ofstream(out + "/run/log.txt") << "{}\n";
  std::ofstream(out + "/run/curves.png") << "curves";
  std::ofstream(out + "/run/model.safetensors") << "exported weights";
  const CliResult r = run_deit("demo --epochs 1 --quiet --out " + out);
  INFO(r.output);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains(out + "/run holds what the demo did not make (" + out +
                                       "/run/model.safetensors)") &&
                           Catch::Contains("not removing it"));
  CHECK(std::filesystem::exists(out + "/run/model.safetensors"));
  CHECK(std::filesystem::exists(out + "/run/log.txt"));
  CHECK_FALSE(std::filesystem::exists(out + "/data"));
}

TEST_CASE("deit demo runs one at a time in its folder, and clears a killed demo's run",
          "[demo][slow]") {
  deit::test::TempDir dir;
  const std::string out = dir.file("demo");
  std::filesystem::create_directories(out);
  {
    const deit::train::OutputLock running(out, "--out");  // as a demo running there holds it
    const CliResult r = run_deit("demo --epochs 1 --quiet --out " + out);
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("'" + out + "' is in use by another deit process") &&
                             Catch::Contains("give another --out"));
  }
  // The demo's run resumed by hand and still training: not replaced under it.
  std::filesystem::create_directories(out + "/run");
  std::ofstream(out + "/run/log.txt") << "{}\n";
  {
    const deit::train::OutputLock training(out + "/run", "--output");
    const CliResult r = run_deit("demo --epochs 1 --quiet --out " + out);
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("'" + out + "/run' is in use by another deit process"));
    CHECK(std::filesystem::exists(out + "/run/log.txt"));
  }
  std::filesystem::remove(out + "/run/log.txt");
  // A demo killed before its first checkpoint left its run's lock file and an unfinished save.
  std::ofstream(out + "/run/.lock") << "pid 1 on elsewhere\n";
  std::ofstream(out + "/run/checkpoint.safetensors.tmp.77") << "half a checkpoint";
  const CliResult r = run_deit("demo --epochs 1 --quiet --out " + out);
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(log_lines(out + "/run/log.txt").size() == 1);
}
