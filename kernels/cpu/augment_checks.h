// What the two files of the augment family's CPU twin (kernels/cpu/augment.cpp and
// kernels/cpu/rand_augment.cpp) share: the size of an image and the argument checks' errors
// (internal to kernels/cpu/).
#pragma once
#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "kernels/augment.h"

namespace deit::kernels::augment_checks {

// The number of uint8 values in an (h, w, 3) image.
inline size_t values(int h, int w) { return static_cast<size_t>(h) * w * 3; }

// Every argument check of the family throws this, its message naming the op and the value.
[[noreturn]] inline void invalid(const std::string& what) {
  throw std::invalid_argument("augment: " + what);
}

// An ImageEnhance factor (brightness, contrast, saturation / colour, sharpness): 0 gives the
// degenerate image, 1 the image itself, more extrapolates away from the degenerate one.
inline void check_factor(const char* what, float factor) {
  if (!(factor >= 0.0f) || !std::isfinite(factor))
    invalid(std::string(what) + " factor must be a finite number >= 0, got " + number_text(factor));
}

}  // namespace deit::kernels::augment_checks
