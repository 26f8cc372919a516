#include "data/synthetic.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>

namespace deit::data {
namespace fs = std::filesystem;

namespace {

// In label order: the names sorted, as ImageFolder will number the folders.
enum class Figure {
  kCheckerboard,
  kConcentricRings,
  kDiagonalLines,
  kDisc,
  kDots,
  kGrid,
  kHorizontalStripes,
  kRays,
  kRing,
  kVerticalStripes,
};
constexpr int kFigureCount = 10;
constexpr double kPi = 3.14159265358979323846;
// Samples per pixel along each axis: 2x2 anti-alias edges well enough under the noise.
constexpr int kSupersampling = 2;

// Everything random about one image's figure. Lengths are in pixels.
struct Scene {
  Figure figure;
  double center_x, center_y;
  double radius;  // the figure fits in the disc of this radius around the centre
  double cos_angle, sin_angle;
  double inner;   // ring: inner radius / radius
  double period;  // stripe, cell, dot, line or ring spacing
  double phase_x, phase_y;
  double diagonal_sign;  // diagonal lines: +1 "\" or -1 "/" (a flip turns one into the other)
  int rays;              // rays: how many spokes
  bool disc_patch;       // axis-aligned textures: the patch is a disc (else a square)
};

Scene draw_scene(Figure figure, int size, Rng& rng) {
  Scene scene{};
  scene.figure = figure;
  // Large figures: a 16-pixel patch of a 64-pixel image must see a piece of the figure after a
  // random crop keeps a third of the image.
  scene.radius = size * rng.uniform(0.32, 0.48);
  scene.center_x = rng.uniform(scene.radius, size - scene.radius);
  scene.center_y = rng.uniform(scene.radius, size - scene.radius);
  // Small rotations only: horizontal stripes must stay horizontal.
  const double angle = rng.uniform(-10.0, 10.0) * kPi / 180.0;
  scene.cos_angle = std::cos(angle);
  scene.sin_angle = std::sin(angle);
  scene.inner = rng.uniform(0.45, 0.65);
  // Periods of 6 to 10 pixels at 64 px: finer textures do not survive 3-Augment's blur
  // (sigma up to 2 pixels). Concentric rings have at least three rings inside the radius.
  scene.period = figure == Figure::kConcentricRings ? scene.radius / rng.uniform(3.0, 4.0)
                                                    : size / 64.0 * rng.uniform(6.0, 10.0);
  scene.phase_x = rng.uniform(0.0, scene.period);
  scene.phase_y = rng.uniform(0.0, scene.period);
  scene.diagonal_sign = rng.bernoulli(0.5) ? 1.0 : -1.0;
  scene.rays = 6 + static_cast<int>(rng.uniform(0.0, 5.0));
  scene.disc_patch = rng.bernoulli(0.5);
  return scene;
}

double fraction(double value) { return value - std::floor(value); }

// Whether the point (x, y) (pixels) is foreground.
bool in_figure(const Scene& s, double x, double y) {
  // Rotated coordinates around the centre, in pixels (a, b) and in radii (u, v).
  const double dx = x - s.center_x, dy = y - s.center_y;
  const double a = s.cos_angle * dx + s.sin_angle * dy;
  const double b = -s.sin_angle * dx + s.cos_angle * dy;
  const double u = a / s.radius, v = b / s.radius;
  const double r2 = u * u + v * v;
  const bool in_disc = r2 <= 1.0;
  const bool in_patch = s.disc_patch ? in_disc : std::max(std::abs(u), std::abs(v)) <= 0.9;
  const double p = s.period;

  switch (s.figure) {
    case Figure::kDisc:
      return in_disc;
    case Figure::kRing:
      return in_disc && r2 >= s.inner * s.inner;
    case Figure::kConcentricRings:
      return in_disc && fraction(std::sqrt(a * a + b * b) / p) < 0.5;
    case Figure::kRays:
      return in_disc && fraction(std::atan2(b, a) / (2 * kPi) * s.rays) < 0.5;
    case Figure::kHorizontalStripes:
      return in_patch && fraction((b + s.phase_y) / p) < 0.5;
    case Figure::kVerticalStripes:
      return in_patch && fraction((a + s.phase_x) / p) < 0.5;
    case Figure::kDiagonalLines:
      return in_patch &&
             fraction((a + s.diagonal_sign * b) / (std::sqrt(2.0) * p) + s.phase_x / p) < 0.5;
    case Figure::kGrid:  // thin lines both ways
      return in_patch &&
             (fraction((a + s.phase_x) / p) < 0.25 || fraction((b + s.phase_y) / p) < 0.25);
    case Figure::kCheckerboard:  // cells half again as large as the other textures' spacing
      return in_patch && (static_cast<long>(std::floor((a + s.phase_x) / (1.5 * p))) +
                          static_cast<long>(std::floor((b + s.phase_y) / (1.5 * p)))) %
                                 2 !=
                             0;
    case Figure::kDots: {
      const double cell_x = fraction((a + s.phase_x) / p) - 0.5;
      const double cell_y = fraction((b + s.phase_y) / p) - 0.5;
      return in_patch && cell_x * cell_x + cell_y * cell_y <= 0.3 * 0.3;
    }
  }
  return false;
}

double luma(const double rgb[3]) { return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]; }

void validate(const SyntheticOptions& options) {
  if (options.num_classes < 2 || options.num_classes > kFigureCount) {
    throw std::invalid_argument("synthetic dataset: num_classes must be 2 to 10, got " +
                                std::to_string(options.num_classes));
  }
  if (options.image_size < 16 || options.image_size > 1024) {
    throw std::invalid_argument("synthetic dataset: image_size must be 16 to 1024, got " +
                                std::to_string(options.image_size));
  }
  if (options.train_per_class < 1 || options.val_per_class < 1) {
    throw std::invalid_argument(
        "synthetic dataset: need at least one train and one val image per class");
  }
}

// The manifest's one line of JSON: what generate_synthetic_dataset writes to DIR/synthetic.json.
std::string manifest_line(const SyntheticOptions& options) {
  char line[256];
  std::snprintf(line, sizeof line,
                "{\"generator\": \"deit synthetic\", \"seed\": %llu, \"image_size\": %d, "
                "\"train_per_class\": %d, \"val_per_class\": %d, \"num_classes\": %d}\n",
                static_cast<unsigned long long>(options.seed), options.image_size,
                options.train_per_class, options.val_per_class, options.num_classes);
  return line;
}

void write_manifest(const fs::path& path, const SyntheticOptions& options) {
  std::FILE* file = std::fopen(path.c_str(), "w");
  if (!file) throw DataError(path.string() + ": cannot create (" + std::strerror(errno) + ")");
  const std::string line = manifest_line(options);
  const bool written = std::fputs(line.c_str(), file) >= 0;
  // A full disk shows at the close, when the buffer is written out.
  if (std::fclose(file) != 0 || !written)
    throw DataError(path.string() + ": write failed (" + std::strerror(errno) + ")");
}

const char* const kSplits[2] = {"train", "val"};

std::string image_file_name(const std::string& class_name, int number) {
  char file_name[64];
  std::snprintf(file_name, sizeof file_name, "%s_%05d.png", class_name.c_str(), number);
  return file_name;
}

struct ImageJob {
  int split;  // 0 train, 1 val
  int label;
  int number;
  std::string path;
};

}  // namespace

