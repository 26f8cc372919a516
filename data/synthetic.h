// The synthetic dataset `deit demo` trains on and the tests read: small PNG images of ten classes
// that differ in shape or texture, never in colour alone (3-Augment's grayscale removes colour):
//
//   checkerboard  concentric_rings  diagonal_lines  disc  dots  grid  horizontal_stripes  rays
//   ring  vertical_stripes
//
// Shapes (disc, ring) and radial patterns (concentric rings, rays) are drawn around the figure's
// centre; the other textures fill a disc or a square patch, so the patch's outline says nothing
// and only its texture tells the class. Nothing tells a class apart that a horizontal flip changes
// (diagonal lines lean either way). Every image draws its own position, size, rotation, period,
// foreground and background colours (the figure the lighter, by at least 60 levels of luma, so
// grayscale keeps it), background gradient and pixel noise, and is rendered with 2x2
// supersampling. The classes are chosen so that a tiny ViT learns them in minutes on a CPU
// through the whole recipe's augmentation: texture periods survive a blur of sigma 2 pixels at
// 64 px, and figures cover a good part of the image.
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
  int train_per_class = 500;
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

// Why DIR is not the complete dataset that generate_synthetic_dataset makes with these options
// ("it has no synthetic.json", "it was made with other settings", a file missing or one too many),
// or "" when it is. Files are checked by name and count, not decoded.
std::string synthetic_dataset_difference(const std::string& dir, const SyntheticOptions& options);

// The first file or folder under DIR that generate_synthetic_dataset, with any options, does not
// make (its synthetic.json, train/ and val/, their class folders and <class>_NNNNN.png files), or
// "" when there is none: whether a dataset of other settings may be removed to be made again
// without taking a file of someone else's with it.
std::string first_file_not_synthetic(const std::string& dir);

}  // namespace deit::data
