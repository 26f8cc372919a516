// Decoding (JPEG with libjpeg-turbo as Pillow decodes it, the other formats with stb_image;
// grayscale, CMYK and alpha made RGB), the checks that turn bad files into DataErrors naming them,
// and the ImageFolder scan.
#include <stb_image_write.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>

#include "data/image_folder.h"
#include "data/image_source.h"
#include "data/little_endian.h"
#include "engine/rng.h"
#include "tests/test_data_helpers.h"
#include "tests/test_io_helpers.h"

namespace {

using namespace deit::data;
using Catch::Matchers::Contains;
using deit::test::gradient_image;
using deit::test::read_bytes;
using deit::test::TempDir;
using deit::test::write_bytes;

// An image whose channels vary smoothly, so JPEG's error stays small and measurable.
ImageU8 smooth_image(int height, int width) {
  ImageU8 image = gradient_image(height, width);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      uint8_t* pixel = image.at(y, x);
      pixel[0] = static_cast<uint8_t>(40 + 4 * x);
      pixel[1] = static_cast<uint8_t>(200 - 3 * y);
      pixel[2] = static_cast<uint8_t>(100 + x + y);
    }
  }
  return image;
}

void write_with_stb(const std::string& path, const ImageU8& image) {
  const int w = image.width, h = image.height;
  const auto* data = image.pixels.data();
  int ok = 0;
  const std::string extension = std::filesystem::path(path).extension();
  if (extension == ".png") ok = stbi_write_png(path.c_str(), w, h, 3, data, w * 3);
  if (extension == ".bmp") ok = stbi_write_bmp(path.c_str(), w, h, 3, data);
  if (extension == ".tga") ok = stbi_write_tga(path.c_str(), w, h, 3, data);
  if (extension == ".jpg") ok = stbi_write_jpg(path.c_str(), w, h, 3, data, 100);
  REQUIRE(ok != 0);
}

// Random pixels: PNG cannot compress them, so the file is about as large as the pixels.
ImageU8 noise_image(int height, int width) {
  ImageU8 image = gradient_image(height, width);
  deit::Rng rng(5);
  for (uint8_t& value : image.pixels) value = static_cast<uint8_t>(rng.next_u64() >> 56);
  return image;
}

std::string truncated_copy(const TempDir& dir, const std::string& path, double keep) {
  std::vector<uint8_t> bytes = read_bytes(path);
  bytes.resize(static_cast<size_t>(bytes.size() * keep));
  const std::string truncated =
      dir.file("truncated_" + std::filesystem::path(path).filename().string());
  write_bytes(truncated, bytes);
  return truncated;
}

}  // namespace

TEST_CASE("decode_image_file reads PNG, BMP and TGA exactly", "[data]") {
  TempDir dir;
  const ImageU8 original = gradient_image(13, 21);
  for (const char* name : {"a.png", "a.bmp", "a.tga"}) {
    INFO(name);
    const std::string path = dir.file(name);
    write_with_stb(path, original);
    const ImageU8 decoded = decode_image_file(path);
    CHECK(decoded.height == 13);
    CHECK(decoded.width == 21);
    CHECK(decoded.pixels == original.pixels);
  }
}

TEST_CASE("decode_image_file reads JPEG within JPEG's error", "[data]") {
  TempDir dir;
  const ImageU8 original = smooth_image(24, 32);
  const std::string path = dir.file("a.jpg");
  write_with_stb(path, original);
  const ImageU8 decoded = decode_image_file(path);
  REQUIRE(decoded.height == 24);
  REQUIRE(decoded.width == 32);
  double total_error = 0;
  int max_error = 0;
  for (size_t i = 0; i < original.pixels.size(); ++i) {
    const int error = std::abs(int(decoded.pixels[i]) - int(original.pixels[i]));
    total_error += error;
    max_error = std::max(max_error, error);
  }
  CHECK(total_error / original.pixels.size() < 2.0);  // quality 100, no chroma subsampling
  CHECK(max_error <= 12);
}

TEST_CASE("grayscale and alpha images become RGB", "[data]") {
  TempDir dir;
  const int w = 5, h = 4;
  std::vector<uint8_t> gray(w * h), gray_alpha(w * h * 2), rgba(w * h * 4);
  for (int i = 0; i < w * h; ++i) {
    gray[i] = static_cast<uint8_t>(10 * i);
    gray_alpha[2 * i] = static_cast<uint8_t>(10 * i);
    gray_alpha[2 * i + 1] = static_cast<uint8_t>(255 - i);
    for (int c = 0; c < 3; ++c) rgba[4 * i + c] = static_cast<uint8_t>(i + 50 * c);
    rgba[4 * i + 3] = static_cast<uint8_t>(i);  // transparent-ish: alpha is dropped, not blended
  }
  const std::string gray_path = dir.file("gray.png"), gray_alpha_path = dir.file("ga.png"),
                    rgba_path = dir.file("rgba.png");
  REQUIRE(stbi_write_png(gray_path.c_str(), w, h, 1, gray.data(), w));
  REQUIRE(stbi_write_png(gray_alpha_path.c_str(), w, h, 2, gray_alpha.data(), w * 2));
  REQUIRE(stbi_write_png(rgba_path.c_str(), w, h, 4, rgba.data(), w * 4));

  for (const std::string& path : {gray_path, gray_alpha_path}) {
    const ImageU8 decoded = decode_image_file(path);
    for (int i = 0; i < w * h; ++i) {
      for (int c = 0; c < 3; ++c) REQUIRE(decoded.pixels[3 * i + c] == gray[i]);
    }
  }
  const ImageU8 decoded = decode_image_file(rgba_path);
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) REQUIRE(decoded.pixels[3 * i + c] == rgba[4 * i + c]);
  }
}

TEST_CASE("within_image_limits: up to 32768 pixels a side and Pillow's 178956970 pixels",
          "[data]") {
  // Pillow refuses an image of over twice Image.MAX_IMAGE_PIXELS (89478485) pixels, as a
  // decompression bomb: 10922 x 16385 is that many exactly.
  CHECK(within_image_limits(10922, 16385));
  CHECK_FALSE(within_image_limits(10923, 16385));
  CHECK_FALSE(within_image_limits(10922, 16386));
  CHECK(within_image_limits(32768, 5461));
  CHECK(within_image_limits(0, 0));
  CHECK_FALSE(within_image_limits(32769, 1));
  CHECK_FALSE(within_image_limits(16385, 16384));
  // Two negative sides multiply to a positive count: a size, not a count, is checked first.
  CHECK_FALSE(within_image_limits(-4, -4));
  CHECK_FALSE(within_image_limits(-1, 1));
}

TEST_CASE("TGA and PNM files cut short are refused, as Pillow refuses them", "[data]") {
  // stb_image reads past their end as zeros: the pixels the header promises are counted instead.
  TempDir dir;
  const ImageU8 image = noise_image(12, 10);
  // A TGA run-length coded (stb_image_write's default) and one plain; a binary PPM (P6), a 16-bit
  // PGM (P5) whose header has a comment. Whole, each decodes; cut anywhere in its pixels, none.
  std::vector<std::string> whole;
  whole.push_back(dir.file("rle.tga"));
  write_with_stb(whole.back(), image);
  stbi_write_tga_with_rle = 0;
  whole.push_back(dir.file("plain.tga"));
  write_with_stb(whole.back(), image);
  stbi_write_tga_with_rle = 1;
  const std::string ppm_header = "P6\n10 12\n255\n";
  std::vector<uint8_t> ppm(ppm_header.begin(), ppm_header.end());
  ppm.insert(ppm.end(), image.pixels.begin(), image.pixels.end());
  whole.push_back(dir.file("rgb.ppm"));
  write_bytes(whole.back(), ppm);
  const std::string pgm_header = "P5 # 16-bit gray\n10\t12 # size\n65535\n";
  std::vector<uint8_t> pgm(pgm_header.begin(), pgm_header.end());
  for (int i = 0; i < 10 * 12; ++i) {
    pgm.push_back(image.pixels[3 * i]);  // the high byte first: the value 257 * v
    pgm.push_back(image.pixels[3 * i]);
  }
  whole.push_back(dir.file("gray16.pgm"));
  write_bytes(whole.back(), pgm);
  for (const std::string& path : whole) {
    INFO(path);
    const ImageU8 decoded = decode_image_file(path);
    CHECK(decoded.width == 10);
    CHECK(decoded.height == 12);
    if (path.find("gray") == std::string::npos) CHECK(decoded.pixels == image.pixels);
    const size_t size = read_bytes(path).size();
    for (const size_t missing : {size_t{1}, size_t{7}, size / 3}) {
      std::vector<uint8_t> bytes = read_bytes(path);
      bytes.resize(size - missing);
      const std::string cut = dir.file("cut_" + std::filesystem::path(path).filename().string());
      write_bytes(cut, bytes);
      CHECK_THROWS_WITH(decode_image_file(cut), Contains(cut) && Contains("truncated"));
    }
  }
}

