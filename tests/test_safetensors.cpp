// The safetensors reader and writer (model/safetensors.h): exact round trips of every dtype and
// of the metadata, the reference layout, rejection of every kind of damaged file with the file
// named, and atomic writes.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <array>
#include <cstdio>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/bf16.h"
#include "model/safetensors.h"
#include "tests/child_process.h"
#include "tests/test_data_helpers.h"
#include "tests/test_io_helpers.h"

using deit::DType;
using deit::Tensor;
using deit::model::NamedTensors;
using deit::model::read_safetensors;
using deit::model::write_safetensors;
using deit::test::TempDir;
using Catch::Contains;

namespace {

// CRC-32 as everyone computes it, a byte at a time from the polynomial, in 8 hex digits.
std::string crc32_of_bytes(const std::string& bytes) {
  std::array<uint32_t, 256> table{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[n] = c;
  }
  uint32_t crc = 0xFFFFFFFFu;
  for (const char b : bytes) crc = table[(crc ^ static_cast<uint8_t>(b)) & 0xFF] ^ (crc >> 8);
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", crc ^ 0xFFFFFFFFu);
  return hex;
}

// One tensor of each dtype, odd sizes so that alignment matters, plus a 0-d and an empty tensor;
// listed smallest element first so the writer has to reorder them.
NamedTensors every_dtype() {
  std::vector<uint8_t> u8(7);
  for (size_t i = 0; i < u8.size(); ++i) u8[i] = static_cast<uint8_t>(37 * i + 200);
  std::vector<deit::kernels::bf16_bits> bf16;
  for (float v : {1.5f, -2.25f, 3e-3f, 65504.f, -0.f, 7.f})
    bf16.push_back(deit::kernels::float_to_bf16(v));
  return {
      {"bytes", Tensor::from_vector(u8, {7})},
      {"half", Tensor::from_vector(bf16, {3, 2})},
      {"weights", Tensor::from_vector(std::vector<float>{0.5f, -1.f, 1e-30f, 3.f, -7.25f, 1e30f},
                                      {2, 3})},
      {"labels", Tensor::from_vector(
                     std::vector<int32_t>{-1, 0, 7, std::numeric_limits<int32_t>::min(), 123456},
                     {5})},
      {"doubles",
       Tensor::from_vector(std::vector<double>{3.141592653589793, -1e-300, 2.0 / 3.0, 1e300},
                           {2, 1, 2})},
      {"scalar", Tensor::from_vector(std::vector<float>{42.f}, {})},
      {"empty", Tensor::empty({0, 4})},
  };
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// A safetensors file from a header given as text and `data_bytes` zero bytes of data.
std::vector<uint8_t> file_bytes(const std::string& header, size_t data_bytes,
                                uint64_t header_length) {
  std::vector<uint8_t> bytes(8 + header.size() + data_bytes, 0);
  std::memcpy(bytes.data(), &header_length, 8);
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  return bytes;
}
std::vector<uint8_t> file_bytes(const std::string& header, size_t data_bytes) {
  return file_bytes(header, data_bytes, header.size());
}

// What read_safetensors(path) throws, asked in a child process that an alarm ends after 10 s, so
// that a read waiting for ever (on a named pipe nobody writes to) fails the test, not hangs it.
std::string read_error_within_10s(const std::string& path) {
  const deit::test::ChildResult child = deit::test::run_in_child(
      [&]() -> std::string {
        try {
          read_safetensors(path);
        } catch (const std::exception& e) {
          return e.what();
        }
        return "no error";
      },
      10);
  if (WIFSIGNALED(child.status) && WTERMSIG(child.status) == SIGALRM)
    return "still waiting after 10 s";
  CHECK(WIFEXITED(child.status));
  return child.message;
}

size_t files_in(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

TEST_CASE("safetensors round-trips every dtype and the metadata exactly", "[io]") {
  TempDir dir;
  const std::string path = dir.file("all.safetensors");
  const NamedTensors written = every_dtype();
  const deit::model::Metadata metadata = {{"format", "pt"},
                                          {"note", "quotes \" and unicode \xc3\xa9 survive"},
                                          {"json", R"({"epoch": 3})"}};
  write_safetensors(path, written, metadata);

  const auto contents = read_safetensors(path);
  CHECK(contents.metadata == metadata);
  REQUIRE(contents.tensors.size() == written.size());
  for (const auto& [name, t] : written) {
    INFO(name);
    const Tensor* back = deit::model::find_tensor(contents.tensors, name);
    REQUIRE(back != nullptr);
    CHECK(same_bytes(*back, t));
  }
  // Largest elements first (the writer's order, which the reader reports), keeping given order.
  std::vector<std::string> order;
  for (const auto& [name, t] : contents.tensors) order.push_back(name);
  CHECK(order == std::vector<std::string>{"doubles", "weights", "labels", "scalar", "empty",
                                          "half", "bytes"});
}

TEST_CASE("safetensors files have the reference layout", "[io]") {
  TempDir dir;
  const std::string path = dir.file("layout.safetensors");
  write_safetensors(path, every_dtype(), {{"format", "pt"}});
  const std::vector<uint8_t> bytes = deit::test::read_bytes(path);
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  CHECK(header_length % 8 == 0);  // so the data starts 8-byte aligned
  const auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_length);
  // The writer's metadata, and the CRC-32 of each tensor (of no bytes, 0) and of the metadata
  // (of "format\0pt\0") in 8 hex digits.
  CHECK(header["__metadata__"]["format"] == "pt");
  const auto checksums =
      nlohmann::json::parse(header["__metadata__"]["deit_crc32"].get<std::string>());
  CHECK(checksums.size() == every_dtype().size() + 1);
  CHECK(checksums["__metadata__"] == crc32_of_bytes(std::string("format\0pt\0", 10)));
  CHECK(checksums["empty"] == "00000000");
  CHECK(header["weights"]["dtype"] == "F32");
  CHECK(header["weights"]["shape"] == nlohmann::json{2, 3});
  CHECK(header["half"]["dtype"] == "BF16");
  CHECK(header["doubles"]["dtype"] == "F64");
  CHECK(header["labels"]["dtype"] == "I32");
  CHECK(header["bytes"]["dtype"] == "U8");
  CHECK(header["scalar"]["shape"] == nlohmann::json::array());
  const std::map<std::string, uint64_t> element_size = {
      {"F64", 8}, {"F32", 4}, {"I32", 4}, {"BF16", 2}, {"U8", 1}};
  uint64_t data_bytes = 0;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    INFO(name);
    CHECK(entry["data_offsets"][0].get<uint64_t>() % element_size.at(entry["dtype"]) == 0);
    const auto& offsets = entry["data_offsets"];
    data_bytes += offsets[1].get<uint64_t>() - offsets[0].get<uint64_t>();
  }
  CHECK(bytes.size() == 8 + header_length + data_bytes);
}

TEST_CASE("safetensors reads files from other writers: unpadded header, no metadata", "[io]") {
  TempDir dir;
  const std::string path = dir.file("other.safetensors");
  const std::string header = R"({"b":{"dtype":"U8","shape":[3],"data_offsets":[4,7]},)"
                             R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  std::vector<uint8_t> bytes = file_bytes(header, 0);
  const float one = 1.0f;
  const uint8_t* p = reinterpret_cast<const uint8_t*>(&one);
  bytes.insert(bytes.end(), p, p + 4);
  bytes.insert(bytes.end(), {9, 8, 7});
  deit::test::write_bytes(path, bytes);

  const auto contents = read_safetensors(path);
  CHECK(contents.metadata.empty());
  REQUIRE(contents.tensors.size() == 2);
  CHECK(contents.tensors[0].first == "a");  // in data order
  CHECK(contents.tensors[0].second.item() == 1.0);
  CHECK(contents.tensors[1].second.to_vector<int32_t>() == std::vector<int32_t>{9, 8, 7});
}

TEST_CASE("safetensors reads F16 tensors (PyTorch's .half()) as exact F32", "[io]") {
  TempDir dir;
  const std::string path = dir.file("half.safetensors");
  const std::vector<uint16_t> halves = {0x3c00, 0xc000, 0x7bff, 0x3555, 0x0001,
                                        0x03ff, 0x8000, 0x7c00, 0xfc00, 0x7e00};
  std::vector<uint8_t> bytes =
      file_bytes(R"({"w":{"dtype":"F16","shape":[2,5],"data_offsets":[0,20]}})", 0);
  const auto* p = reinterpret_cast<const uint8_t*>(halves.data());
  bytes.insert(bytes.end(), p, p + 2 * halves.size());
  deit::test::write_bytes(path, bytes);

  const auto contents = read_safetensors(path);
  REQUIRE(contents.tensors.size() == 1);
  const Tensor& w = contents.tensors[0].second;
  CHECK(w.dtype() == deit::DType::f32);
  CHECK(w.shape() == deit::Shape{2, 5});
  const std::vector<float> v = w.to_vector<float>();
  CHECK(v[0] == 1.0f);
  CHECK(v[1] == -2.0f);
  CHECK(v[2] == 65504.0f);                      // the largest half
  CHECK(v[3] == 0.333251953125f);               // 1365 / 4096
  CHECK(v[4] == std::ldexp(1.0f, -24));         // the smallest subnormal
  CHECK(v[5] == std::ldexp(1023.0f, -24));      // the largest subnormal
  CHECK((v[6] == 0.0f && std::signbit(v[6])));  // -0
  CHECK(v[7] == std::numeric_limits<float>::infinity());
  CHECK(v[8] == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(v[9]));
}

TEST_CASE("safetensors reads only the selected tensors", "[io]") {
  TempDir dir;
  const std::string path = dir.file("select.safetensors");
  write_safetensors(path, every_dtype());
  const auto contents =
      read_safetensors(path, [](const std::string& name) { return name == "labels"; });
  REQUIRE(contents.tensors.size() == 1);
  CHECK(contents.tensors[0].first == "labels");
  CHECK(same_bytes(contents.tensors[0].second, every_dtype()[3].second));
}

TEST_CASE("safetensors rejects damaged files, naming the file and the problem", "[io]") {
  TempDir dir;
  struct Case {
    const char* what;
    std::vector<uint8_t> bytes;
    const char* message;
  };
  const std::string f32_entry = R"({"dtype":"F32","shape":[1],"data_offsets":)";
  const std::vector<Case> cases = {
      {"shorter than the length field", {1, 2, 3}, "shorter than the 8-byte header length"},
      {"header length past the end", file_bytes("{}", 0, 1000), "exceeds the file size"},
      {"absurd header length", file_bytes("{}", 0, uint64_t{1} << 40), "exceeds the 100 MB limit"},
      // Another kind of file: its first 8 bytes give some length, its 9th is not a JSON object's.
      {"a PNG",
       {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R'},
       "another kind of file"},
      {"a text", file_bytes("hello world", 0, 0x6f77206f6c6c6568), "another kind of file"},
      {"cut after the length", file_bytes("", 0, 5), "exceeds the file size"},
      {"header not JSON", file_bytes(R"({"a": )", 0), "the header is not JSON"},
      {"a number past a double's range",
       file_bytes(R"({"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}})", 4),
       "the header is not JSON ([json.exception.out_of_range.406] number overflow"},
      {"header not an object", file_bytes("[1, 2]", 0), "not a JSON object"},
      {"entry not an object", file_bytes(R"({"a": 3})", 0), "tensor 'a' is not described"},
      {"unsupported dtype",
       file_bytes(R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", 1),
       "tensor 'a' has dtype 'F8_E4M3', which deit does not read"},
      {"F16 counted as 4 bytes",
       file_bytes(R"({"a":{"dtype":"F16","shape":[1],"data_offsets":[0,4]}})", 4),
       "is F16 (1) (1 elements) but its data_offsets [0,4] span 4 bytes"},
      {"unknown dtype", file_bytes(R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", 1),
       "dtype 'Q4'"},
      {"missing data_offsets", file_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", 4),
       "tensor 'a' has no \"data_offsets\""},
      {"negative dimension",
       file_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
       "not a count: -1"},
      {"shape and byte range disagree",
       file_bytes(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12),
       "tensor 'a' is F32 (2, 2) (4 elements) but its data_offsets [0,12] span 12 bytes"},
      {"range ends before it begins", file_bytes(R"({"a":)" + f32_entry + "[8,4]}}", 8),
       "ends before it begins"},
      {"data cut short",
       file_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
       "the file holds only 8 (truncated?)"},
      {"overlapping tensors",
       file_bytes(R"({"a":)" + f32_entry + R"([0,4]},"b":)" + f32_entry + "[2,6]}}", 6),
       "tensors 'a' and 'b' overlap"},
      // One byte shared: the tensors still end where the data does.
      {"tensors overlapping by one byte",
       file_bytes(R"({"a":)" + f32_entry + R"([0,4]},"b":)" + f32_entry + "[3,7]}}", 7),
       "tensors 'a' and 'b' overlap"},
      // Of no elements, so of no bytes: only the dimension's own size can refuse it.
      {"a dimension past int64 in an empty tensor",
       file_bytes(R"({"a":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]}})",
                  0),
       "tensor 'a' has an impossibly large shape [0,18446744073709551615]"},
      {"checksums that are not JSON",
       file_bytes(R"({"__metadata__":{"deit_crc32":"{\"a\": 0"}})", 0),
       "its deit_crc32 is damaged"},
      {"gap between tensors",
       file_bytes(R"({"a":)" + f32_entry + R"([0,4]},"b":)" + f32_entry + "[8,12]}}", 12),
       "bytes 4 to 8 of the data belong to no tensor"},
      {"trailing bytes", file_bytes(R"({"a":)" + f32_entry + "[0,4]}}", 9),
       "holds 9 bytes of data but the tensors use 4"},
      {"metadata value not a string", file_bytes(R"({"__metadata__":{"epoch":3}})", 0),
       "__metadata__ entry 'epoch' is not a string"},
      // A JSON parser keeps one of the two: named, not a gap in the data the other one leaves.
      {"tensor described twice",
       file_bytes(R"({"a":)" + f32_entry + R"([0,4]},"a":)" + f32_entry + "[4,8]}}", 8),
       "its header names 'a' twice in one object"},
      {"tensor described twice alike",
       file_bytes(R"({"a":)" + f32_entry + R"([0,4]},"a":)" + f32_entry + "[0,4]}}", 4),
       "its header names 'a' twice in one object"},
      {"metadata key given twice", file_bytes(R"({"__metadata__":{"k":"1","k":"2"}})", 0),
       "its header names 'k' twice in one object"},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    const std::string path = dir.file("bad.safetensors");
    deit::test::write_bytes(path, c.bytes);
    CHECK_THROWS_WITH(read_safetensors(path), Contains("'" + path + "'") && Contains(c.message));
  }
}

TEST_CASE("safetensors finds a tensor whose bytes changed after they were written", "[io]") {
  TempDir dir;
  const std::string path = dir.file("flipped.safetensors");
  // "123456789" checks to cbf43926, as everyone computes CRC-32.
  const std::string digits = "123456789";
  NamedTensors tensors = every_dtype();
  tensors.emplace_back(
      "digits", Tensor::from_vector(std::vector<uint8_t>(digits.begin(), digits.end()), {9}));
  write_safetensors(path, tensors);
  std::vector<uint8_t> bytes = deit::test::read_bytes(path);
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  const auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_length);
  CHECK(nlohmann::json::parse(header["__metadata__"]["deit_crc32"].get<std::string>())["digits"] ==
        "cbf43926");

