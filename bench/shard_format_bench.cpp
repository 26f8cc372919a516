// Measures, on one core, what a shard record costs to read in each candidate format, against
// decoding the original files: the measurement behind the raw-pixel choice in data/shard.h.
//
//   shard_format_bench SRC_FOLDER [SHORT_SIDE=256] [SECONDS_PER_METHOD=3]
//
// SRC_FOLDER is an image folder (SRC/<class>/<images>). The files are read into memory first, so
// the numbers are decode (or copy) rates, not disk rates. The shard repeats the folder's images
// until it holds at least 256 MiB, so its reads come from the page cache but never from the CPU
// caches, as they would not on a real dataset.
#include <stb_image_write.h>
#include <time.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "data/image_folder.h"
#include "data/shard.h"
#include "data/transforms.h"

namespace {

using namespace deit::data;

constexpr double kMinShardBytes = 256.0 * 1024 * 1024;
using Bytes = std::vector<uint8_t>;

struct Rate {
  double images_per_second;
  double megapixels_per_second;
};

// This thread's CPU time: the rates are per core even when other processes share the machine.
double thread_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return now.tv_sec + now.tv_nsec * 1e-9;
}

// Runs `read(i)` over the images round-robin for at least `seconds` of CPU time; read returns the
// pixels it produced.
Rate measure(size_t count, double seconds, const std::function<size_t(size_t)>& read) {
  const double start = thread_cpu_seconds();
  size_t images = 0, pixels = 0;
  double elapsed = 0;
  do {
    pixels += read(images % count);
    ++images;
    elapsed = thread_cpu_seconds() - start;
  } while (elapsed < seconds || images < count);
  return {images / elapsed, pixels / elapsed / 1e6};
}

Bytes read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

Bytes encode(const ImageU8& image, bool jpeg) {
  Bytes out;
  auto append = [](void* context, void* data, int size) {
    auto* bytes = static_cast<Bytes*>(context);
    bytes->insert(bytes->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
  };
  if (jpeg) {
    stbi_write_jpg_to_func(append, &out, image.width, image.height, 3, image.pixels.data(), 90);
  } else {
    stbi_write_png_to_func(append, &out, image.width, image.height, 3, image.pixels.data(),
                           image.width * 3);
  }
  return out;
}

double mean_size(const std::vector<Bytes>& files) {
  double total = 0;
  for (const Bytes& file : files) total += file.size();
  return total / files.size();
}

void report(const char* method, const Rate& rate, double bytes_per_image, double baseline) {
  std::printf("| %-38s | %9.0f | %8.1f | %9.1f | %6.1fx |\n", method, rate.images_per_second,
              rate.megapixels_per_second, bytes_per_image / 1024.0,
              rate.images_per_second / baseline);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s SRC_FOLDER [SHORT_SIDE=256] [SECONDS_PER_METHOD=3]\n", argv[0]);
    return 2;
  }
  const int short_side = argc > 2 ? std::atoi(argv[2]) : 256;
  const double seconds = argc > 3 ? std::atof(argv[3]) : 3.0;

  const ImageFolder folder(argv[1]);
  std::vector<Bytes> originals;
  std::vector<ImageU8> resized;
  for (size_t i = 0; i < folder.size(); ++i) {
    originals.push_back(read_file(folder.describe(i)));
    resized.push_back(resize_shorter_side(folder.load(i), short_side));
  }
  std::vector<Bytes> jpegs, pngs;
  for (const ImageU8& image : resized) {
    jpegs.push_back(encode(image, true));
    pngs.push_back(encode(image, false));
  }
  const std::string shard_path =
      (std::filesystem::temp_directory_path() / "shard_format_bench.shard").string();
  const size_t n = folder.size();
  double resized_bytes = 0;
  for (const ImageU8& image : resized) resized_bytes += image.pixels.size();
  const size_t copies = static_cast<size_t>(std::ceil(kMinShardBytes / resized_bytes));
  {
    ShardWriter writer(shard_path, folder.class_names(), n * copies, short_side);
    for (size_t copy = 0; copy < copies; ++copy) {
      for (size_t i = 0; i < n; ++i) writer.add(resized[i], folder.label(i));
    }
    writer.finish();
  }
  const ShardReader shard(shard_path);
  auto decode = [](const std::vector<Bytes>& files) {
    return [&files](size_t i) {
      const ImageU8 image = decode_image_memory(files[i].data(), files[i].size(), "bench");
      return static_cast<size_t>(image.width) * image.height;
    };
  };

  const Rate original = measure(n, seconds, decode(originals));
  const Rate raw = measure(shard.size(), seconds, [&](size_t i) {
    const ImageU8 image = shard.load(i);
    return static_cast<size_t>(image.width) * image.height;
  });
  const Rate jpeg = measure(n, seconds, decode(jpegs));
  const Rate png = measure(n, seconds, decode(pngs));

  const std::string resized_label = "shorter side " + std::to_string(short_side);
  std::printf("%zu images from %s (the shard: %zu records), one thread, rates per CPU-second\n\n",
              n, argv[1], shard.size());
  std::printf("| %-38s | %9s | %8s | %9s | %7s |\n", "method", "images/s", "MP/s", "KiB/image",
              "speedup");
  std::printf("|%s|%s|%s|%s|%s|\n", std::string(40, '-').c_str(), std::string(11, '-').c_str(),
              std::string(10, '-').c_str(), std::string(11, '-').c_str(),
              std::string(9, '-').c_str());
  report("decode original files", original, mean_size(originals), original.images_per_second);
  report(("raw shard record, " + resized_label).c_str(), raw,
         static_cast<double>(std::filesystem::file_size(shard_path)) / shard.size(),
         original.images_per_second);
  report(("JPEG q90 re-encoded, " + resized_label).c_str(), jpeg, mean_size(jpegs),
         original.images_per_second);
  report(("PNG re-encoded, " + resized_label).c_str(), png, mean_size(pngs),
         original.images_per_second);
  std::filesystem::remove(shard_path);
  return 0;
}