namespace {

void put_le16(std::vector<uint8_t>& bytes, size_t at, uint32_t value) {
  bytes[at] = static_cast<uint8_t>(value);
  bytes[at + 1] = static_cast<uint8_t>(value >> 8);
}

void put_le32(std::vector<uint8_t>& bytes, size_t at, uint32_t value) {
  put_le16(bytes, at, value & 0xFFFF);
  put_le16(bytes, at + 2, value >> 16);
}

// A 32-bit BMP with bit fields (BI_BITFIELDS): the file header, a 40-byte info header, the red,
// green and blue masks, then bottom-up rows of BGRX pixels.
std::vector<uint8_t> bitfields_bmp(const ImageU8& image) {
  constexpr size_t kPixels = 14 + 40 + 12;
  std::vector<uint8_t> bytes(kPixels);
  bytes[0] = 'B', bytes[1] = 'M';
  put_le32(bytes, 10, kPixels);
  put_le32(bytes, 14, 40);
  put_le32(bytes, 18, image.width);
  put_le32(bytes, 22, image.height);
  put_le16(bytes, 26, 1);   // planes
  put_le16(bytes, 28, 32);  // bits a pixel
  put_le32(bytes, 30, 3);   // BI_BITFIELDS
  put_le32(bytes, 54, 0x00FF0000);
  put_le32(bytes, 58, 0x0000FF00);
  put_le32(bytes, 62, 0x000000FF);
  for (int y = image.height - 1; y >= 0; --y)
    for (int x = 0; x < image.width; ++x) {
      const uint8_t* rgb = image.at(y, x);
      bytes.insert(bytes.end(), {rgb[2], rgb[1], rgb[0], 0});
    }
  put_le32(bytes, 2, static_cast<uint32_t>(bytes.size()));
  return bytes;
}

// An 8-bit RGB PSD of `image`: the header, three empty sections (colour mode data, image resources,
// layers), then the merged image's channels one after another, plain or in PackBits rows, each
// row one literal packet after a table of the rows' coded lengths. Big-endian numbers. After red,
// green and blue, `extra_channels` more (alpha first), each of `extra_value` throughout.
std::vector<uint8_t> rgb_psd(const ImageU8& image, bool packbits, int extra_channels = 0,
                             uint8_t extra_value = 0) {
  const int channels = 3 + extra_channels;
  auto put_be = [](std::vector<uint8_t>& bytes, uint32_t value, int n) {
    for (int i = n - 1; i >= 0; --i) bytes.push_back(static_cast<uint8_t>(value >> (8 * i)));
  };
  std::vector<uint8_t> bytes = {'8', 'B', 'P', 'S', 0, 1, 0, 0, 0, 0, 0, 0};
  put_be(bytes, channels, 2);
  put_be(bytes, image.height, 4);
  put_be(bytes, image.width, 4);
  put_be(bytes, 8, 2);  // bits a sample
  put_be(bytes, 3, 2);  // RGB
  for (int section = 0; section < 3; ++section) put_be(bytes, 0, 4);
  put_be(bytes, packbits ? 1 : 0, 2);
  if (packbits)
    for (int row = 0; row < channels * image.height; ++row) put_be(bytes, 1 + image.width, 2);
  for (int c = 0; c < channels; ++c)
    for (int y = 0; y < image.height; ++y) {
      if (packbits) bytes.push_back(static_cast<uint8_t>(image.width - 1));
      for (int x = 0; x < image.width; ++x)
        bytes.push_back(c < 3 ? image.at(y, x)[c] : extra_value);
    }
  return bytes;
}

// Whole, `bytes` decode to `expected`; without their last byte, they are refused as truncated.
void check_whole_and_cut(const TempDir& dir, const std::string& name,
                         const std::vector<uint8_t>& bytes, const ImageU8& expected) {
  INFO(name);
  const std::string path = dir.file(name);
  write_bytes(path, bytes);
  const ImageU8 decoded = decode_image_file(path);
  CHECK(decoded.width == expected.width);
  CHECK(decoded.height == expected.height);
  CHECK(decoded.pixels == expected.pixels);
  write_bytes(path, std::vector<uint8_t>(bytes.begin(), bytes.end() - 1));
  CHECK_THROWS_WITH(decode_image_file(path), Contains(path) && Contains("truncated"));
}

}  // namespace

TEST_CASE("binary PNMs of any largest sample value decode to Pillow's pixels", "[data]") {
  // Pillow 13.0's Image.open(path).convert("RGB") of each file, one row: samples are scaled to the
  // largest value (rounded half to even: 253 / 510 * 255 = 126.5 gives 126, 257 / 510 * 255 =
  // 128.5 gives 128), and a P5 of 16 bits, Pillow's mode "I", is clipped at 255. stb_image
  // scaled nothing and read a 16-bit P5 past its buffer (CVE-2021-42716).
  struct Case {
    std::string magic;
    int max_value;
    std::vector<int> samples;
    std::vector<uint8_t> pillow;
  };
  auto gray = [](std::vector<uint8_t> values) {
    std::vector<uint8_t> rgb;
    for (uint8_t v : values) rgb.insert(rgb.end(), {v, v, v});
    return rgb;
  };
  const Case cases[] = {
      {"P6", 255, {0, 1, 127, 128, 254, 255}, {0, 1, 127, 128, 254, 255}},
      {"P6", 100, {0, 1, 50, 99, 100, 101}, {0, 3, 128, 252, 255, 255}},
      {"P5", 100, {0, 1, 50, 99, 100, 101}, gray({0, 3, 128, 252, 255, 255})},
      {"P6", 510, {0, 253, 255, 257, 509, 511}, {0, 126, 128, 128, 254, 255}},
      {"P6", 65535, {0, 255, 256, 1000, 32768, 65535}, {0, 1, 1, 4, 128, 255}},
      {"P5", 1000, {0, 1, 2, 3, 4, 1000}, gray({0, 66, 131, 197, 255, 255})},
      {"P5", 65535, {0, 1, 254, 255, 256, 65535}, gray({0, 1, 254, 255, 255, 255})},
  };
  TempDir dir;
  for (const Case& c : cases) {
    const int width = static_cast<int>(c.samples.size()) / (c.magic == "P6" ? 3 : 1);
    const std::string header =
        c.magic + "\n" + std::to_string(width) + " 1\n" + std::to_string(c.max_value) + "\n";
    std::vector<uint8_t> bytes(header.begin(), header.end());
    for (const int v : c.samples) {
      if (c.max_value > 255) bytes.push_back(static_cast<uint8_t>(v >> 8));
      bytes.push_back(static_cast<uint8_t>(v));
    }
    check_whole_and_cut(dir, c.magic + "_" + std::to_string(c.max_value) + ".pnm", bytes,
                        ImageU8{1, width, c.pillow});
  }
  // A largest value of 0 scales nothing, and PNM's samples end at 65535: Pillow refuses both.
  const std::string zero = dir.file("zero.pgm");
  write_bytes(zero, {'P', '5', ' ', '1', ' ', '1', ' ', '0', '\n', 0});
  CHECK_THROWS_WITH(decode_image_file(zero), Contains(zero) && Contains("largest sample value 0"));
  const std::string past = dir.file("past.pgm");
  write_bytes(past, {'P', '5', ' ', '1', ' ', '1', ' ', '6', '5', '5', '3', '6', '\n', 0, 0});
  CHECK_THROWS_WITH(decode_image_file(past), Contains("largest sample value 65536"));
}

TEST_CASE("a binary PNM's dimensions are checked as the header writes them", "[data]") {
  // Past an int's range, a side is named as written: deit parses PNM headers itself (stb_image
  // 2.27's parser overflows an int on them), and refuses what it would not decode before
  // reading further.
  TempDir dir;
  auto pnm = [&](const std::string& header) {
    const std::string path = dir.file("wide.ppm");
    std::vector<uint8_t> bytes(header.begin(), header.end());
    bytes.resize(bytes.size() + 12);
    write_bytes(path, bytes);
    return path;
  };
  CHECK_THROWS_WITH(decode_image_file(pnm("P6 4294967297 1 255\n")),
                    Contains("dimensions 4294967297x1: deit reads images of up to"));
  CHECK_THROWS_WITH(decode_image_file(pnm("P5 2 40000 255\n")), Contains("dimensions 2x40000"));
  CHECK_THROWS_WITH(decode_image_file(pnm("P5 0 4 255\n")), Contains("dimensions 0x4"));
  CHECK_THROWS_WITH(decode_image_file(pnm("P5 x 4 255\n")), Contains("corrupt PNM header"));
  const ImageU8 two_by_two = decode_image_file(pnm("P6 2 2 255\n"));
  CHECK((two_by_two.width == 2 && two_by_two.height == 2));
  // Tokens as Pillow 13 reads them (netpbm's rules): a comment inside a token, whose line end
  // does not end it (width 12); a comment and a CR LF between tokens; 10 characters at most.
  const ImageU8 twelve = decode_image_file(pnm("P5 1#c\n2 1 255\n"));
  CHECK((twelve.width == 12 && twelve.height == 1));
  const ImageU8 spaced = decode_image_file(pnm("P5\r\n# made by hand\n3\t4\v255\r"));
  CHECK((spaced.width == 3 && spaced.height == 4));
  CHECK(decode_image_file(pnm("P5 0000000002 1 255\n")).width == 2);
  CHECK_THROWS_WITH(decode_image_file(pnm("P5 00000000002 1 255\n")),
                    Contains("corrupt PNM header (a token longer than 10 characters)"));
  // Bytes after a number up to the whitespace are part of its token (Pillow: "invalid literal"),
  // and a magic ends at whitespace.
  CHECK_THROWS_WITH(decode_image_file(pnm("P5 257,1 4 255\n")),
                    Contains("corrupt PNM header (a token that is not a number)"));
  CHECK_THROWS_WITH(decode_image_file(pnm("P5#c\n2 1 255\n")), Contains("corrupt PNM header"));
}

