// What `deit` itself checks before any command runs: the command names, and the values CLI11
// would read wrongly on its own.
#include <catch2/catch.hpp>

#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "engine/build_fingerprint.h"
#include "engine/communicator.h"
#include "tests/cli_runner.h"
#include "tests/scoped_environment.h"
#include "train/rank_agreement.h"

using deit::test::CliResult;
using deit::test::run_deit;
using deit::test::ScopedEnvironment;

TEST_CASE("a misspelt command is named, with the commands there are", "[cli]") {
  CliResult r = run_deit("trian --data x");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("unknown command 'trian'") &&
                           Catch::Contains("the commands of deit are") && Catch::Contains("train"));
  r = run_deit("bench stpe");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("unknown command 'stpe'; the commands of deit bench are") &&
                           Catch::Contains("step"));
  // An option where the command should be.
  r = run_deit("--epochs 3 train");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::Contains("deit: error: option '--epochs' where a command should be; "
                                       "the commands of deit are"));
}

TEST_CASE("whole numbers are read in decimal, and an empty or out-of-range value is refused",
          "[cli]") {
  const std::string dry_run = "train --model deit3_tiny --data nowhere --output nowhere --dry-run ";
  // Zero-padded, as a script may write them: decimal, not octal; with a sign as well.
  const CliResult padded =
      run_deit(dry_run + "--seed 0042 --epochs 0100 --input-size 0224 --accum-steps +02");
  INFO(padded.output);
  CHECK(padded.exit_code == 0);
  CHECK_THAT(padded.output, Catch::Contains("\"seed\": 42") && Catch::Contains("\"epochs\": 100") &&
                                Catch::Contains("\"input_size\": 224") &&
                                Catch::Contains("\"accum_steps\": 2"));
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"--epochs 0x10", "--epochs: '0x10' is not a whole number written in decimal"},
      {"--epochs ''", "--epochs: an empty value (leave the option out for its default)"},
      {"--finetune ''", "--finetune: an empty value"},
      {"--lr ''", "--lr: an empty value"},
      {"--epochs 99999999999999999999",
       "--epochs: '99999999999999999999' is out of range (at most 9223372036854775807)"},
      {"--seed -1", "--seed: '-1' is not a whole number from 0 written in decimal"}};
  for (const auto& [args, message] : refused) {
    const CliResult r = run_deit(dry_run + args);
    INFO(args << "\n" << r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains(message));
  }
  CHECK_THAT(run_deit("eval --checkpoint '' --data nowhere").output,
             Catch::Contains("--checkpoint: an empty value"));
  // A required option has no default to leave it out for.
  const CliResult required = run_deit("pack --src nowhere --out ''");
  CHECK(required.exit_code == 1);
  CHECK_THAT(required.output,
             Catch::Contains("--out: an empty value") && !Catch::Contains("default"));
  // Nor has one required unless another option is given.
  for (const char* args :
       {"train --model '' --data nowhere --output nowhere", "eval --model '' --data nowhere"}) {
    const CliResult r = run_deit(args);
    INFO(args << "\n" << r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains("--model: an empty value") && !Catch::Contains("default"));
  }
}

TEST_CASE(
    "a command that runs as one process refuses a launch of several, and errors name the rank",
    "[cli]") {
  // As mpirun -n 2 would start it (rank 0 of 2); deit train and bench run across processes.
  CliResult eval, demo, help, error, kernels, info, eval_help;
  {
    const ScopedEnvironment rank("OMPI_COMM_WORLD_RANK", "0");
    const ScopedEnvironment size("OMPI_COMM_WORLD_SIZE", "2");
    const ScopedEnvironment local_rank("OMPI_COMM_WORLD_LOCAL_RANK", "0");
    eval = run_deit("eval --checkpoint nowhere --data nowhere");
    demo = run_deit("demo --out nowhere");
    help = run_deit("--help");
    error = run_deit("train --epochs many");
    kernels = run_deit("bench kernels --device cpu");
    info = run_deit("info --model deit3_tiny");
    eval_help = run_deit("eval --help");
  }
  INFO(eval.output);
  CHECK(eval.exit_code == 1);
  CHECK_THAT(eval.output, Catch::Contains("deit: error (rank 0 of 2): deit eval runs as one "
                                          "process, and this one was started as mpirun: rank 0 "
                                          "of 2") &&
                              Catch::Contains("start it without the launcher"));
  CHECK_THAT(demo.output, Catch::Contains("deit demo runs as one process"));
  CHECK_THAT(kernels.output, Catch::Contains("deit bench kernels runs as one process"));
  CHECK(info.exit_code == 0);  // it reads and prints: a job's script may call it from a rank
  CHECK(help.exit_code == 0);
  CHECK(eval_help.exit_code == 0);
  // Each process of a launch prints its own errors: which one, it says.
  CHECK_THAT(error.output, Catch::StartsWith("deit: error (rank 0 of 2): --epochs: "));
  // A stray variable of a launch that is not one (torchrun's RANK alone) stops no command.
  CliResult stray, stray_export;
  {
    const ScopedEnvironment rank("RANK", "0");
    stray = run_deit("info --model deit3_tiny");
    stray_export = run_deit("export --checkpoint nowhere --out nowhere.safetensors");
  }
  CHECK(stray.exit_code == 0);
  CHECK_THAT(stray_export.output, Catch::Contains("nowhere") &&
                                      !Catch::Contains("runs as one process") &&
                                      !Catch::Contains("WORLD_SIZE"));
}

