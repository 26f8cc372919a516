// Decoding images with libjpeg-turbo (JPEG, data/jpeg_decode.h), by hand (binary PNM) and with
// stb_image (PNG, BMP, GIF, TGA, PSD), and writing them with stb_image_write, with the
// checks that turn a bad file into a DataError naming it instead of a crash, a huge allocation or a
// silently half-grey picture, and a failed write (a full disk) into one instead of a truncated
// file.
#include <stb_image.h>
#include <stb_image_write.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <vector>

#include "data/file_error.h"
#include "data/image.h"
#include "data/jpeg_decode.h"
#include "data/little_endian.h"
#include "data/pending_file.h"

namespace deit::data {
namespace {

constexpr const char* kLargerThan2GiB = "file larger than 2 GiB (deit reads up to 2^31 bytes)";

const char* stb_reason() {
  const char* reason = stbi_failure_reason();
  return reason && *reason ? reason : "no reason given";
}

// stb_image reads past the end of a BMP or a TGA as zeros, so a truncated one decodes
// "successfully" (Pillow says "image file is truncated"). Their headers say how many bytes the
// pixels take: the checks below compare that with what the file holds.

// "truncated FORMAT (pixel data needs N bytes, file has M)".
[[noreturn]] void fail_truncated(const std::string& name, const char* format, uint64_t needed,
                                 size_t size) {
  fail_file(name, std::string("truncated ") + format + " (pixel data needs " +
                      std::to_string(needed) + " bytes, file has " + std::to_string(size) + ")");
}

// For the uncompressed encodings the pixel array's size follows from the header.
void check_bmp_complete(const uint8_t* bytes, size_t size, const std::string& name) {
  constexpr size_t kHeaderBytes = 34;  // file header + the info header fields read below
  if (size < kHeaderBytes) fail_file(name, "truncated BMP header");
  const uint32_t pixel_offset = read_le32(bytes + 10);
  const uint32_t info_size = read_le32(bytes + 14);
  if (info_size < 40) return;  // old OS/2 headers: rare, left to stb
  const long long width = static_cast<int32_t>(read_le32(bytes + 18));
  const long long height = static_cast<int32_t>(read_le32(bytes + 22));
  const uint32_t bits_per_pixel = read_le16(bytes + 28);
  const uint32_t compression = read_le32(bytes + 30);
  // stb_image reads the compression as a signed number and decodes a negative one as none, from
  // pixels past the end of the file if need be; Pillow refuses it.
  if (compression > INT32_MAX)
    fail_file(name, "unsupported BMP compression (" + std::to_string(compression) + ")");
  const bool uncompressed = compression == 0 || compression == 3;  // BI_RGB, BI_BITFIELDS
  if (!uncompressed) return;
  const uint64_t row_bytes =
      (static_cast<uint64_t>(std::llabs(width)) * bits_per_pixel + 31) / 32 * 4;
  const uint64_t needed = pixel_offset + row_bytes * static_cast<uint64_t>(std::llabs(height));
  if (needed > size) fail_truncated(name, "BMP", needed, size);
}

// Throws DataError for dimensions past what deit decodes; returns for the others.
void refuse_too_large(const std::string& name, int64_t width, int64_t height) {
  if (width > 0 && height > 0 && within_image_limits(width, height)) return;
  fail_file(name, "dimensions " + std::to_string(width) + "x" + std::to_string(height) +
                      ": deit reads images of " + image_limits_text() +
                      " (a corrupt header, or an image to shrink first)");
}

// A binary PNM (P5 gray, P6 RGB): the magic, then width, height and the largest sample value in
// decimal, then the samples (2 bytes each, big-endian, above 255). The header is read as Pillow's
// tokenizer reads it, which follows netpbm: whitespace separates the tokens and one whitespace
// byte ends the last; a '#' starts a comment that runs to the end of its line anywhere, inside a
// token too (whose line end the token then goes on after); a token holds at most 10 characters.
struct PnmHeader {
  uint64_t width = 0, height = 0, max_value = 0;
  uint64_t channels = 0;      // 1 (P5) or 3 (P6)
  size_t pixel_offset = 0;    // where the samples start
  uint64_t sample_bytes = 0;  // 1, or 2 above 255
};

// PNM's whitespace, as Pillow's: space, tab, LF, VT, FF, CR.
bool is_pnm_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

// The header's next number, from `i`, which it leaves past the whitespace that ends the number.
// Throws DataError naming the file for a token that is not one (Pillow: "Token too long", or
// int()'s "invalid literal").
uint64_t read_pnm_number(const uint8_t* bytes, size_t size, size_t& i, const std::string& name) {
  constexpr size_t kMaxTokenLength = 10;
  std::string token;
  while (token.size() <= kMaxTokenLength && i < size) {
    const uint8_t c = bytes[i++];
    if (is_pnm_space(c)) {
      if (token.empty()) continue;
      break;
    }
    if (c == '#') {
      while (i < size && bytes[i] != '\n' && bytes[i] != '\r') ++i;
      ++i;  // the line end, which does not end the token
      continue;
    }
    token.push_back(static_cast<char>(c));
  }
  if (token.empty()) fail_file(name, "truncated PNM header");
  if (token.size() > kMaxTokenLength)
    fail_file(name, "corrupt PNM header (a token longer than 10 characters)");
  if (!std::all_of(token.begin(), token.end(), [](char c) { return c >= '0' && c <= '9'; }))
    fail_file(name, "corrupt PNM header (a token that is not a number)");
  return std::stoull(token);
}

PnmHeader read_pnm_header(const uint8_t* bytes, size_t size, const std::string& name) {
  // Pillow reads the magic up to the whitespace after it: "P6#..." is no magic it knows.
  if (size < 3 || !is_pnm_space(bytes[2])) fail_file(name, "corrupt PNM header");
  size_t i = 3;
  PnmHeader header;
  header.width = read_pnm_number(bytes, size, i, name);
  header.height = read_pnm_number(bytes, size, i, name);
  header.max_value = read_pnm_number(bytes, size, i, name);
  header.channels = bytes[1] == '6' ? 3 : 1;
  header.pixel_offset = i;
  header.sample_bytes = header.max_value > 255 ? 2 : 1;
  return header;
}

// A TGA: an 18-byte header (the ID's length, whether a colour map follows and its entries and their
// bits, the image type, width, height, bits a pixel), the ID, the colour map, then the pixels:
// plain (types 1 to 3) or run-length coded in packets (9 to 11), each a byte (top bit: one value
// repeated; low 7 bits: the count - 1) and its values.
void check_tga_complete(const uint8_t* bytes, size_t size, const std::string& name) {
  constexpr size_t kHeaderBytes = 18;
  if (size < kHeaderBytes) fail_file(name, "truncated TGA header");
  const uint64_t map_bytes = bytes[1] ? read_le16(bytes + 5) * ((bytes[7] + 7u) / 8) : 0;
  const uint64_t pixel_bytes = (bytes[16] + 7u) / 8;
  const uint64_t width = read_le16(bytes + 12), pixels = width * read_le16(bytes + 14);
  uint64_t at = kHeaderBytes + bytes[0] + map_bytes;
  if (bytes[2] < 8) {
    const uint64_t needed = at + pixels * pixel_bytes;
    if (needed > size) fail_truncated(name, "TGA", needed, size);
    return;
  }
  uint64_t done = 0;
  while (done < pixels && at < size) {
    const uint8_t packet = bytes[at++];
    const bool run = packet & 0x80;
    const uint64_t count = (packet & 0x7f) + 1u;
    // stb_image lets a run go on into the next row, or past the image; Pillow refuses it ("buffer
    // overrun"), and lets only raw packets cross a row's end.
    if (run && done % width + count > width)
      fail_file(name, "corrupt TGA (a run-length packet runs past the end of a row)");
    at += (run ? 1 : count) * pixel_bytes;
    done += count;
  }
  if (done < pixels || at > size)
    fail_file(name, "truncated TGA (its run-length coded pixels end early)");
}

// PNG's and PSD's numbers are big-endian.
uint32_t read_be32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 |
         static_cast<uint32_t>(p[2]) << 8 | p[3];
}

uint32_t read_be16(const uint8_t* p) { return static_cast<uint32_t>(p[0]) << 8 | p[1]; }

// A PNG: its 8-byte signature, then chunks, each its data's length, its type, the data and a CRC.
constexpr size_t kPngSignatureBytes = 8;

// Pillow checks the CRC of each chunk of a PNG before its image data as it opens the file (IHDR,
// PLTE, tRNS, text, any other), and refuses the file where one is wrong ("broken PNG file"); those
// of the IDAT chunks and after go unchecked. stb_image checks none. A chunk cut short is left to
// png_ended_where_cut.
void check_png_header_checksums(const uint8_t* bytes, size_t size, const std::string& name) {
  size_t chunk = kPngSignatureBytes;
  while (chunk + 12 <= size) {
    const std::string type(reinterpret_cast<const char*>(bytes + chunk + 4), 4);
    if (type == "IDAT") return;
    const uint64_t length = read_be32(bytes + chunk);
    if (chunk + 12 + length > size) return;
    const uint32_t stored = read_be32(bytes + chunk + 8 + length);
    if (crc32(0, bytes + chunk + 4, static_cast<uInt>(length + 4)) != stored) {
      const bool printable = std::all_of(type.begin(), type.end(), [](char c) {
        return std::isalpha(static_cast<unsigned char>(c));
      });
      fail_file(name, "corrupt PNG (" + (printable ? "its " + type + " chunk's" : "a chunk's") +
                          " checksum is wrong)");
    }
    chunk += 12 + length;
  }
}

constexpr size_t kPsdHeaderBytes = 26;

// Past a PSD's 26-byte header and its three sections (colour mode data, image resources, layers),
// each after its 4-byte length: where its merged image starts. Where the file ends first, the
// bytes it would need to go on, past `size`.
uint64_t psd_merged_image_at(const uint8_t* bytes, size_t size) {
  uint64_t at = kPsdHeaderBytes;
  for (int section = 0; section < 3; ++section) {
    if (at + 4 > size) return at + 4;
    at += 4 + read_be32(bytes + at);
  }
  return at;
}

// A PSD that stb_image reads (RGB, 8 or 16 bits): a 26-byte header (the channels at 12, height,
// width, bits a sample), three sections each after its 4-byte length (colour mode data, image
// resources, layers), then the merged image: its compression and each channel in turn, of which
// stb_image reads the first 4. Plain (0): the samples. PackBits (1): a table of every row's coded
// length (2 bytes each, of all the channels' rows), then the coded rows. stb_image reads a cut
// one's missing bytes as zeros; Pillow says "truncated".
void check_psd_complete(const uint8_t* bytes, size_t size, const std::string& name) {
  if (size < kPsdHeaderBytes) fail_file(name, "truncated PSD header");
  const uint64_t channels = read_be16(bytes + 12), height = read_be32(bytes + 14),
                 width = read_be32(bytes + 18), sample_bytes = read_be16(bytes + 22) / 8;
  // stb_image gives the channels an RGB PSD lacks zeros; Pillow refuses it.
  if (channels < 3)
    fail_file(name, "corrupt PSD (an RGB image of " + std::to_string(channels) + " channels)");
  uint64_t at = psd_merged_image_at(bytes, size);
  if (at + 2 > size) fail_truncated(name, "PSD", at + 2, size);
  const uint32_t compression = read_be16(bytes + at);
  at += 2;
  // Pillow reads alpha too where there are 4 channels, and 3 where there are more.
  const uint64_t read_rows = (channels == 4 ? 4 : 3) * height;
  uint64_t needed = at;
  if (compression == 0) {
    needed += read_rows * width * sample_bytes;
  } else if (compression == 1) {
    const uint64_t table = at;
    needed += 2 * channels * height;
    if (needed > size) fail_truncated(name, "PSD", needed, size);
    for (uint64_t row = 0; row < read_rows; ++row) needed += read_be16(bytes + table + 2 * row);
  }
  if (needed > size) fail_truncated(name, "PSD", needed, size);
}

// stb_image un-premultiplies the colours of a PSD with a fourth channel (alpha) against white
// where alpha is neither 0 nor full; Pillow's convert("RGB") drops alpha and keeps them. So a PSD
// of more than 3 channels goes to stb_image as one of 3: its channel count rewritten and, where
// its rows are PackBits-coded, its row-length table cut to the first 3 channels' rows (the data
// keeps the others, which stb does not reach). Empty for 3 channels. After check_psd_complete.
std::vector<uint8_t> psd_without_alpha(const uint8_t* bytes, size_t size) {
  const uint64_t channels = read_be16(bytes + 12), height = read_be32(bytes + 14);
  if (channels <= 3) return {};
  const uint64_t table = psd_merged_image_at(bytes, size) + 2;
  std::vector<uint8_t> rgb(bytes, bytes + table);
  rgb[12] = 0;
  rgb[13] = 3;
  const bool packbits = read_be16(bytes + table - 2) == 1;
  const uint64_t kept_table = packbits ? 2 * 3 * height : 0;
  const uint64_t whole_table = packbits ? 2 * channels * height : 0;
  rgb.insert(rgb.end(), bytes + table, bytes + table + kept_table);
  rgb.insert(rgb.end(), bytes + table + whole_table, bytes + size);
  return rgb;
}

// The colour table a GIF's packed field announces: 3 x 2^(n + 1) bytes when its top bit is set.
size_t gif_colour_table_bytes(uint8_t packed) {
  return packed & 0x80 ? size_t{3} << ((packed & 7) + 1) : 0;
}

// Past a GIF's chain of sub-blocks at `i` (a length byte and that many bytes each, 0 ends it); 0
// if the file ends first.
size_t past_gif_sub_blocks(const uint8_t* bytes, size_t size, size_t i) {
  while (i < size && bytes[i] != 0) i += 1 + bytes[i];
  return i < size ? i + 1 : 0;
}

constexpr size_t kGifScreenDescriptorEnd = 13;  // "GIF89a", then 7 bytes

// The pixels a GIF image's LZW codes make, counted as stb_image decodes them: from the code size
// byte at `i`, through the data sub-blocks that follow it (whole, as check_gif_complete found
// them), to the end code or the last sub-block; the count stops once it reaches `wanted`. Only the
// length of each code's string is kept: a code's is its prefix's plus one. Where stb_image would
// refuse the codes, `wanted` is returned and stb's own error is left to be reported.
uint64_t gif_pixels_coded(const uint8_t* bytes, size_t i, uint64_t wanted) {
  const uint32_t min_code_size = bytes[i++];
  if (min_code_size > 12) return wanted;
  const uint32_t clear = 1u << min_code_size, end = clear + 1;
  constexpr uint32_t kMaxCodes = 8192;  // as many as stb_image makes
  std::vector<uint16_t> length(kMaxCodes, 1);
  uint32_t code_size = min_code_size + 1, next = clear + 2, bits = 0, valid_bits = 0;
  uint32_t block_left = 0;
  int64_t previous = -1;
  uint64_t made = 0;
  while (made < wanted) {
    if (valid_bits < code_size) {
      if (block_left == 0) {
        block_left = bytes[i++];
        if (block_left == 0) break;  // the terminator: stb keeps what was made
      }
      --block_left;
      bits |= uint32_t{bytes[i++]} << valid_bits;
      valid_bits += 8;
      continue;
    }
    const uint32_t code = bits & ((1u << code_size) - 1);
    bits >>= code_size;
    valid_bits -= code_size;
    if (code == clear) {
      code_size = min_code_size + 1;
      next = clear + 2;
      previous = -1;
      continue;
    }
    if (code == end) break;
    if (code > next || (previous < 0 && code == next)) return wanted;  // stb: "illegal code"
    if (previous >= 0) {
      if (next == kMaxCodes) return wanted;  // stb: "too many codes"
      length[next++] = static_cast<uint16_t>(length[previous] + 1);
    }
    made += length[code];
    if ((next & ((1u << code_size) - 1)) == 0 && next <= 0xFFF) ++code_size;
    previous = code;
  }
  return std::min(made, wanted);
}

// stb_image decodes a GIF cut inside its first frame as if the rest were there, and fills the
// pixels its codes leave out with the background (Pillow says "truncated" for both). stb reads that
// frame alone, so the blocks are walked to its last data sub-block, and its codes are counted. A
// GIF with no image is refused here too: stb_image would first allocate its screen (9 bytes a
// pixel, 2 GiB for a 14-byte header claiming 254 million pixels), then refuse it.
void check_gif_complete(const uint8_t* bytes, size_t size, const std::string& name) {
  size_t i = size >= kGifScreenDescriptorEnd
                 ? kGifScreenDescriptorEnd + gif_colour_table_bytes(bytes[10])
                 : 0;
  while (i != 0 && i < size) {
    if (bytes[i] == 0x21) {  // an extension: its label, then sub-blocks
      i = past_gif_sub_blocks(bytes, size, i + 2);
    } else if (bytes[i] == 0x2C) {  // the first image: a 10-byte descriptor, LZW code size, data
      if (i + 10 > size) break;
      const size_t code_size_at = i + 10 + gif_colour_table_bytes(bytes[i + 9]);
      if (past_gif_sub_blocks(bytes, size, code_size_at + 1) == 0) break;
      const uint16_t width = read_le16(bytes + i + 5), height = read_le16(bytes + i + 7);
      // stb_image paints an empty image's whole screen; Pillow refuses it.
      if (width == 0 || height == 0)
        fail_file(name, "GIF's first image is empty (" + std::to_string(width) + " x " +
                            std::to_string(height) + " pixels)");
      // Below 2, which GIF does not allow, stb_image widens its codes where Pillow does not.
      if (bytes[code_size_at] < 2)
        fail_file(name, "unsupported GIF (LZW code size " + std::to_string(bytes[code_size_at]) +
                            "; GIF's least is 2)");
      const uint64_t pixels = uint64_t{width} * height;
      const uint64_t coded = gif_pixels_coded(bytes, code_size_at, pixels);
      if (coded == pixels) return;
      fail_file(name, "truncated GIF (the codes of its first image make " + std::to_string(coded) +
                          " of its " + std::to_string(pixels) + " pixels)");
    } else if (bytes[i] == 0x3B) {
      fail_file(name, "GIF without an image (its trailer comes first)");
    } else {
      fail_file(name, "corrupt GIF (a block of unknown type " + std::to_string(bytes[i]) +
                          " comes before its first image)");
    }
  }
  fail_file(name, "truncated GIF (its first image's data ends early)");
}

// What comes before a GIF's first image: the graphic control extensions that make an index
// transparent (label F9, 4 bytes: the flags, bit 0 transparency, the delay, the index), and where
// the image's descriptor starts (0 where the file has none).
struct GifFirstImage {
  std::vector<size_t> transparency_controls;  // where each such extension starts
  size_t descriptor = 0;
};

GifFirstImage find_first_gif_image(const uint8_t* bytes, size_t size) {
  GifFirstImage first;
  size_t i = kGifScreenDescriptorEnd + gif_colour_table_bytes(bytes[10]);
  while (i + 3 < size && bytes[i] == 0x21) {
    if (bytes[i + 1] == 0xF9 && bytes[i + 2] == 4 && (bytes[i + 3] & 1) && i + 6 < size)
      first.transparency_controls.push_back(i);
    i = past_gif_sub_blocks(bytes, size, i + 2);
  }
  if (i != 0 && i + 10 <= size && bytes[i] == 0x2C) first.descriptor = i;
  return first;
}

// stb_image leaves the transparent pixels of a GIF's first image black, where Pillow's
// convert("RGB") gives them their colour in the palette, as if none were transparent. So the
// transparency flag of each graphic control extension before that image is cleared in a copy,
// which stb_image decodes. Empty where none is set.
std::vector<uint8_t> gif_without_transparency(const uint8_t* bytes, size_t size,
                                              const GifFirstImage& first) {
  std::vector<uint8_t> opaque;
  if (first.transparency_controls.empty()) return opaque;
  opaque.assign(bytes, bytes + size);
  for (const size_t control : first.transparency_controls) opaque[control + 3] &= 0xFE;
  return opaque;
}

// stb_image paints the part of a GIF's screen that its first image leaves uncovered in the
// screen's background colour, red and blue swapped. In Pillow's first frame it holds index 0, or
// the transparent index where there is one, which convert("RGB") shows in its colour in the
// image's palette: its own colour table, or else the global one.
void paint_around_first_gif_image(const uint8_t* bytes, size_t size, const GifFirstImage& first,
                                  ImageU8& image) {
  const size_t d = first.descriptor;
  const int64_t left = read_le16(bytes + d + 1), top = read_le16(bytes + d + 3);
  const int64_t right = left + read_le16(bytes + d + 5), bottom = top + read_le16(bytes + d + 7);
  if (left == 0 && top == 0 && right >= image.width && bottom >= image.height) return;
  const bool own_table = bytes[d + 9] & 0x80;
  const size_t table = own_table ? d + 10 : kGifScreenDescriptorEnd;
  const size_t entries = gif_colour_table_bytes(own_table ? bytes[d + 9] : bytes[10]) / 3;
  const size_t index =
      first.transparency_controls.empty() ? 0 : bytes[first.transparency_controls.back() + 6];
  uint8_t colour[3] = {0, 0, 0};
  if (index < entries && table + 3 * index + 3 <= size)
    std::copy_n(bytes + table + 3 * index, 3, colour);
  for (int64_t y = 0; y < image.height; ++y)
    for (int64_t x = 0; x < image.width; ++x)
      if (x < left || x >= right || y < top || y >= bottom)
        std::copy_n(colour, 3, image.pixels.data() + (y * image.width + x) * 3);
}

// The formats deit hands to stb_image, told apart by their magic numbers; a file with none of them
// is a TGA, which has none.
enum class StbFormat { kPng, kBmp, kGif, kPsd, kTga };

StbFormat stb_format(const uint8_t* bytes, size_t size) {
  auto starts_with = [&](const char* magic, size_t n) {
    return size >= n && std::memcmp(bytes, magic, n) == 0;
  };
  if (starts_with("\x89PNG", 4)) return StbFormat::kPng;
  if (starts_with("BM", 2)) return StbFormat::kBmp;
  if (starts_with("GIF", 3)) return StbFormat::kGif;
  if (starts_with("8BPS", 4)) return StbFormat::kPsd;
  return StbFormat::kTga;
}

void check_complete(const uint8_t* bytes, size_t size, StbFormat format, const std::string& name) {
  switch (format) {
    case StbFormat::kBmp:
      return check_bmp_complete(bytes, size, name);
    case StbFormat::kGif:
      return check_gif_complete(bytes, size, name);
    case StbFormat::kPsd:
      return check_psd_complete(bytes, size, name);
    case StbFormat::kTga:
      return check_tga_complete(bytes, size, name);
    case StbFormat::kPng:
      return check_png_header_checksums(bytes, size, name);  // the data: png_ended_where_cut
  }
}

// A TGA whose descriptor (byte 17) says its rows run right to left (bit 4): stb_image ignores the
// bit, Pillow mirrors the rows.
void mirror_rows(ImageU8& image) {
  for (int y = 0; y < image.height; ++y)
    for (int left = 0, right = image.width - 1; left < right; ++left, --right)
      std::swap_ranges(image.at(y, left), image.at(y, left) + 3, image.at(y, right));
}

// stb_image_write's output callback: appends what it encoded to a std::vector<uint8_t>.
void append_bytes(void* context, void* data, int size) {
  auto& buffer = *static_cast<std::vector<uint8_t>*>(context);
  const auto* bytes = static_cast<const uint8_t*>(data);
  buffer.insert(buffer.end(), bytes, bytes + size);
}

// A device or a named pipe (/dev/stdout, a FIFO read by another program) is written in place:
// renaming a file over it would replace it. A full disk often shows only at the flush or the close.
void write_special_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file) fail_file(path, std::string("cannot open for writing (") + std::strerror(errno) + ")");
  std::string reason;
  if (std::fwrite(bytes.data(), 1, bytes.size(), file) != bytes.size() || std::fflush(file) != 0)
    reason = std::strerror(errno);
  if (std::fclose(file) != 0 && reason.empty()) reason = std::strerror(errno);
  if (!reason.empty()) fail_file(path, "cannot write (" + reason + ")");
}

