// The synthetic dataset: a real image folder with both splits, reproducible from its seed.
#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

#include "data/image_folder.h"
#include "data/synthetic.h"
#include "tests/test_data_helpers.h"
#include "tests/test_io_helpers.h"

namespace {

using namespace deit::data;
using Catch::Matchers::Contains;
using deit::test::read_bytes;
using deit::test::TempDir;

SyntheticOptions small_options(uint64_t seed) {
  SyntheticOptions options;
  options.seed = seed;
  options.image_size = 32;
  options.train_per_class = 4;
  options.val_per_class = 2;
  return options;
}

}  // namespace

TEST_CASE("The synthetic dataset is an image folder with ten classes and both splits", "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/synthetic";
  generate_synthetic_dataset(root, small_options(1));

  CHECK(synthetic_class_names().size() == 10);
  CHECK(std::filesystem::exists(root + "/synthetic.json"));
  CHECK_FALSE(std::filesystem::exists(root + ".partial"));
  CHECK(std::filesystem::exists(root + "/train/disc/disc_00003.png"));
  const ImageFolder train(root + "/train"), val(root + "/val");
  CHECK(train.class_names() == synthetic_class_names());
  CHECK(val.class_names() == synthetic_class_names());
  CHECK(train.size() == 40);
  CHECK(val.size() == 20);
  const ImageU8 image = val.load(7);
  CHECK(image.height == 32);
  CHECK(image.width == 32);
}

TEST_CASE("The synthetic dataset is reproducible from its seed", "[data]") {
  TempDir dir;
  generate_synthetic_dataset(dir.path() + "/a", small_options(5));
  generate_synthetic_dataset(dir.path() + "/b", small_options(5));
  generate_synthetic_dataset(dir.path() + "/c", small_options(6));
  for (const char* file : {"/train/ring/ring_00002.png", "/val/dots/dots_00001.png"}) {
    INFO(file);
    CHECK(read_bytes(dir.path() + "/a" + file) == read_bytes(dir.path() + "/b" + file));
    CHECK(read_bytes(dir.path() + "/a" + file) != read_bytes(dir.path() + "/c" + file));
  }
  CHECK_THROWS_WITH(generate_synthetic_dataset(dir.path() + "/a", small_options(5)),
                    Contains("already exists"));
}

TEST_CASE("Synthetic dataset options are checked", "[data]") {
  TempDir dir;
  SyntheticOptions options = small_options(1);
  options.num_classes = 11;
  CHECK_THROWS_WITH(generate_synthetic_dataset(dir.path() + "/x", options),
                    Contains("num_classes"));
}

TEST_CASE("A synthetic dataset that lost or gained files, or another seed's, is told apart",
          "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/synthetic";
  generate_synthetic_dataset(root, small_options(3));
  CHECK(synthetic_dataset_difference(root, small_options(3)).empty());
  CHECK(synthetic_dataset_difference(root, small_options(4)) == "it was made with other settings");
  CHECK(synthetic_dataset_difference(dir.path() + "/nowhere", small_options(3)) ==
        "it has no synthetic.json");

  const std::string image = root + "/val/rays/rays_00001.png";
  const std::vector<uint8_t> bytes = read_bytes(image);
  std::filesystem::remove(image);
  CHECK(synthetic_dataset_difference(root, small_options(3)) == image + " is missing");
  deit::test::write_bytes(image, bytes);
  deit::test::write_bytes(root + "/train/disc/extra.png", bytes);
  CHECK(synthetic_dataset_difference(root, small_options(3)) ==
        root + "/train/disc holds other files than its images");
  std::filesystem::remove(root + "/train/disc/extra.png");
  std::filesystem::rename(root + "/val/rays", dir.path() + "/rays");
  CHECK_THAT(synthetic_dataset_difference(root, small_options(3)),
             Contains(root + "/val does not hold its 10 class folders alone"));
  std::filesystem::rename(dir.path() + "/rays", root + "/val/rays");
  CHECK(synthetic_dataset_difference(root, small_options(3)).empty());
}

TEST_CASE("What the synthetic dataset's generator did not make is found", "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/synthetic";
  generate_synthetic_dataset(root, small_options(3));
  CHECK(first_file_not_synthetic(root).empty());
  // Past 99999 images a class, %05d writes more digits.
  deit::test::write_bytes(root + "/train/disc/disc_123456.png",
                          read_bytes(root + "/train/disc/disc_00000.png"));
  CHECK(first_file_not_synthetic(root).empty());
  std::filesystem::remove(root + "/train/disc/disc_123456.png");
  // A file missing is a damaged dataset, not a foreign file.
  std::filesystem::remove(root + "/val/rays/rays_00001.png");
  CHECK(first_file_not_synthetic(root).empty());

  const std::vector<uint8_t> image = read_bytes(root + "/val/rays/rays_00000.png");
  const std::string foreign[] = {root + "/notes.txt",
                                 root + "/test",
                                 root + "/train/zz_mine",  // a class of the user's
                                 root + "/train/disc/extra.png",
                                 root + "/val/rays/rays_1.png",
                                 root + "/val/rays/disc_00000.png",
                                 root + "/val/rays/rays_0000x.png",
                                 root + "/train/disc/disc_00009.png.bak",
                                 root + "/train/disc/disc_0001.png"};
  for (const std::string& path : foreign) {
    INFO(path);
    if (!std::filesystem::path(path).has_extension())
      std::filesystem::create_directories(path);
    else
      deit::test::write_bytes(path, image);
    CHECK(first_file_not_synthetic(root) == path);
    std::filesystem::remove_all(path);
  }
  // A link, even to a file of the dataset's, is not one the generator makes.
  std::filesystem::create_symlink(root + "/val/rays/rays_00000.png",
                                  root + "/val/rays/rays_00007.png");
  CHECK(first_file_not_synthetic(root) == root + "/val/rays/rays_00007.png");
}

TEST_CASE("A synthetic dataset that cannot be written whole leaves no half-made copy", "[data]") {
  // A disk that fills up part-way: each image is larger than the 200 bytes a file may grow to.
  TempDir dir;
  const std::string root = dir.path() + "/synthetic";
  {
    deit::test::FileSizeLimit full_disk(200);
    CHECK_THROWS(generate_synthetic_dataset(root, small_options(3)));
  }
  CHECK_FALSE(std::filesystem::exists(root));
  CHECK_FALSE(std::filesystem::exists(root + ".partial"));
}
