// `deit pack` as a user runs it: an image folder becomes a shard the loader reads, and bad input
// gets a message naming the path and a non-zero exit.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <catch2/catch.hpp>

#include <filesystem>
#include <optional>
#include <string>

#include "data/image.h"
#include "data/image_source.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "tests/cli_runner.h"
#include "tests/test_data_helpers.h"

using namespace deit;
using deit::test::CliResult;
using deit::test::run_deit;

TEST_CASE("deit pack turns an image folder into a shard with the same images", "[data][cli]") {
  test::TempDir dir;
  data::SyntheticOptions options;
  options.image_size = 20;
  options.num_classes = 3;
  options.train_per_class = 5;
  options.val_per_class = 2;
  const std::string root = test::write_synthetic_dataset(dir, options);

  // The partial shard of a pack killed beforehand (or running beside) is named, not touched.
  const std::string shard = dir.file("train.shard"), left = shard + ".partial.4194305";
  test::write_bytes(left, {1, 2, 3});
  const CliResult r = run_deit("pack --src " + root + "/train --out " + shard + " --short-side 16");
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("note: " + left + " is the partial shard of another pack") &&
                           !Catch::Contains("skipped"));
  CHECK(test::read_bytes(left) == std::vector<uint8_t>{1, 2, 3});
  const auto source = data::open_image_source(shard);
  CHECK(source->size() == 15);
  CHECK(source->class_names() ==
        std::vector<std::string>(data::synthetic_class_names().begin(),
                                 data::synthetic_class_names().begin() + 3));
  const data::ImageU8 image = source->load(0);
  CHECK(std::min(image.height, image.width) == 16);

  // Beside the folder it was packed from, the shard is what a dataset root's split reads, and
  // the reader is told.
  REQUIRE(run_deit("pack --src " + root + "/train --out " + root + "/train.shard").exit_code == 0);
  const CliResult grid =
      run_deit("augment --data " + root + " --grid " + dir.file("grid.png") + " --n 4");
  INFO(grid.output);
  CHECK(grid.exit_code == 0);
  CHECK_THAT(grid.output, Catch::Contains("has both train.shard and a folder train/") &&
                              Catch::Contains("reading the shard"));

  // The dataset root in place of a split: refused before a pass over it, nothing written.
  const std::string advice =
      "a dataset packs a split at a time: --src " + root + "/train --out " + root + "/train.shard";
  const CliResult whole = run_deit("pack --src " + root + " --out " + dir.file("root.shard"));
  CHECK(whole.exit_code != 0);
  CHECK_THAT(whole.output, Catch::Contains("is a dataset's root (its folders are the splits "
                                           "train/ and val/), not a split: " +
                                           advice));
  CHECK_FALSE(std::filesystem::exists(dir.file("root.shard")));
  // A test/ split beside them is a split too.
  std::filesystem::create_directories(root + "/test/" + data::synthetic_class_names()[0]);
  data::write_png(root + "/test/" + data::synthetic_class_names()[0] + "/one.png",
                  test::gradient_image(8, 8));
  const CliResult three = run_deit("pack --src " + root + " --out " + dir.file("root.shard"));
  CHECK(three.exit_code != 0);
  CHECK_THAT(three.output, Catch::Contains("is a dataset's root"));
  CHECK_FALSE(std::filesystem::exists(dir.file("root.shard")));
  std::filesystem::remove_all(root + "/test");
  // With a folder that could be a class beside the splits: packed as asked, with a warning.
  std::filesystem::create_directories(root + "/zebra");
  data::write_png(root + "/zebra/one.png", test::gradient_image(8, 8));
  const CliResult mixed = run_deit("pack --src " + root + " --out " + dir.file("root.shard"));
  CHECK(mixed.exit_code == 0);
  CHECK_THAT(
      mixed.output,
      Catch::Contains("holds train/ and val/, which become 2 of the shard's classes; " + advice));
  CHECK(data::open_image_source(dir.file("root.shard"))->class_names() ==
        std::vector<std::string>{"train", "val", "zebra"});
}

TEST_CASE("deit pack reports a missing source and an unwritable output", "[data][cli]") {
  test::TempDir dir;
  CliResult r = run_deit("pack --src " + dir.file("missing") + " --out " + dir.file("x.shard"));
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("missing"));
  CHECK_FALSE(std::filesystem::exists(dir.file("x.shard")));

  std::filesystem::create_directories(dir.file("src/a"));
  data::write_png(dir.file("src/a/one.png"), test::gradient_image(8, 8));
  const std::string blocked = dir.file("blocked");
  { std::ofstream(blocked) << "not a folder"; }
  r = run_deit("pack --src " + dir.file("src") + " --out " + blocked + "/x.shard");
  CHECK(r.exit_code != 0);
  CHECK_THAT(r.output, Catch::Contains("blocked"));
}

