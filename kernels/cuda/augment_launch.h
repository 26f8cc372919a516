// Private to kernels/cuda/: the host arithmetic behind augment.cu's launches (block sizes, grids,
// the per-sample scratch plan, the work of the mixing kernels). Plain C++, so that the emulated
// test (tests/emulated/augment_emulated.cpp) launches the kernels of augment_kernels.cuh with the
// very shapes and scratch offsets the launchers use; augment_kernels.cuh includes it for the block
// sizes of its __launch_bounds__.
#pragma once
#include <cstdint>

#include "kernels/augment.h"
#include "kernels/augment_fused.h"
#include "kernels/cuda/launch_shape.h"

namespace deit::kernels {

constexpr int kTapThreads = 128;
constexpr int kResampleThreads = 256;
constexpr int kFinishThreads = 1024;

// plan_augment_cuda: checks every sample, gives each source its scratch_offset in the workspace,
// and returns the workspace's bytes.
inline int64_t plan_augment_scratch(SourceImage* sources, const AugmentParams* params,
                                    int64_t batch, int size) {
  int64_t bytes = 0;
  for (int64_t i = 0; i < batch; ++i) {
    check_augment_params(params[i], sources[i].height, sources[i].width, size);
    sources[i].scratch_offset = bytes;
    bytes += augment_fused::sample_scratch_bytes(sources[i], params[i], size);
  }
  return bytes;
}

// The x extents of augment_batch_cuda's grids for size x size views: taps_kernel runs on
// (taps, 2, batch) blocks, the two resample kernels on (resample, batch), finish_kernel and
// rand_augment_kernel on batch.
struct AugmentGrids {
  unsigned taps, resample;
};

inline AugmentGrids augment_grids(int size) {
  return {static_cast<unsigned>(gpu::ceil_div(size, kTapThreads)),
          gpu::grid_for(static_cast<int64_t>(size) * size, kResampleThreads)};
}

// The work items of mix_images_cuda's kernel (gpu::kThreads per block): pair x channel x box pixel
// for cutmix_kernel, pair x sample element for mixup_kernel; 0 when it launches nothing.
inline int64_t mix_images_work(const MixParams& p, int64_t batch, int channels, int height,
                               int width) {
  if (p.lambda == 1.0 || batch == 0) return 0;
  if (p.cutmix) return batch / 2 * channels * static_cast<int64_t>(p.y1 - p.y0) * (p.x1 - p.x0);
  return batch / 2 * (static_cast<int64_t>(channels) * height * width);
}

}  // namespace deit::kernels
