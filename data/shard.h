// Packed shard files: a whole image folder, pre-resized, in one file read record by record.
//
// Records hold raw RGB pixels, not re-encoded images. Measured on the 2-core development machine
// (bench/results/2026-11-26-shard-format.md; bench/shard_format_bench.cpp), one core reads
// ~21,000 raw records/s at shorter side 256 (checksum verified, ~2.1 GB/s), but decodes only ~940
// of the same images re-encoded as JPEG q90, ~300 as PNG, and ~115 of the 720x477 JPEG originals.
// The trainer needs well over 10,000 images/s per GPU, which only raw records give without a
// decode farm; the price is disk space (~290 KiB per image at 256 instead of ~40 KiB as JPEG).
// Records are read with pread, not through a memory mapping, since 2026-12-03: a shard cut short
// while a run reads it (copied over, truncated) is then an error, not SIGBUS. It costs about a
// fifth per core (21,100 against 26,900 records/s back to back, the same bench:
// bench/results/2026-12-03-cpu-data-path.md).
//
// Layout (version 1, little-endian):
//   ShardHeader                      at 0
//   class table                      each class: uint32 byte length, then the UTF-8 name
//   index                            index_capacity ShardIndexEntry, the first record_count used
//   records                          from data_offset, each at a 64-byte aligned offset:
//                                    (height, width, 3) uint8 RGB
// The index lies before the records so that a truncated file still says which record is cut.
// Every record carries an xxhash64 checksum, verified on every read; the header and the tables
// carry their own. Writers write to a temporary file and rename it into place when complete.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "data/image_source.h"
#include "data/pending_file.h"

namespace deit::data {

inline constexpr char kShardMagic[8] = {'D', 'E', 'I', 'T', 'S', 'H', 'R', 'D'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint64_t kShardRecordAlignment = 64;

struct ShardHeader {
  char magic[8];
  uint32_t version;
  uint32_t num_classes;
  uint64_t record_count;
  uint64_t index_capacity;
  uint64_t index_offset;
  uint64_t data_offset;
  uint64_t file_bytes;  // the whole file: a different size means truncation or corruption
  uint32_t short_side;  // the shorter side images were resized to; 0 = original sizes
  uint32_t reserved;
  uint64_t tables_checksum;  // xxhash64 of the class table and the record_count used entries
  uint64_t header_checksum;  // xxhash64 of every field above
};
static_assert(sizeof(ShardHeader) == 80, "ShardHeader is a file format: no padding");

struct ShardIndexEntry {
  uint64_t offset;
  uint32_t height;
  uint32_t width;
  int32_t label;
  uint32_t reserved;
  uint64_t checksum;  // xxhash64 of the record's pixels
};
static_assert(sizeof(ShardIndexEntry) == 32, "ShardIndexEntry is a file format: no padding");

// True when `path` is a regular file that starts with the shard magic.
bool is_shard_file(const std::string& path);

// Writes a shard. Records go to partial_path(path) and the file is renamed to `path` by finish();
// a writer destroyed before finish() removes its partial file, so `path` is never half written
// (a PendingFile, data/pending_file.h). Write failures throw std::runtime_error naming `path`.
class ShardWriter {
 public:
  // `capacity` bounds the number of records (the index is reserved up front).
  ShardWriter(std::string path, std::vector<std::string> class_names, uint64_t capacity,
              uint32_t short_side);
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  void add(const ImageU8& image, int label);
  // Writes the header and index, flushes to disk and renames. Returns the file size in bytes.
  uint64_t finish();

  // Where this process writes the shard for `path` until finish() renames it into place: a name
  // of its own (PID), so two writers of one `path` never write into one file.
  static std::string partial_path(const std::string& path);

 private:
  std::string path_;
  PendingFile file_;
  std::vector<std::string> class_names_;
  std::vector<uint8_t> class_table_;
  std::vector<ShardIndexEntry> index_;
  uint64_t capacity_;
  uint32_t short_side_;
  uint64_t data_offset_;
  uint64_t end_offset_;
};

// Reads a shard with pread, each record straight into its image. Opening checks the header, the
// tables and every index entry; each load() checks its record's checksum. Problems throw DataError
// naming the file and, where one is to blame, the record number.
class ShardReader : public ImageSource {
 public:
  explicit ShardReader(const std::string& path);
  ~ShardReader() override;
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  size_t size() const override { return index_.size(); }
  const std::vector<std::string>& class_names() const override { return class_names_; }
  int label(size_t index) const override { return index_.at(index).label; }
  ImageU8 load(size_t index) const override;
  std::string describe(size_t index) const override;
  std::string listing_fingerprint() const override;

  const std::string& path() const { return path_; }
  uint32_t short_side() const { return short_side_; }
  // The largest of its images' shorter sides: below short_side(), deit pack shrank none of them.
  uint32_t largest_short_side() const;

 private:
  void validate_index(const ShardHeader& header, uint64_t actual_bytes) const;

  std::string path_;
  int fd_ = -1;
  uint32_t short_side_ = 0;
  std::vector<std::string> class_names_;
  std::vector<ShardIndexEntry> index_;
};

}  // namespace deit::data