TEST_CASE("files of formats Pillow does not open are refused", "[data]") {
  // stb_image can decode these too, but its 2.27 (Debian 12's) does harm on bad ones, found by
  // fuzzing: its JPEG decoder, which took a JPEG with fill bytes before its start marker (Pillow
  // opens only FF D8 FF), writes past a Huffman table (nothings/stb#1289); its Radiance HDR
  // decoder loops for ever on a run cut short (CVE-2021-42715). Softimage PIC is the third it
  // reads.
  TempDir dir;
  const std::string jpeg = dir.file("t.jpg");
  write_with_stb(jpeg, gradient_image(8, 8));
  std::vector<uint8_t> filled = read_bytes(jpeg);
  filled.insert(filled.begin(), 0xFF);
  const std::string filled_path = dir.file("filled.jpg");
  write_bytes(filled_path, filled);
  CHECK_THROWS_WITH(decode_image_file(filled_path),
                    Contains(filled_path) && Contains("not an image format deit reads"));

  const std::string header = "#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 2\n";
  std::vector<uint8_t> hdr(header.begin(), header.end());
  hdr.resize(hdr.size() + 2 * 2 * 4, 0x80);
  const std::string hdr_path = dir.file("t.hdr");
  write_bytes(hdr_path, hdr);
  CHECK_THROWS_WITH(decode_image_file(hdr_path), Contains("not an image format deit reads"));

  std::vector<uint8_t> pic = {0x53, 0x80, 0xF6, 0x34};
  pic.resize(88 + 2 * 2 * 4 + 16, 0);
  pic[88] = 'P', pic[89] = 'I', pic[90] = 'C', pic[91] = 'T';
  const std::string pic_path = dir.file("t.pic");
  write_bytes(pic_path, pic);
  CHECK_THROWS_WITH(decode_image_file(pic_path), Contains("not an image format deit reads"));
}

TEST_CASE("BMP, PSD and TGA layouts stb_image_write does not make are read whole and refused cut",
          "[data]") {
  // A BMP's rows padded to 4 bytes, stored top-down, or in bit fields; a PSD; a TGA with an image
  // ID, a colour map, or runs in its run-length coding: each changes where the pixels end.
  TempDir dir;
  const ImageU8 image = noise_image(6, 5);  // rows of 15 bytes in a BMP: 1 byte of padding

  const std::string bmp = dir.file("bottom_up.bmp");
  write_with_stb(bmp, image);
  const std::vector<uint8_t> bottom_up = read_bytes(bmp);
  check_whole_and_cut(dir, "padded.bmp", bottom_up, image);
  std::vector<uint8_t> top_down = bottom_up;
  const size_t pixels = read_le32(bottom_up.data() + 10), row = 16;
  put_le32(top_down, 22, static_cast<uint32_t>(-image.height));
  for (int y = 0; y < image.height; ++y)
    std::copy_n(bottom_up.begin() + pixels + (image.height - 1 - y) * row, row,
                top_down.begin() + pixels + y * row);
  check_whole_and_cut(dir, "top_down.bmp", top_down, image);
  check_whole_and_cut(dir, "bitfields.bmp", bitfields_bmp(image), image);
  // stb_image read a PSD's missing bytes as zeros, plain or PackBits-coded; Pillow 13 reads both
  // whole to these pixels and says "image file is truncated" of them cut.
  check_whole_and_cut(dir, "plain.psd", rgb_psd(image, false), image);
  check_whole_and_cut(dir, "packbits.psd", rgb_psd(image, true), image);
  // 4 bytes of colour mode data move the pixels 4 bytes on (Pillow 13 reads the file whole and
  // says "image file is truncated" of it cut).
  std::vector<uint8_t> mode_data = rgb_psd(image, false);
  mode_data[29] = 4;
  mode_data.insert(mode_data.begin() + 30, {1, 2, 3, 4});
  check_whole_and_cut(dir, "mode_data.psd", mode_data, image);
  // An alpha channel neither clear nor opaque: stb_image un-premultiplied the colours against
  // white; Pillow 13's convert("RGB") drops alpha. 4 channels, Pillow reads all 4: cut in the
  // fourth, it says "truncated".
  for (const bool packbits : {false, true})
    check_whole_and_cut(dir, packbits ? "alpha_packbits.psd" : "alpha.psd",
                        rgb_psd(image, packbits, 1, 53), image);
  // 5 channels, plain: Pillow 13 reads the first 3; cut in its fourth, it reads it.
  const std::vector<uint8_t> five_channels = rgb_psd(image, false, 2, 53);
  const std::string five = dir.file("five_channels.psd");
  write_bytes(five, five_channels);
  CHECK(decode_image_file(five).pixels == image.pixels);
  write_bytes(five, std::vector<uint8_t>(five_channels.begin(),
                                         five_channels.end() - image.height * image.width - 1));
  CHECK(decode_image_file(five).pixels == image.pixels);
  // An RGB PSD of 2 channels: stb_image read blue as zeros; Pillow says "not enough channels".
  std::vector<uint8_t> two_channels = rgb_psd(image, false);
  two_channels[13] = 2;
  const std::string two = dir.file("two_channels.psd");
  write_bytes(two, two_channels);
  CHECK_THROWS_WITH(decode_image_file(two), Contains(two + ": corrupt PSD (an RGB image of 2"));
  // A compression past INT32_MAX, which stb_image takes for none (found by scripts/fuzz.sh, in a
  // file of 87 bytes that decoded as 32768 x 1837 pixels of zeros), is refused as Pillow refuses
  // it.
  std::vector<uint8_t> unknown_compression = bottom_up;
  put_le32(unknown_compression, 30, 0xFFFFFFFEu);
  const std::string unknown = dir.file("unknown_compression.bmp");
  write_bytes(unknown, unknown_compression);
  CHECK_THROWS_WITH(decode_image_file(unknown),
                    Contains(unknown) && Contains("unsupported BMP compression (4294967294)"));

  stbi_write_tga_with_rle = 0;
  const std::string tga = dir.file("plain.tga");
  write_with_stb(tga, image);
  stbi_write_tga_with_rle = 1;
  std::vector<uint8_t> with_id = read_bytes(tga);
  with_id[0] = 4;
  with_id.insert(with_id.begin() + 18, {'d', 'e', 'i', 't'});
  check_whole_and_cut(dir, "with_id.tga", with_id, image);
  // Rows stored right to left (bit 4 of the descriptor, which stb_image ignored): Pillow 13 mirrors
  // them.
  std::vector<uint8_t> right_to_left = read_bytes(tga);
  right_to_left[17] |= 0x10;
  ImageU8 mirrored = image;
  for (int y = 0; y < image.height; ++y)
    for (int x = 0; x < image.width; ++x)
      std::copy_n(image.at(y, image.width - 1 - x), 3, mirrored.at(y, x));
  check_whole_and_cut(dir, "right_to_left.tga", right_to_left, mirrored);

  // 2 x 2, top row first: a 3-entry colour map of 24-bit BGR entries, then 1-byte indices.
  const std::vector<uint8_t> mapped = {0, 1,    1,    0,    0,    3, 0,    24,   0, 0, 0,
                                       0, 2,    0,    2,    0,    8, 0x20, 0xFF, 0, 0, 0,
                                       0, 0xFF, 0x10, 0x20, 0x30, 2, 1,    0,    2};
  ImageU8 colours{2, 2, {0x30, 0x20, 0x10, 0xFF, 0, 0, 0, 0, 0xFF, 0x30, 0x20, 0x10}};
  check_whole_and_cut(dir, "mapped.tga", mapped, colours);
  // 15 bits a pixel, or a colour map entry, take 2 bytes: 2 x 1, cut in its last pixel or index
  // (Pillow 13 refuses these whole too: "cannot identify image file").
  const std::vector<uint8_t> rgb15 = {0, 0, 2, 0, 0, 0,  0,    0,    0, 0,   0,
                                      0, 2, 0, 1, 0, 15, 0x20, 0x1F, 0, 0xE0};
  const std::vector<uint8_t> mapped15 = {0, 1, 1, 0, 0, 2,    0,    15,   0,    0,    0, 0,
                                         2, 0, 1, 0, 8, 0x20, 0x1F, 0x00, 0xE0, 0x03, 0};
  for (const auto& cut15 : {rgb15, mapped15}) {
    const std::string path15 = dir.file("cut15.tga");
    write_bytes(path15, cut15);
    CHECK_THROWS_WITH(decode_image_file(path15), Contains(path15) && Contains("truncated TGA"));
  }

  // Halves of one colour: run packets, each one pixel's bytes for many pixels.
  ImageU8 halves = image;
  for (int y = 0; y < halves.height; ++y)
    for (int x = 0; x < halves.width; ++x)
      std::fill_n(halves.at(y, x), 3, static_cast<uint8_t>(y < halves.height / 2 ? 40 : 210));
  const std::string runs = dir.file("runs.tga");
  write_with_stb(runs, halves);
  check_whole_and_cut(dir, "runs.tga", read_bytes(runs), halves);

  // 3 x 2, top row first, run-length coded: a raw packet may cross a row's end, a run may not
  // (Pillow 13: "buffer overrun"; stb_image went on into the next row).
  using Bytes = std::vector<uint8_t>;
  const Bytes header = {0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 2, 0, 24, 0x20};
  const Bytes raw_across = {0x03, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x81, 13, 14, 15};
  const Bytes run_across = {0x00, 1, 2, 3, 0x83, 4, 5, 6, 0x00, 7, 8, 9};
  Bytes tga_bytes = header;
  tga_bytes.insert(tga_bytes.end(), raw_across.begin(), raw_across.end());
  check_whole_and_cut(
      dir, "raw_across.tga", tga_bytes,
      ImageU8{2, 3, {3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10, 15, 14, 13, 15, 14, 13}});
  tga_bytes = header;
  tga_bytes.insert(tga_bytes.end(), run_across.begin(), run_across.end());
  const std::string across = dir.file("run_across.tga");
  write_bytes(across, tga_bytes);
  CHECK_THROWS_WITH(
      decode_image_file(across),
      Contains(across + ": corrupt TGA (a run-length packet runs past the end of a row)"));
}

