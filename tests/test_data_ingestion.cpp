// What reading a dataset tells its user when the data is not what it should be: classes that
// differ between two lists, a split given where the dataset's root belongs, a folder that cannot
// be listed, and a pack whose decoding fails in a way that is no unusable image; and the helpers
// of data/image_source.h behind such messages (skipped images, shards packed too small, paths
// that lie within a split).
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <new>
#include <string>
#include <vector>

#include "data/image_folder.h"
#include "data/image_source.h"
#include "data/pack.h"
#include "data/shard.h"
#include "tests/captured_stderr.h"
#include "tests/child_process.h"
#include "tests/test_data_helpers.h"

namespace {

using namespace deit::data;
using Catch::Matchers::Contains;
using deit::test::gradient_image;
using deit::test::MemorySource;
using deit::test::TempDir;

// Four images of classes "a" and "b"; loading image 2 runs out of memory.
class RunsOutOfMemory : public ImageSource {
 public:
  size_t size() const override { return 4; }
  const std::vector<std::string>& class_names() const override { return names_; }
  int label(size_t index) const override { return static_cast<int>(index % 2); }
  ImageU8 load(size_t index) const override {
    if (index == 2) throw std::bad_alloc();
    return gradient_image(8, 8);
  }
  std::string describe(size_t index) const override { return "image " + std::to_string(index); }

 private:
  std::vector<std::string> names_ = {"a", "b"};
};

// Image 1 is unusable, and naming it for the first time runs out of memory: recording it as
// skipped fails inside its decoding thread.
class RunsOutOfMemoryNamingABadImage : public RunsOutOfMemory {
 public:
  ImageU8 load(size_t index) const override {
    if (index == 1) throw DataError("image 1: corrupt");
    return gradient_image(8, 8);
  }
  std::string describe(size_t index) const override {
    if (index == 1 && !named_.exchange(true)) throw std::bad_alloc();
    return RunsOutOfMemory::describe(index);
  }

