#include "data/image_folder.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <system_error>
#include <vector>

#include "data/xxhash64.h"

namespace deit::data {
namespace fs = std::filesystem;

namespace {

bool is_hidden(const fs::path& path) { return path.filename().string().rfind('.', 0) == 0; }

// Entries of one kind that the listing passes over, told in one warning that counts them and
// names the first by name (the same example every time).
struct PassedOver {
  size_t count = 0;
  std::string example;
  void add(const fs::path& path) {
    if (count++ == 0 || path.string() < example) example = path.string();
  }
};

// A link whose target does not exist (an unmounted drive, a moved folder): not the class folder
// or image (`meant_as`) the scan can see, yet most likely meant as one.
void warn_of_broken_link(const fs::path& link, const char* meant_as) {
  std::error_code error;
  const fs::path target = fs::read_symlink(link, error);
  std::fprintf(stderr,
               "warning: %s: a link to %s, which does not exist: not read as %s (mount or fix "
               "its target, or remove the link)\n",
               link.c_str(), target.c_str(), meant_as);
}

// The class folders of `root`, sorted. What the scan leaves out there but was likely meant to be
// read is warned about (with `warn`): broken links, and image files outside any class folder.
std::vector<std::string> sorted_class_folders(const std::string& root, bool warn,
                                              PassedOver& hidden) {
  std::error_code error;
  if (!fs::exists(root, error)) throw DataError(root + ": no such directory");
  if (!fs::is_directory(root, error)) throw DataError(root + ": not a directory");
  std::vector<std::string> names;
  PassedOver loose_images;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    if (is_hidden(entry.path())) {
      hidden.add(entry.path());
      continue;
    }
    std::error_code entry_error;
    if (entry.is_directory(entry_error)) {
      names.push_back(entry.path().filename());
    } else if (entry.is_symlink(entry_error) && !entry.exists(entry_error)) {
      if (warn) warn_of_broken_link(entry.path(), "a class folder");
    } else if (has_image_extension(entry.path().string())) {
      loose_images.add(entry.path());
    }
  }
  if (error) throw DataError(root + ": cannot list (" + error.message() + ")");
  if (warn && loose_images.count > 0)
    std::fprintf(stderr,
                 "warning: %s: %zu image file(s) lie directly in it, outside any class folder, "
                 "and are not read (e.g. %s): move them into %s/<class>/\n",
                 root.c_str(), loose_images.count, loose_images.example.c_str(), root.c_str());
  for (const std::string& name : names) require_utf8_class_name(name, root);
  std::sort(names.begin(), names.end());
  return names;
}

// The folder that advancing `it` reads next, for the error when that fails: the entry itself when
// the iterator is about to descend into it, else the folder the entry lies in.
fs::path folder_read_next(const fs::recursive_directory_iterator& it) {
  std::error_code error;
  return it.recursion_pending() && it->is_directory(error) ? it->path() : it->path().parent_path();
}

// Every file under `folder`, at any depth, as torchvision's os.walk(followlinks=True) finds them,
// but for hidden ones (counted in `hidden`) and links to nothing (warned about: every read of one
// would fail, and a short run might never meet it to say so).
std::vector<std::string> files_under(const fs::path& folder, bool warn, PassedOver& hidden) {
  std::vector<std::string> paths;
  std::error_code error;
  const auto options = fs::directory_options::follow_directory_symlink;
  fs::recursive_directory_iterator it(folder, options, error), end;
  // The folders the walk is inside, links resolved: walk_path[d] is the one whose entries have
  // depth d.
  std::error_code real_error;
  std::vector<fs::path> walk_path = {fs::canonical(folder, real_error)};
  fs::path reading = folder;
  for (; !error && it != end; reading = folder_read_next(it), it.increment(error)) {
    std::error_code entry_error;
    const bool directory = it->is_directory(entry_error);
    if (is_hidden(it->path())) {
      if (directory) it.disable_recursion_pending();
      hidden.add(it->path());
      continue;
    }
    if (!directory) {
      // is_symlink reads the listing's entry type; only a link costs a look at its target.
      if (it->is_symlink(entry_error) && !fs::exists(it->path(), entry_error)) {
        if (warn) warn_of_broken_link(it->path(), "an image");
        continue;
      }
      paths.push_back(it->path().string());
      continue;
    }
    // A folder that holds one the walk is inside (through a link to itself, to a folder above
    // it, or to a folder with a link back here) would be walked until the path is too long,
    // listing every image once per turn.
    walk_path.resize(static_cast<size_t>(it.depth()) + 1);
    const fs::path real = fs::canonical(it->path(), real_error);
    const auto lies_in_real = [&](const fs::path& walked) {
      const fs::path up = walked.lexically_relative(real);
      return up.empty() || *up.begin() != "..";  // empty: cannot tell, so not followed
    };
    if (real_error || std::any_of(walk_path.begin(), walk_path.end(), lies_in_real)) {
      if (warn)
        std::fprintf(stderr, "warning: not following %s: it leads back into a folder above it\n",
                     it->path().c_str());
      it.disable_recursion_pending();
      continue;
    }
    walk_path.push_back(real);
  }
  if (error) throw DataError(reading.string() + ": cannot list (" + error.message() + ")");
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
  // .jfif is JPEG under another name; stb_image tells formats apart by their content.
  static const std::array<const char*, 11> kExtensions = {
      ".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tga", ".psd", ".ppm", ".pgm", ".pnm"};
  const std::string extension = lowercase_extension(path);
  return std::find(kExtensions.begin(), kExtensions.end(), extension) != kExtensions.end();
}

ImageFolder::ImageFolder(const std::string& root, bool warn) : root_(root) {
  // Hidden files and folders (.DS_Store, macOS's ._IMG.JPEG, a .ipynb_checkpoints folder):
  // torchvision's ImageFolder lists them (and fails on ._ ones), so a count that differs from its
  // says why.
  PassedOver hidden;
  class_names_ = sorted_class_folders(root, warn, hidden);
  if (class_names_.empty()) {
    throw DataError(root + ": no class folders (expected " + root + "/<class>/<image files>)");
  }
  std::map<std::string, PassedOver> ignored_by_extension;
  for (size_t label = 0; label < class_names_.size(); ++label) {
    for (std::string& path : files_under(fs::path(root) / class_names_[label], warn, hidden)) {
      if (has_image_extension(path)) {
        files_.push_back({std::move(path), static_cast<int>(label)});
        continue;
      }
      ignored_by_extension[lowercase_extension(path)].add(path);
    }
  }
  if (warn && hidden.count > 0)
    std::fprintf(stderr,
                 "warning: %s: ignored %zu hidden file(s) or folder(s) (names starting with '.'), "
                 "e.g. %s\n",
                 root.c_str(), hidden.count, hidden.example.c_str());
  if (warn)
    for (const auto& [extension, ignored] : ignored_by_extension)
      std::fprintf(stderr,
                   "warning: %s: ignored %zu file(s) with extension '%s' (not an image format "
                   "deit reads), e.g. %s\n",
                   root.c_str(), ignored.count, extension.c_str(), ignored.example.c_str());
  if (files_.empty()) {
    throw DataError(root + ": no images in any of its " + std::to_string(class_names_.size()) +
                    " class folders");
  }
}

ImageU8 ImageFolder::load(size_t index) const { return decode_image_file(files_.at(index).path); }

std::string ImageFolder::listing_fingerprint() const {
  // Paths relative to the root (every listed path starts with it): a dataset copied, moved or
  // mounted elsewhere keeps its fingerprint.
  const size_t root_length = (fs::path(root_) / "").string().size();
  uint64_t hash = 0;
  for (const File& file : files_) {
    const std::string entry = file.path.substr(root_length) + '\0' + std::to_string(file.label);
    hash = xxhash64(entry.data(), entry.size(), hash);
  }
  char text[32];
  std::snprintf(text, sizeof text, "folder:%016llx", static_cast<unsigned long long>(hash));
  return text;
}

}  // namespace deit::data
