// Whole samples of a batch moved by index (kernels/samples.h), so that a residual branch under
// drop-path runs on its kept samples alone (model/vit.cpp; the first block's input and the last
// block's output, the fused residual + LayerNorm kernels doing it in between): gather copies
// x[index[j]] to out[j]
// for the n kept samples, scatter copies y[slot[b]] to out[b] and writes zeros where slot[b] < 0,
// every element of out either way. The CPU twins (kernels/cpu/samples.cpp) are the same in loops.
//
// Byte-agnostic: a sample is sample_bytes bytes of any element type (the bf16 activations, the
// fp32 residual stream), copied in units of the widest of 16, 8, 4, 2 and 1 bytes that divides
// sample_bytes and both base addresses, so that every row starts aligned too: uint4 loads and
// stores for a ViT's activations (T C elements, C % 8 == 0, from the caching allocator), narrower
// units for odd sizes or addresses. Nothing is converted: the copy is exact. The input and output
// buffers must not overlap (the pointers are __restrict__).
//
// Launch shape: one grid-stride kernel per direction, templated on the unit, over (rows x units
// of a sample): blocks of 256 threads (fewer, in whole warps, for a sample of fewer than 256
// units) along a sample, grid.x = grid_for(units, threads) of them, and grid.y = min(rows, 65535)
// along the rows (gather: the n output rows; scatter: all B), both dimensions grid-strided. A
// thread reads its row's index or slot once per row (a word the whole block shares), then copies
// the units threadIdx.x + blockIdx.x * blockDim.x + k * gridDim.x * blockDim.x of that row;
// offsets are 64-bit, and no thread divides. deit3_base (a sample of 197 * 768 bf16, 18912 units
// of 16 bytes): 74 blocks a row, one unit a thread.
// Registers (ptxas -v, sm_90 and sm_80): 32 for every kernel and unit, held there by
// __launch_bounds__(256, 8) (2048 threads an SM, full occupancy; unbounded, ptxas takes 32 to 38,
// unrolling the copy loop) with no spills. No shared memory.
//
// Speed: not measured (no GPU in the session that wrote it). Gather reads and writes n
// sample_bytes; scatter reads n and writes B sample_bytes. For deit3_base (B = 256, T = 197,
// C = 768, bf16) a sample set is 77 MB: gathering or scattering all of them moves 155 MB, about
// 0.036 ms at the 4.28 TB/s (bytes read + written) of an H200's 1 GiB device-to-device copy
// (`deit bench kernels`, bench/results); at deit3_base's drop-path rate of 0.2 (about 205 of
// 256 samples kept), about 0.029 ms gathering and 0.033 ms scattering, if the kernels reach it.
//
// Files: this file holds the device code and the host side (argument checks, launches); the
// kernels run lane by lane on the host in the [gpu] tests of tests/test_kernels_cuda.cpp on the
// emulated device (tests/emulated/runtime, CTest entry gpu_tests_emulated_kernels).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/samples.h"

namespace deit::kernels {
namespace {

using gpu::kThreads;

constexpr int64_t kMaxGridRows = 65535;  // grid.y's limit; the rows loop strides past it
// Blocks of kThreads an SM is to hold: all 2048 threads, at most 32 registers a thread.
constexpr int kBlocksPerSm = 2048 / kThreads;

// out[j] = x[index[j]] for rows j < n of `units` units each.
template <typename Unit>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    gather_samples_kernel(const Unit* __restrict__ x, const int32_t* __restrict__ index,
                          Unit* __restrict__ out, int64_t n, int64_t units) {
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t j = blockIdx.y; j < n; j += gridDim.y) {
    const Unit* src = x + int64_t{index[j]} * units;
    Unit* dst = out + j * units;
    for (int64_t k = first; k < units; k += stride) dst[k] = src[k];
  }
}

// out[b] = y[slot[b]] where slot[b] >= 0, else zeros, for rows b < B of `units` units each.
template <typename Unit>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    scatter_samples_kernel(const Unit* __restrict__ y, const int32_t* __restrict__ slot,
                           Unit* __restrict__ out, int64_t B, int64_t units) {
  const int64_t first = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int32_t s = slot[b];
    Unit* dst = out + b * units;
    if (s >= 0) {
      const Unit* src = y + int64_t{s} * units;
      for (int64_t k = first; k < units; k += stride) dst[k] = src[k];
    } else {
      for (int64_t k = first; k < units; k += stride) dst[k] = Unit{};
    }
  }
}