TEST_CASE("a GIF whose image has a colour table of its own is read whole", "[data]") {
  TempDir dir;
  // 1 x 1: no global colour table; the image's descriptor announces a local one of 2 colours
  // (white, black), then LZW code size 2 and its data, as in the cut GIF's case below.
  const std::vector<uint8_t> gif = {'G',  'I',  'F', '8', '9', 'a', 1, 0,    1,    0, 0,    0,
                                    0,    0x2C, 0,   0,   0,   0,   1, 0,    1,    0, 0x80, 0xFF,
                                    0xFF, 0xFF, 0,   0,   0,   2,   2, 0x44, 0x01, 0, 0x3B};
  const std::string path = dir.file("local.gif");
  write_bytes(path, gif);
  CHECK(decode_image_file(path).pixels == std::vector<uint8_t>{255, 255, 255});
  write_bytes(path, std::vector<uint8_t>(gif.begin(), gif.end() - 3));
  CHECK_THROWS_WITH(decode_image_file(path), Contains("truncated GIF"));
}

TEST_CASE("a PNG cut after its image data decodes as Pillow decodes it", "[data]") {
  // Pillow stops reading once the IDAT data holds every row; stb_image alone failed without its
  // IEND chunk, with no reason given.
  TempDir dir;
  const ImageU8 image = noise_image(12, 10);
  const std::string path = dir.file("whole.png");
  write_with_stb(path, image);
  const std::vector<uint8_t> png = read_bytes(path);
  const size_t iend = png.size() - 12;  // stb_image_write's one IDAT chunk ends there
  REQUIRE(std::string(png.begin() + iend + 4, png.begin() + iend + 8) == "IEND");
  const std::string cut = dir.file("cut.png");
  // No IEND, half of it, half the IDAT's CRC, none of it, the last byte of the zlib checksum, all
  // of it (Pillow 13 reads a PNG of its own zlib's coding cut there).
  for (const size_t keep : {iend, iend + 6, iend - 2, iend - 4, iend - 5, iend - 8}) {
    INFO(keep);
    write_bytes(cut, std::vector<uint8_t>(png.begin(), png.begin() + keep));
    CHECK(decode_image_file(cut).pixels == image.pixels);
  }
  write_bytes(cut, std::vector<uint8_t>(png.begin(), png.begin() + iend / 2));
  CHECK_THROWS_WITH(decode_image_file(cut), Contains(cut + ": truncated PNG"));
  // Whole, with a broken zlib header (Pillow 13 refuses it too), it is corrupt, not truncated.
  std::vector<uint8_t> broken = png;
  broken[8 + 12 + 13 + 8] = 0;
  write_bytes(cut, broken);
  CHECK_THROWS_WITH(decode_image_file(cut), Contains(cut + ": corrupt or truncated (stb_image"));
}

TEST_CASE("a PNG whose chunk before its image data has a wrong checksum is refused, as by Pillow",
          "[data]") {
  // Pillow 13 refuses the file ("broken PNG file") for a wrong CRC in any chunk before the IDAT
  // data, and reads it with one wrong in IDAT or IEND; stb_image checks none.
  using Bytes = std::vector<uint8_t>;
  TempDir dir;
  const ImageU8 image = noise_image(5, 3);
  const std::string path = dir.file("image.png");
  write_with_stb(path, image);
  const Bytes png = read_bytes(path);
  constexpr size_t kIdat = 8 + 12 + 13;  // after the signature and IHDR's 13 bytes
  REQUIRE(std::string(png.begin() + kIdat + 4, png.begin() + kIdat + 8) == "IDAT");
  const size_t idat_bytes = png.size() - kIdat - 12 - 12, iend = png.size() - 12;
  // A copy with a bit of the CRC of the chunk at `chunk`, of `length` bytes of data, flipped.
  auto with_crc_bit_flipped = [](Bytes bytes, size_t chunk, size_t length) {
    bytes[chunk + 8 + length] ^= 1;
    return bytes;
  };
  write_bytes(path, with_crc_bit_flipped(png, 8, 13));
  CHECK_THROWS_WITH(decode_image_file(path),
                    Contains(path + ": corrupt PNG (its IHDR chunk's checksum is wrong)"));
  write_bytes(path, with_crc_bit_flipped(png, kIdat, idat_bytes));
  CHECK(decode_image_file(path).pixels == image.pixels);
  write_bytes(path, with_crc_bit_flipped(png, iend, 0));
  CHECK(decode_image_file(path).pixels == image.pixels);
  // A text chunk before the IDAT: read with its CRC, refused with a wrong one.
  Bytes text = {0, 0, 0, 3, 't', 'E', 'X', 't', 'k', 0, 'v'};
  const uint32_t crc = crc32(0, text.data() + 4, 7);
  for (const int shift : {24, 16, 8, 0}) text.push_back(static_cast<uint8_t>(crc >> shift));
  Bytes with_text(png.begin(), png.begin() + kIdat);
  with_text.insert(with_text.end(), text.begin(), text.end());
  with_text.insert(with_text.end(), png.begin() + kIdat, png.end());
  write_bytes(path, with_text);
  CHECK(decode_image_file(path).pixels == image.pixels);
  write_bytes(path, with_crc_bit_flipped(with_text, kIdat, 3));
  CHECK_THROWS_WITH(decode_image_file(path), Contains("its tEXt chunk's checksum is wrong"));
  // Cut inside that chunk's CRC: truncated, not a wrong checksum (Pillow 13 refuses it too:
  // "cannot identify image file").
  write_bytes(path, Bytes(with_text.begin(), with_text.begin() + kIdat + 13));
  CHECK_THROWS_WITH(decode_image_file(path), Contains(path + ": truncated PNG"));
}

