#include "model/safetensors.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <stdexcept>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/pending_file.h"
#include "engine/errno_text.h"

namespace deit::model {

// Tensor bytes go to and from the file unchanged, which is only right on a little-endian host.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes little-endian");

namespace {

// The reference implementation refuses headers above 100 MB; so do we, before allocating one.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::u8: return "U8";
  }
  return "?";
}

bool parse_safetensors_dtype(const std::string& name, DType& out) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::u8}) {
    if (name == safetensors_dtype_name(t)) {
      out = t;
      return true;
    }
  }
  return false;
}

using File = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

// Each tensor's CRC-32 (zlib's), as 8 hex digits, in a JSON object under this metadata key: a bit
// flipped on a disk or a copy cut short and padded (the header stays valid) is found when the
// tensor is read, instead of training on from damaged weights. A fixed width, so the header can
// be written before the data and its checksums filled in after. Files without it (written by
// another program, or by deit before it) are read unchecked. The writer's other metadata (a run's
// state, classes and model) has its own, under kMetadataChecksum: a digit flipped there would
// resume another epoch or learning rate without a word.
constexpr const char* kChecksumsKey = "deit_crc32";
constexpr const char* kMetadataChecksum = "__metadata__";  // never a tensor's name
constexpr const char* kChangedAfterWriting =
    "; the file changed after deit wrote it (a file rewritten on purpose must leave out its "
    "metadata's deit_crc32)";

// A large tensor's CRC is summed in 64 MiB pieces on every core, then combined: one core's 2.3 GB/s
// (measured on the development VM) would add seconds to each save and load of a large model's
// checkpoint.
std::string crc32_hex(const void* data, size_t size) {
  constexpr size_t kPiece = size_t{64} << 20;
  const auto* bytes = static_cast<const Bytef*>(data);
  const auto pieces = static_cast<int64_t>((size + kPiece - 1) / kPiece);
  std::vector<uLong> piece_crcs(static_cast<size_t>(pieces));
#pragma omp parallel for schedule(static) if (pieces > 1)
  for (int64_t i = 0; i < pieces; ++i) {
    const size_t begin = static_cast<size_t>(i) * kPiece;
    piece_crcs[i] = crc32_z(crc32_z(0L, Z_NULL, 0), bytes + begin, std::min(kPiece, size - begin));
  }
  uLong crc = crc32_z(0L, Z_NULL, 0);
  for (int64_t i = 0; i < pieces; ++i) {
    const size_t begin = static_cast<size_t>(i) * kPiece;
    crc = crc32_combine(crc, piece_crcs[i], static_cast<z_off_t>(std::min(kPiece, size - begin)));
  }
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08lx", crc);
  return hex;
}

std::string crc32_hex(const Tensor& host) { return crc32_hex(host.raw_data(), host.nbytes()); }

// The metadata's entries in their (sorted) order, each key and value ended by a NUL.
std::string metadata_crc32_hex(const Metadata& metadata) {
  std::string text;
  for (const auto& [key, value] : metadata) text += key + '\0' + value + '\0';
  return crc32_hex(text.data(), text.size());
}

// ---------------------------------------------------------------------------------------------
// Reading

// Opening a named pipe would wait for a writer, for ever (a checkpoint path given by mistake
// would hang eval, info, export and resume): only regular files are read (links followed). A
// missing file is left to fopen, whose error says so.
void check_regular_file(const std::string& path) {
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status))
    throw std::runtime_error("cannot read '" + path + "': not a regular file");
}

struct Entry {
  std::string name;
  DType dtype;  // the tensor's
  Shape shape;
  uint64_t begin, end;  // byte range within the data part
  bool ieee_half = false;  // F16 in the file, widened to the f32 tensor as it is read
};

// IEEE 754 binary16 to float, exactly: every half is a float. PyTorch writes F16 for a model saved
// after .half(); deit has no such dtype, so the weights arrive as f32 (they train in fp32 anyway).
float float_from_ieee_half(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000) << 16;
  const uint32_t exponent = (half >> 10) & 0x1f;
  const uint32_t mantissa = half & 0x3ff;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  const uint32_t bits = exponent == 0x1f ? sign | 0x7f800000u | (mantissa << 13)  // inf, NaN
                                         : sign | ((exponent + 112) << 23) | (mantissa << 13);
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

