// JPEG decoding with libjpeg-turbo, as the reference's loader decodes: torchvision's
// ImageFolder opens each image with Pillow (PIL.Image.open(path).convert("RGB")), which runs
// libjpeg with its defaults, the accurate integer IDCT and fancy upsampling. deit asks libjpeg
// for the same, so its pixels are Pillow's bit for bit (tests/data/jpeg, written by
// scripts/make_jpeg_reference.py). stb_image, which decodes deit's other formats, has its own
// IDCT and upsampling: a 4:2:0 JPEG came out up to 3 levels off in 6% of its values, and it
// decoded 1.3x to 2.5x slower (bench/results/2026-12-05-cpu-jpeg-decoding.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "data/image.h"

namespace deit::data {

// Whether `bytes` begin as a JPEG does (its start-of-image marker, FF D8).
bool is_jpeg(const uint8_t* bytes, size_t size);

// Decodes the JPEG in `bytes` to RGB: grayscale repeated over the three channels, CMYK and YCCK
// converted as Pillow converts them. `check_dimensions(width, height)` sees the header's size
// before any pixel is decoded, and throws to refuse it. Throws DataError naming `name` for a
// corrupt or truncated file, and for one libjpeg does not decode (12-bit, lossless, 2 components).
ImageU8 decode_jpeg(const uint8_t* bytes, size_t size, const std::string& name,
                    const std::function<void(int width, int height)>& check_dimensions);

}  // namespace deit::data