TEST_CASE("bad image files throw a DataError naming the file and the problem", "[data]") {
  TempDir dir;
  const ImageU8 image = gradient_image(32, 48);

  const std::string empty = dir.file("empty.png");
  write_bytes(empty, {});
  CHECK_THROWS_WITH(decode_image_file(empty), Contains(empty) && Contains("empty"));

  const std::string garbage = dir.file("garbage.jpg");
  write_bytes(garbage, std::vector<uint8_t>(1000, 0x5A));
  CHECK_THROWS_WITH(decode_image_file(garbage), Contains(garbage) && Contains("not an image"));

  const std::string missing = dir.path() + "/missing.png";
  CHECK_THROWS_WITH(decode_image_file(missing), Contains(missing) && Contains("cannot open"));

  for (const char* name : {"t.png", "t.jpg", "t.bmp", "t.tga"}) {
    INFO(name);
    const std::string path = dir.file(name);
    write_with_stb(path, image);
    // Not 0.9: that cuts only the PNG's last checksum and IEND, which Pillow reads without.
    for (double keep : {0.8, 0.5, 0.2}) {
      const std::string truncated = truncated_copy(dir, path, keep);
      CHECK_THROWS_AS(decode_image_file(truncated), DataError);
      CHECK_THROWS_WITH(decode_image_file(truncated), Contains(truncated));
    }
  }

  SECTION("dimensions past deit's limits are refused before decoding") {
    const std::string path = dir.file("huge.png");
    write_with_stb(path, image);
    std::vector<uint8_t> bytes = read_bytes(path);
    // The PNG IHDR width, big-endian at byte 16: 40000 pixels.
    bytes[16] = 0, bytes[17] = 0, bytes[18] = 0x9C, bytes[19] = 0x40;
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(decode_image_file(path), Contains(path) && Contains("dimensions 40000x") &&
                                                   Contains("up to 32768 pixels a side"));
    // 20000 x 20000: a size stb_image itself takes for a corrupt header.
    bytes[16] = 0, bytes[17] = 0, bytes[18] = 0x4E, bytes[19] = 0x20;
    bytes[20] = 0, bytes[21] = 0, bytes[22] = 0x4E, bytes[23] = 0x20;
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(decode_image_file(path),
                      Contains(path + ": dimensions 20000x20000: deit reads images of up to"));
    // A width past an int's range: reported as the largest int, not as a negative number.
    bytes[16] = bytes[17] = bytes[18] = bytes[19] = 0xFF;
    write_bytes(path, bytes);
    CHECK_THROWS_WITH(decode_image_file(path), Contains(path + ": dimensions 2147483647x20000"));

    // Pillow's decompression-bomb limit, from its header: a pixel past it is refused as a size,
    // while at it what is refused is the pixels that are not there.
    const std::string ppm = dir.file("huge.ppm");
    const auto header_and_a_pixel = [](const std::string& header) {
      std::vector<uint8_t> b(header.begin(), header.end());
      b.insert(b.end(), {1, 2, 3});
      return b;
    };
    write_bytes(ppm, header_and_a_pixel("P6\n10923 16385\n255\n"));
    CHECK_THROWS_WITH(decode_image_file(ppm),
                      Contains(ppm + ": dimensions 10923x16385: deit reads images of up to 32768 "
                                     "pixels a side and 178956970 pixels"));
    write_bytes(ppm, header_and_a_pixel("P6\n10922 16385\n255\n"));
    CHECK_THROWS_WITH(decode_image_file(ppm), Contains(ppm) && !Contains("dimensions"));

    const std::string bmp = dir.file("huge.bmp");
    write_with_stb(bmp, image);
    bytes = read_bytes(bmp);
    // Width and height 20000 x 20000: each side allowed, the 4e8 pixels not.
    for (int offset : {18, 22}) bytes[offset] = 0x20, bytes[offset + 1] = 0x4E;
    write_bytes(bmp, bytes);
    CHECK_THROWS_WITH(decode_image_file(bmp), Contains(bmp) && Contains("dimensions 20000x20000"));

    // A JPEG's frame header (FF C0: length, precision, then height and width, big-endian), read
    // by libjpeg: 40000 wide, then 20000 x 20000.
    const std::string jpeg = dir.file("huge.jpg");
    write_with_stb(jpeg, image);
    bytes = read_bytes(jpeg);
    const uint8_t kStartOfFrame[] = {0xFF, 0xC0};
    const size_t frame =
        std::search(bytes.begin(), bytes.end(), kStartOfFrame, kStartOfFrame + 2) - bytes.begin();
    REQUIRE(frame + 9 <= bytes.size());
    bytes[frame + 7] = 0x9C, bytes[frame + 8] = 0x40;
    write_bytes(jpeg, bytes);
    CHECK_THROWS_WITH(decode_image_file(jpeg), Contains(jpeg + ": dimensions 40000x"));
    bytes[frame + 5] = 0x4E, bytes[frame + 6] = 0x20, bytes[frame + 7] = 0x4E,
                  bytes[frame + 8] = 0x20;
    write_bytes(jpeg, bytes);
    CHECK_THROWS_WITH(decode_image_file(jpeg), Contains("dimensions 20000x20000"));
  }
}

TEST_CASE("a JPEG is complete at its end-of-image marker, whatever follows it", "[data]") {
  TempDir dir;
  const std::string path = dir.file("t.jpg");
  write_with_stb(path, gradient_image(32, 48));
  const std::vector<uint8_t> jpeg = read_bytes(path);
  const ImageU8 expected = decode_image_file(path);

  // A phone's "motion photo" appends a video; its bytes may hold anything, a scan marker too.
  const std::vector<uint8_t> trailer = {'T', 'R', 'A', 'I', 'L', 0xFF, 0xDA, 0x00, 0x01, 0xFF};
  std::vector<uint8_t> trailed = jpeg;
  trailed.insert(trailed.end(), trailer.begin(), trailer.end());
  const std::string trailed_path = dir.file("trailed.jpg");
  write_bytes(trailed_path, trailed);
  CHECK(decode_image_file(trailed_path).pixels == expected.pixels);

  // Without its end-of-image marker, or cut inside its header, it is not.
  const std::string cut = dir.file("cut.jpg");
  write_bytes(cut, std::vector<uint8_t>(jpeg.begin(), jpeg.end() - 2));
  CHECK_THROWS_WITH(decode_image_file(cut), Contains(cut) && Contains("truncated JPEG"));
  write_bytes(cut, std::vector<uint8_t>(jpeg.begin(), jpeg.begin() + 100));
  CHECK_THROWS_WITH(decode_image_file(cut), Contains("truncated or corrupt JPEG header"));
}

TEST_CASE("a JPEG segment holding an end-of-image marker's bytes does not end the file", "[data]") {
  // A segment's length says where it ends, whatever its bytes: a comment ending in FF D9 is text.
  TempDir dir;
  const std::string source = std::string(DEIT_SOURCE_DIR) + "/tests/data/jpeg/baseline_420.jpg";
  const std::vector<uint8_t> jpeg = read_bytes(source);
  const uint8_t kStartOfScan[] = {0xFF, 0xDA};
  const auto scan = std::search(jpeg.begin(), jpeg.end(), kStartOfScan, kStartOfScan + 2);
  REQUIRE(scan != jpeg.end());
  const std::vector<uint8_t> comment = {0xFF, 0xFE, 0x00, 0x06, 'a', 'b', 0xFF, 0xD9};
  std::vector<uint8_t> bytes(jpeg.begin(), scan);
  bytes.insert(bytes.end(), comment.begin(), comment.end());
  bytes.insert(bytes.end(), scan, jpeg.end());
  const std::string path = dir.file("t.jpg");
  write_bytes(path, bytes);
  CHECK(decode_image_file(path).pixels == decode_image_file(source).pixels);
  bytes.resize(bytes.size() - 2);  // its own end-of-image marker cut off
  write_bytes(path, bytes);
  CHECK_THROWS_WITH(decode_image_file(path), Contains(path) && Contains("truncated JPEG"));
}

TEST_CASE("a JPEG's fill bytes and stray bytes before a marker are stepped over as libjpeg does",
          "[data]") {
  // Fill bytes (FF, any number of them) may precede a marker; stray bytes are damage that libjpeg
  // warns about and skips; a restart marker between segments has no length, and libjpeg (and
  // Pillow) pass over it. None makes the file incomplete.
  TempDir dir;
  const std::string source = std::string(DEIT_SOURCE_DIR) + "/tests/data/jpeg/baseline_420.jpg";
  const std::vector<uint8_t> jpeg = read_bytes(source);
  const ImageU8 expected = decode_image_file(source);
  const uint8_t kStartOfScan[] = {0xFF, 0xDA};
  const auto scan = std::search(jpeg.begin(), jpeg.end(), kStartOfScan, kStartOfScan + 2);
  REQUIRE(scan != jpeg.end());
  const std::string path = dir.file("t.jpg");
  for (const std::vector<uint8_t>& inserted :
       {std::vector<uint8_t>{0xFF}, std::vector<uint8_t>{0x00, 0x12, 0x34},
        std::vector<uint8_t>{0xFF, 0xD0}}) {
    INFO(inserted.size() << " bytes before the scan's marker");
    std::vector<uint8_t> bytes(jpeg.begin(), scan);
    bytes.insert(bytes.end(), inserted.begin(), inserted.end());
    bytes.insert(bytes.end(), scan, jpeg.end());
    write_bytes(path, bytes);
    CHECK(decode_image_file(path).pixels == expected.pixels);
  }
}

TEST_CASE("a restart marker of any number inside a scan leaves the JPEG whole", "[data]") {
  // restart_420's scan holds RST0 to RST2 only; a longer image's numbers cycle through RST7.
  // libjpeg resynchronises past a restart marker of an unexpected number (with a warning), as
  // Pillow does.
  TempDir dir;
  std::vector<uint8_t> jpeg =
      read_bytes(std::string(DEIT_SOURCE_DIR) + "/tests/data/jpeg/restart_420.jpg");
  const uint8_t kFirstRestart[] = {0xFF, 0xD0};
  const auto restart = std::search(jpeg.begin(), jpeg.end(), kFirstRestart, kFirstRestart + 2);
  REQUIRE(restart != jpeg.end());
  const std::string path = dir.file("t.jpg");
  for (uint8_t marker = 0xD0; marker <= 0xD7; ++marker) {
    INFO("restart marker FF " << std::hex << int{marker});
    *(restart + 1) = marker;
    write_bytes(path, jpeg);
    ImageU8 decoded;
    CHECK_NOTHROW(decoded = decode_image_file(path));
    CHECK(decoded.width == 96);
    CHECK(decoded.height == 64);
  }
}

TEST_CASE("a progressive JPEG cut at a later scan's marker is truncated", "[data]") {
  // libjpeg reads the header up to the first scan, and decodes a file that ends in a later one
  // with a warning only (the missing scans' detail comes out flat).
  TempDir dir;
  const std::vector<uint8_t> jpeg =
      read_bytes(std::string(DEIT_SOURCE_DIR) + "/tests/data/jpeg/progressive_422.jpg");
  const uint8_t kStartOfScan[] = {0xFF, 0xDA};
  const auto first = std::search(jpeg.begin(), jpeg.end(), kStartOfScan, kStartOfScan + 2);
  const auto second = std::search(first + 2, jpeg.end(), kStartOfScan, kStartOfScan + 2);
  REQUIRE(second != jpeg.end());
  const std::string path = dir.file("cut.jpg");
  // In the marker's length, and just after it.
  for (const ptrdiff_t keep : {3, 4}) {
    INFO(keep << " bytes of the marker kept");
    write_bytes(path, std::vector<uint8_t>(jpeg.begin(), second + keep));
    CHECK_THROWS_WITH(decode_image_file(path), Contains(path) && Contains("truncated JPEG"));
  }
  // Its start-of-image marker alone.
  write_bytes(path, {0xFF, 0xD8});
  CHECK_THROWS_WITH(decode_image_file(path), Contains("truncated or corrupt JPEG header"));
}

