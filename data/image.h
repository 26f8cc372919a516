// An 8-bit RGB image in memory, the unit the data pipeline passes around before normalisation,
// and the file I/O around it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace deit::data {

struct ImageU8 {
  int height = 0;
  int width = 0;
  std::vector<uint8_t> pixels;  // (height, width, 3), RGB, row-major

  uint8_t* at(int y, int x) { return pixels.data() + (static_cast<size_t>(y) * width + x) * 3; }
  const uint8_t* at(int y, int x) const {
    return pixels.data() + (static_cast<size_t>(y) * width + x) * 3;
  }
};

// The largest image deit decodes or makes: 32768 pixels a side, and Pillow's decompression-bomb
// limit (twice Image.MAX_IMAGE_PIXELS, 89478485), past which Pillow, and so the reference code's
// loader, refuses an image. No dataset image is this big, so a file claiming more is taken for a
// corrupt header or a bomb, refused before its pixels are allocated, and an op asked for more is
// refused before it allocates.
inline constexpr int kMaxImageSide = 32768;
inline constexpr uint64_t kMaxImagePixels = 2 * uint64_t{89478485};
inline bool within_image_limits(int64_t width, int64_t height) {
  return width >= 0 && height >= 0 && width <= kMaxImageSide && height <= kMaxImageSide &&
         static_cast<uint64_t>(width) * static_cast<uint64_t>(height) <= kMaxImagePixels;
}
// The limits as the messages that refuse an image past them say: "up to 32768 pixels a side and
// 178956970 pixels".
inline std::string image_limits_text() {
  return "up to " + std::to_string(kMaxImageSide) + " pixels a side and " +
         std::to_string(kMaxImagePixels) + " pixels";
}

// A file that cannot be used as an image; the message names the file and the reason.
struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Decodes JPEG (libjpeg-turbo, data/jpeg_decode.h) and binary PNM (P5, P6) as Pillow does, and
// PNG, BMP, GIF, TGA and PSD with stb_image; grayscale, CMYK and alpha become RGB. Throws DataError
// naming `path` for a missing, empty, truncated, undecodable or absurdly large file.
ImageU8 decode_image_file(const std::string& path);
ImageU8 decode_image_memory(const uint8_t* bytes, size_t size, const std::string& name);
// decode_image_file, and also standard input ("-") and pipes (`--in <(curl -s URL)`), read to
// their end: for a command's one input image, where a writer is expected (a pipe among training
// images would stall the loader, so decode_image_file refuses one).
ImageU8 decode_image_file_or_pipe(const std::string& path);

// Writes a PNG whole or not at all (through a temporary file beside `path`, renamed over it once
// complete; a device such as /dev/stdout is written in place). Throws DataError naming `path` and
// the reason (e.g. "No space left on device") when it cannot, leaving no partial file behind.
// Refuses an image past within_image_limits: deit writes nothing it would not read back.
void write_png(const std::string& path, const ImageU8& image);

}  // namespace deit::data