TEST_CASE("of a value or a switch given twice, the last given counts", "[cli]") {
  // So that a script can append an override to a command line.
  const std::string dry_run = "train --model deit3_tiny --data nowhere --output nowhere --dry-run ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--epochs 3 --epochs 5", "\"epochs\": 5"},
      {"--no-src --src", "\"src\": true"},
      {"--src --no-src", "\"src\": false"},
      {"--no-repeated-aug --zero --repeated-aug", "\"repeated_aug\": true"},
      {"--bce-loss --no-bce-loss --smoothing 0.1", "\"bce_loss\": false"},
      {"--no-model-ema --model-ema --no-model-ema", "\"model_ema\": false"},
      // With values, as argparse-minded scripts write them.
      {"--src --no-src=false", "\"src\": true"},
      {"--no-src --src=false", "\"src\": false"},
      {"--recipe in21k-pretrain --src=false", "\"src\": false"},
      {"--src=yes", "\"src\": true"}};
  for (const auto& [args, expected] : cases) {
    const CliResult r = run_deit(dry_run + args);
    INFO(args << "\n" << r.output);
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.output, Catch::Contains(expected));
  }
  const CliResult maybe = run_deit(dry_run + "--src=maybe");
  CHECK(maybe.exit_code == 1);
  CHECK_THAT(maybe.output, Catch::Contains("'maybe' is not true or false"));
}

TEST_CASE("deit train --dry-run under a launch of several processes prints the settings once",
          "[cli]") {
  const std::string dry_run = std::string(DEIT_BINARY) +
                              " train --model deit3_tiny --data nowhere --output nowhere --dry-run";
  const std::string mpirun_rank =
      "OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=0 "
      "OMPI_COMM_WORLD_RANK=";
  const CliResult first = deit::test::run_shell(mpirun_rank + "0 " + dry_run);
  CHECK(first.exit_code == 0);
  CHECK_THAT(first.output, Catch::Contains("\"model\": \"deit3_tiny\""));
  const CliResult second = deit::test::run_shell(mpirun_rank + "1 " + dry_run);
  CHECK(second.exit_code == 0);
  CHECK(second.output.empty());
}

TEST_CASE(
    "deit train --bce-loss over a stage whose cross-entropy smooths leaves the smoothing behind",
    "[cli]") {
  const std::string dry_run =
      "train --model deit3_tiny --data nowhere --output nowhere --dry-run --recipe in21k-pretrain ";
  CHECK_THAT(run_deit(dry_run).output, Catch::Contains("\"smoothing\": 0.1"));
  const CliResult bce = run_deit(dry_run + "--bce-loss");
  INFO(bce.output);
  CHECK(bce.exit_code == 0);
  CHECK_THAT(bce.output, Catch::Contains("\"smoothing\": 0.0"));
  // Smoothing asked for as well is still refused, naming why.
  const CliResult both = run_deit(dry_run + "--bce-loss --smoothing 0.1");
  CHECK(both.exit_code == 1);
  CHECK_THAT(both.output, Catch::Contains("would make every target 1"));
}