const std::vector<std::string>& synthetic_class_names() {
  static const std::vector<std::string> kNames = {
      "checkerboard", "concentric_rings",   "diagonal_lines", "disc", "dots",
      "grid",         "horizontal_stripes", "rays",           "ring", "vertical_stripes"};
  return kNames;
}

ImageU8 render_synthetic_image(int label, int size, Rng& rng) {
  if (label < 0 || label >= kFigureCount) {
    throw std::invalid_argument("synthetic image: no class " + std::to_string(label));
  }
  const Scene scene = draw_scene(static_cast<Figure>(label), size, rng);

  double background[3], foreground[3];
  for (double& c : background) c = rng.uniform(0.0, 255.0);
  do {
    for (double& c : foreground) c = rng.uniform(0.0, 255.0);
  } while (std::abs(luma(foreground) - luma(background)) < 60.0);
  // The figure is always the lighter: with either polarity allowed, a ring would be a disc seen
  // inside out and a grid a field of dots.
  if (luma(foreground) < luma(background)) std::swap(foreground, background);
  // A linear gradient across the background, up to +-30 levels at the corners.
  const double gradient_x = rng.uniform(-30.0, 30.0) / size;
  const double gradient_y = rng.uniform(-30.0, 30.0) / size;
  const double noise_sigma = rng.uniform(0.0, 12.0);

  ImageU8 image;
  image.height = image.width = size;
  image.pixels.resize(static_cast<size_t>(size) * size * 3);
  for (int y = 0; y < size; ++y) {
    for (int x = 0; x < size; ++x) {
      int covered = 0;
      for (int sy = 0; sy < kSupersampling; ++sy) {
        for (int sx = 0; sx < kSupersampling; ++sx) {
          covered +=
              in_figure(scene, x + (sx + 0.5) / kSupersampling, y + (sy + 0.5) / kSupersampling);
        }
      }
      const double coverage = covered / double(kSupersampling * kSupersampling);
      const double shade = gradient_x * (x - size / 2.0) + gradient_y * (y - size / 2.0);
      uint8_t* pixel = image.at(y, x);
      for (int c = 0; c < 3; ++c) {
        const double value = (background[c] + shade) * (1.0 - coverage) + foreground[c] * coverage +
                             noise_sigma * rng.normal();
        pixel[c] = static_cast<uint8_t>(std::clamp(std::lround(value), 0L, 255L));
      }
    }
  }
  return image;
}

