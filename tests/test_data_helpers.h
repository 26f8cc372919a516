// Shared by the tests/test_data_*.cpp files: a temporary folder per test and small images and
// files written into it.
#pragma once
#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/image.h"
#include "data/image_source.h"
#include "data/synthetic.h"
#include "data/transforms.h"
#include "engine/rng.h"

namespace deit::test {

// A fresh folder under the system temp directory, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "deit_test_XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("cannot create a temporary folder");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The path of `name` inside the folder, with its parent folders created.
  std::string file(const std::string& name) const {
    const std::filesystem::path path = path_ / name;
    std::filesystem::create_directories(path.parent_path());
    return path.string();
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// An image whose every pixel differs from its neighbours, so a wrong offset or channel shows.
inline data::ImageU8 gradient_image(int height, int width, int seed = 0) {
  data::ImageU8 image;
  image.height = height;
  image.width = width;
  image.pixels.resize(static_cast<size_t>(height) * width * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* pixel = image.at(y, x);
      pixel[0] = static_cast<uint8_t>(x * 7 + seed);
      pixel[1] = static_cast<uint8_t>(y * 5 + 3 * seed);
      pixel[2] = static_cast<uint8_t>((x + y) * 3 + 11 * seed);
    }
  }
  return image;
}

// Images of varying sizes made on the fly, image i of class i % 5 ("a" to "e"); the listed
// indices are unusable (DataError, as a corrupt file).
class MemorySource : public data::ImageSource {
 public:
  explicit MemorySource(size_t size, std::set<size_t> bad = {}) : size_(size), bad_(bad) {}
  size_t size() const override { return size_; }
  const std::vector<std::string>& class_names() const override { return names_; }
  int label(size_t index) const override { return static_cast<int>(index % 5); }
  data::ImageU8 load(size_t index) const override {
    if (bad_.count(index)) throw data::DataError(describe(index) + ": unusable on purpose");
    return gradient_image(6 + index % 4, 7 + index % 3, static_cast<int>(index));
  }
  std::string describe(size_t index) const override {
    return "memory image " + std::to_string(index);
  }

 private:
  size_t size_;
  std::set<size_t> bad_;
  std::vector<std::string> names_ = {"a", "b", "c", "d", "e"};
};

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// The lines of a run's log.txt, one JSON object per epoch.
inline std::vector<nlohmann::json> log_lines(const std::string& path) {
  std::vector<nlohmann::json> lines;
  std::ifstream log(path);
  std::string line;
  while (std::getline(log, line)) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// What `deit augment --op SPEC` says is wrong with SPEC on `image` ("no error" if nothing).
inline std::string named_op_error(const data::ImageU8& image, const std::string& spec) {
  Rng rng(1);
  try {
    data::apply_named_op(image, spec, rng);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "no error";
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

// Writes the synthetic dataset (data/synthetic.h) with `options` to DIR/data and returns that root.
inline std::string write_synthetic_dataset(const TempDir& dir,
                                           const data::SyntheticOptions& options) {
  const std::string root = dir.file("data");
  std::filesystem::remove(root);  // file() made the folder; the generator creates it whole
  data::generate_synthetic_dataset(root, options);
  return root;
}

}  // namespace deit::test
