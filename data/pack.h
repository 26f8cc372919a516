// Packing an image folder into a shard file (`deit pack`): decode every image on all cores, shrink
// it so its shorter side is `short_side` (torchvision's Resize(N), Pillow bicubic), and write the
// pixels with data/shard.h.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "data/image_source.h"

namespace deit::data {

struct PackOptions {
  // Images whose shorter side is longer are shrunk to it; smaller images are stored as they are
  // (enlarging them would only cost space: the augmentation resamples anyway). 0 keeps every size.
  int short_side = 256;
  int threads = 0;  // 0: all cores
};

struct PackSummary {
  uint64_t images = 0;   // records written
  uint64_t skipped = 0;  // unusable files, each warned about on stderr
  uint64_t bytes = 0;    // size of the shard file
};

// Called after each chunk of images with the number of images handled so far and the total.
using PackProgress = std::function<void(uint64_t done, uint64_t total)>;

// Packs the image folder `src` (src/<class>/<images>) into the shard file `out`, making the
// folder `out` goes in when missing. Throws DataError when `src` is not a usable image folder,
// when none of its images can be decoded, or when `out` cannot be written (then no file is left
// at `out`). Warns on stderr of each class that ends with no record.
PackSummary pack_image_folder(const std::string& src, const std::string& out,
                              const PackOptions& options, const PackProgress& progress = {});

// What pack_image_folder does once the folder is listed: packs every image of `source` (`name`
// says where it is, in messages) into `out`, whose folder must exist. An image that throws
// DataError is skipped; any other exception from loading or resizing one (out of memory) stops
// the pack with an error naming the image, and no file is left at `out`.
PackSummary pack_image_source(const ImageSource& source, const std::string& name,
                              const std::string& out, const PackOptions& options,
                              const PackProgress& progress = {});

}  // namespace deit::data
