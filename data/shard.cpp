#include "data/shard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "data/file_error.h"
#include "data/image.h"
#include "data/little_endian.h"
#include "data/xxhash64.h"

namespace deit::data {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shard files are little-endian");

namespace {

uint64_t align_up(uint64_t offset) {
  return (offset + kShardRecordAlignment - 1) / kShardRecordAlignment * kShardRecordAlignment;
}

uint64_t record_bytes(const ShardIndexEntry& entry) {
  return uint64_t{entry.height} * entry.width * 3;
}

uint64_t header_checksum(const ShardHeader& header) {
  return xxhash64(&header, offsetof(ShardHeader, header_checksum));
}

uint64_t tables_checksum(const uint8_t* class_table, size_t class_table_bytes,
                         const ShardIndexEntry* index, size_t record_count) {
  return xxhash64(index, record_count * sizeof(ShardIndexEntry),
                  xxhash64(class_table, class_table_bytes));
}

std::vector<uint8_t> encode_class_table(const std::vector<std::string>& class_names) {
  std::vector<uint8_t> table;
  for (const std::string& name : class_names) {
    const uint32_t length = static_cast<uint32_t>(name.size());
    const auto* length_bytes = reinterpret_cast<const uint8_t*>(&length);
    table.insert(table.end(), length_bytes, length_bytes + 4);
    table.insert(table.end(), name.begin(), name.end());
  }
  return table;
}

// The header of a shard (its first bytes, read), checked: magic, version, checksum, offsets, and
// a file of `actual_bytes` long enough for the tables.
ShardHeader read_header(const std::string& path, const uint8_t* bytes, uint64_t actual_bytes) {
  ShardHeader header;
  std::memcpy(&header, bytes, sizeof header);
  if (std::memcmp(header.magic, kShardMagic, sizeof kShardMagic) != 0) {
    throw DataError(path + ": not a deit shard file (bad magic)");
  }
  if (header.version != kShardVersion) {
    throw DataError(path + ": shard format version " + std::to_string(header.version) +
                    "; this build reads version " + std::to_string(kShardVersion));
  }
  if (header.header_checksum != header_checksum(header)) {
    throw DataError(path + ": corrupt header (checksum mismatch)");
  }
  // The class table, then the index, then the records, each inside the file; written as
  // differences, which cannot overflow as a sum of offsets read from a damaged file can.
  const bool ordered = header.index_offset >= sizeof header &&
                       header.index_offset <= header.data_offset &&
                       header.data_offset <= header.file_bytes;
  if (!ordered || header.record_count > header.index_capacity ||
      header.index_capacity >
          (header.data_offset - header.index_offset) / sizeof(ShardIndexEntry)) {
    throw DataError(path + ": corrupt header (inconsistent offsets)");
  }
  if (actual_bytes < header.data_offset) {
    throw DataError(path + ": truncated inside its index (" + std::to_string(actual_bytes) +
                    " bytes, the header says " + std::to_string(header.file_bytes) + ")");
  }
  return header;
}

std::vector<std::string> decode_class_table(const std::string& path, const uint8_t* table,
                                            size_t bytes) {
  std::vector<std::string> names;
  for (size_t offset = 0; offset < bytes;) {
    const uint32_t length = offset + 4 <= bytes ? read_le32(table + offset) : 0;
    if (offset + 4 + uint64_t{length} > bytes) {
      throw DataError(path + ": corrupt class table (a name runs past its end)");
    }
    names.emplace_back(reinterpret_cast<const char*>(table + offset + 4), length);
    offset += 4 + length;
  }
  return names;
}

}  // namespace

bool is_shard_file(const std::string& path) {
  // Before opening it: opening a named pipe would wait for a writer.
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) return false;
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) return false;
  char magic[sizeof kShardMagic] = {};
  const bool matches = std::fread(magic, 1, sizeof magic, file) == sizeof magic &&
                       std::memcmp(magic, kShardMagic, sizeof magic) == 0;
  std::fclose(file);
  return matches;
}

// ---------------------------------------------------------------------------------------------
// Writing

std::string ShardWriter::partial_path(const std::string& path) {
  return PendingFile::temp_path(path, "partial");
}

