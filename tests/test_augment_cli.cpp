// `deit augment` as a user runs it: named ops give the same pixels as the library, the grid has
// the promised layout and is reproducible from its seed, and bad input gets a clear message and a
// non-zero exit.
#include <catch2/catch.hpp>
#include <filesystem>

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/augment_params.h"
#include "data/image.h"
#include "data/image_source.h"
#include "data/sampler.h"
#include "data/transforms.h"
#include "engine/rng.h"
#include "tests/cli_runner.h"
#include "tests/test_data_helpers.h"

using deit::test::CliResult;
using deit::test::run_deit;
using deit::test::run_shell;

namespace {

const std::string kInput = std::string(DEIT_SOURCE_DIR) + "/tests/data/augment/input_a.ppm";

}  // namespace

TEST_CASE("deit augment applies named ops in order, as the library does", "[augment][cli]") {
  deit::test::TempDir dir;
  const std::string out = dir.file("out.png");
  const CliResult r = run_deit("augment --in " + kInput + " --out " + out +
                            " --op crop:2,3,30,25 --op hflip --op blur:0.8 --op contrast:1.2");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);

  deit::data::ImageU8 expected = deit::data::decode_image_file(kInput);
  deit::Rng unused(0);
  for (const char* op : {"crop:2,3,30,25", "hflip", "blur:0.8", "contrast:1.2"})
    expected = deit::data::apply_named_op(expected, op, unused);
  const deit::data::ImageU8 got = deit::data::decode_image_file(out);
  CHECK(got.height == 25);
  CHECK(got.width == 30);
  CHECK(got.pixels == expected.pixels);
  // A random op draws from --seed, as the library's from its Rng.
  for (const uint64_t seed : {1, 2}) {
    const std::string cropped = dir.file("rrc" + std::to_string(seed) + ".png");
    const CliResult rrc = run_deit("augment --in " + kInput + " --out " + cropped +
                                   " --op rrc:16 --seed " + std::to_string(seed));
    INFO(rrc.output);
    REQUIRE(rrc.exit_code == 0);
    deit::Rng rng(seed);
    CHECK(deit::data::decode_image_file(cropped).pixels ==
          deit::data::apply_named_op(deit::data::decode_image_file(kInput), "rrc:16", rng).pixels);
  }
}

TEST_CASE("deit augment makes the folders of its output, as the other commands do",
          "[augment][cli]") {
  deit::test::TempDir dir;
  const std::string out = dir.path() + "/views/hflip/out.png";
  const CliResult r = run_deit("augment --in " + kInput + " --out " + out + " --op hflip");
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(std::filesystem::is_regular_file(out));
  // A command that fails leaves none of them behind.
  const CliResult failed = run_deit("augment --in " + dir.path() + "/missing.png --out " +
                                    dir.path() + "/more/out.png" + " --op hflip");
  CHECK(failed.exit_code != 0);
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/more"));
}

TEST_CASE("deit augment reads its image from standard input or a pipe", "[augment][cli]") {
  deit::test::TempDir dir;
  deit::data::ImageU8 expected = deit::data::decode_image_file(kInput);
  deit::Rng unused(0);
  expected = deit::data::apply_named_op(expected, "hflip", unused);
  const std::string fifo = dir.file("input.fifo");
  const std::string from_stdin = "cat " + kInput + " | ";
  const std::string into_fifo = "mkfifo " + fifo + " && (cat " + kInput + " > " + fifo + " &) && ";
  for (const auto& [before, in] :
       std::vector<std::pair<std::string, std::string>>{{from_stdin, "-"}, {into_fifo, fifo}}) {
    INFO(in);
    const std::string out = dir.file("out.png");
    const CliResult r =
        run_shell(before + DEIT_BINARY + " augment --in " + in + " --out " + out + " --op hflip");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK(deit::data::decode_image_file(out).pixels == expected.pixels);
  }
  const CliResult empty = run_shell(std::string(DEIT_BINARY) + " augment --in - --out " +
                                    dir.file("e.png") + " --op hflip < /dev/null");
  CHECK(empty.exit_code != 0);
  CHECK_THAT(empty.output, Catch::Contains("standard input: empty file"));
}