std::string synthetic_dataset_difference(const std::string& dir, const SyntheticOptions& options) {
  std::ifstream manifest(fs::path(dir) / "synthetic.json");
  std::stringstream content;
  content << manifest.rdbuf();
  if (!manifest) return "it has no synthetic.json";
  if (content.str() != manifest_line(options)) return "it was made with other settings";
  // Each split holds its class folders and each folder its images, no more: by name and count
  // (the images are not decoded).
  const auto entries = [](const fs::path& folder) {
    std::error_code error;
    int64_t n = 0;
    for (fs::directory_iterator it(folder, error), end; !error && it != end; it.increment(error))
      ++n;
    return error ? int64_t{-1} : n;
  };
  for (int split = 0; split < 2; ++split) {
    const fs::path split_dir = fs::path(dir) / kSplits[split];
    if (entries(split_dir) != options.num_classes)
      return split_dir.string() + " does not hold its " + std::to_string(options.num_classes) +
             " class folders alone";
    for (int label = 0; label < options.num_classes; ++label) {
      const std::string& name = synthetic_class_names()[label];
      const int per_class = split == 0 ? options.train_per_class : options.val_per_class;
      for (int number = 0; number < per_class; ++number) {
        const fs::path file = split_dir / name / image_file_name(name, number);
        std::error_code error;
        if (!fs::is_regular_file(file, error)) return file.string() + " is missing";
      }
      if (entries(split_dir / name) != per_class)
        return (split_dir / name).string() + " holds other files than its images";
    }
  }
  return "";
}

std::string first_file_not_synthetic(const std::string& dir) {
  const auto is_class_name = [](const std::string& name) {
    const auto& names = synthetic_class_names();
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  const auto is_image_of = [](const std::string& name, const std::string& class_name) {
    const std::string prefix = class_name + "_", suffix = ".png";
    constexpr size_t kMinDigits = 5;  // image_file_name's %05d
    if (name.size() < prefix.size() + kMinDigits + suffix.size() || name.rfind(prefix, 0) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      return false;
    return std::all_of(name.begin() + prefix.size(), name.end() - suffix.size(),
                       [](char c) { return c >= '0' && c <= '9'; });
  };
  std::error_code error;
  fs::recursive_directory_iterator it(dir, error), end;
  for (; !error && it != end; it.increment(error)) {
    const fs::path& path = it->path();
    const std::string name = path.filename().string();
    const fs::file_type type = it->symlink_status(error).type();
    bool made_here = false;
    switch (it.depth()) {
      case 0:
        made_here =
            (name == "synthetic.json" && type == fs::file_type::regular) ||
            ((name == kSplits[0] || name == kSplits[1]) && type == fs::file_type::directory);
        break;
      case 1:
        made_here = is_class_name(name) && type == fs::file_type::directory;
        break;
      default:  // 2: the recursion stops at files
        made_here = is_image_of(name, path.parent_path().filename().string()) &&
                    type == fs::file_type::regular;
    }
    if (!made_here) return path.string();
  }
  return error ? dir + " (cannot be listed: " + error.message() + ")" : "";
}

void generate_synthetic_dataset(const std::string& dir, const SyntheticOptions& options) {
  validate(options);
  std::error_code error;
  if (fs::exists(dir, error)) throw DataError(dir + ": already exists; not overwriting it");
  const fs::path partial = dir + ".partial";
  fs::remove_all(partial, error);  // left over from an interrupted run

  const int per_class[2] = {options.train_per_class, options.val_per_class};
  std::vector<ImageJob> jobs;
  for (int split = 0; split < 2; ++split) {
    for (int label = 0; label < options.num_classes; ++label) {
      const std::string& name = synthetic_class_names()[label];
      const fs::path folder = partial / kSplits[split] / name;
      if (!fs::create_directories(folder, error) && error) {
        throw DataError(folder.string() + ": cannot create (" + error.message() + ")");
      }
      for (int number = 0; number < per_class[split]; ++number)
        jobs.push_back({split, label, number, (folder / image_file_name(name, number)).string()});
    }
  }

  // Each image has its own random stream, so the files do not depend on the thread count.
  std::mutex error_mutex;
  std::exception_ptr first_error;
#pragma omp parallel for schedule(dynamic, 16)
  for (size_t i = 0; i < jobs.size(); ++i) {
    const ImageJob& job = jobs[i];
    try {
      Rng rng(options.seed,
              (uint64_t(job.split) << 48) | (uint64_t(job.label) << 32) | uint64_t(job.number));
      write_png(job.path, render_synthetic_image(job.label, options.image_size, rng));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!first_error) first_error = std::current_exception();
    }
  }
  try {
    if (first_error) std::rethrow_exception(first_error);
    write_manifest(partial / "synthetic.json", options);
    fs::rename(partial, dir, error);
    if (error)
      throw DataError(dir + ": cannot rename " + partial.string() + " into place (" +
                      error.message() + ")");
  } catch (...) {
    fs::remove_all(partial, error);  // most often a full disk, which the half-made copy would keep
    throw;
  }
}

}  // namespace deit::data
