#include "data/image_source.h"

#include <cstdio>
#include <filesystem>

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
    throw DataError(root + ": has neither " + shard.string() + " nor a folder " + folder.string());
  }
  return std::make_unique<ImageFolder>(folder.string());
}

namespace {

// The length of the well-formed UTF-8 sequence at s[i], or 0 when there is none (a stray
// continuation byte, a truncated or overlong sequence, a surrogate, or a code point past U+10FFFF).
size_t utf8_sequence_length(const std::string& s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return 1;
  size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;  // the range of the byte after the lead
  if (lead >= 0xC2 && lead <= 0xDF)
    length = 2;
  else if (lead == 0xE0)
    length = 3, low = 0xA0;
  else if (lead == 0xED)
    length = 3, high = 0x9F;
  else if (lead >= 0xE1 && lead <= 0xEF)
    length = 3;
  else if (lead == 0xF0)
    length = 4, low = 0x90;
  else if (lead >= 0xF1 && lead <= 0xF3)
    length = 4;
  else if (lead == 0xF4)
    length = 4, high = 0x8F;
  else
    return 0;
  if (i + length > s.size() || byte(i + 1) < low || byte(i + 1) > high) return 0;
  for (size_t k = i + 2; k < i + length; ++k)
    if (byte(k) < 0x80 || byte(k) > 0xBF) return 0;
  return length;
}

}  // namespace

void require_utf8_class_name(const std::string& name, const std::string& where) {
  for (size_t i = 0; i < name.size();) {
    const size_t length = utf8_sequence_length(name, i);
    if (length > 0) {
      i += length;
      continue;
    }
    std::string shown;  // printable ASCII as is, every other byte as \xNN
    for (const char c : name) {
      const auto b = static_cast<unsigned char>(c);
      char escaped[5];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", b);
      shown += (b >= 0x20 && b < 0x7F) ? std::string(1, c) : std::string(escaped);
    }
    throw DataError(where + ": the class name '" + shown + "' is not UTF-8 text (class names " +
                    "are saved in checkpoints as text): rename it");
  }
}

void SkippedImages::record(const std::string& what, const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (seen_.insert(what).second) std::fprintf(stderr, "warning: skipped %s\n", message.c_str());
}

size_t SkippedImages::count() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return seen_.size();
}

}  // namespace deit::data
