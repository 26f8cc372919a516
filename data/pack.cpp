#include "data/pack.h"

#include <omp.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <vector>

#include "data/image_folder.h"
#include "data/image_source.h"
#include "data/made_folder.h"
#include "data/shard.h"
#include "data/transforms.h"

namespace deit::data {

namespace {

// The first exception the decoding threads met that is not an unusable image (which is skipped):
// it may not leave its OpenMP thread, where it would end the process without a word, so it is
// kept, with the index of the image it came from, and thrown again from the calling thread.
class FirstFailure {
 public:
  // Called from a catch block: keeps the exception being handled, unless one is kept already.
  // Allocates nothing, so that nothing escapes the thread from here.
  void capture(size_t index) noexcept {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_) return;
    error_ = std::current_exception();
    index_ = index;
  }
  // Throws what was kept, naming its image of `source`.
  void throw_if_any(const ImageSource& source) const {
    if (!error_) return;
    std::string what;
    try {
      std::rethrow_exception(error_);
    } catch (const std::bad_alloc&) {
      what = "out of memory";
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "an unknown error";
    }
    throw std::runtime_error(source.describe(index_) + ": " + what +
                             " while packing it; no shard written");
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
  size_t index_ = 0;
};

}  // namespace

PackSummary pack_image_folder(const std::string& src, const std::string& out,
                              const PackOptions& options, const PackProgress& progress) {
  const ImageFolder folder(src);
  // A shard inside the folder would be written over one of its images, or packed next time.
  if (lies_within(out, src))
    throw DataError(out + ": lies inside the folder being packed (" + src + "); write the shard " +
                    "elsewhere");
  const MadeFolder made(std::filesystem::path(out).parent_path().string());
  return pack_image_source(folder, src, out, options, progress);
}

PackSummary pack_image_source(const ImageSource& source, const std::string& name,
                              const std::string& out, const PackOptions& options,
                              const PackProgress& progress) {
  const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  const uint32_t short_side = static_cast<uint32_t>(std::max(options.short_side, 0));
  ShardWriter writer(out, source.class_names(), source.size(), short_side);
  SkippedImages skipped;
  FirstFailure failure;
  PackSummary summary;
  std::vector<size_t> records_per_class(source.class_names().size(), 0);

  // Decode a chunk in parallel, then append it in order: the shard's record order is the source's.
  const size_t chunk = 32 * static_cast<size_t>(threads);
  std::vector<std::optional<ImageU8>> images(chunk);
  for (size_t first = 0; first < source.size(); first += chunk) {
    const size_t count = std::min(chunk, source.size() - first);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (size_t i = 0; i < count; ++i) {
      images[i].reset();
      try {
        try {
          ImageU8 image = source.load(first + i);
          if (short_side > 0 &&
              std::min(image.height, image.width) > static_cast<int>(short_side)) {
            image = resize_shorter_side(image, static_cast<int>(short_side));
          }
          images[i] = std::move(image);
        } catch (const DataError& error) {
          skipped.record(source.describe(first + i), error.what());
        }
      } catch (...) {  // recording a skipped image can fail too (out of memory)
        failure.capture(first + i);
      }
    }
    failure.throw_if_any(source);
    for (size_t i = 0; i < count; ++i) {
      if (!images[i]) continue;
      writer.add(*images[i], source.label(first + i));
      ++records_per_class[source.label(first + i)];
      ++summary.images;
    }
    if (progress) progress(first + count, source.size());
  }

  summary.skipped = skipped.count();
  if (summary.images == 0) {
    throw DataError(name + ": none of its " + std::to_string(source.size()) +
                    " image files could be decoded; no shard written");
  }
  warn_of_empty_classes(source.class_names(), records_per_class, out,
                        " (its folder holds no image file, or none could be decoded: see the "
                        "warnings above)");
  summary.bytes = writer.finish();
  return summary;
}

}  // namespace deit::data