class HeaderParser {
 public:
  explicit HeaderParser(const std::string& path) : path_(path) {}

  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error("'" + path_ + "' is not a valid safetensors file: " + why);
  }

  // Parses and checks every entry of the header; `data_bytes` is what the file holds after it.
  void parse(const std::string& text, uint64_t data_bytes, SafetensorsContents& out,
             std::vector<Entry>& entries) const {
    // JSON parsers keep one of two entries under the same name, silently: a tensor described
    // twice would otherwise be refused for a gap in the data its other entry leaves, or read
    // from either entry's bytes.
    std::vector<std::set<std::string>> keys;  // of each object open at this point of the parse
    std::string twice;
    auto note_duplicates = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
      using Event = nlohmann::json::parse_event_t;
      if (event == Event::object_start) keys.emplace_back();
      if (event == Event::object_end) keys.pop_back();
      if (event == Event::key && !keys.back().insert(parsed.get<std::string>()).second &&
          twice.empty())
        twice = parsed.get<std::string>();
      return true;
    };
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(text, note_duplicates);
    } catch (const nlohmann::json::exception& e) {  // also a number past a double's range
      fail(std::string("the header is not JSON (") + e.what() + ")");
    }
    if (!twice.empty()) fail("its header names '" + twice + "' twice in one object");
    if (!header.is_object()) fail("the header is not a JSON object");
    for (const auto& [name, value] : header.items()) {
      if (name == "__metadata__")
        parse_metadata(value, out.metadata);
      else
        entries.push_back(parse_entry(name, value));
    }
    check_layout(entries, data_bytes);
  }

 private:
  void parse_metadata(const nlohmann::json& value, Metadata& metadata) const {
    if (!value.is_object()) fail("__metadata__ is not an object");
    for (const auto& [key, item] : value.items()) {
      if (!item.is_string()) fail("__metadata__ entry '" + key + "' is not a string");
      metadata[key] = item.get<std::string>();
    }
  }

  Entry parse_entry(const std::string& name, const nlohmann::json& value) const {
    const std::string where = "tensor '" + name + "'";
    if (!value.is_object()) fail(where + " is not described by an object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!value.contains(key)) fail(where + " has no \"" + key + "\"");
    Entry e;
    e.name = name;
    const auto& dtype = value["dtype"];
    if (!dtype.is_string()) fail(where + " has a dtype that is not a string");
    e.ieee_half = dtype.get<std::string>() == "F16";
    if (e.ieee_half)
      e.dtype = DType::f32;
    else if (!parse_safetensors_dtype(dtype.get<std::string>(), e.dtype))
      fail(where + " has dtype '" + dtype.get<std::string>() +
           "', which deit does not read (it reads F32, F64, F16, BF16, I32, U8)");

    const auto& shape = value["shape"];
    if (!shape.is_array()) fail(where + " has a shape that is not an array");
    uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned())
        fail(where + " has a shape entry that is not a count: " + d.dump());
      const uint64_t n = d.get<uint64_t>();
      if (n > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, n, &numel))
        fail(where + " has an impossibly large shape " + shape.dump());
      e.shape.push_back(static_cast<int64_t>(n));
    }

    const auto& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
        !offsets[1].is_number_unsigned())
      fail(where + " has data_offsets that are not two byte offsets: " + offsets.dump());
    e.begin = offsets[0].get<uint64_t>();
    e.end = offsets[1].get<uint64_t>();
    if (e.end < e.begin) fail(where + " ends before it begins: " + offsets.dump());
    uint64_t bytes = 0;
    const uint64_t element_bytes = e.ieee_half ? 2 : dtype_size(e.dtype);
    if (__builtin_mul_overflow(numel, element_bytes, &bytes) || bytes != e.end - e.begin)
      fail(where + " is " + dtype.get<std::string>() + " " + shape_str(e.shape) + " (" +
           std::to_string(numel) + " elements) but its data_offsets " + offsets.dump() + " span " +
           std::to_string(e.end - e.begin) + " bytes");
    return e;
  }

  // The tensors must tile the data part exactly, in some order.
  void check_layout(std::vector<Entry>& entries, uint64_t data_bytes) const {
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t expected = 0;
    const Entry* previous = nullptr;
    for (const Entry& e : entries) {
      if (e.end > data_bytes)
        fail("tensor '" + e.name + "' needs bytes up to " + std::to_string(e.end) +
             " of the data, but the file holds only " + std::to_string(data_bytes) +
             " (truncated?)");
      if (e.begin < expected)
        fail("tensors '" + previous->name + "' and '" + e.name + "' overlap");
      if (e.begin > expected)
        fail("bytes " + std::to_string(expected) + " to " + std::to_string(e.begin) +
             " of the data belong to no tensor");
      expected = e.end;
      previous = &e;
    }
    if (expected != data_bytes)
      fail("the file holds " + std::to_string(data_bytes) + " bytes of data but the tensors use " +
           std::to_string(expected));
  }

  std::string path_;
};

}  // namespace