// Writes `bytes` to `path` whole or not at all (PendingFile), not synced: the thousands of images
// a dataset's generation writes would each wait for the disk. A symbolic link stays: the file it
// points to is replaced.
void write_file_whole(const std::string& path, const std::vector<uint8_t>& bytes) {
  namespace fs = std::filesystem;
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (fs::exists(status) && !fs::is_regular_file(status)) {
    write_special_file(path, bytes);
    return;
  }
  const fs::path resolved = fs::weakly_canonical(path, error);
  PendingFile file(error ? path : resolved.string());
  // PendingFile's errors name the file; write_png promises them as DataError, as its others.
  try {
    file.open();
    file.write(bytes.data(), bytes.size());
    file.commit(/*durable=*/false);
  } catch (const std::runtime_error& e) {
    throw DataError(e.what());
  }
}

// The width and height a PNG's header (its IHDR chunk, first) gives; false where it has none.
bool png_header_size(const uint8_t* bytes, size_t size, int& width, int& height) {
  if (size < 24 || std::memcmp(bytes + 12, "IHDR", 4) != 0) return false;
  width = static_cast<int>(std::min<uint32_t>(read_be32(bytes + 16), INT32_MAX));
  height = static_cast<int>(std::min<uint32_t>(read_be32(bytes + 20), INT32_MAX));
  return true;
}