// tests/data/jpeg: JPEGs and the pixels Pillow decodes from them (scripts/make_jpeg_reference.py),
// as the reference's loader reads ImageNet. stb_image's decoding was up to 3 levels off.
TEST_CASE("JPEGs decode to Pillow's pixels, bit for bit", "[data]") {
  const std::string dir = std::string(DEIT_SOURCE_DIR) + "/tests/data/jpeg/";
  for (const char* name :
       {"baseline_420", "progressive_422", "baseline_444", "grayscale", "cmyk", "restart_420"}) {
    INFO(name);
    const ImageU8 decoded = decode_image_file(dir + name + ".jpg");
    const ImageU8 pillow = decode_image_file(dir + name + ".ppm");
    REQUIRE(decoded.width == pillow.width);
    REQUIRE(decoded.height == pillow.height);
    CHECK(decoded.pixels == pillow.pixels);
  }
}

TEST_CASE("a JPEG that libjpeg cannot decode is named with libjpeg's reason", "[data]") {
  TempDir dir;
  const std::vector<uint8_t> jpeg =
      read_bytes(std::string(DEIT_SOURCE_DIR) + "/tests/data/jpeg/progressive_422.jpg");
  // The second scan's header (the first is read with the file's header): its spectral selection
  // start past the 64 coefficients of a block.
  const uint8_t kStartOfScan[] = {0xFF, 0xDA};
  auto first = std::search(jpeg.begin(), jpeg.end(), kStartOfScan, kStartOfScan + 2);
  auto second = std::search(first + 2, jpeg.end(), kStartOfScan, kStartOfScan + 2);
  REQUIRE(second != jpeg.end());
  std::vector<uint8_t> bad = jpeg;
  const size_t components = bad[(second - jpeg.begin()) + 4];
  bad[(second - jpeg.begin()) + 5 + 2 * components] = 70;  // Ss
  const std::string path = dir.file("bad_scan.jpg");
  write_bytes(path, bad);
  CHECK_THROWS_WITH(
      decode_image_file(path),
      Contains(path + ": cannot decode JPEG (libjpeg: Invalid progressive parameters"));
}

TEST_CASE("a GIF cut inside its first image is refused", "[data]") {
  TempDir dir;
  // 1 x 1, white: the screen with a 2-colour table, the image's descriptor, LZW code size 2, one
  // 2-byte data sub-block and its terminator, the trailer.
  const std::vector<uint8_t> gif = {'G', 'I',  'F',  '8',  '9', 'a', 1, 0,    1,    0, 0x80, 0,
                                    0,   0xFF, 0xFF, 0xFF, 0,   0,   0, 0x2C, 0,    0, 0,    0,
                                    1,   0,    1,    0,    0,   2,   2, 0x44, 0x01, 0, 0x3B};
  const std::string path = dir.file("white.gif");
  write_bytes(path, gif);
  CHECK(decode_image_file(path).pixels == std::vector<uint8_t>{255, 255, 255});
  for (size_t keep = 20; keep < gif.size() - 1; ++keep) {
    INFO(keep);
    write_bytes(path, std::vector<uint8_t>(gif.begin(), gif.begin() + keep));
    CHECK_THROWS_AS(decode_image_file(path), DataError);
  }
}

TEST_CASE("a GIF whose codes end before its first image is full is refused, as Pillow does",
          "[data]") {
  // A W x 1 image of index 0 (red), LZW code size 2: a clear code, 0, then codes 6 to 16, each the
  // one before it and one more 0, so 1 + 2 + ... + 12 = 78 pixels, and the end code. Codes widen
  // from 3 bits to 4 once the table reaches 8 entries, and to 5 at 16. Pillow 13 reads W = 78 and
  // 77 and calls W = 79 truncated; stb_image painted the 79th pixel in the background colour.
  using Bytes = std::vector<uint8_t>;
  const std::vector<std::pair<uint32_t, int>> codes_and_bits = {
      {4, 3},  {0, 3},  {6, 3},  {7, 3},  {8, 4},  {9, 4},  {10, 4},
      {11, 4}, {12, 4}, {13, 4}, {14, 4}, {15, 4}, {16, 5}, {5, 5}};
  auto packed = [&](size_t codes) {
    Bytes data;
    uint32_t bits = 0;
    int count = 0;
    for (size_t i = 0; i < codes; ++i) {
      const auto [code, width] = codes_and_bits[i];
      bits |= code << count;
      for (count += width; count >= 8; count -= 8, bits >>= 8) data.push_back(bits & 0xFF);
    }
    if (count > 0) data.push_back(bits & 0xFF);
    return data;
  };
  // A screen of W x 1 and an image of W x H at (0, 0), the data in one sub-block.
  auto gif = [](uint16_t width, const Bytes& data, uint16_t height = 1) {
    Bytes bytes = {'G',
                   'I',
                   'F',
                   '8',
                   '9',
                   'a',
                   0,
                   0,
                   1,
                   0,
                   0x81,
                   0,
                   0,
                   255,
                   0,
                   0,
                   0,
                   255,
                   0,
                   0,
                   0,
                   255,
                   255,
                   255,
                   255,
                   0x2C,
                   0,
                   0,
                   0,
                   0,
                   0,
                   0,
                   0,
                   0,
                   0,
                   2,
                   static_cast<uint8_t>(data.size())};
    bytes[6] = bytes[30] = width & 0xFF;
    bytes[7] = bytes[31] = width >> 8;
    bytes[32] = height;
    for (const uint8_t byte : data) bytes.push_back(byte);
    bytes.push_back(0);
    bytes.push_back(0x3B);
    return bytes;
  };
  TempDir dir;
  const std::string path = dir.file("runs.gif");
  const Bytes data = packed(codes_and_bits.size());
  for (const uint16_t width : {77, 78}) {
    write_bytes(path, gif(width, data));
    const ImageU8 image = decode_image_file(path);
    REQUIRE(image.width == width);
    for (int64_t x = 0; x < width; ++x) CHECK(image.at(0, x)[0] == 255);
  }
  write_bytes(path, gif(79, data));
  CHECK_THROWS_WITH(decode_image_file(path),
                    Contains("truncated GIF (the codes of its first image make 78 of its 79"));
  // Codes after the end code (two 0s, in one more byte) are not read: Pillow 13 still calls
  // W = 79 truncated.
  Bytes after_end = data;
  after_end.push_back(0);
  write_bytes(path, gif(79, after_end));
  CHECK_THROWS_WITH(decode_image_file(path), Contains("make 78 of its 79"));
  // Codes 6 to 15 and no end code: the data stops at the sub-blocks' terminator after 66 pixels
  // (its last 4 bits, too few for a code, are not read). Pillow reads W = 66, not 67.
  write_bytes(path, gif(66, packed(codes_and_bits.size() - 2)));
  CHECK(decode_image_file(path).width == 66);
  write_bytes(path, gif(67, packed(codes_and_bits.size() - 2)));
  CHECK_THROWS_WITH(decode_image_file(path), Contains("make 66 of its 67"));
  // An image of no pixels, on which stb_image painted the whole screen.
  write_bytes(path, gif(79, data, 0));
  CHECK_THROWS_WITH(decode_image_file(path),
                    Contains("GIF's first image is empty (79 x 0 pixels)"));
  // LZW code size 1, below GIF's least: stb_image and Pillow widen its codes at different places,
  // so they decode the same bytes to different pixels.
  Bytes code_size_1 = gif(78, data);
  code_size_1[35] = 1;
  write_bytes(path, code_size_1);
  CHECK_THROWS_WITH(decode_image_file(path),
                    Contains("unsupported GIF (LZW code size 1; GIF's least is 2)"));
  // An image 0 pixels wide (Pillow 13: "tile cannot extend outside image").
  Bytes no_width = gif(79, data);
  no_width[30] = 0;
  write_bytes(path, no_width);
  CHECK_THROWS_WITH(decode_image_file(path), Contains("GIF's first image is empty (0 x 1 pixels)"));
}