  // One bit of "weights" flipped: reading it says so; the other tensors still read.
  const uint64_t weights_at =
      8 + header_length + header["weights"]["data_offsets"][0].get<uint64_t>();
  bytes[weights_at + 5] ^= 0x10;
  deit::test::write_bytes(path, bytes);
  CHECK_THROWS_WITH(read_safetensors(path),
                    Contains("'" + path +
                             "' is damaged: the bytes of tensor 'weights' are not "
                             "those written"));
  CHECK(read_safetensors(path, [](const std::string& name) {
          return name != "weights";
        }).tensors.size() == tensors.size() - 1);
}

TEST_CASE("safetensors finds metadata that changed after it was written", "[io]") {
  TempDir dir;
  const std::string path = dir.file("state.safetensors");
  write_safetensors(path, every_dtype(), {{"deit", R"({"epoch":4,"lr":0.003})"}});
  REQUIRE(read_safetensors(path).metadata.at("deit") == R"({"epoch":4,"lr":0.003})");
  // One digit of the run's state changed (the header is still valid JSON, the run another one).
  std::vector<uint8_t> bytes = deit::test::read_bytes(path);
  const std::string text(bytes.begin(), bytes.end());
  const size_t epoch_at = text.find(R"(\"epoch\":4)");
  REQUIRE(epoch_at != std::string::npos);
  bytes[epoch_at + std::strlen(R"(\"epoch\":)")] = '7';
  deit::test::write_bytes(path, bytes);
  CHECK_THROWS_WITH(read_safetensors(path),
                    Contains("'" + path +
                             "' is damaged: its metadata (a run's state, classes and model) is "
                             "not what was written"));
}

