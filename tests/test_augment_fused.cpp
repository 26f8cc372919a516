// The GPU stage's fused crop (kernels/augment_fused.h) run on the host: the per-pixel steps that
// the CUDA kernels run one per thread are run here in plain loops, in launch order, in a scratch
// laid out as on the device (poisoned first), and the view they produce must be the CPU twin's
// crop then flip exactly. This checks the fusion's index mapping (crop box, resize, reflect
// padding, window, flip) and the scratch layout on machines without a GPU; the [gpu] tests
// (tests/test_augment_cuda.cpp) check the kernels themselves.
#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "data/augment_params.h"
#include "engine/rng.h"
#include "kernels/augment.h"
#include "kernels/augment_fused.h"

using namespace deit;
using namespace deit::kernels;
using namespace deit::kernels::augment_fused;

namespace {

// The view the three resampling launches leave in the scratch: (size, size, 3).
std::vector<uint8_t> fused_view(const std::vector<uint8_t>& pixels, const SourceImage& source,
                                const AugmentParams& p, int size) {
  std::vector<uint8_t> workspace(static_cast<size_t>(sample_scratch_bytes(source, p, size)), 0xFF);
  const SampleView v = sample_view(&source, &p, 0, size, workspace.data());
  for (int axis = 0; axis < 2; ++axis)
    for (int o = 0; o < size; ++o) compute_tap(v, size, axis, o);
  for (int64_t i = 0; i < static_cast<int64_t>(v.g.in_h) * size; ++i)
    resample_row_pixel(v, pixels.data(), size, i);
  for (int64_t i = 0; i < static_cast<int64_t>(size) * size; ++i) resample_column_pixel(v, size, i);
  const uint8_t* view = workspace.data() + v.l.image;
  return std::vector<uint8_t>(view, view + static_cast<size_t>(size) * size * 3);
}

std::vector<uint8_t> reference_view(const std::vector<uint8_t>& pixels, const SourceImage& source,
                                    const AugmentParams& p, int size) {
  std::vector<uint8_t> view(static_cast<size_t>(size) * size * 3), flipped(view.size());
  crop_view_cpu(pixels.data(), source.height, source.width, p.crop, view.data());
  if (!p.flip) return view;
  hflip_cpu(view.data(), size, size, flipped.data());
  return flipped;
}

}  // namespace

TEST_CASE("the GPU stage's fused crop, run on the host, is the CPU twin's crop and flip",
          "[augment]") {
  Rng rng(7101);
  struct Shape {
    int height, width, size;
  };
  // Shorter side 256 at 224 and 128; odd sizes; sources smaller than the view; elongated; tiny.
  const std::vector<Shape> shapes = {{256, 341, 224}, {341, 256, 128}, {97, 131, 61}, {20, 30, 64},
                                     {12, 700, 32},   {900, 9, 32},    {1, 50, 8},    {5, 5, 5}};
  for (const Shape& s : shapes) {
    SourceImage source;
    source.height = s.height;
    source.width = s.width;
    // The source sits after other bytes, as in a packed batch.
    source.offset = 37;
    std::vector<uint8_t> pixels(37 + static_cast<size_t>(s.height) * s.width * 3);
    for (uint8_t& v : pixels) v = static_cast<uint8_t>(rng.below(256));
    const std::vector<uint8_t> image(pixels.begin() + 37, pixels.end());
    SourceImage alone = source;
    alone.offset = 0;

    std::vector<AugmentParams> cases;
    for (CropMode mode : {CropMode::kRandomResized, CropMode::kSimpleRandom}) {
      data::AugmentConfig config;
      config.input_size = s.size;
      config.crop = mode;
      config.src_padding = s.size > 4 ? 4 : s.size - 1;
      for (int i = 0; i < 6; ++i) {
        AugmentParams p;
        p.crop = data::sample_crop_params(config, s.height, s.width, rng);
        p.flip = i % 2 == 1;
        cases.push_back(p);
      }
    }
    for (double ratio : {1.0, 0.875}) {
      cases.push_back(data::eval_augment_params(s.height, s.width, s.size, ratio));
      cases.back().flip = true;
    }
    for (const AugmentParams& p : cases) {
      INFO(s.height << "x" << s.width << " -> " << s.size << " mode "
                    << static_cast<int>(p.crop.mode) << " box " << p.crop.x << "," << p.crop.y
                    << "," << p.crop.w << "," << p.crop.h << " resized " << p.crop.resized_height
                    << "x" << p.crop.resized_width << " pad " << p.crop.padding << " flip "
                    << p.flip);
      check_augment_params(p, s.height, s.width, s.size);
      CHECK(fused_view(pixels, source, p, s.size) == reference_view(image, alone, p, s.size));
    }
  }
}

TEST_CASE("every bicubic window fits the scratch's taps stride", "[augment]") {
  for (int in : {1, 2, 3, 7, 100, 224, 255, 256, 257, 999, 4000})
    for (int out : {1, 2, 5, 61, 128, 224, 500}) {
      const int bound = augment_arith::resample_max_taps(in, out);
      for (int o = 0; o < out; ++o) {
        const augment_arith::ResampleWindow w = augment_arith::resample_window(in, out, o);
        INFO("in " << in << " out " << out << " o " << o);
        CHECK(w.first >= 0);
        CHECK(w.count >= 1);
        CHECK(w.first + w.count <= in);
        CHECK(w.count <= bound);
      }
    }
}