const Tensor* find_tensor(const NamedTensors& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const Metadata& metadata) {
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__")
      throw std::invalid_argument("cannot write '" + path + "': invalid tensor name '" + name +
                                  "'");
    if (!names.insert(name).second)
      throw std::invalid_argument("cannot write '" + path + "': two tensors are named '" + name +
                                  "'");
    if (!t.defined())
      throw std::invalid_argument("cannot write '" + path + "': tensor '" + name +
                                  "' is undefined");
  }

  // The reader takes the key for deit's own and drops it before it checks the rest: a caller's
  // entry under it would be lost, and the metadata checksum, which covers it, would then fail.
  if (metadata.count(kChecksumsKey))
    throw std::invalid_argument("cannot write '" + path + "': the metadata key '" + kChecksumsKey +
                                "' is deit's own (the file's checksums)");

  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });

  nlohmann::ordered_json checksums = {{kMetadataChecksum, metadata_crc32_hex(metadata)}};
  for (size_t i : order) checksums[tensors[i].first] = "00000000";  // filled in as they are written
  auto header_text = [&] {
    Metadata with_checksums = metadata;
    with_checksums[kChecksumsKey] = checksums.dump();
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    header["__metadata__"] = with_checksums;
    uint64_t offset = 0;
    for (size_t i : order) {
      const Tensor& t = tensors[i].second;
      header[tensors[i].first] = {{"dtype", safetensors_dtype_name(t.dtype())},
                                  {"shape", t.shape()},
                                  {"data_offsets", {offset, offset + t.nbytes()}}};
      offset += t.nbytes();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // data 8-byte aligned, as the reference does
    return text;
  };
  const std::string provisional = header_text();
  const uint64_t header_bytes = provisional.size();

  data::PendingFile file(path);
  file.open();
  file.write(&header_bytes, sizeof header_bytes);
  file.write(provisional.data(), provisional.size());
  for (size_t i : order) {
    const Tensor host = tensors[i].second.to(Device::cpu());
    file.write(host.raw_data(), host.nbytes());
    checksums[tensors[i].first] = crc32_hex(host);
  }
  const std::string text = header_text();  // as long as the provisional one: 8 digits a checksum
  if (text.size() != header_bytes)
    throw std::logic_error("write_safetensors: the header changed length with its checksums");
  file.write_at(sizeof header_bytes, text.data(), text.size());
  file.commit();
}