// stb_image decodes a PNG's pixels when it meets the IEND chunk, and fails, giving no reason, on a
// file that ends before one; Pillow decodes them once its IDAT data holds every row, and reads no
// further (a download cut in its last bytes, an encoder that leaves IEND out). So a PNG that ends
// early is given an IEND where it ends, its last IDAT cut to the bytes there are: stb_image then
// decodes it where Pillow does, and where the data is short still fails. Empty for a PNG with its
// IEND.
std::vector<uint8_t> png_ended_where_cut(const uint8_t* bytes, size_t size) {
  size_t chunk = kPngSignatureBytes;
  while (chunk + 8 <= size && std::memcmp(bytes + chunk + 4, "IEND", 4) != 0 &&
         chunk + 12 + uint64_t{read_be32(bytes + chunk)} <= size)
    chunk += 12 + read_be32(bytes + chunk);
  if (chunk + 8 <= size && std::memcmp(bytes + chunk + 4, "IEND", 4) == 0) return {};
  std::vector<uint8_t> ended(bytes, bytes + chunk);
  if (chunk + 8 < size && std::memcmp(bytes + chunk + 4, "IDAT", 4) == 0) {
    const uint32_t kept =
        static_cast<uint32_t>(std::min<uint64_t>(read_be32(bytes + chunk), size - chunk - 8));
    const uint8_t length[4] = {static_cast<uint8_t>(kept >> 24), static_cast<uint8_t>(kept >> 16),
                               static_cast<uint8_t>(kept >> 8), static_cast<uint8_t>(kept)};
    ended.insert(ended.end(), length, length + 4);
    ended.insert(ended.end(), bytes + chunk + 4, bytes + chunk + 8 + kept);
    ended.insert(ended.end(), 4, 0);  // its CRC, which stb_image does not check
  }
  const uint8_t kIend[] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xAE, 0x42, 0x60, 0x82};
  ended.insert(ended.end(), kIend, kIend + sizeof kIend);
  return ended;
}

