// The synthetic dataset `deit demo` trains on and the tests read: small PNG images of ten classes
// that differ in shape or texture, never in colour alone (3-Augment's grayscale removes colour):
//
//   checkerboard  circle  cross  diagonal_lines  dots  horizontal_stripes  ring  square  triangle
//   vertical_stripes
//
// Shapes (circle, ring, square, triangle, cross) are filled outlines; textures (stripes, diagonal
// lines, checkerboard, dots) fill a disc or a square patch, so the patch's outline says nothing and
// only its texture tells the class. Every image draws its own position, size, rotation, period,
// foreground and background colours (their luma at least 60 levels apart, so grayscale keeps the
// figure), background gradient and pixel noise, and is rendered with 2x2 supersampling.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/image.h"
#include "engine/rng.h"

namespace deit::data {

struct SyntheticOptions {
  uint64_t seed = 0;
  int image_size = 64;
  int train_per_class = 300;
  int val_per_class = 50;
  int num_classes = 10;  // the first num_classes of synthetic_class_names(), 2 to 10
};

// The class names in label order (sorted, as ImageFolder numbers them).
const std::vector<std::string>& synthetic_class_names();

// Draws one image of class `label` (an index into synthetic_class_names()).
ImageU8 render_synthetic_image(int label, int size, Rng& rng);

// Writes DIR/train/<class>/<class>_NNNNN.png, DIR/val/<class>/..., and DIR/synthetic.json (the
// options, so a caller can tell whether an existing dataset matches). The same options give the
// same files. The dataset is built in DIR.partial and renamed, so DIR is either complete or
// absent. Throws DataError when DIR already exists or cannot be written.
void generate_synthetic_dataset(const std::string& dir, const SyntheticOptions& options);

}  // namespace deit::data
