#include "data/image_source.h"

#include <cstdio>
#include <filesystem>

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

std::unique_ptr<ImageSource> open_dataset_split(const std::string& root, const std::string& split) {
  const fs::path shard = fs::path(root) / (split + ".shard");
  std::error_code error;
  const fs::path folder = fs::path(root) / split;
  if (fs::is_regular_file(shard, error)) {
    if (fs::is_directory(folder, error))
      std::fprintf(stderr,
                   "warning: %s has both %s and a folder %s/: reading the shard (pack it again "
                   "after changing the folder, or remove it)\n",
                   root.c_str(), shard.filename().c_str(), split.c_str());
    return std::make_unique<ShardReader>(shard.string());
  }
  if (!fs::is_directory(folder, error)) {
    if (fs::is_regular_file(root, error))
      throw DataError(root + ": a file, where the dataset's folder is asked for: give the folder " +
                      "that holds " + split + ".shard or " + split + "/");
    throw DataError(root + ": has neither " + shard.string() + " nor a folder " + folder.string());
  }
  return std::make_unique<ImageFolder>(folder.string());
}

std::string shown_if_not_utf8(const std::string& text) {
  try {
    nlohmann::json(text).dump();  // what writing it into a checkpoint does
    return "";
  } catch (const nlohmann::json::type_error&) {
    std::string shown;
    for (const char c : text) {
      const auto b = static_cast<unsigned char>(c);
      char escaped[5];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", b);
      shown += (b >= 0x20 && b < 0x7F) ? std::string(1, c) : std::string(escaped);
    }
    return shown;
  }
}

void require_utf8_class_name(const std::string& name, const std::string& where) {
  const std::string shown = shown_if_not_utf8(name);
  if (!shown.empty())
    throw DataError(where + ": the class name '" + shown + "' is not UTF-8 text (class names " +
                    "are saved in checkpoints as text): rename it");
}

void SkippedImages::record(const std::string& what, const std::string& message, int label) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!seen_.insert(what).second) return;
  std::fprintf(stderr, "warning: skipped %s\n", message.c_str());
  if (label >= 0) ++per_class_[label];
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