// A binary PNM's pixels as Pillow's open and convert("RGB") leave them, or DataError for one cut
// short (Pillow: "image file is truncated") or with a largest value of 0. Each sample v
// becomes round(v / max_value * top), half to even as Python's round, at most top: top is 255,
// except for a P5 of 16 bits, which Pillow opens as 32-bit integers (top 65535) and convert("RGB")
// then clips at 255, so all but its darkest values turn white. (stb_image does not scale by the
// largest value, and its 2.27, Debian 12's, reads a P5 of 16 bits past the end of its buffer:
// CVE-2021-42716.)
ImageU8 decode_binary_pnm(const uint8_t* bytes, size_t size, const std::string& name) {
  const PnmHeader header = read_pnm_header(bytes, size, name);
  if (header.max_value == 0 || header.max_value > 65535)
    fail_file(name, "corrupt PNM header (largest sample value " + std::to_string(header.max_value) +
                        ", where PNM allows 1 to 65535)");
  refuse_too_large(name, static_cast<int64_t>(header.width), static_cast<int64_t>(header.height));
  const uint64_t needed =
      header.pixel_offset + header.width * header.height * header.channels * header.sample_bytes;
  if (needed > size) fail_truncated(name, "PNM", needed, size);
  const double top = header.channels == 1 && header.sample_bytes == 2 ? 65535.0 : 255.0;
  ImageU8 image;
  image.height = static_cast<int>(header.height);
  image.width = static_cast<int>(header.width);
  const size_t pixels = header.width * header.height;
  image.pixels.resize(pixels * 3);
  const uint8_t* sample = bytes + header.pixel_offset;
  for (size_t p = 0; p < pixels; ++p)
    for (uint64_t c = 0; c < header.channels; ++c, sample += header.sample_bytes) {
      const uint32_t v = header.sample_bytes == 2 ? uint32_t{sample[0]} << 8 | sample[1] : *sample;
      const double scaled = std::min(top, std::nearbyint(double(v) / header.max_value * top));
      const auto value = static_cast<uint8_t>(std::min(scaled, 255.0));
      if (header.channels == 3) {
        image.pixels[3 * p + c] = value;
      } else {
        std::fill_n(&image.pixels[3 * p], 3, value);
      }
    }
  return image;
}

}  // namespace