TEST_CASE("safetensors checksums a tensor larger than one CRC piece as a whole", "[io]") {
  // The writer sums 64 MiB pieces on every core and combines them: the result must be the CRC-32
  // of the whole, here computed a byte at a time from the polynomial.
  std::vector<uint8_t> bytes((size_t{150} << 20) + 12345);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 2654435761u >> 24);
  const std::string expected = crc32_of_bytes(std::string(bytes.begin(), bytes.end()));

  TempDir dir;
  const std::string path = dir.file("large.safetensors");
  write_safetensors(path,
                    {{"large", Tensor::from_vector(bytes, {static_cast<int64_t>(bytes.size())})}});
  const std::vector<uint8_t> file = deit::test::read_bytes(path);
  uint64_t header_length = 0;
  std::memcpy(&header_length, file.data(), 8);
  const auto header = nlohmann::json::parse(file.begin() + 8, file.begin() + 8 + header_length);
  CHECK(nlohmann::json::parse(header["__metadata__"]["deit_crc32"].get<std::string>())["large"] ==
        expected);
  CHECK(read_safetensors(path).tensors.size() == 1);
}

TEST_CASE("safetensors detects a truncated file and a missing one", "[io]") {
  TempDir dir;
  const std::string path = dir.file("cut.safetensors");
  write_safetensors(path, every_dtype(), {{"format", "pt"}});
  const std::vector<uint8_t> whole = deit::test::read_bytes(path);

  deit::test::write_bytes(path, {whole.begin(), whole.end() - 3});
  CHECK_THROWS_WITH(read_safetensors(path), Contains("'" + path + "'") && Contains("truncated"));
  deit::test::write_bytes(path, {whole.begin(), whole.begin() + 40});  // inside the header
  CHECK_THROWS_WITH(read_safetensors(path),
                    Contains("'" + path + "'") && Contains("exceeds the file size"));
  const std::string missing = dir.path() + "/nothing.safetensors";
  CHECK_THROWS_WITH(read_safetensors(missing),
                    Contains("cannot read '" + missing + "'") && Contains("No such file"));
}

