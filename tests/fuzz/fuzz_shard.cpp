// Shard files (data/shard.cpp), opened and every record loaded: any bytes give images or a
// DataError. The input's checksums are recomputed first wherever its offsets allow, so that
// mutations reach the checks of the header, the class table and the index, and the records, rather
// than stopping at a checksum mismatch.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "data/shard.h"
#include "data/xxhash64.h"
#include "tests/fuzz/memory_file.h"

namespace {

using namespace deit::data;

void fix_checksums(std::vector<uint8_t>& bytes) {
  ShardHeader header;
  if (bytes.size() < sizeof header) return;
  std::memcpy(&header, bytes.data(), sizeof header);
  const size_t size = bytes.size();
  if (header.index_offset >= sizeof header && header.index_offset <= size &&
      header.record_count <= (size - header.index_offset) / sizeof(ShardIndexEntry)) {
    uint8_t* index = bytes.data() + header.index_offset;
    for (uint64_t r = 0; r < header.record_count; ++r) {
      ShardIndexEntry entry;
      std::memcpy(&entry, index + r * sizeof entry, sizeof entry);
      const uint64_t pixels = uint64_t{entry.height} * entry.width * 3;
      if (entry.height <= 65536 && entry.width <= 65536 && entry.offset <= size &&
          pixels <= size - entry.offset) {
        entry.checksum = xxhash64(bytes.data() + entry.offset, pixels);
        std::memcpy(index + r * sizeof entry, &entry, sizeof entry);
      }
    }
    header.tables_checksum =
        xxhash64(index, header.record_count * sizeof(ShardIndexEntry),
                 xxhash64(bytes.data() + sizeof header, header.index_offset - sizeof header));
  }
  header.header_checksum = xxhash64(&header, offsetof(ShardHeader, header_checksum));
  std::memcpy(bytes.data(), &header, sizeof header);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  fix_checksums(bytes);
  try {
    const ShardReader reader(deit::fuzz::as_file(bytes.data(), bytes.size()));
    for (size_t i = 0; i < reader.size(); ++i) {
      try {
        const ImageU8 image = reader.load(i);
        if (image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3)
          __builtin_trap();
      } catch (const DataError&) {
      }
      (void)reader.describe(i);
    }
    (void)reader.largest_short_side();
    (void)reader.listing_fingerprint();
  } catch (const DataError&) {
  }
  return 0;
}