TEST_CASE("the reference code's options are answered with deit's", "[cli]") {
  // README_revenge.md's pre-training command, as far as deit differs.
  const CliResult r = run_deit(
      "train --model deit3_base --data-path /imagenet --batch 256 --unscale-lr --reprob 0.0 "
      "--output_dir out --ThreeAugment --sched cosine --drop 0.0 --nodes 8 --ngpus 8 --frobnicate");
  INFO(r.output);
  CHECK(r.exit_code == 1);
  // The arguments in the order given (CLI11 2.1 lists them last first).
  CHECK_THAT(r.output, Catch::Contains("does not take: --data-path /imagenet --batch 256 "
                                       "--unscale-lr --reprob 0.0 --output_dir out"));
  for (const char* note :
       {"--data-path is --data here", "--batch (argparse's abbreviation",
        "--unscale-lr is how deit always reads --lr", "--reprob (random erasing)",
        "--output_dir is --output here", "--ThreeAugment is --three-augment",
        "--sched has one value", "--drop (dropout)", "--nodes", "--ngpus"})
    CHECK_THAT(r.output, Catch::Contains("deit: note: the reference code's " + std::string(note)));
  CHECK_THAT(r.output, !Catch::Contains("reference code's --frobnicate"));
  // Noted also where CLI11 first misses what the reference's option was meant to give.
  const CliResult missing = run_deit("eval --checkpoint run --data-path /imagenet");
  CHECK(missing.exit_code == 1);
  CHECK_THAT(missing.output, Catch::Contains("--data is required") &&
                                 Catch::Contains("the reference code's --data-path is --data"));
  const CliResult opt = run_deit(
      "train --model deit3_base --data nowhere --output nowhere --dry-run --opt fusedlamb");
  CHECK(opt.exit_code == 1);
  CHECK_THAT(opt.output,
             Catch::Contains("the reference code's fusedlamb, apex's FusedLAMB, is lamb"));
}

TEST_CASE("every option of the reference code is deit train's or answered with a note", "[cli]") {
  // main.py's argparse options in facebookresearch/deit (DeiT III's version) and
  // run_with_submitit.py's own.
  const std::string reference =
      "--batch-size --epochs --bce-loss --unscale-lr --model --input-size --drop "
      "--drop-path --model-ema --no-model-ema --model-ema-decay --model-ema-force-cpu "
      "--opt --opt-eps --opt-betas --clip-grad --momentum --weight-decay --sched --lr "
      "--lr-noise --lr-noise-pct --lr-noise-std --warmup-lr --min-lr --decay-epochs "
      "--warmup-epochs --cooldown-epochs --patience-epochs --decay-rate --dr "
      "--color-jitter --aa --smoothing --train-interpolation --repeated-aug "
      "--no-repeated-aug --train-mode --no-train-mode --ThreeAugment --src --reprob "
      "--remode --recount --resplit --mixup --cutmix --cutmix-minmax --mixup-prob "
      "--mixup-switch-prob --mixup-mode --teacher-model --teacher-path --distillation-type "
      "--distillation-alpha --distillation-tau --cosub --finetune --attn-only --data-path "
      "--data-set --inat-category --output_dir --device --seed --resume --start_epoch "
      "--eval --eval-crop-ratio --dist-eval --num_workers --pin-mem --no-pin-mem "
      "--distributed --world_size --dist_url --ngpus --nodes --timeout --job_dir "
      "--partition --use_volta32 --comment";
  const std::string help = run_deit("train --help").output;
  std::string not_deits;
  std::istringstream reference_options(reference);
  for (std::string option; reference_options >> option;)
    if (help.find("  " + option + " ") == std::string::npos &&
        help.find(", " + option + " ") == std::string::npos)
      not_deits += " " + option;
  const CliResult r = run_deit("train" + not_deits);
  CHECK(r.exit_code == 1);
  std::istringstream options(not_deits);
  for (std::string option; options >> option;) {
    INFO(option);
    CHECK_THAT(r.output, Catch::Contains("deit: note: the reference code's " + option + " "));
  }
}

TEST_CASE("a reference option given as --NAME=VALUE is noted, naming an option deit takes",
          "[cli]") {
  // argparse takes --data-path=/imagenet as well as --data-path /imagenet.
  const CliResult r = run_deit(
      "train --model deit3_base --data-path=/imagenet --batch=64 --nb_classes=10 --num_workers=8 "
      "--output_dir=out --ThreeAugment --no-train-mode");
  INFO(r.output);
  CHECK(r.exit_code == 1);
  const std::string help = run_deit("train --help").output;
  // Each note that gives deit's name for the option: "... is --workers here".
  static const std::regex deits_name(
      R"(deit: note: the reference code's (--\S+) .*\bis (--[a-z-]+))");
  std::vector<std::string> noted;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) {
    std::smatch found;
    if (!std::regex_search(line, found, deits_name)) continue;
    INFO(line);
    noted.push_back(found[1]);
    CHECK(help.find("  " + found[2].str() + " ") != std::string::npos);
  }
  CHECK(noted == std::vector<std::string>{"--data-path", "--batch", "--nb_classes", "--num_workers",
                                          "--output_dir", "--ThreeAugment", "--no-train-mode"});
}