 private:
  mutable std::atomic<bool> named_{false};
};

// Loading images 1 and 3 runs out of memory.
class RunsOutOfMemoryTwice : public RunsOutOfMemory {
 public:
  ImageU8 load(size_t index) const override {
    if (index == 1 || index == 3) throw std::bad_alloc();
    return gradient_image(8, 8);
  }
};

// What listing the image folder `root` throws ("no error" when nothing), read as a user that folder
// modes bind: root reads any folder whatever its mode, so a test run as root lists it in a child
// process that has become user nobody. "cannot drop root" when that is not allowed here.
std::string listing_error_as_unprivileged_user(const std::string& root) {
  const deit::test::ChildResult child = deit::test::run_in_child([&]() -> std::string {
    const uid_t nobody = 65534;
    if (geteuid() == 0 &&
        (setgroups(0, nullptr) != 0 || setgid(nobody) != 0 || setuid(nobody) != 0))
      return "cannot drop root";
    try {
      ImageFolder folder(root);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "no error";
  });
  CHECK(WIFEXITED(child.status));
  return child.message;
}

}  // namespace

TEST_CASE("Class lists that differ name the classes each side lacks", "[data]") {
  CHECK(class_difference({"bird", "cat", "dog"}, "train", {"bird", "cat"}, "val") ==
        "3 classes in train, 2 in val; only in train: 'dog'");
  CHECK(class_difference({"a", "b", "c", "d", "e", "f"}, "the weights", {"a", "z"}, "the split") ==
        "6 classes in the weights, 2 in the split; only in the weights: 'b', 'c', 'd' and 2 more; "
        "only in the split: 'z'");
  // The same name in NFC and in NFD: alike on screen, so their bytes are shown.
  CHECK(class_difference({"bird", "caf\xc3\xa9"}, "train", {"bird", "cafe\xcc\x81"}, "val") ==
        "class 1 is 'caf\xc3\xa9' in train, 'cafe\xcc\x81' in val; only in train: 'caf\xc3\xa9' "
        "(caf\\xc3\\xa9); only in val: 'cafe\xcc\x81' (cafe\\xcc\\x81)");
  // Missing on one side only, a name cannot be mistaken for another: shown as it is.
  CHECK(class_difference({"caf\xc3\xa9", "dog"}, "train", {"dog"}, "val") ==
        "2 classes in train, 1 in val; only in train: 'caf\xc3\xa9'");
  CHECK(class_difference({}, "the weights", {"a"}, "the split").empty());
  CHECK(class_difference({"a"}, "the weights", {"a"}, "the split").empty());
}

TEST_CASE("A split given as the dataset's root is named as one", "[data]") {
  TempDir dir;
  std::filesystem::create_directories(dir.file("data/train/cat"));
  write_png(dir.file("data/train/cat/one.png"), gradient_image(8, 8));
  const std::string split = dir.path() + "/data/train";
  CHECK_THROWS_WITH(open_dataset_split(split, "train"),
                    Contains("has neither " + split + "/train.shard nor a folder " + split +
                             "/train; '" + split + "' looks like a split (its subfolders hold " +
                             "images, as classes do): --data takes the folder above it"));
  // A dataset root with its val split missing is no split; it is told to make one.
  CHECK_THROWS_WITH(open_dataset_split(dir.path() + "/data", "val"),
                    Contains("has neither") && !Contains("looks like a split") &&
                        Contains("deit eval scores it unless --split names another") &&
                        Contains("move some of each class's images from train/<class>/ into " +
                                 dir.path() + "/data/val/<class>/"));
}

TEST_CASE("A folder inside a class that cannot be listed is named rather than its class",
          "[data]") {
  TempDir dir;
  std::filesystem::create_directories(dir.file("src/cat/locked"));
  write_png(dir.file("src/cat/one.png"), gradient_image(8, 8));
  const std::string locked = dir.path() + "/src/cat/locked";
  using std::filesystem::perms;
  // User nobody must reach the class folder to find the one it cannot list.
  std::filesystem::permissions(dir.path(),
                               perms::owner_all | perms::group_exec | perms::others_exec);
  std::filesystem::permissions(locked, perms::none);
  const std::string error = listing_error_as_unprivileged_user(dir.path() + "/src");
  std::filesystem::permissions(locked, perms::owner_all);
  if (error == "cannot drop root") {
    WARN("running as root, which may not become another user here: no folder mode can stop it");
    return;
  }
  CHECK(error == locked + ": cannot list (Permission denied)");
}

TEST_CASE("An exception a decoding thread of a pack throws reaches the caller", "[data]") {
  TempDir dir;
  const std::string out = dir.file("out/x.shard");
  PackOptions options;
  options.threads = 2;
  CHECK_THROWS_WITH(pack_image_source(RunsOutOfMemory(), "memory", out, options),
                    "image 2: out of memory while packing it; no shard written");
  CHECK(std::filesystem::is_empty(dir.path() + "/out"));  // no partial shard left
  CHECK_THROWS_WITH(pack_image_source(RunsOutOfMemoryNamingABadImage(), "memory", out, options),
                    "image 1: out of memory while packing it; no shard written");
  CHECK(std::filesystem::is_empty(dir.path() + "/out"));
  // Of two failures, the first met is named: with one thread, the lower index.
  options.threads = 1;
  CHECK_THROWS_WITH(pack_image_source(RunsOutOfMemoryTwice(), "memory", out, options),
                    "image 1: out of memory while packing it; no shard written");
}

TEST_CASE("An unusable image in a later chunk of a pack leaves no earlier image in its place",
          "[data]") {
  // One thread decodes chunks of 32 images into the same slots; image 32, the first of the second
  // chunk, is unusable, so its slot must not still hold image 0 when the chunk is written.
  TempDir dir;
  const std::string out = dir.file("x.shard");
  PackOptions options;
  options.short_side = 0;
  options.threads = 1;
  const PackSummary summary = pack_image_source(MemorySource(40, {32}), "memory", out, options);
  CHECK(summary.images == 39);
  CHECK(summary.skipped == 1);
  const ShardReader reader(out);
  REQUIRE(reader.size() == 39);
  for (size_t record = 30; record < 39; ++record) {
    INFO("record " << record);
    const size_t image = record < 32 ? record : record + 1;
    CHECK(reader.load(record).pixels == MemorySource(40).load(image).pixels);
    CHECK(reader.label(record) == static_cast<int>(image % 5));
  }
}

TEST_CASE("A pack warns of the classes it wrote no record of, and of no other", "[data]") {
  TempDir dir;
  const std::string out = dir.file("x.shard");
  PackOptions options;
  options.threads = 2;
  // Class c's images (2 and 7) are both unusable.
  const std::string warnings = deit::test::stderr_of(dir.file("stderr.txt"), [&] {
    pack_image_source(MemorySource(10, {2, 7}), "memory", out, options);
  });
  CHECK_THAT(warnings, Contains("warning: " + out + ": class 'c' has no images"));
  for (const char* name : {"a", "b", "d", "e"})
    CHECK_THAT(warnings, !Contains("class '" + std::string(name) + "'"));
}

TEST_CASE("A pack records the shorter side it shrank to, and a negative one keeps sizes",
          "[data]") {
  // The header's short side is what a run checks --input-size against before training.
  TempDir dir;
  PackOptions options;
  options.threads = 1;
  options.short_side = 3;
  pack_image_source(MemorySource(2), "memory", dir.file("three.shard"), options);
  const ShardReader shrunk(dir.file("three.shard"));
  CHECK(shrunk.short_side() == 3);
  CHECK(shrunk.load(1).height == 3);  // image 1 is 7 x 8: 3 x int(3 * 8 / 7)
  CHECK(shrunk.load(1).width == 3);
  options.short_side = -1;  // as 0: no shrinking
  pack_image_source(MemorySource(2), "memory", dir.file("kept.shard"), options);
  const ShardReader kept(dir.file("kept.shard"));
  CHECK(kept.short_side() == 0);
  CHECK(kept.load(1).pixels == MemorySource(2).load(1).pixels);
}

TEST_CASE("A dataset opened without warnings keeps what its listing found to itself", "[data]") {
  // The ranks of a data-parallel run but the first open it so: their warnings would repeat its.
  TempDir dir;
  std::filesystem::create_directories(dir.file("data/train/cat"));
  write_png(dir.file("data/train/cat/one.png"), gradient_image(8, 8));
  std::ofstream(dir.file("data/train/cat/notes.txt")) << "not an image";
  std::filesystem::create_directories(dir.file("data/train/dog"));  // a class with no image
  // Hidden entries (a Finder file, macOS's copy of an image's metadata, a thumbnail folder) and a
  // link to nothing: passed over, each kind said once.
  std::ofstream(dir.file("data/train/cat/.DS_Store")) << "finder";
  write_png(dir.file("data/train/cat/._one.png"), gradient_image(8, 8));
  write_png(dir.file("data/train/cat/.thumbnails/one.png"), gradient_image(8, 8));
  std::filesystem::create_symlink(dir.file("nowhere.png"), dir.file("data/train/cat/gone.png"));
  // An extension in capitals is the same extension.
  std::ofstream(dir.file("data/train/cat/NOTES.TXT")) << "not an image";
  // In the split's folder itself: an image and a text outside any class, a hidden folder, a link
  // to a class folder that is gone, and in a class a link back to it.
  write_png(dir.file("data/train/stray.png"), gradient_image(8, 8));
  std::ofstream(dir.file("data/train/README")) << "not an image";
  write_png(dir.file("data/train/.Trash/cat.png"), gradient_image(8, 8));
  std::filesystem::create_directory_symlink(dir.file("gone"), dir.file("data/train/bird"));
  std::filesystem::create_directory_symlink(".", dir.file("data/train/cat/again"));
  const std::string root = dir.path() + "/data";
  // What opening the train split writes to stderr.
  auto warnings_of = [&](bool warn) {
    return deit::test::stderr_of(dir.file("stderr.txt"),
                                 [&] { open_dataset_split(root, "train", warn); });
  };
  const std::string shown = warnings_of(true);
  CHECK_THAT(shown,
             Contains("ignored 2 file(s) with extension '.txt'") &&
                 Contains("class 'dog' has no images") &&
                 Contains("ignored 4 hidden file(s) or folder(s) (names starting with "
                          "'.'), e.g. " +
                          root + "/train/.Trash") &&
                 Contains(root + "/train: 1 image file(s) lie directly in it") &&
                 Contains(root + "/train/bird: a link to " + dir.file("gone")) &&
                 Contains("not following " + root + "/train/cat/again") &&
                 Contains(root + "/train/cat/gone.png: a link to " + dir.file("nowhere.png") +
                          ", which does not exist: not read as "
                          "an image"));
  CHECK(warnings_of(false).empty());
  CHECK(open_dataset_split(root, "train", false)->size() == 1);  // one.png alone
}

TEST_CASE("open_image_source names a path that is neither a folder nor a shard", "[data]") {
  TempDir dir;
  write_png(dir.file("train/a/x.png"), gradient_image(8, 8));
  const std::string missing = dir.path() + "/none", image = dir.path() + "/train/a/x.png";
  CHECK_THROWS_WITH(open_image_source(missing), Contains(missing + ": no such file or directory"));
  CHECK_THROWS_WITH(open_image_source(image),
                    Contains(image + ": neither an image folder nor a deit shard file"));
}

TEST_CASE("A split read from its shard warns of a folder beside it and names the shard", "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/data";
  write_png(dir.file("data/train/a/x.png"), gradient_image(8, 8));
  std::filesystem::create_directories(root + "/train/b");  // a class with no image
  deit::test::stderr_of(dir.file("pack.txt"), [&] {
    pack_image_folder(root + "/train", root + "/train.shard", PackOptions{0, 1});
  });
  const auto warnings_of = [&](bool warn) {
    return deit::test::stderr_of(dir.file("stderr.txt"),
                                 [&] { open_dataset_split(root, "train", warn); });
  };
  CHECK_THAT(warnings_of(true),
             Contains("warning: " + root + " has both train.shard and a folder train/") &&
                 Contains("warning: " + root + "/train.shard: class 'b' has no images"));
  CHECK(warnings_of(false).empty());
  std::filesystem::remove_all(root + "/train");
  CHECK_THAT(warnings_of(true), !Contains("has both"));
  // Its val split missing: the train shard alone is what tells a dataset root.
  CHECK_THROWS_WITH(open_dataset_split(root, "val"),
                    Contains("deit eval scores it unless --split names another"));
}

TEST_CASE("A root with a split folder, or no image files in its subfolders, is no split",
          "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/data";
  std::ofstream(dir.file("data/docs/readme.txt")) << "notes";
  CHECK_THROWS_WITH(open_dataset_split(root, "train"),
                    Contains("has neither") && !Contains("looks like a split"));
  // Images right inside train/ or val/ (no class folders): a dataset root all the same.
  write_png(dir.file("data/train/x.png"), gradient_image(8, 8));
  CHECK_THROWS_WITH(open_dataset_split(root, "val"), !Contains("looks like a split"));
  std::filesystem::rename(root + "/train", root + "/val");
  CHECK_THROWS_WITH(open_dataset_split(root, "train"), !Contains("looks like a split"));
}

TEST_CASE("packed_below warns of a shard shrunk below the size it is used at", "[data]") {
  TempDir dir;
  const auto pack = [&](int short_side) {
    PackOptions options;
    options.threads = 1;
    options.short_side = short_side;
    const std::string path = dir.file(std::to_string(short_side) + ".shard");
    // Shorter sides 6 and 7; classes c to e have no image, which the pack warns of.
    deit::test::stderr_of(dir.file("pack.txt"),
                          [&] { pack_image_source(MemorySource(2), "memory", path, options); });
    return ShardReader(path);
  };
  const ShardReader seven = pack(7);  // image 1 (7 pixels) at exactly --short-side: kept
  CHECK_THAT(packed_below(seven, 8, "training at 8 needs"),
             Contains("was packed with --short-side 7, below the 8 pixels that training at 8 "
                      "needs"));
  // Shown at the size it was packed to, or none shrunk, or sizes kept: no warning.
  CHECK(packed_below(seven, 7, "training at 7 needs").empty());
  CHECK(packed_below(pack(10), 16, "training at 16 needs").empty());
  CHECK(packed_below(pack(0), 16, "training at 16 needs").empty());
  CHECK(packed_below(MemorySource(2), 16, "training at 16 needs").empty());
}

TEST_CASE("Classes without images are counted and warned of by name", "[data]") {
  CHECK(images_per_class(MemorySource(7)) == std::vector<size_t>{2, 2, 1, 1, 1});
  TempDir dir;
  CHECK(deit::test::stderr_of(dir.file("stderr.txt"), [] {
          warn_of_empty_classes({"a", "b", "c"}, {1, 0, 2}, "here", ": so be it");
        }) == "warning: here: class 'b' has no images: so be it\n");
}

TEST_CASE("Class lists name exactly three differing classes before counting the rest", "[data]") {
  CHECK(class_difference({"a", "b", "c", "d"}, "x", {"a"}, "y") ==
        "4 classes in x, 1 in y; only in x: 'b', 'c', 'd'");
  CHECK(names_missing_from({"a", "b", "c"}, {"c", "a"}) == std::vector<std::string>{"b"});
}

TEST_CASE("Bytes outside printable ASCII are shown escaped, and only they", "[data]") {
  CHECK(escaped_bytes(std::string("a ~\x1f\x7f\xff", 6)) == "a ~\\x1f\\x7f\\xff");
  CHECK(shown_if_not_utf8("caf\xc3\xa9").empty());
  CHECK(shown_if_not_utf8("caf\xe9") == "caf\\xe9");
}

TEST_CASE("A skipped image is warned of and counted once, by class and index", "[data]") {
  TempDir dir;
  SkippedImages skipped;
  const std::string warnings = deit::test::stderr_of(dir.file("stderr.txt"), [&] {
    skipped.record("x", "x: corrupt", 0, 0);
    skipped.record("x", "x: corrupt", 0, 0);  // met again in a later epoch
    skipped.record("y", "y: corrupt", 1, 5);
    skipped.record("z", "z: corrupt");  // class and index unknown
  });
  CHECK(warnings ==
        "warning: skipped x: corrupt\nwarning: skipped y: corrupt\n"
        "warning: skipped z: corrupt\n");
  CHECK(skipped.count() == 3);
  CHECK(skipped.count_in_class(0) == 1);
  CHECK(skipped.count_in_class(1) == 1);
  CHECK(skipped.count_in_class(2) == 0);
  CHECK(skipped.indices() == std::vector<int64_t>{0, 5});
}

TEST_CASE("What lies within a split is found through links, the split itself included", "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/data";
  std::filesystem::create_directories(root + "/train/a");
  std::filesystem::create_directories(root + "/val");
  std::filesystem::create_directory_symlink(root + "/val", dir.path() + "/link");
  CHECK(lies_within(root + "/train", root + "/train"));
  CHECK(lies_within(root + "/train/a/new/run", root + "/train"));
  CHECK_FALSE(lies_within(root + "/trainer", root + "/train"));
  CHECK_FALSE(lies_within(root + "/train", root + "/none"));
  REQUIRE(split_holding(dir.path() + "/link/run", root));
  CHECK(std::string(split_holding(dir.path() + "/link/run", root)) == "val");
  CHECK(split_holding(dir.path() + "/run", root) == nullptr);
}