TEST_CASE("a GIF's clear code restarts the LZW table and the code width", "[data]") {
  // A W x 1 image of index 0 (red), LZW code size 2: clear, 0, 6, 7 (3 bits each; the table
  // reaches 8 entries: 4-bit codes), clear (4 bits), then 0, 6, 7 (3 bits again), 8 and the end
  // code (4 bits): 1 + 2 + 3, then 1 + 2 + 3 + 4 = 16 pixels. Pillow 13 reads W = 16 and calls
  // W = 17 truncated.
  using Bytes = std::vector<uint8_t>;
  auto gif = [](uint8_t width) {
    return Bytes{'G',   'I', 'F', '8', '9', 'a', width, 0,    1,    0,    0x81, 0,    0, 255, 0,
                 0,     0,   0,   255, 0,   0,   0,     255,  255,  255,  0x2C, 0,    0, 0,   0,
                 width, 0,   1,   0,   0,   2,   5,     0x84, 0x4F, 0xF0, 0xB1, 0x00, 0, 0x3B};
  };
  TempDir dir;
  const std::string path = dir.file("cleared.gif");
  write_bytes(path, gif(16));
  const ImageU8 image = decode_image_file(path);
  REQUIRE(image.width == 16);
  for (int64_t x = 0; x < 16; ++x) CHECK(image.at(0, x)[0] == 255);
  write_bytes(path, gif(17));
  CHECK_THROWS_WITH(decode_image_file(path), Contains("truncated GIF (the codes of its first "
                                                      "image make 16 of its 17 pixels)"));
}

TEST_CASE("a GIF's LZW codes stay 12 bits wide once its table is full", "[data]") {
  // LZW code size 2: a clear code, then 4091 codes of index 0 (red), which fill the table to its
  // 4096 entries, the codes widening from 3 bits to 12 on the way, then 0 and the end code, still
  // 12 bits each: 4092 pixels. Pillow 13 reads a W x 1 image of them for W = 4092 and calls
  // W = 4093 truncated.
  using Bytes = std::vector<uint8_t>;
  Bytes data;
  uint32_t bits = 0;
  int count = 0, width = 3;
  auto put = [&](uint32_t code) {
    bits |= code << count;
    for (count += width; count >= 8; count -= 8, bits >>= 8) data.push_back(bits & 0xFF);
  };
  put(4);
  for (uint32_t i = 0, next = 6; i < 4091; ++i) {
    put(0);
    if (i > 0 && ++next == (1u << width) && next <= 0xFFF) ++width;
  }
  put(0);
  put(5);
  if (count > 0) data.push_back(bits & 0xFF);
  auto gif = [&](uint16_t w) {
    const uint8_t low = w & 0xFF, high = w >> 8;
    Bytes bytes = {'G', 'I', 'F', '8', '9', 'a', low, high, 1, 0, 0x81, 0, 0,   255,  0, 0, 0, 255,
                   0,   0,   0,   255, 255, 255, 255, 0x2C, 0, 0, 0,    0, low, high, 1, 0, 0, 2};
    for (size_t i = 0; i < data.size(); i += 255) {
      const size_t n = std::min<size_t>(255, data.size() - i);
      bytes.push_back(static_cast<uint8_t>(n));
      bytes.insert(bytes.end(), data.begin() + i, data.begin() + i + n);
    }
    bytes.push_back(0);
    bytes.push_back(0x3B);
    return bytes;
  };
  TempDir dir;
  const std::string path = dir.file("full_table.gif");
  write_bytes(path, gif(4092));
  const ImageU8 image = decode_image_file(path);
  REQUIRE(image.width == 4092);
  for (int64_t x = 0; x < 4092; ++x) REQUIRE(image.at(0, x)[0] == 255);
  write_bytes(path, gif(4093));
  CHECK_THROWS_WITH(decode_image_file(path), Contains("make 4092 of its 4093 pixels"));
}

TEST_CASE("a GIF without an image is refused before stb_image allocates its screen", "[data]") {
  // A 14-byte file the fuzzer made: a screen of 19778 x 12853 pixels (here 8245 rows, within
  // deit's limit), no colour table, then a byte that starts no block. stb_image allocated 2 GiB
  // (here 1.4 GiB) for the screen before it refused the file.
  using Bytes = std::vector<uint8_t>;
  TempDir dir;
  const std::string path = dir.file("empty.gif");
  const Bytes screen = {'G', 'I', 'F', '8', '7', 'a', 'B', 'M', '5', ' ', '5', 0, 'P'};
  Bytes unknown_block = screen;
  unknown_block.push_back('<');
  write_bytes(path, unknown_block);
  CHECK_THROWS_WITH(decode_image_file(path),
                    Contains(path + ": corrupt GIF (a block of unknown type 60 comes before"));
  // A comment extension, then the trailer.
  Bytes trailer_first = screen;
  const Bytes comment_then_trailer = {0x21, 0xFE, 1, 'c', 0, 0x3B};
  trailer_first.insert(trailer_first.end(), comment_then_trailer.begin(),
                       comment_then_trailer.end());
  write_bytes(path, trailer_first);
  CHECK_THROWS_WITH(decode_image_file(path), Contains("GIF without an image (its trailer comes"));
}

TEST_CASE("a GIF's transparent pixels take their palette colour, as Pillow gives them", "[data]") {
  TempDir dir;
  // 2 x 1: a red and a blue palette entry, a graphic control extension making entry 0 (red)
  // transparent, then the image, LZW code size 2: clear, 0, 1, end (3 bits each).
  const std::vector<uint8_t> gif = {'G', 'I', 'F',  '8', '9', 'a',  2,    0,    1,    0,    0x80,
                                    0,   0,   0xFF, 0,   0,   0,    0,    0xFF, 0x21, 0xF9, 4,
                                    1,   0,   0,    0,   0,   0x2C, 0,    0,    0,    0,    2,
                                    0,   1,   0,    0,   2,   2,    0x44, 0x0A, 0,    0x3B};
  const std::string path = dir.file("transparent.gif");
  write_bytes(path, gif);
  CHECK(decode_image_file(path).pixels == std::vector<uint8_t>{255, 0, 0, 0, 0, 255});
}

TEST_CASE("a GIF's screen around its first image takes Pillow's colour", "[data]") {
  // A 4 x 3 screen with a global table of 4 colours (background index 1), and a 2 x 1 image at
  // (1, 1) of indices 2 and 3 (LZW code size 2: clear and an index for each, then end). Pillow
  // 13's convert("RGB") paints the rest in the colour of index 0, or of the transparent index, in
  // the image's own table where it has one; stb_image painted it the background colour, red and
  // blue swapped.
  using Bytes = std::vector<uint8_t>;
  const Bytes screen = {'G', 'I', 'F', '8', '9', 'a', 4, 0,   3, 0,   0x81, 1,  0,
                        10,  20,  30,  200, 100, 50,  0, 255, 0, 255, 255,  255};
  auto transparent = [](uint8_t index) { return Bytes{0x21, 0xF9, 4, 1, 0, 0, index, 0}; };
  const Bytes descriptor = {0x2C, 1, 0, 1, 0, 2, 0, 1, 0};
  const Bytes no_table = {0}, own_table = {0x81, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13};
  const Bytes image_data = {2, 2, 0x14, 0x57, 0, 0x3B};
  struct Case {
    std::string name;
    std::vector<Bytes> parts;
    Bytes around, image;  // the colour outside the image; its two pixels
  };
  const std::vector<Case> cases = {
      {"plain",
       {screen, descriptor, no_table, image_data},
       {10, 20, 30},
       {0, 255, 0, 255, 255, 255}},
      {"transparent index 2",
       {screen, transparent(2), descriptor, no_table, image_data},
       {0, 255, 0},
       {0, 255, 0, 255, 255, 255}},
      {"own table", {screen, descriptor, own_table, image_data}, {1, 2, 3}, {7, 8, 9, 11, 12, 13}},
      {"own table, transparent index 3",
       {screen, transparent(3), descriptor, own_table, image_data},
       {11, 12, 13},
       {7, 8, 9, 11, 12, 13}},
      // Pillow 13 reads these too. A graphic control extension whose transparency flag is clear,
      // and a comment extension of 4 bytes (its first odd, its fourth 2), make no index
      // transparent: index 0 around.
      {"control without transparency",
       {screen, Bytes{0x21, 0xF9, 4, 0, 0, 0, 2, 0}, descriptor, no_table, image_data},
       {10, 20, 30},
       {0, 255, 0, 255, 255, 255}},
      {"4-byte comment",
       {screen, Bytes{0x21, 0xFE, 4, 'a', 'b', 'c', 2, 0}, descriptor, no_table, image_data},
       {10, 20, 30},
       {0, 255, 0, 255, 255, 255}},
      // Of two transparent indices the last counts; one past the table's 4 entries is black.
      {"transparent 2, then 3",
       {screen, transparent(2), transparent(3), descriptor, no_table, image_data},
       {255, 255, 255},
       {0, 255, 0, 255, 255, 255}},
      {"transparent index 4 of 4",
       {screen, transparent(4), descriptor, no_table, image_data},
       {0, 0, 0},
       {0, 255, 0, 255, 255, 255}},
  };
  TempDir dir;
  for (const Case& c : cases) {
    INFO(c.name);
    Bytes gif;
    for (const Bytes& part : c.parts) gif.insert(gif.end(), part.begin(), part.end());
    const std::string path = dir.file("framed.gif");
    write_bytes(path, gif);
    Bytes expected;
    for (int i = 0; i < 12; ++i) expected.insert(expected.end(), c.around.begin(), c.around.end());
    std::copy(c.image.begin(), c.image.end(), expected.begin() + 5 * 3);  // (1, 1) and (2, 1)
    const ImageU8 decoded = decode_image_file(path);
    CHECK(decoded.width == 4);
    CHECK(decoded.height == 3);
    CHECK(decoded.pixels == expected);
  }
}

