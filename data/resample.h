// Bicubic resampling of 8-bit RGB images, computed exactly as Pillow's
// Image.resize(size, Image.BICUBIC) computes it (Pillow 9.4, libImaging/Resample.c). The reference
// pipeline resizes PIL images through torchvision (Resize, RandomResizedCrop), so this is the
// resampling the published models were trained and evaluated with.
//
// What Pillow does, and therefore what this does:
// - Keys' cubic convolution kernel with a = -0.5, support 2 input pixels.
// - Antialiasing when shrinking: the kernel is stretched by the scale factor in/out (> 1), so every
//   input pixel under an output pixel contributes; when enlarging the kernel keeps its width.
// - Pixel centres at i + 0.5; taps that fall outside the image are dropped and the remaining
//   weights renormalised to sum to 1 (no edge padding).
// - Two separable passes, horizontal first, each with 22-bit fixed-point weights and rounding and
//   clamping to uint8 in between. A pass whose size does not change is skipped.
#pragma once
#include "data/image.h"

namespace deit::data {

// src: (H, W, 3) -> (out_height, out_width, 3).
ImageU8 resize_bicubic(const ImageU8& src, int out_height, int out_width);

}  // namespace deit::data