ShardWriter::ShardWriter(std::string path, std::vector<std::string> class_names, uint64_t capacity,
                         uint32_t short_side)
    : path_(std::move(path)),
      file_(path_, "partial"),
      class_names_(std::move(class_names)),
      class_table_(encode_class_table(class_names_)),
      capacity_(capacity),
      short_side_(short_side) {
  // Packing again replaces a shard; anything else at `path` (a folder, a link, a device, a pipe,
  // another file) is left alone: the finished shard is renamed onto `path`.
  std::error_code error;
  const std::filesystem::file_status existing = std::filesystem::symlink_status(path_, error);
  if (std::filesystem::exists(existing)) {
    if (!std::filesystem::is_regular_file(existing))
      throw DataError(path_ + ": exists and is not a regular file (a folder, link, device or " +
                      "pipe); choose another output");
    if (!is_shard_file(path_))
      throw DataError(path_ + ": exists and is not a deit shard; remove it or choose another " +
                      "output");
  }
  index_.reserve(capacity_);
  data_offset_ =
      align_up(sizeof(ShardHeader) + class_table_.size() + capacity_ * sizeof(ShardIndexEntry));
  end_offset_ = data_offset_;
  file_.open();
}

void ShardWriter::add(const ImageU8& image, int label) {
  if (index_.size() == capacity_) {
    throw DataError(path_ + ": more records than the " + std::to_string(capacity_) + " reserved");
  }
  if (label < 0 || static_cast<size_t>(label) >= class_names_.size()) {
    throw DataError(path_ + ": label " + std::to_string(label) + " outside the " +
                    std::to_string(class_names_.size()) + " classes");
  }
  ShardIndexEntry entry{};
  entry.offset = align_up(end_offset_);
  entry.height = static_cast<uint32_t>(image.height);
  entry.width = static_cast<uint32_t>(image.width);
  entry.label = label;
  entry.checksum = xxhash64(image.pixels.data(), image.pixels.size());
  file_.write_at(entry.offset, image.pixels.data(), image.pixels.size());
  end_offset_ = entry.offset + image.pixels.size();
  index_.push_back(entry);
}

uint64_t ShardWriter::finish() {
  std::vector<ShardIndexEntry> full_index(capacity_);
  std::copy(index_.begin(), index_.end(), full_index.begin());

  ShardHeader header{};
  std::memcpy(header.magic, kShardMagic, sizeof kShardMagic);
  header.version = kShardVersion;
  header.num_classes = static_cast<uint32_t>(class_names_.size());
  header.record_count = index_.size();
  header.index_capacity = capacity_;
  header.index_offset = sizeof(ShardHeader) + class_table_.size();
  header.data_offset = data_offset_;
  header.file_bytes = end_offset_;
  header.short_side = short_side_;
  header.tables_checksum =
      tables_checksum(class_table_.data(), class_table_.size(), index_.data(), index_.size());
  header.header_checksum = header_checksum(header);

  file_.write_at(0, &header, sizeof header);
  file_.write_at(sizeof header, class_table_.data(), class_table_.size());
  const uint64_t index_end = header.index_offset + full_index.size() * sizeof(ShardIndexEntry);
  file_.write_at(header.index_offset, full_index.data(), index_end - header.index_offset);
  // With no records the file would end at the index: as long as the header says, zeros after it.
  if (index_.empty() && index_end < end_offset_) {
    const std::vector<uint8_t> padding(end_offset_ - index_end, 0);
    file_.write_at(index_end, padding.data(), padding.size());
  }
  file_.commit();  // synced to disk, then renamed onto `path`
  return end_offset_;
}

// ---------------------------------------------------------------------------------------------
// Reading

