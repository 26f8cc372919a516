#include "data/image_folder.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <system_error>

namespace deit::data {
namespace fs = std::filesystem;

namespace {

bool is_hidden(const fs::path& path) { return path.filename().string().rfind('.', 0) == 0; }

std::vector<std::string> sorted_class_folders(const std::string& root) {
  std::error_code error;
  if (!fs::exists(root, error)) throw DataError(root + ": no such directory");
  if (!fs::is_directory(root, error)) throw DataError(root + ": not a directory");
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    if (entry.is_directory() && !is_hidden(entry.path())) names.push_back(entry.path().filename());
  }
  if (error) throw DataError(root + ": cannot list (" + error.message() + ")");
  for (const std::string& name : names) require_utf8_class_name(name, root);
  std::sort(names.begin(), names.end());
  return names;
}

// Every file under `folder`, at any depth, as torchvision's os.walk(followlinks=True) finds them.
std::vector<std::string> files_under(const fs::path& folder) {
  std::vector<std::string> paths;
  std::error_code error;
  const auto options = fs::directory_options::follow_directory_symlink;
  fs::recursive_directory_iterator it(folder, options, error), end;
  for (; !error && it != end; it.increment(error)) {
    std::error_code entry_error;
    const bool directory = it->is_directory(entry_error);
    if (is_hidden(it->path())) {
      if (directory) it.disable_recursion_pending();
      continue;
    }
    if (!directory) {
      paths.push_back(it->path().string());
      continue;
    }
    // A link to a folder above it (or to itself) would be walked until the path is too long,
    // listing every image once per turn.
    std::error_code real_error, parent_error;
    const fs::path real = fs::canonical(it->path(), real_error);
    const fs::path parent = fs::canonical(it->path().parent_path(), parent_error);
    const fs::path above = parent.lexically_relative(real);
    if (real_error || parent_error || above.empty() || *above.begin() != "..") {
      std::fprintf(stderr, "warning: not following %s: it leads back into a folder above it\n",
                   it->path().c_str());
      it.disable_recursion_pending();
    }
  }
  if (error) throw DataError(folder.string() + ": cannot list (" + error.message() + ")");
  std::sort(paths.begin(), paths.end());
  return paths;
}

std::string lowercase_extension(const std::string& path) {
  std::string extension = fs::path(path).extension().string();
  for (char& c : extension) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return extension;
}

}  // namespace

bool has_image_extension(const std::string& path) {
  static const std::array<const char*, 12> kExtensions = {".jpg", ".jpeg", ".png", ".bmp",
                                                          ".gif", ".tga",  ".psd", ".hdr",
                                                          ".pic", ".ppm",  ".pgm", ".pnm"};
  const std::string extension = lowercase_extension(path);
  return std::find(kExtensions.begin(), kExtensions.end(), extension) != kExtensions.end();
}

ImageFolder::ImageFolder(const std::string& root) : root_(root) {
  class_names_ = sorted_class_folders(root);
  if (class_names_.empty()) {
    throw DataError(root + ": no class folders (expected " + root + "/<class>/<image files>)");
  }
  std::map<std::string, size_t> ignored_by_extension;
  for (size_t label = 0; label < class_names_.size(); ++label) {
    const fs::path class_folder = fs::path(root) / class_names_[label];
    size_t images_in_class = 0;
    for (std::string& path : files_under(class_folder)) {
      if (!has_image_extension(path)) {
        ++ignored_by_extension[lowercase_extension(path)];
        continue;
      }
      files_.push_back({std::move(path), static_cast<int>(label)});
      ++images_in_class;
    }
    // The class keeps its number (labels must agree between train and val), but say so.
    if (images_in_class == 0) {
      std::fprintf(stderr, "warning: %s: class folder has no images\n", class_folder.c_str());
    }
  }
  for (const auto& [extension, count] : ignored_by_extension) {
    std::fprintf(stderr,
                 "warning: %s: ignored %zu file(s) with extension '%s' (not an image "
                 "format stb_image reads)\n",
                 root.c_str(), count, extension.c_str());
  }
  if (files_.empty()) {
    throw DataError(root + ": no images in any of its " + std::to_string(class_names_.size()) +
                    " class folders");
  }
}

ImageU8 ImageFolder::load(size_t index) const { return decode_image_file(files_.at(index).path); }

}  // namespace deit::data
