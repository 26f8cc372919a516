// Little-endian words from a byte buffer at any alignment: shard files, BMP and GIF headers and
// XXH64's input all store them so. deit builds for little-endian machines only, where such a word
// is the bytes as they lie (one unaligned load).
#pragma once
#include <cstdint>
#include <cstring>

namespace deit::data {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "deit reads little-endian words as is");

inline uint16_t read_le16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline uint32_t read_le32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline uint64_t read_le64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

}  // namespace deit::data