ImageU8 decode_image_memory(const uint8_t* bytes, size_t size, const std::string& name) {
  if (size == 0) fail_file(name, "empty file (0 bytes)");
  if (size > static_cast<size_t>(INT32_MAX)) fail_file(name, kLargerThan2GiB);
  if (is_jpeg(bytes, size))
    return decode_jpeg(bytes, size, name,
                       [&](int width, int height) { refuse_too_large(name, width, height); });
  if (size >= 2 && (std::memcmp(bytes, "P5", 2) == 0 || std::memcmp(bytes, "P6", 2) == 0))
    return decode_binary_pnm(bytes, size, name);
  const int length = static_cast<int>(size);

  int width = 0, height = 0, channels = 0;
  const StbFormat format = stb_format(bytes, size);
  const bool png = format == StbFormat::kPng, gif = format == StbFormat::kGif,
             psd = format == StbFormat::kPsd;
  if (!stbi_info_from_memory(bytes, length, &width, &height, &channels)) {
    // stb_image refuses a PNG of over 2^30 bytes of pixels as if its header were corrupt.
    if (png && png_header_size(bytes, size, width, height)) refuse_too_large(name, width, height);
    fail_file(name, std::string(png ? "truncated or corrupt PNG header"
                                    : "not an image format deit reads") +
                        " (stb_image: " + stb_reason() + ")");
  }
  // A BMP stored top-down says so by a negative height, which stbi_info passes on as it is (its
  // decoder reads the magnitude): such a file was refused as "dimensions 5x-6".
  if (format == StbFormat::kBmp && height < 0 && height != INT32_MIN) height = -height;
  refuse_too_large(name, width, height);
  check_complete(bytes, size, format, name);
  // What stb_image decodes: the file, or a copy changed to decode as Pillow does.
  const GifFirstImage first_gif_image = gif ? find_first_gif_image(bytes, size) : GifFirstImage{};
  std::vector<uint8_t> changed;
  if (png) changed = png_ended_where_cut(bytes, size);
  if (gif) changed = gif_without_transparency(bytes, size, first_gif_image);
  if (psd) changed = psd_without_alpha(bytes, size);
  if (changed.size() > static_cast<size_t>(INT32_MAX)) fail_file(name, kLargerThan2GiB);

  // Asking for 3 channels makes stb expand grayscale and drop alpha, as Pillow's convert("RGB").
  std::unique_ptr<uint8_t, void (*)(void*)> decoded(
      changed.empty() ? stbi_load_from_memory(bytes, length, &width, &height, &channels, 3)
                      : stbi_load_from_memory(changed.data(), static_cast<int>(changed.size()),
                                              &width, &height, &channels, 3),
      stbi_image_free);
  if (!decoded && png && !changed.empty())
    fail_file(name, std::string("truncated PNG (it ends before its image data is complete; "
                                "stb_image: ") +
                        stb_reason() + ")");
  if (!decoded)
    fail_file(name, std::string("corrupt or truncated (stb_image: ") + stb_reason() + ")");

  ImageU8 image;
  image.height = height;
  image.width = width;
  image.pixels.assign(decoded.get(), decoded.get() + static_cast<size_t>(width) * height * 3);
  if (gif && first_gif_image.descriptor != 0)
    paint_around_first_gif_image(bytes, size, first_gif_image, image);
  if (format == StbFormat::kTga && (bytes[17] & 0x10)) mirror_rows(image);
  return image;
}