TEST_CASE("a file that is not an image is refused before it is read", "[data]") {
  TempDir dir;
  // A named pipe: opening it would wait for a writer.
  const std::string pipe = dir.file("pipe.jpg");
  REQUIRE(mkfifo(pipe.c_str(), 0600) == 0);
  CHECK_THROWS_WITH(decode_image_file(pipe), Contains(pipe) && Contains("not a regular file"));
  // 3 GiB (sparse): read whole, it would take more memory than a machine may have.
  const std::string huge = dir.file("huge.jpg");
  write_bytes(huge, {0xFF, 0xD8});
  std::filesystem::resize_file(huge, uint64_t{3} << 30);
  CHECK_THROWS_WITH(decode_image_file(huge), Contains(huge) && Contains("larger than 2 GiB"));
}

TEST_CASE("write_png round-trips and names the path it cannot write", "[data]") {
  TempDir dir;
  const ImageU8 image = gradient_image(7, 9, 3);
  const std::string path = dir.file("out.png");
  write_png(path, image);
  CHECK(decode_image_file(path).pixels == image.pixels);
  // One pixel wider than deit reads: refused before anything is encoded.
  const std::string wide = dir.file("wide.png");
  CHECK_THROWS_WITH(write_png(wide, ImageU8{1, 32769, std::vector<uint8_t>(32769 * 3)}),
                    Contains(wide) && Contains("up to 32768 pixels a side"));
  CHECK_FALSE(std::filesystem::exists(wide));
  const std::string unwritable = dir.path() + "/no/such/folder/out.png";
  CHECK_THROWS_WITH(write_png(unwritable, image), Contains(unwritable));
  // Through a symbolic link, the file it points to is replaced and the link stays.
  const std::string link = dir.file("link.png");
  std::filesystem::create_symlink(path, link);
  write_png(link, gradient_image(3, 5));
  CHECK(std::filesystem::is_symlink(link));
  CHECK(decode_image_file(path).width == 5);
}

TEST_CASE("write_png on a full disk throws naming the path and leaves no partial file", "[data]") {
  TempDir dir;
  const ImageU8 image = noise_image(64, 64);  // a PNG of about 12 KiB
  const std::string path = dir.file("out.png");
  {
    deit::test::FileSizeLimit limit(4096);  // the disk "fills up" part-way through
    CHECK_THROWS_WITH(write_png(path, image), Contains(path) && Contains("File too large"));
    CHECK_THROWS_AS(write_png(path, image), DataError);  // as the other failures to write
  }
  CHECK(std::filesystem::is_empty(dir.path()));  // neither the PNG nor its temporary file

  // The file a failed write would have replaced is kept whole.
  const ImageU8 previous = gradient_image(4, 6);
  write_png(path, previous);
  {
    deit::test::FileSizeLimit limit(4096);
    CHECK_THROWS_WITH(write_png(path, image), Contains(path));
  }
  CHECK(decode_image_file(path).pixels == previous.pixels);
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path()), {}) == 1);

  // A device is written in place (not replaced), and its errors count too: /dev/full is full.
  const std::string full = dir.file("full.png");
  std::filesystem::create_symlink("/dev/full", full);
  CHECK_THROWS_WITH(write_png(full, image), Contains(full) && Contains("No space left on device"));
  CHECK(std::filesystem::is_character_file(full));
}

TEST_CASE("ImageFolder numbers sorted classes and lists images in sorted order", "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/train";
  const ImageU8 image = gradient_image(4, 4);
  write_png(dir.file("train/zebra/b.png"), image);
  write_png(dir.file("train/zebra/a.png"), image);
  write_png(dir.file("train/apple/nested/deeper/c.PNG"), image);  // any depth, any case
  write_png(dir.file("train/apple/.hidden.png"), image);          // hidden: ignored
  write_png(dir.file("train/.ipynb_checkpoints/x.png"), image);   // hidden class folder: ignored
  write_bytes(dir.file("train/apple/notes.txt"), {'h', 'i'});     // not an image: ignored
  std::filesystem::create_directories(root + "/mango");           // a class with no images

  const ImageFolder folder(root);
  CHECK(folder.class_names() == std::vector<std::string>{"apple", "mango", "zebra"});
  REQUIRE(folder.size() == 3);
  CHECK(folder.describe(0) == root + "/apple/nested/deeper/c.PNG");
  CHECK(folder.describe(1) == root + "/zebra/a.png");
  CHECK(folder.describe(2) == root + "/zebra/b.png");
  CHECK(folder.label(0) == 0);
  CHECK(folder.label(1) == 2);
  CHECK(folder.load(2).pixels == image.pixels);
}

TEST_CASE("A class name that is not UTF-8 is refused when the dataset opens, shown escaped",
          "[data]") {
  // Well-formed: ASCII, two-, three- and four-byte sequences.
  for (const char* good : {"disc", "caf\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"})
    CHECK_NOTHROW(require_utf8_class_name(good, "here"));
  // Latin-1, a stray continuation byte, an overlong '/', a surrogate, a truncated sequence.
  for (const char* bad : {"d\xe9sc", "\x80", "\xc0\xaf", "\xed\xa0\x80", "\xe2\x82"})
    CHECK_THROWS_AS(require_utf8_class_name(bad, "here"), DataError);

  TempDir dir;
  const std::string root = dir.path() + "/train";
  write_png(dir.file("train/caf\xc3\xa9/a.png"), gradient_image(4, 4));
  write_png(dir.file("train/d\xe9sc/a.png"), gradient_image(4, 4));
  CHECK_THROWS_WITH(ImageFolder(root), Contains(root + ": the class name 'd\\xe9sc' is not UTF-8"));
}

TEST_CASE("ImageFolder follows folder links but not the ones that loop back", "[data]") {
  TempDir dir;
  const std::string root = dir.path() + "/train";
  write_png(dir.file("train/cat/a.png"), gradient_image(4, 4));
  write_png(dir.file("elsewhere/b.png"), gradient_image(4, 4));
  std::filesystem::create_directory_symlink(dir.path() + "/elsewhere", root + "/cat/linked");
  std::filesystem::create_directory_symlink(".", root + "/cat/again");  // itself
  std::filesystem::create_directory_symlink("..", root + "/cat/up");    // the split above it
  const ImageFolder folder(root);
  REQUIRE(folder.size() == 2);  // each image once
  CHECK(folder.describe(0) == root + "/cat/a.png");
  CHECK(folder.describe(1) == root + "/cat/linked/b.png");

  // Two folders that link to each other: each link is followed once (its image listed twice, as
  // os.walk lists it), not once per turn of the loop they make together.
  write_png(dir.file("train/dog/x/x.png"), gradient_image(4, 4));
  write_png(dir.file("train/dog/y/y.png"), gradient_image(4, 4));
  std::filesystem::create_directory_symlink("../y", root + "/dog/x/to_y");
  std::filesystem::create_directory_symlink("../x", root + "/dog/y/to_x");
  const ImageFolder linked(root);
  REQUIRE(linked.size() == 6);
  CHECK(linked.describe(2) == root + "/dog/x/to_y/y.png");
  CHECK(linked.describe(3) == root + "/dog/x/x.png");
  CHECK(linked.describe(4) == root + "/dog/y/to_x/x.png");
  CHECK(linked.describe(5) == root + "/dog/y/y.png");
}

TEST_CASE("An image folder without images is an error naming the folder", "[data]") {
  TempDir dir;
  const std::string empty = dir.path() + "/empty";
  std::filesystem::create_directories(empty);
  CHECK_THROWS_WITH(ImageFolder(empty), Contains(empty) && Contains("no class folders"));

  const std::string no_images = dir.path() + "/no_images";
  std::filesystem::create_directories(no_images + "/cat");
  write_bytes(no_images + "/cat/readme.txt", {'x'});
  CHECK_THROWS_WITH(ImageFolder(no_images), Contains(no_images) && Contains("no images"));

  const std::string missing = dir.path() + "/missing";
  CHECK_THROWS_WITH(ImageFolder(missing), Contains(missing) && Contains("no such directory"));
  const std::string file = dir.file("file.png");
  write_bytes(file, {1});
  CHECK_THROWS_WITH(ImageFolder(file), Contains(file) && Contains("not a directory"));
  CHECK_THROWS_WITH(open_image_source(missing), Contains(missing));
}

TEST_CASE("has_image_extension accepts what deit decodes", "[data]") {
  CHECK(has_image_extension("a/b.JPEG"));
  // The whole list image_folder.h promises, each in either case.
  for (const char* extension :
       {"jpg", "jpeg", "jfif", "png", "bmp", "gif", "tga", "psd", "ppm", "pgm", "pnm"}) {
    INFO(extension);
    std::string upper = extension;
    for (char& c : upper) c = static_cast<char>(c - 'a' + 'A');
    CHECK(has_image_extension(std::string("dir/x.") + extension));
    CHECK(has_image_extension("dir/x." + upper));
  }
  CHECK_FALSE(has_image_extension("x.tif"));
  CHECK_FALSE(has_image_extension("x.webp"));
  CHECK_FALSE(has_image_extension("x.hdr"));  // formats Pillow does not read
  CHECK_FALSE(has_image_extension("x.pic"));
  CHECK_FALSE(has_image_extension("x.txt"));
  CHECK_FALSE(has_image_extension("png"));
}