// The widest unit (16, 8, 4, 2 or 1 bytes) that divides sample_bytes and both addresses.
int unit_bytes(int64_t sample_bytes, const void* a, const void* b) {
  const auto address = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  for (int w : {16, 8, 4, 2})
    if (sample_bytes % w == 0 && address(a) % w == 0 && address(b) % w == 0) return w;
  return 1;
}

// Calls f(Unit{}) with the unsigned type of `bytes` bytes (uint4 for 16).
template <typename F>
void with_unit(int bytes, F&& f) {
  switch (bytes) {
    case 16:
      return f(uint4{});
    case 8:
      return f(uint2{});
    case 4:
      return f(uint32_t{});
    case 2:
      return f(uint16_t{});
    default:
      return f(uint8_t{});
  }
}

struct CopyLaunch {
  dim3 grid;
  int threads;
};

// The launch over `rows` rows of `units` units (both >= 1): see the header.
CopyLaunch copy_launch(int64_t rows, int64_t units) {
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, gpu::ceil_div(units, 32) * 32));
  return {dim3(gpu::grid_for(units, threads), static_cast<unsigned>(std::min(rows, kMaxGridRows))),
          threads};
}

void check_pointer(const char* fn, const char* what, const void* p) {
  if (p == nullptr) throw std::invalid_argument(std::string(fn) + ": " + what + " is nullptr");
}

}  // namespace

void gather_samples_cuda(const void* x, const int32_t* index, void* out, int64_t n,
                         int64_t sample_bytes, cudaStream_t stream) {
  const char* fn = "gather_samples_cuda";
  gpu::check_sizes(fn, {n, sample_bytes});
  if (n == 0 || sample_bytes == 0) return;
  check_pointer(fn, "index", index);
  check_pointer(fn, "x", x);
  check_pointer(fn, "out", out);
  const int bytes = unit_bytes(sample_bytes, x, out);
  with_unit(bytes, [&](auto unit) {
    using Unit = decltype(unit);
    const int64_t units = sample_bytes / bytes;
    const CopyLaunch l = copy_launch(n, units);
    gather_samples_kernel<Unit><<<l.grid, l.threads, 0, stream>>>(
        static_cast<const Unit*>(x), index, static_cast<Unit*>(out), n, units);
    DEIT_CUDA_CHECK_LAUNCH();
  });
}

void scatter_samples_cuda(const void* y, const int32_t* slot, void* out, int64_t B,
                          int64_t sample_bytes, cudaStream_t stream) {
  const char* fn = "scatter_samples_cuda";
  gpu::check_sizes(fn, {B, sample_bytes});
  if (B == 0 || sample_bytes == 0) return;
  check_pointer(fn, "slot", slot);
  check_pointer(fn, "out", out);
  // y may be nullptr when no sample is kept (n = 0): every slot is then -1 and y is never read.
  const int bytes = unit_bytes(sample_bytes, y, out);
  with_unit(bytes, [&](auto unit) {
    using Unit = decltype(unit);
    const int64_t units = sample_bytes / bytes;
    const CopyLaunch l = copy_launch(B, units);
    scatter_samples_kernel<Unit><<<l.grid, l.threads, 0, stream>>>(
        static_cast<const Unit*>(y), slot, static_cast<Unit*>(out), B, units);
    DEIT_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace deit::kernels
