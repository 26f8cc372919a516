#include "data/pack.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <vector>

#include "data/image_folder.h"
#include "data/image_source.h"
#include "data/shard.h"
#include "data/transforms.h"

namespace deit::data {

PackSummary pack_image_folder(const std::string& src, const std::string& out,
                              const PackOptions& options, const PackProgress& progress) {
  const ImageFolder folder(src);
  // A shard inside the folder would be written over one of its images, or packed next time.
  if (lies_within(out, src))
    throw DataError(out + ": lies inside the folder being packed (" + src + "); write the shard " +
                    "elsewhere");
  const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  const uint32_t short_side = static_cast<uint32_t>(std::max(options.short_side, 0));
  ShardWriter writer(out, folder.class_names(), folder.size(), short_side);
  SkippedImages skipped;
  PackSummary summary;

  // Decode a chunk in parallel, then append it in order: the shard's record order is the folder's.
  const size_t chunk = 32 * static_cast<size_t>(threads);
  std::vector<std::optional<ImageU8>> images(chunk);
  for (size_t first = 0; first < folder.size(); first += chunk) {
    const size_t count = std::min(chunk, folder.size() - first);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (size_t i = 0; i < count; ++i) {
      images[i].reset();
      try {
        ImageU8 image = folder.load(first + i);
        if (short_side > 0 && std::min(image.height, image.width) > static_cast<int>(short_side)) {
          image = resize_shorter_side(image, static_cast<int>(short_side));
        }
        images[i] = std::move(image);
      } catch (const DataError& error) {
        skipped.record(folder.describe(first + i), error.what());
      }
    }
    for (size_t i = 0; i < count; ++i) {
      if (!images[i]) continue;
      writer.add(*images[i], folder.label(first + i));
      ++summary.images;
    }
    if (progress) progress(first + count, folder.size());
  }

  summary.skipped = skipped.count();
  if (summary.images == 0) {
    throw DataError(src + ": none of its " + std::to_string(folder.size()) +
                    " image files could be decoded; no shard written");
  }
  summary.bytes = writer.finish();
  return summary;
}

}  // namespace deit::data
