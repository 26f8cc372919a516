// Image decoding (data/image_io.cpp: libjpeg-turbo, deit's PNM decoder, stb_image for the rest):
// any bytes decode to a whole image or throw DataError, and nothing reads or writes out of bounds.
#include <cstddef>
#include <cstdint>

#include "data/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const deit::data::ImageU8 image = deit::data::decode_image_memory(data, size, "input");
    if (image.pixels.size() != static_cast<size_t>(image.width) * image.height * 3)
      __builtin_trap();
  } catch (const deit::data::DataError&) {
  }
  return 0;
}
