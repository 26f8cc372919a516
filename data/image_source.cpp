#include "data/image_source.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "data/image_folder.h"
#include "data/shard.h"

namespace deit::data {
namespace fs = std::filesystem;

std::unique_ptr<ImageSource> open_image_source(const std::string& path) {
  std::error_code error;
  if (fs::is_directory(path, error)) return std::make_unique<ImageFolder>(path);
  if (!fs::exists(path, error)) throw DataError(path + ": no such file or directory");
  if (!is_shard_file(path)) {
    throw DataError(path + ": neither an image folder nor a deit shard file (bad magic)");
  }
  return std::make_unique<ShardReader>(path);
}

namespace {

// Whether `root`, which has no split folder, looks like a split itself: a subfolder of it holds
// image files, as a class folder does.
bool looks_like_a_split(const fs::path& root) {
  std::error_code error;
  if (fs::is_directory(root / "train", error) || fs::is_directory(root / "val", error))
    return false;
  for (const auto& entry : fs::directory_iterator(root, error)) {
    std::error_code entry_error;
    if (!entry.is_directory(entry_error)) continue;
    for (const auto& file : fs::directory_iterator(entry.path(), entry_error))
      if (has_image_extension(file.path().string())) return true;
  }
  return false;
}

// Throws DataError saying why `root` has neither the split's shard nor its folder.
[[noreturn]] void refuse_missing_split(const std::string& root, const std::string& split,
                                       const fs::path& shard, const fs::path& folder) {
  std::error_code error;
  if (fs::is_regular_file(root, error))
    throw DataError(root + ": a file, where the dataset's folder is asked for: give the folder " +
                    "that holds " + split + ".shard or " + split + "/");
  std::string message =
      root + ": has neither " + shard.string() + " nor a folder " + folder.string();
  if (looks_like_a_split(root))
    message += "; '" + root + "' looks like a split (its subfolders hold images, as classes " +
               "do): --data takes the folder above it";
  else if (split == "val" && (fs::is_directory(fs::path(root) / "train", error) ||
                              fs::is_regular_file(fs::path(root) / "train.shard", error)))
    message +=
        "; deit train scores the val split after every epoch, and deit eval scores it unless "
        "--split names another: move some of each class's images from train/<class>/ into " +
        folder.string() + "/<class>/";
  throw DataError(message);
}

}  // namespace

std::unique_ptr<ImageSource> open_dataset_split(const std::string& root, const std::string& split,
                                                bool warn) {
  const fs::path shard = fs::path(root) / (split + ".shard");
  const fs::path folder = fs::path(root) / split;
  std::error_code error;
  const bool from_shard = fs::is_regular_file(shard, error);
  if (warn && from_shard && fs::is_directory(folder, error))
    std::fprintf(stderr,
                 "warning: %s has both %s and a folder %s/: reading the shard (pack it again "
                 "after changing the folder, or remove it)\n",
                 root.c_str(), shard.filename().c_str(), split.c_str());
  if (!from_shard && !fs::is_directory(folder, error))
    refuse_missing_split(root, split, shard, folder);
  std::unique_ptr<ImageSource> source;
  if (from_shard)
    source = std::make_unique<ShardReader>(shard.string());
  else
    source = std::make_unique<ImageFolder>(folder.string(), warn);
  if (warn)
    warn_of_empty_classes(source->class_names(), images_per_class(*source),
                          (from_shard ? shard : folder).string(),
                          ": it keeps its label, but nothing of it can be learned or scored from "
                          "this split");
  return source;
}

std::string packed_below(const ImageSource& source, int64_t needed, const std::string& use) {
  const auto* shard = dynamic_cast<const ShardReader*>(&source);
  if (!shard || shard->short_side() == 0 || shard->short_side() >= needed) return "";
  // Images already smaller were packed as they were: packing again would change none of them.
  if (shard->largest_short_side() < shard->short_side()) return "";
  const std::string packed = std::to_string(shard->short_side());
  return "warning: " + shard->path() + " was packed with --short-side " + packed + ", below the " +
         std::to_string(needed) + " pixels that " + use +
         ": those of its images whose shorter side was above " + packed + " were shrunk to " +
         packed +
         " and are enlarged again, from fewer pixels than they are shown with (deit pack "
         "--short-side " +
         std::to_string(needed) + " or more keeps them)";
}

std::vector<size_t> images_per_class(const ImageSource& source) {
  std::vector<size_t> counts(source.class_names().size(), 0);
  for (size_t index = 0; index < source.size(); ++index) ++counts.at(source.label(index));
  return counts;
}

void warn_of_empty_classes(const std::vector<std::string>& class_names,
                           const std::vector<size_t>& images_per_class, const std::string& where,
                           const std::string& why) {
  for (size_t label = 0; label < class_names.size(); ++label)
    if (images_per_class.at(label) == 0)
      std::fprintf(stderr, "warning: %s: class '%s' has no images%s\n", where.c_str(),
                   class_names[label].c_str(), why.c_str());
}

std::vector<std::string> names_missing_from(const std::vector<std::string>& names,
                                            const std::vector<std::string>& other) {
  const std::set<std::string> present(other.begin(), other.end());
  std::vector<std::string> missing;
  for (const std::string& name : names)
    if (!present.count(name)) missing.push_back(name);
  return missing;
}

namespace {

constexpr size_t kClassesNamed = 3;  // in a list of differing classes; the rest are counted

// "'a', 'b', 'c' and 2 more", each name followed by its bytes where `escape` and it has any
// outside printable ASCII.
std::string listed_names(const std::vector<std::string>& names, bool escape) {
  std::string list;
  for (size_t i = 0; i < std::min(names.size(), kClassesNamed); ++i) {
    list += (i == 0 ? "'" : ", '") + names[i] + "'";
    const std::string escaped = escaped_bytes(names[i]);
    if (escape && escaped != names[i]) list += " (" + escaped + ")";
  }
  if (names.size() > kClassesNamed)
    list += " and " + std::to_string(names.size() - kClassesNamed) + " more";
  return list;
}

}  // namespace

std::string class_difference(const std::vector<std::string>& a, const std::string& a_where,
                             const std::vector<std::string>& b, const std::string& b_where) {
  if (a.empty() || a == b) return "";
  std::string difference;
  if (a.size() != b.size()) {
    difference = std::to_string(a.size()) + " classes in " + a_where + ", " +
                 std::to_string(b.size()) + " in " + b_where;
  } else {
    size_t first = 0;
    while (a[first] == b[first]) ++first;
    difference = "class " + std::to_string(first) + " is '" + a[first] + "' in " + a_where + ", '" +
                 b[first] + "' in " + b_where;
  }
  const std::vector<std::string> only_a = names_missing_from(a, b);
  const std::vector<std::string> only_b = names_missing_from(b, a);
  // Names that render alike but differ in their bytes (NFC and NFD forms, a Cyrillic 'а' for a
  // Latin 'a') show up missing on both sides; deit does not normalise Unicode to tell which.
  const bool escape = !only_a.empty() && !only_b.empty();
  if (!only_a.empty()) difference += "; only in " + a_where + ": " + listed_names(only_a, escape);
  if (!only_b.empty()) difference += "; only in " + b_where + ": " + listed_names(only_b, escape);
  return difference;
}

std::string escaped_bytes(const std::string& text) {
  std::string shown;
  for (const char c : text) {
    const auto b = static_cast<unsigned char>(c);
    char escaped[5];
    std::snprintf(escaped, sizeof escaped, "\\x%02x", b);
    shown += (b >= 0x20 && b < 0x7F) ? std::string(1, c) : std::string(escaped);
  }
  return shown;
}

std::string shown_if_not_utf8(const std::string& text) {
  try {
    nlohmann::json(text).dump();  // what writing it into a checkpoint does
    return "";
  } catch (const nlohmann::json::type_error&) {
    return escaped_bytes(text);
  }
}

void require_utf8_class_name(const std::string& name, const std::string& where) {
  const std::string shown = shown_if_not_utf8(name);
  if (!shown.empty())
    throw DataError(where + ": the class name '" + shown + "' is not UTF-8 text (class names " +
                    "are saved in checkpoints as text): rename it");
}

void SkippedImages::record(const std::string& what, const std::string& message, int label,
                           int64_t index) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!seen_.insert(what).second) return;
  std::fprintf(stderr, "warning: skipped %s\n", message.c_str());
  if (label >= 0) ++per_class_[label];
  if (index >= 0) indices_.push_back(index);
}

std::vector<int64_t> SkippedImages::indices() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return indices_;
}

size_t SkippedImages::count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return seen_.size();
}

size_t SkippedImages::count_in_class(int label) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto found = per_class_.find(label);
  return found == per_class_.end() ? 0 : found->second;
}

bool lies_within(const std::string& path, const std::string& folder) {
  std::error_code path_error, folder_error;
  const std::filesystem::path resolved = std::filesystem::weakly_canonical(path, path_error);
  const std::filesystem::path root = std::filesystem::canonical(folder, folder_error);
  if (path_error || folder_error) return false;
  const std::filesystem::path inside = resolved.lexically_relative(root);
  return !inside.empty() && *inside.begin() != "..";
}

const char* split_holding(const std::string& path, const std::string& root) {
  for (const char* split : {"train", "val"})
    if (lies_within(path, (std::filesystem::path(root) / split).string())) return split;
  return nullptr;
}

}  // namespace deit::data