TEST_CASE("deit pack stopped by Ctrl-C or a kill leaves no partial shard", "[data][cli]") {
  // 400 copies of a 512 x 512 image: seconds of decoding on one thread, so the signal sent at the
  // first progress line (after the first 32 images) lands while the shard is being written.
  test::TempDir dir;
  const std::string image = dir.file("one.png");
  data::write_png(image, test::gradient_image(512, 512));
  for (const char* label : {"a", "b"}) {
    std::filesystem::create_directories(dir.file(std::string("src/") + label));
    for (int i = 0; i < 200; ++i)
      std::filesystem::copy_file(
          image, dir.file(std::string("src/") + label + "/" + std::to_string(i) + ".png"));
  }
  for (const int signal : {SIGINT, SIGTERM}) {
    INFO(signal);
    const std::optional<test::Signalled> stopped =
        test::run_and_signal_at("pack --src " + dir.file("src") + " --out " + dir.path() +
                                    "/out/split/train.shard" + " --threads 1 --short-side 64",
                                "packing: ", signal);
    REQUIRE(stopped);
    INFO(stopped->output);
    CHECK(WIFSIGNALED(stopped->status));
    CHECK(WTERMSIG(stopped->status) == signal);
    // The folders it made for the shard too, however many (out/a/b/c).
    CHECK_FALSE(std::filesystem::exists(dir.path() + "/out"));
  }
  // Each process writes its own partial file: two packs of one shard never mix their records.
  CHECK(data::ShardWriter::partial_path("x.shard") ==
        "x.shard.partial." + std::to_string(getpid()));
}

TEST_CASE("deit pack names what the folder scan leaves out and each class it packs no image of",
          "[data][cli]") {
  test::TempDir dir;
  const std::string src = dir.file("src");
  std::filesystem::create_directories(src + "/cat");
  std::filesystem::create_directories(src + "/dog");
  data::write_png(src + "/cat/one.png", test::gradient_image(8, 8));
  // JPEG's other extension is read (the decoder goes by the content).
  data::write_png(src + "/cat/two.jfif", test::gradient_image(8, 8, 1));
  test::write_bytes(src + "/cat/README", {'h', 'i'});
  test::write_bytes(src + "/dog/bad.jpg", {'n', 'o', 't'});
  data::write_png(src + "/stray.png", test::gradient_image(8, 8, 2));
  data::write_png(src + "/another.png", test::gradient_image(8, 8, 3));
  std::filesystem::create_directory_symlink("/nonexistent/bird", src + "/bird");

  const std::string out = dir.file("train.shard");
  const CliResult r = run_deit("pack --src " + src + " --out " + out);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Catch::Contains("wrote " + out + ": 2 images"));
  CHECK_THAT(r.output, Catch::Contains("warning: " + src + "/bird: a link to /nonexistent/bird, " +
                                       "which does not exist: not read as a class folder"));
  CHECK_THAT(r.output, Catch::Contains("warning: " + src + ": 2 image file(s) lie directly in " +
                                       "it, outside any class folder, and are not read (e.g. " +
                                       src + "/another.png): move them into " + src + "/<class>/"));
  CHECK_THAT(r.output, Catch::Contains("ignored 1 file(s) with extension '' (not an image format "
                                       "deit reads), e.g. " +
                                       src + "/cat/README"));
  CHECK_THAT(r.output, Catch::Contains("warning: " + out + ": class 'dog' has no images (its " +
                                       "folder holds no image file, or none could be decoded"));
  CHECK(data::open_image_source(out)->class_names() == std::vector<std::string>{"cat", "dog"});
}

TEST_CASE("deit pack makes the folder of its --out", "[data][cli]") {
  test::TempDir dir;
  std::filesystem::create_directories(dir.file("src/a"));
  data::write_png(dir.file("src/a/one.png"), test::gradient_image(8, 8));
  const std::string out = dir.path() + "/packed/train/x.shard";
  const CliResult r = run_deit("pack --src " + dir.file("src") + " --out " + out);
  INFO(r.output);
  CHECK(r.exit_code == 0);
  CHECK(data::is_shard_file(out));
  // A pack that fails (no image decodes) leaves none of the folders it made.
  test::write_bytes(dir.file("garbage/a/bad.png"), std::vector<uint8_t>(64, 7));
  const CliResult failed =
      run_deit("pack --src " + dir.file("garbage") + " --out " + dir.path() + "/made/deep/x.shard");
  INFO(failed.output);
  CHECK_THAT(failed.output, Catch::Contains("could be decoded; no shard written"));
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/made"));
}