ImageU8 decode_image_file(const std::string& path) {
  // Opening a named pipe would wait for a writer, for ever: only regular files (links followed).
  std::error_code error;
  const std::filesystem::file_status status = std::filesystem::status(path, error);
  if (!error && !std::filesystem::is_regular_file(status)) fail_file(path, "not a regular file");
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) fail_file(path, std::string("cannot open (") + std::strerror(errno) + ")");
  const std::streamoff size = file.tellg();
  if (size < 0) fail_file(path, "cannot determine the file size");
  // Before its bytes are read: a file larger than memory would end the process.
  if (size > INT32_MAX) fail_file(path, kLargerThan2GiB);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  file.seekg(0);
  if (size > 0 && !file.read(reinterpret_cast<char*>(bytes.data()), size)) {
    fail_file(path, "read error");
  }
  return decode_image_memory(bytes.data(), bytes.size(), path);
}

ImageU8 decode_image_file_or_pipe(const std::string& path) {
  std::FILE* stream = stdin;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> opened(nullptr, std::fclose);
  if (path != "-") {
    std::error_code error;
    const std::filesystem::file_type type = std::filesystem::status(path, error).type();
    // Not a device such as /dev/zero either, which would be read up to the 2 GiB limit.
    if (error || type != std::filesystem::file_type::fifo) return decode_image_file(path);
    opened.reset(std::fopen(path.c_str(), "rb"));
    if (!opened) fail_file(path, std::string("cannot open (") + std::strerror(errno) + ")");
    stream = opened.get();
  }
  const std::string name = path == "-" ? "standard input" : path;
  // A pipe's size is known only at its end: read in chunks, up to the limit a file has.
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> chunk(size_t{1} << 20);
  while (const size_t got = std::fread(chunk.data(), 1, chunk.size(), stream)) {
    if (bytes.size() + got > static_cast<size_t>(INT32_MAX)) fail_file(name, kLargerThan2GiB);
    bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(got));
  }
  if (std::ferror(stream))
    fail_file(name, std::string("read error (") + std::strerror(errno) + ")");
  return decode_image_memory(bytes.data(), bytes.size(), name);
}

void write_png(const std::string& path, const ImageU8& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3) {
    fail_file(path, "cannot write an empty or inconsistent image (" + std::to_string(image.width) +
                        "x" + std::to_string(image.height) + ", " +
                        std::to_string(image.pixels.size()) + " bytes)");
  }
  // Within these limits stb_image_write's buffer, (3 x width + 1) x height bytes, fits its int.
  if (!within_image_limits(image.width, image.height))
    fail_file(path, "cannot write a " + std::to_string(image.width) + "x" +
                        std::to_string(image.height) + " image: deit writes images of " +
                        image_limits_text() + ", as it reads");
  std::vector<uint8_t> png;
  if (!stbi_write_png_to_func(append_bytes, &png, image.width, image.height, 3, image.pixels.data(),
                              image.width * 3)) {
    fail_file(path, "cannot encode PNG (stb_image_write ran out of memory)");
  }
  write_file_whole(path, png);
}

}  // namespace deit::data
