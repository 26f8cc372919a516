#include "data/jpeg_decode.h"

// jpeglib.h needs FILE and size_t declared before it.
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include <jpeglib.h>

#include "data/file_error.h"

namespace deit::data {
namespace {

// The offset of the first marker at or after `from` in a JPEG's entropy-coded data: there 0xFF is
// always followed by 0x00 (a stuffed byte), a restart marker (D0 to D7) or another 0xFF (fill).
// `size` when the data runs to the end of the file.
size_t next_marker_in_scan(const uint8_t* bytes, size_t size, size_t from) {
  for (size_t i = from; i + 1 < size; ++i) {
    const void* found = std::memchr(bytes + i, 0xFF, size - 1 - i);
    if (!found) break;
    i = static_cast<size_t>(static_cast<const uint8_t*>(found) - bytes);
    const uint8_t next = bytes[i + 1];
    if (next != 0x00 && next != 0xFF && (next < 0xD0 || next > 0xD7)) return i;
  }
  return size;
}

// libjpeg decodes a truncated JPEG with a warning only (the missing scan data comes out grey), as
// Pillow would not. So the file's segments are walked from its start, through each scan's
// entropy-coded data, to its end-of-image marker (FF D9): a file that ends first is truncated.
// What follows that marker is not the image's (phones append a video to "motion photos", cameras
// their own trailers) and is ignored, as decoders ignore it.
void check_jpeg_complete(const uint8_t* bytes, size_t size, const std::string& name) {
  size_t i = 2;  // past the start-of-image marker
  while (i + 1 < size) {
    if (bytes[i] != 0xFF) {  // stray bytes before a marker: decoders skip them, and so does this
      ++i;
      continue;
    }
    const uint8_t marker = bytes[i + 1];
    if (marker == 0xD9) return;  // end of image
    if (marker == 0xFF || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      i += marker == 0xFF ? 1 : 2;  // fill byte, or a marker without a length
      continue;
    }
    if (i + 4 > size) break;
    const size_t length = size_t{bytes[i + 2]} << 8 | bytes[i + 3];  // counts its own 2 bytes
    i += 2 + length;
    if (marker == 0xDA) i = next_marker_in_scan(bytes, size, i);
  }
  fail_file(name, "truncated JPEG (it ends before its end-of-image marker)");
}

// libjpeg's state for one image. A fatal error in libjpeg calls error_exit, which must not return:
// it jumps back into run_libjpeg with the error's text kept here.
struct Decompressor {
  jpeg_decompress_struct info{};  // zeroed: destroying it before jpeg_create_decompress is safe
  jpeg_error_mgr errors{};
  std::jmp_buf on_error{};
  char message[JMSG_LENGTH_MAX] = "";

  Decompressor() {
    info.err = jpeg_std_error(&errors);
    info.client_data = this;
    errors.error_exit = [](j_common_ptr common) {
      auto* self = static_cast<Decompressor*>(common->client_data);
      common->err->format_message(common, self->message);
      std::longjmp(self->on_error, 1);
    };
    // Warnings (corrupt entropy data, which libjpeg recovers from as best it can) are not
    // printed: Pillow decodes such files silently too.
    errors.output_message = [](j_common_ptr) {};
  }
  ~Decompressor() { jpeg_destroy_decompress(&info); }
  Decompressor(const Decompressor&) = delete;
  Decompressor& operator=(const Decompressor&) = delete;
};

// Runs `calls` (libjpeg calls and plain stores, nothing with a destructor: the jump out of a
// fatal error skips their frames), and returns false, with the error in `d.message`, where libjpeg
// failed.
template <typename Calls>
bool run_libjpeg(Decompressor& d, const Calls& calls) {
  if (setjmp(d.on_error)) return false;
  calls();
  return true;
}

// Pillow's CMYK to RGB (its "CMYK;I" unpacking, which inverts the Adobe convention that JPEG
// files keep, then its cmyk2rgb): each channel is the white left by its ink and the black,
// n - c n / 255 with n = 255 - k, in Pillow's rounding.
void cmyk_to_rgb_as_pillow(const uint8_t* cmyk, uint8_t* rgb, size_t pixels) {
  auto times_over_255 = [](int a, int b) {  // a b / 255 rounded, as Pillow's MULDIV255
    const int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
  };
  for (size_t p = 0; p < pixels; ++p, cmyk += 4, rgb += 3) {
    const int white = cmyk[3];  // 255 - k, k being the inverted stored value
    for (int c = 0; c < 3; ++c)
      rgb[c] = static_cast<uint8_t>(white - times_over_255(255 - cmyk[c], white));
  }
}

}  // namespace

bool is_jpeg(const uint8_t* bytes, size_t size) {
  return size >= 2 && bytes[0] == 0xFF && bytes[1] == 0xD8;
}

ImageU8 decode_jpeg(const uint8_t* bytes, size_t size, const std::string& name,
                    const std::function<void(int width, int height)>& check_dimensions) {
  Decompressor d;
  jpeg_decompress_struct& info = d.info;
  const bool header_read = run_libjpeg(d, [&] {
    jpeg_create_decompress(&info);
    jpeg_mem_src(&info, bytes, static_cast<unsigned long>(size));
    jpeg_read_header(&info, TRUE);
  });
  if (!header_read)
    fail_file(name, std::string("truncated or corrupt JPEG header (libjpeg: ") + d.message + ")");
  // JPEG's sizes are 16-bit.
  check_dimensions(static_cast<int>(info.image_width), static_cast<int>(info.image_height));
  check_jpeg_complete(bytes, size, name);

  // libjpeg turns grayscale, YCbCr and RGB files into RGB itself, but not CMYK or YCCK.
  const bool cmyk = info.num_components == 4;
  info.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  const size_t width = info.image_width, height = info.image_height;  // no scaling: output's too
  const size_t channels = cmyk ? 4 : 3;
  std::vector<uint8_t> decoded(width * height * channels);
  const bool pixels_read = run_libjpeg(d, [&] {
    jpeg_start_decompress(&info);
    while (info.output_scanline < info.output_height) {
      JSAMPROW row = decoded.data() + size_t{info.output_scanline} * width * channels;
      jpeg_read_scanlines(&info, &row, 1);
    }
    jpeg_finish_decompress(&info);
  });
  if (!pixels_read) fail_file(name, std::string("cannot decode JPEG (libjpeg: ") + d.message + ")");

  ImageU8 image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  if (cmyk) {
    image.pixels.resize(width * height * 3);
    cmyk_to_rgb_as_pillow(decoded.data(), image.pixels.data(), width * height);
  } else {
    image.pixels = std::move(decoded);
  }
  return image;
}

}  // namespace deit::data
