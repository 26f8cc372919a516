// The safetensors file format (huggingface/safetensors), which timm, PyTorch and the Hub read:
//
//   8 bytes    N, the header length, unsigned little-endian
//   N bytes    JSON: {"__metadata__": {string: string}, "<name>": {"dtype": "F32",
//              "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}, padded with spaces so
//              that the data starts 8-byte aligned
//   the rest   the tensors' raw little-endian bytes; offsets count from the start of this part,
//              and the tensors tile it exactly (no gaps, no overlaps), as the reference
//              implementation requires
//
// Supported dtypes are those a deit Tensor has: F32, F64, BF16, I32, U8; reading also takes F16 (a
// model saved after PyTorch's .half()), widened to F32 exactly. Reading validates the
// whole header before it reads any data and throws std::runtime_error naming the file and the
// problem; writing goes to a temporary file beside the target and is renamed over it only once
// complete, so a failed write never leaves a partial file or destroys the previous one. deit also
// writes each tensor's CRC-32, and one of the rest of the metadata, into the metadata (key
// "deit_crc32"; readers that do not know it ignore it, as timm does), and checks the metadata and
// every tensor it reads against them, throwing when the bytes changed after they were written (a
// flipped bit, a copy cut short and padded).
#pragma once
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace deit::model {

using deit::NamedTensors;
using Metadata = std::map<std::string, std::string>;

// The tensor called `name`, or nullptr.
const Tensor* find_tensor(const NamedTensors& tensors, const std::string& name);

// Writes `tensors` (any device; copied to the host one at a time) and `metadata` to `path`
// atomically. Names must be unique, non-empty and not "__metadata__"; the metadata must not use
// the key "deit_crc32", which holds the checksums. Larger element types come first in the data,
// so every tensor's bytes are aligned to its element size.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const Metadata& metadata = {});

struct SafetensorsContents {
  NamedTensors tensors;  // host tensors, in the order of their bytes in the file
  Metadata metadata;     // as the writer gave it (without the checksums)
};

// Reads and validates `path`. With `select`, only the tensors it accepts are read (the others are
// still validated), so a caller that needs part of a large file does not pay for all of it.
SafetensorsContents read_safetensors(
    const std::string& path, const std::function<bool(const std::string& name)>& select = {});

}  // namespace deit::model
