// The synthetic dataset: a real image folder with both splits, reproducible from its seed.
#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

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
  // The manifest says how the dataset was made, each setting under its own name.
  const nlohmann::json manifest =
      nlohmann::json::parse(std::ifstream(root + "/synthetic.json"), nullptr, false);
  CHECK(manifest == nlohmann::json{{"generator", "deit synthetic"},
                                   {"seed", 1},
                                   {"image_size", 32},
                                   {"train_per_class", 4},
                                   {"val_per_class", 2},
                                   {"num_classes", 10}});
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
  // One class is no classification task; the sizes are the bounds the message gives.
  options.num_classes = 1;
  CHECK_THROWS_WITH(generate_synthetic_dataset(dir.path() + "/x", options),
                    Contains("num_classes must be 2 to 10, got 1"));
  options.num_classes = 10;
  for (const int size : {15, 1025}) {
    options.image_size = size;
    CHECK_THROWS_WITH(generate_synthetic_dataset(dir.path() + "/x", options),
                      Contains("image_size must be 16 to 1024, got " + std::to_string(size)));
  }
  options.image_size = 32;
  options.train_per_class = 0;
  CHECK_THROWS_WITH(generate_synthetic_dataset(dir.path() + "/x", options),
                    Contains("at least one train and one val image per class"));
  options.train_per_class = 1;
  options.val_per_class = 0;
  CHECK_THROWS_WITH(generate_synthetic_dataset(dir.path() + "/x", options),
                    Contains("at least one train and one val image per class"));
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/x"));
  CHECK_FALSE(std::filesystem::exists(dir.path() + "/x.partial"));

  deit::Rng rng(1);
  CHECK_THROWS_WITH(render_synthetic_image(10, 32, rng), Contains("no class 10"));
  CHECK_THROWS_WITH(render_synthetic_image(-1, 32, rng), Contains("no class -1"));
}

TEST_CASE("Each synthetic image is drawn from its own random stream", "[data]") {
  // Streams shared between splits would put copies of training images in val; shared between
  // images of a class, every image would be the same one; shared between classes, each class's
  // image k would have the colours, noise and placement of every other class's image k.
  TempDir dir;
  const std::string root = dir.path() + "/synthetic";
  generate_synthetic_dataset(root, small_options(2));
  CHECK(read_bytes(root + "/train/ring/ring_00000.png") !=
        read_bytes(root + "/val/ring/ring_00000.png"));
  CHECK(read_bytes(root + "/train/ring/ring_00000.png") !=
        read_bytes(root + "/train/ring/ring_00001.png"));
  const ImageFolder train(root + "/train");
  // Four images a class, in class order: disc is class 3, ring class 8.
  REQUIRE(train.describe(3 * 4) == root + "/train/disc/disc_00000.png");
  REQUIRE(train.describe(8 * 4) == root + "/train/ring/ring_00000.png");
  const ImageU8 disc = train.load(3 * 4), ring = train.load(8 * 4);
  size_t equal = 0;
  for (size_t i = 0; i < disc.pixels.size(); ++i) equal += disc.pixels[i] == ring.pixels[i];
  CHECK(equal < disc.pixels.size() / 5);
}

TEST_CASE("A synthetic figure is lighter than its background by a clear margin", "[data]") {
  // The generator keeps foreground and background 60 luma levels apart and makes the figure the
  // lighter; the background's gradient moves it by up to 30. A disc covers the centre of a
  // 64-pixel image wherever it lies, and never its corners.
  const int disc = 3;
  REQUIRE(synthetic_class_names()[disc] == "disc");
  const auto patch_luma = [](const ImageU8& image, int y0, int x0) {
    double sum = 0.0;
    for (int y = y0; y < y0 + 4; ++y)
      for (int x = x0; x < x0 + 4; ++x) {
        const uint8_t* p = image.at(y, x);
        sum += 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
      }
    return sum / 16;
  };
  double smallest = 255.0;
  int widest_spread = 0;
  for (uint64_t stream = 0; stream < 200; ++stream) {
    deit::Rng rng(8, stream);
    const ImageU8 image = render_synthetic_image(disc, 64, rng);
    smallest = std::min(smallest, patch_luma(image, 30, 30) - patch_luma(image, 0, 0));
    // The background's noise (sd up to 12): the gradient alone moves a channel of a 4 x 4
    // corner by 3 levels.
    int low = 255, high = 0;
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 4; ++x) {
        low = std::min<int>(low, image.at(y, x)[0]);
        high = std::max<int>(high, image.at(y, x)[0]);
      }
    widest_spread = std::max(widest_spread, high - low);
  }
  // 60 - 30 for the gradient, less the noise averaged over 16 pixels and the clamping to [0, 255].
  CHECK(smallest > 5.0);
  CHECK(widest_spread > 15);
}

TEST_CASE("A synthetic ring leaves its middle empty, a disc does not", "[data]") {
  // Told apart by how much of the image is figure: a ring of inner radius 0.45 to 0.65 of its
  // outer one covers 58% to 80% of its disc. Each image is split at the midpoint of its 5th and
  // 95th luma percentiles (background and figure); the means over 100 images are compared.
  const auto figure_fraction = [](const std::string& name) {
    const auto& names = synthetic_class_names();
    const int label = static_cast<int>(std::find(names.begin(), names.end(), name) - names.begin());
    double sum = 0.0;
    for (uint64_t stream = 0; stream < 100; ++stream) {
      deit::Rng rng(9, stream);
      const ImageU8 image = render_synthetic_image(label, 64, rng);
      std::vector<double> luma;
      for (size_t i = 0; i < image.pixels.size(); i += 3)
        luma.push_back(0.299 * image.pixels[i] + 0.587 * image.pixels[i + 1] +
                       0.114 * image.pixels[i + 2]);
      std::vector<double> sorted = luma;
      std::sort(sorted.begin(), sorted.end());
      const double threshold =
          (sorted[sorted.size() / 20] + sorted[sorted.size() - sorted.size() / 20]) / 2;
      sum += std::count_if(luma.begin(), luma.end(), [&](double v) { return v > threshold; }) /
             double(luma.size());
    }
    return sum / 100;
  };
  const double disc = figure_fraction("disc"), ring = figure_fraction("ring");
  INFO("disc " << disc << ", ring " << ring);
  CHECK(ring < 0.85 * disc);
  CHECK(ring > 0.5 * disc);
}

TEST_CASE("A half-made copy an interrupted generator left is made anew", "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/synthetic";
  // What a run stopped part-way leaves: files of other settings in root.partial.
  deit::test::write_bytes(dir.file("synthetic.partial/train/disc/disc_00099.png"), {1, 2, 3});
  deit::test::write_bytes(dir.file("synthetic.partial/val/zz_old/x.png"), {1, 2, 3});
  generate_synthetic_dataset(root, small_options(3));
  CHECK(synthetic_dataset_difference(root, small_options(3)).empty());
  CHECK(first_file_not_synthetic(root).empty());
  CHECK_FALSE(std::filesystem::exists(root + ".partial"));
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
