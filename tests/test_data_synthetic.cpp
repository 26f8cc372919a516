// The synthetic dataset: a real image folder with both splits, reproducible from its seed.
#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

#include "data/image_folder.h"
#include "data/synthetic.h"
#include "tests/test_data_helpers.h"

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
