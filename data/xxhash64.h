// XXH64 (Yann Collet's xxHash, 64-bit variant), written out here: fast enough (several GB/s per
// core) to verify every shard record on every read, and to fingerprint a split's listing.
#pragma once
#include <cstddef>
#include <cstdint>

namespace deit::data {

uint64_t xxhash64(const void* data, size_t size, uint64_t seed = 0);

}  // namespace deit::data