TEST_CASE("safetensors refuses a named pipe or a folder instead of waiting on it", "[io]") {
  TempDir dir;
  const std::string pipe = dir.file("weights.safetensors");
  REQUIRE(mkfifo(pipe.c_str(), 0600) == 0);
  CHECK_THAT(read_error_within_10s(pipe),
             Contains("cannot read '" + pipe + "': not a regular file"));
  const std::string link = dir.file("link.safetensors");  // links are followed
  std::filesystem::create_symlink(pipe, link);
  CHECK_THAT(read_error_within_10s(link),
             Contains("cannot read '" + link + "': not a regular file"));
  CHECK_THROWS_WITH(read_safetensors(dir.path()),
                    Contains("cannot read '" + dir.path() + "': not a regular file"));
}

TEST_CASE("a failed safetensors write leaves the previous file intact", "[io]") {
  TempDir dir;
  const std::string path = dir.file("keep.safetensors");
  write_safetensors(path, every_dtype(), {{"version", "good"}});
  const std::vector<uint8_t> good = deit::test::read_bytes(path);

  const NamedTensors large = {{"big", Tensor::zeros({64 * 1024})}};  // 256 KiB
  {
    deit::test::FileSizeLimit limit(16 * 1024);  // the disk "fills up" part-way through
    CHECK_THROWS_WITH(write_safetensors(path, large, {{"version", "bad"}}),
                      Contains("cannot write '" + path + "'") && Contains("File too large"));
  }
  CHECK(deit::test::read_bytes(path) == good);
  CHECK(read_safetensors(path).metadata.at("version") == "good");
  CHECK(files_in(dir.path()) == 1);  // no temporary file left behind

  const std::string no_dir = dir.path() + "/missing/out.safetensors";
  CHECK_THROWS_WITH(write_safetensors(no_dir, large),
                    Contains("cannot write '" + no_dir + "'") && Contains("No such file"));
}

TEST_CASE("safetensors refuses to write ambiguous names", "[io]") {
  TempDir dir;
  const std::string path = dir.file("names.safetensors");
  const Tensor t = Tensor::zeros({2});
  CHECK_THROWS_WITH(write_safetensors(path, {{"a", t}, {"a", t}}),
                    Contains("two tensors are named 'a'"));
  CHECK_THROWS_WITH(write_safetensors(path, {{"__metadata__", t}}),
                    Contains("invalid tensor name '__metadata__'"));
  CHECK_THROWS_WITH(write_safetensors(path, {{"", t}}), Contains("invalid tensor name ''"));
  // The checksums' key: a caller's entry under it would make a file that fails its own check.
  CHECK_THROWS_WITH(write_safetensors(path, {{"a", t}}, {{"deit_crc32", "{}"}}),
                    Contains("cannot write '" + path + "': the metadata key 'deit_crc32'"));
  CHECK_FALSE(std::filesystem::exists(path));
}