TEST_CASE("a command line that does not parse is an error like any other, exit code 1", "[cli]") {
  const CliResult r = run_deit("info --model deit3_small --input-size big");
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Catch::StartsWith("deit: error: ") && Catch::Contains("--input-size") &&
                           Catch::Contains("(--help lists the options)"));
  CHECK(run_deit("info --help").exit_code == 0);
  CHECK(run_deit("--version").exit_code == 0);
}

TEST_CASE("deit --version names the build the processes of a job compare", "[cli]") {
  // 16 hex digits (train/rank_agreement.h: agree_on_build takes 16 characters).
  const std::string fingerprint = deit::build_fingerprint();
  CHECK(fingerprint.size() == 16);
  CHECK(fingerprint.find_first_not_of("0123456789abcdef") == std::string::npos);
  // The build check's collective has a fixed size that every deit build shares: a fingerprint of
  // another length is refused before it could be sent.
  deit::SingleProcessCommunicator comm(deit::Device::cpu(), 0);
  CHECK_NOTHROW(deit::train::agree_on_build(comm, fingerprint, "run"));
  CHECK_THROWS_WITH(deit::train::agree_on_build(comm, fingerprint + "0", "run"),
                    Catch::Contains("a fingerprint of 16 characters"));
  const std::string features = deit::build_features();
  CHECK_THAT(features, Catch::StartsWith(DEIT_HAVE_CUDA ? "cuda" : "cpu"));
  CHECK((features.find("mpi") != std::string::npos) == bool(DEIT_HAVE_MPI));
  // The binary and these tests are linked from one build.
  const CliResult r = run_deit("--version");
  CHECK(r.exit_code == 0);
  CHECK(r.output == "deit 0.1.0 (build " + fingerprint + ": " + features + ")\n");
}

TEST_CASE("each command's --help says where its class count comes from", "[cli]") {
  // info and bench step read no dataset: "the dataset's" was no default of theirs.
  const std::vector<std::pair<std::string, std::string>> defaults = {
      {"info", "1000, ImageNet-1k's"},
      {"bench step", "1000, ImageNet-1k's"},
      {"eval", "the weights' own, else the dataset's"},
      {"train", "the dataset's"}};
  for (const auto& [command, from] : defaults) {
    const CliResult help = run_deit(command + " --help");
    INFO(command);
    CHECK(help.exit_code == 0);
    CHECK_THAT(help.output, Catch::Contains("Number of classes (default " + from + ")"));
  }
}

TEST_CASE("an int option refuses a value past 32 bits with its name and range", "[cli]") {
  // CLI11 said only "Could not convert: --steps = 99999999999".
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"bench step --steps 99999999999", "--steps: Value 99999999999 not in range 1 to 2147483647"},
      {"bench step --warmup -3000000000", "--warmup: Value -3000000000 not in range 0 to"},
      {"bench step --profile-steps 4294967296", "--profile-steps: Value 4294967296 not in range 0"},
      {"bench kernels --warmup 99999999999", "--warmup: Value 99999999999 not in range 0 to"},
      {"bench kernels --repeats 99999999999", "--repeats: Value 99999999999 not in range 1 to"},
      {"bench data --batches 99999999999", "--batches: Value 99999999999 not in range 20 to"},
      {"train --model deit3_tiny --data nowhere --output nowhere --dry-run --workers 99999999999",
       "--workers: Value 99999999999 not in range 1 to 256"}};
  for (const auto& [args, message] : refused) {
    const CliResult r = run_deit(args);
    INFO(args << "\n" << r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains(message));
  }
}

TEST_CASE("a seed is a whole number from 0 to 2^64 - 1", "[cli]") {
  // CLI11 alone reads -1 as 2^64 - 1 and an overflowing number as the largest.
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"-1", "is not a whole number from 0 written in decimal"},
      {"3x", "is not a whole number from 0 written in decimal"},
      {"18446744073709551616", "is out of range (at most 18446744073709551615)"}};
  for (const auto& [seed, why] : refused) {
    INFO(seed);
    const CliResult r = run_deit(
        "bench step --model deit3_tiny --depth 1 --input-size 32 "
        "--batch-size 2 --steps 1 --warmup 0 --profile-steps 0 --device cpu --seed " +
        seed);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Catch::Contains("--seed: '" + seed + "' " + why));
  }
  CHECK(run_deit("bench step --model deit3_tiny --depth 1 --input-size 32 --batch-size 2 "
                 "--steps 1 --warmup 0 --device cpu --seed 18446744073709551615")
            .exit_code == 0);
}