TEST_CASE("deit augment --grid tiles reproducible training views", "[augment][cli]") {
  deit::test::TempDir dir;
  for (int i = 0; i < 4; ++i) {
    deit::data::write_png(dir.file("data/train/a/" + std::to_string(i) + ".png"),
                          deit::test::gradient_image(40 + 3 * i, 50, i));
    deit::data::write_png(dir.file("data/train/b/" + std::to_string(i) + ".png"),
                          deit::test::gradient_image(60, 30 + 5 * i, 7 + i));
  }
  const std::string args = "augment --data " + dir.path() + "/data --n 5 --input-size 16";
  CliResult r = run_deit(args + " --seed 3 --grid " + dir.file("g1.png"));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains(": 5 training views (3 x 2 tiles of 16 px, random resized "
                                       "crop, 3-Augment, colour jitter, seed 3) from 8 images"));
  r = run_deit(args + " --seed 3 --grid " + dir.file("g2.png"));
  REQUIRE(r.exit_code == 0);

  // 5 views: 3 columns x 2 rows of 16 px tiles with 2 px gaps.
  const deit::data::ImageU8 grid = deit::data::decode_image_file(dir.file("g1.png"));
  CHECK(grid.height == 2 * 18 - 2);
  CHECK(grid.width == 3 * 18 - 2);
  CHECK(deit::test::read_bytes(dir.file("g1.png")) == deit::test::read_bytes(dir.file("g2.png")));

  r = run_deit(args + " --seed 4 --grid " + dir.file("g3.png"));
  REQUIRE(r.exit_code == 0);
  CHECK(deit::test::read_bytes(dir.file("g1.png")) != deit::test::read_bytes(dir.file("g3.png")));
  // A view is the trainer's: the sampler's first pick, augmented from its own stream with the
  // crop asked for (--src: Simple Random Crop, which the grid says).
  const std::unique_ptr<deit::data::ImageSource> source =
      deit::data::open_dataset_split(dir.path() + "/data", "train");
  deit::data::SamplerOptions order;
  order.dataset_size = source->size();
  order.seed = 3;
  const deit::data::SamplePick pick = deit::data::Sampler(order).epoch_picks(0).at(0);
  const deit::data::ImageU8 picked = source->load(pick.index);
  for (const bool src : {false, true}) {
    INFO("--src " << src);
    const std::string one = dir.file(src ? "one_src.png" : "one.png");
    r = run_deit("augment --data " + dir.path() + "/data --n 1 --input-size 16 --seed 3" +
                 (src ? " --src" : "") + " --grid " + one);
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.output, Catch::Contains(src ? "16 px, simple random crop, "
                                             : "16 px, random resized crop, "));
    deit::data::AugmentConfig config;
    config.input_size = 16;
    config.crop = src ? deit::data::CropMode::kSimpleRandom : deit::data::CropMode::kRandomResized;
    deit::Rng rng(3, deit::data::sample_stream(0, pick.global_position));
    const deit::data::ImageU8 view = deit::data::augment_train(
        picked, deit::data::sample_augment_params(config, picked.height, picked.width, rng));
    CHECK(deit::data::decode_image_file(one).pixels == view.pixels);
  }

  // An unusable file met in several epochs' picks is warned about and counted once.
  deit::test::write_bytes(dir.file("data/train/b/broken.png"), {'n', 'o'});
  r = run_deit("augment --data " + dir.path() + "/data --n 30 --input-size 16 --grid " +
               dir.file("g4.png"));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("skipped 1 unusable image(s)"));
  const size_t first = r.output.find("warning: skipped");
  REQUIRE(first != std::string::npos);
  CHECK(r.output.find("warning: skipped", first + 1) == std::string::npos);
  // A dataset none of whose images can be read says so, not that there were "too many".
  deit::test::write_bytes(dir.file("broken/train/a/0.png"), {'n', 'o'});
  deit::test::write_bytes(dir.file("broken/train/b/0.png"), {'n', 'o'});
  r = run_deit("augment --data " + dir.path() + "/broken --n 4 --input-size 16 --grid " +
               dir.file("g7.png"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("none of the 2 images of " + dir.path() +
                                       "/broken's train split could be read"));

  // Into the dataset, the grid would be one of its images from then on: refused.
  r = run_deit(args + " --grid " + dir.file("data/train/a/grid.png"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("lies inside the train split"));
  CHECK_FALSE(std::filesystem::exists(dir.file("data/train/a/grid.png")));
  r = run_deit("augment --data " + dir.path() + "/data --n 1 --input-size 16 --grid " +
               dir.file("g5.png"));
  CHECK_THAT(r.output, Catch::Contains(": 1 training view (1 x 1 tiles"));
  // A grid past the image limits is refused before its views are made (it took a minute and
  // 3 GB to fail at the end): past a side, and past the pixel count with sides under the limit
  // (a 16414x16414 grid was written, which deit then refused to read).
  r = run_deit("augment --data " + dir.path() + "/data --n 1024 --input-size 1024 --grid " +
               dir.file("g6.png"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--n 1024 views of --input-size 1024 make a 32830x32830 "
                                       "grid, larger than an image deit writes"));
  r = run_deit("augment --data " + dir.path() + "/data --n 256 --input-size 1024 --grid " +
               dir.file("g6.png"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output,
             Catch::Contains("make a 16414x16414 grid, larger than an image deit writes"));
  CHECK_FALSE(std::filesystem::exists(dir.file("g6.png")));
}

TEST_CASE("deit augment applies RandAugment's ops and tiles RandAugment views with --aa",
          "[augment][cli]") {
  deit::test::TempDir dir;
  const std::string out = dir.file("out.png");
  const std::vector<std::string> ops = {"rotate:-13.5", "posterize:3", "translate-x:4.5",
                                        "solarize:100"};
  std::string args = "augment --in " + kInput + " --out " + out;
  for (const std::string& op : ops) args += " --op " + op;
  CliResult r = run_deit(args);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  deit::data::ImageU8 expected = deit::data::decode_image_file(kInput);
  deit::Rng unused(0);
  for (const std::string& op : ops) expected = deit::data::apply_named_op(expected, op, unused);
  CHECK(deit::data::decode_image_file(out).pixels == expected.pixels);

  for (int i = 0; i < 3; ++i)
    deit::data::write_png(dir.file("data/train/a/" + std::to_string(i) + ".png"),
                          deit::test::gradient_image(40 + 3 * i, 50, i));
  const std::string grid = "augment --data " + dir.path() + "/data --n 4 --input-size 16";
  r = run_deit(grid + " --grid " + dir.file("plain.png"));
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("3-Augment, colour jitter"));
  r = run_deit(grid + " --aa rand-m9-mstd0.5-inc1 --grid " + dir.file("ra1.png"));
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("RandAugment rand-m9-mstd0.5-inc1"));
  REQUIRE(run_deit(grid + " --aa rand-m9-mstd0.5-inc1 --grid " + dir.file("ra2.png")).exit_code ==
          0);
  const auto ra = deit::test::read_bytes(dir.file("ra1.png"));
  CHECK(ra == deit::test::read_bytes(dir.file("ra2.png")));
  CHECK(ra != deit::test::read_bytes(dir.file("plain.png")));

  r = run_deit(grid + " --aa rand-m12 --grid " + dir.file("bad.png"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--aa: RandAugment spec 'rand-m12'") &&
                           Catch::Contains("magnitude m must be in [0, 10]"));
  // Before the dataset is read (an image folder's scan takes minutes for ImageNet).
  r = run_deit("augment --data " + dir.file("missing") + " --aa rand-m12 --grid " +
               dir.file("bad.png"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output,
             Catch::Contains("--aa: RandAugment spec 'rand-m12'") && !Catch::Contains("missing"));
}

TEST_CASE("deit augment rejects bad ops and arguments with a non-zero exit", "[augment][cli]") {
  deit::test::TempDir dir;
  const std::string prefix = "augment --in " + kInput + " --out " + dir.file("o.png");
  CliResult r = run_deit(prefix + " --op sharpen");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("unknown op 'sharpen'"));
  r = run_deit(prefix + " --op hflip --op blur:wide");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("--op 'blur:wide' (op 2 of 2)") &&
                           Catch::Contains("'wide' is not a number"));
  r = run_deit(prefix + " --op crop:0,0,100,5");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("not inside the 48x40 image"));
  r = run_deit(prefix);
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("at least one --op"));
  // A result past the image limits is refused before it is made (this took 12 GB and crashed
  // in the PNG writer).
  r = run_deit(prefix + " --op resize:65536");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("'resize:65536'") &&
                           Catch::Contains("78643x65536 result is larger than deit makes"));
  r = run_deit("augment --in " + kInput + " --out " + dir.file("o.jpg") + " --op hflip");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("name it *.png"));
  r = run_deit("augment --in " + dir.file("missing.png") + " --out " + dir.file("o.png") +
               " --op hflip");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("missing.png"));
  // The input is never overwritten.
  const std::string png = dir.file("in.png");
  REQUIRE(run_deit("augment --in " + kInput + " --out " + png + " --op hflip").exit_code == 0);
  const std::vector<uint8_t> input = deit::test::read_bytes(png);
  r = run_deit("augment --in " + png + " --out " + png + " --op vflip");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("is the input image itself"));
  CHECK(deit::test::read_bytes(png) == input);
  r = run_deit("augment --data " + dir.path() + " --grid " + dir.file("g.png"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains(dir.path()));
  // A grid's sizes out of range (--n 0 would divide by its 0 columns), a grid without its file,
  // and the options of both modes at once are refused before any image is read.
  const std::string grid = "augment --data " + dir.path();
  const std::vector<std::pair<std::string, std::string>> refused = {
      {grid + " --n 0 --grid " + dir.file("g.png"), "--n: Value 0 not in range 1 to 1024"},
      {grid + " --n 1025 --grid " + dir.file("g.png"), "--n: Value 1025 not in range 1 to 1024"},
      {grid + " --input-size 7 --grid " + dir.file("g.png"),
       "--input-size: Value 7 not in range 8 to 1024"},
      {grid, "augment: --data needs --grid OUT.png"},
      {grid + " --in " + kInput + " --grid " + dir.file("g.png"), "--in excludes --data"}};
  for (const auto& [args, message] : refused) {
    const CliResult refusal = run_deit(args);
    INFO(args << "\n" << refusal.output);
    CHECK(refusal.exit_code == 1);
    CHECK_THAT(refusal.output, Catch::Contains(message));
  }
  // Nor a file that is no PNG: a JPEG named *.png, or what a link named *.png points to (the
  // PNG replaced a checkpoint that way).
  const std::string notes = dir.file("notes.txt");
  std::ofstream(notes) << "not an image";
  const std::vector<uint8_t> kept = deit::test::read_bytes(notes);
  std::filesystem::create_symlink(notes, dir.file("link.png"));
  r = run_deit("augment --in " + kInput + " --out " + dir.file("link.png") + " --op hflip");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("link.png: exists and is not a PNG file"));
  r = run_deit("augment --data " + dir.path() + " --grid " + dir.file("link.png"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("link.png: exists and is not a PNG file"));
  CHECK(deit::test::read_bytes(notes) == kept);
  // All 8 bytes of the signature, not its first 4 ("\x89PNG" then text).
  const std::string half_png = dir.file("half.png");
  deit::test::write_bytes(half_png, {0x89, 'P', 'N', 'G', ' ', 'n', 'o', '!', '\n'});
  r = run_deit("augment --in " + kInput + " --out " + half_png + " --op hflip");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("half.png: exists and is not a PNG file"));
  CHECK(deit::test::read_bytes(half_png).size() == 9);
  // A PNG is replaced, as before.
  CHECK(run_deit("augment --in " + kInput + " --out " + png + " --op hflip").exit_code == 0);
}

TEST_CASE("deit augment checks every --op before it reads the image", "[augment][cli]") {
  // A large image, or one read from a pipe, takes a while to decode: a misspelt op, or one without
  // its numbers, is said first, not after (the input here does not exist, so that reading it
  // fails).
  deit::test::TempDir dir;
  const std::string prefix =
      "augment --in " + dir.file("missing.png") + " --out " + dir.file("o.png") + " --op hflip";
  const std::vector<std::pair<std::string, std::string>> refused = {
      {" --op hflp", "--op 'hflp' (op 2 of 2): unknown op 'hflp'"},
      {" --op blur:wide", "--op 'blur:wide' (op 2 of 2): op 'blur': 'wide' is not a number"},
      {" --op crop:0,0", "--op 'crop:0,0' (op 2 of 2): op 'crop' needs 4 argument(s)"}};
  for (const auto& [op, message] : refused) {
    const CliResult r = run_deit(prefix + op);
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Catch::Contains(message) && !Catch::Contains("missing.png"));
  }
}