SafetensorsContents read_safetensors(const std::string& path,
                                     const std::function<bool(const std::string&)>& select) {
  check_regular_file(path);
  File file(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!file) throw std::runtime_error("cannot read '" + path + "': " + errno_text());
  const HeaderParser parser(path);
  auto read_exactly = [&](void* dst, uint64_t bytes, const std::string& what) {
    if (bytes > 0 && std::fread(dst, 1, bytes, file.get()) != bytes)
      parser.fail("reading " + what + " failed" +
                  (std::ferror(file.get()) ? ": " + errno_text() : std::string(" (truncated?)")));
  };

  if (::fseeko(file.get(), 0, SEEK_END) != 0)
    throw std::runtime_error("cannot read '" + path + "': " + errno_text());
  const off_t end = ::ftello(file.get());
  if (end < 0) throw std::runtime_error("cannot read '" + path + "': " + errno_text());
  const uint64_t file_bytes = static_cast<uint64_t>(end);
  std::rewind(file.get());
  if (file_bytes < 8)
    parser.fail("it is " + std::to_string(file_bytes) + " bytes long, shorter than the 8-byte "
                "header length");
  uint64_t header_bytes = 0;
  read_exactly(&header_bytes, sizeof header_bytes, "the header length");
  if (file_bytes > 8 && (header_bytes > kMaxHeaderBytes || header_bytes > file_bytes - 8)) {
    // Any file's first 8 bytes read as some length: where it cannot be one, the header's first
    // byte tells another kind of file (a PNG or a text given by mistake) from a damaged one.
    char first = '\0';
    read_exactly(&first, 1, "the header");
    if (first != '{')
      parser.fail(
          "another kind of file (a safetensors file starts with its header's length in 8 "
          "bytes, then the header, a JSON object: '{' at byte 8)");
  }
  if (header_bytes > kMaxHeaderBytes)
    parser.fail("the header length " + std::to_string(header_bytes) + " exceeds the 100 MB limit");
  if (header_bytes > file_bytes - 8)
    parser.fail("the header length " + std::to_string(header_bytes) +
                " exceeds the file size " + std::to_string(file_bytes));
  std::string text(header_bytes, '\0');
  read_exactly(text.data(), header_bytes, "the header");

  SafetensorsContents out;
  std::vector<Entry> entries;
  parser.parse(text, file_bytes - 8 - header_bytes, out, entries);

  nlohmann::json checksums = nlohmann::json::object();
  if (const auto found = out.metadata.find(kChecksumsKey); found != out.metadata.end()) {
    checksums = nlohmann::json::parse(found->second, nullptr, /*allow_exceptions=*/false);
    if (!checksums.is_object()) parser.fail(std::string("its ") + kChecksumsKey + " is damaged");
    out.metadata.erase(found);  // the file's own business, not its writer's metadata
  }
  if (const auto written = checksums.find(kMetadataChecksum); written != checksums.end()) {
    const std::string actual = metadata_crc32_hex(out.metadata);
    if (*written != actual)
      throw std::runtime_error("'" + path + "' is damaged: its metadata (a run's state, classes " +
                               "and model) is not what was written (CRC-32 " + actual +
                               ", written " + written->dump() + ")" + kChangedAfterWriting);
  }
  const uint64_t data_start = 8 + header_bytes;
  for (Entry& e : entries) {
    if (select && !select(e.name)) continue;
    // The file's bytes: the tensor's own, or the halves it is widened from.
    Tensor t = Tensor::empty(e.shape, e.dtype);
    const Tensor stored = e.ieee_half ? Tensor::empty({t.numel(), 2}, DType::u8) : t;
    if (::fseeko(file.get(), static_cast<off_t>(data_start + e.begin), SEEK_SET) != 0)
      parser.fail("seeking to tensor '" + e.name + "' failed: " + errno_text());
    read_exactly(stored.raw_data(), e.end - e.begin, "tensor '" + e.name + "'");
    const auto checksum = checksums.find(e.name);
    if (checksum != checksums.end() && *checksum != crc32_hex(stored))
      throw std::runtime_error("'" + path + "' is damaged: the bytes of tensor '" + e.name +
                               "' are not those written (CRC-32 " + crc32_hex(stored) +
                               ", written " + checksum->dump() + ")" + kChangedAfterWriting);
    if (e.ieee_half) {
      const auto* halves = static_cast<const uint16_t*>(stored.raw_data());
      float* values = t.data<float>();
      for (int64_t i = 0; i < t.numel(); ++i) values[i] = float_from_ieee_half(halves[i]);
    }
    out.tensors.emplace_back(std::move(e.name), std::move(t));
  }
  return out;
}

}  // namespace deit::model