namespace {

// Reads `bytes` at `offset` of `fd`, through short reads and interruptions; returns how many it
// got (fewer only where the file ends). Throws DataError naming `path` on a read error.
size_t read_at(int fd, const std::string& path, uint64_t offset, void* dst, size_t bytes) {
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd, static_cast<uint8_t*>(dst) + done, bytes - done,
                              static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw DataError(path + ": cannot read (" + errno_text() + ")");
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

}  // namespace

ShardReader::ShardReader(const std::string& path) : path_(path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (!error && !std::filesystem::is_regular_file(status))
    throw DataError(path + ": not a regular file (a shard is one)");
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw DataError(path + ": cannot open (" + errno_text() + ")");
  try {
    struct stat info {};
    if (fstat(fd_, &info) != 0) throw DataError(path + ": cannot stat (" + errno_text() + ")");
    const uint64_t actual_bytes = static_cast<uint64_t>(info.st_size);
    if (actual_bytes < sizeof(ShardHeader)) {
      throw DataError(path + ": " + std::to_string(actual_bytes) +
                      " bytes, too short for a shard header (truncated, or not a shard file)");
    }
    // The header, then everything before the records: the class table and the index.
    std::vector<uint8_t> tables(sizeof(ShardHeader));
    read_at(fd_, path, 0, tables.data(), tables.size());
    const ShardHeader header = read_header(path, tables.data(), actual_bytes);
    tables.resize(header.data_offset);
    const size_t rest = tables.size() - sizeof header;
    if (read_at(fd_, path, sizeof header, tables.data() + sizeof header, rest) != rest)
      throw DataError(path + ": truncated inside its index while being opened");
    const uint8_t* class_table = tables.data() + sizeof header;
    const size_t class_table_bytes = header.index_offset - sizeof header;
    const auto* index =
        reinterpret_cast<const ShardIndexEntry*>(tables.data() + header.index_offset);
    if (header.tables_checksum !=
        tables_checksum(class_table, class_table_bytes, index, header.record_count)) {
      throw DataError(path + ": corrupt class table or index (checksum mismatch)");
    }
    class_names_ = decode_class_table(path, class_table, class_table_bytes);
    for (const std::string& name : class_names_) require_utf8_class_name(name, path);
    if (class_names_.size() != header.num_classes) {
      throw DataError(path + ": corrupt class table (" + std::to_string(class_names_.size()) +
                      " names for " + std::to_string(header.num_classes) + " classes)");
    }
    index_.assign(index, index + header.record_count);
    short_side_ = header.short_side;
    validate_index(header, actual_bytes);
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

void ShardReader::validate_index(const ShardHeader& header, uint64_t actual_bytes) const {
  for (size_t record = 0; record < index_.size(); ++record) {
    const ShardIndexEntry& entry = index_[record];
    // Sizes past deit's image limits (which pack keeps to) are damage: their byte count could
    // overflow (and pass for a few bytes), and load() gives an image int sizes.
    const bool sized =
        entry.height > 0 && entry.width > 0 && within_image_limits(entry.width, entry.height);
    const uint64_t end = entry.offset + record_bytes(entry);
    if (!sized || entry.offset < header.data_offset || entry.offset % kShardRecordAlignment != 0 ||
        end < entry.offset || end > header.file_bytes || entry.label < 0 ||
        static_cast<uint32_t>(entry.label) >= header.num_classes) {
      throw DataError(describe(record) + ": corrupt index entry");
    }
    if (end > actual_bytes) {
      throw DataError(path_ + ": truncated (" + std::to_string(actual_bytes) + " of " +
                      std::to_string(header.file_bytes) + " bytes): record " +
                      std::to_string(record) + " of " + std::to_string(index_.size()) +
                      " and the ones after it are cut off");
    }
  }
  if (actual_bytes != header.file_bytes) {
    throw DataError(path_ + ": " + std::to_string(actual_bytes) + " bytes but the header says " +
                    std::to_string(header.file_bytes) + " (damaged or appended to)");
  }
}

ShardReader::~ShardReader() { ::close(fd_); }

uint32_t ShardReader::largest_short_side() const {
  uint32_t largest = 0;
  for (const ShardIndexEntry& entry : index_)
    largest = std::max(largest, std::min(entry.height, entry.width));
  return largest;
}

std::string ShardReader::describe(size_t index) const {
  return path_ + " record " + std::to_string(index);
}

std::string ShardReader::listing_fingerprint() const {
  // By content, not by where each record lies: a repack of the same images in the same order
  // keeps it.
  uint64_t hash = 0;
  for (const ShardIndexEntry& entry : index_) {
    const uint64_t fields[3] = {static_cast<uint32_t>(entry.label),
                                uint64_t{entry.height} << 32 | entry.width, entry.checksum};
    hash = xxhash64(fields, sizeof fields, hash);
  }
  char text[32];
  std::snprintf(text, sizeof text, "shard:%016llx", static_cast<unsigned long long>(hash));
  return text;
}

ImageU8 ShardReader::load(size_t index) const {
  const ShardIndexEntry& entry = index_.at(index);
  ImageU8 image;
  image.height = static_cast<int>(entry.height);
  image.width = static_cast<int>(entry.width);
  image.pixels.resize(record_bytes(entry));
  // Read, not mapped: a file cut short while in use (copied over, truncated) is a short read to
  // report, where a mapping would end the process with SIGBUS.
  if (read_at(fd_, path_, entry.offset, image.pixels.data(), image.pixels.size()) !=
      image.pixels.size()) {
    throw DataError(describe(index) + ": the file ends before it (was it replaced or truncated " +
                    "while in use?)");
  }
  if (xxhash64(image.pixels.data(), image.pixels.size()) != entry.checksum) {
    throw DataError(describe(index) + ": checksum mismatch (the record is corrupt)");
  }
  return image;
}

}  // namespace deit::data
