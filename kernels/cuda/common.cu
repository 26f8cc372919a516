// The host side of kernels/cuda/common.cuh and the reduction kernels the families share:
//  - column_partials: per-chunk column sums of a bf16 matrix, row_chunks' blocks of
//    row_threads(C) threads, each thread summing 8 columns over its chunk's rows in order;
//  - sum_partials: adds per-chunk column partials (chunks, C) into (C). Launch: blocks of 8 columns
//    x L chunk lanes (L = partial_lanes(chunks): 128, or for fewer than 256 chunks the power of 2
//    that holds them two to a lane), ceil(C / 8) blocks a set (sum_partial_sets: several sets side
//    by side in the grid's y); lane y sums chunks y, y + L, ... in order, then a fixed
//    shared-memory tree adds the L lanes.
//  - sum_to_scalar: one block of 1024 threads, strided sums then block_sum.
// Measured speed: not timed alone (the reductions run inside the optimizer's and the bias
// gradients' measured times).
//
// Files: the device code is kernels/cuda/common_kernels.cuh; this file is the host side (argument
// checks, launches). The kernels also run, lane by lane on the host, in the CTest entry
// ops_emulated (tests/emulated/ops_emulated.cpp), which checks them against the CPU twins without a
// GPU; its launches mirror the ones below, so change them together.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/layernorm.h"
// The device code, after what it uses.
#include "kernels/cuda/common_kernels.cuh"

namespace deit::kernels::gpu {

void check_sizes(const char* fn, std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes)
    if (s < 0)
      throw std::invalid_argument(std::string(fn) + ": negative size " + std::to_string(s));
}

static_assert(kMaxRowWidth == kLayerNormCudaMaxWidth, "kernels/layernorm.h states the row limit");

void check_row_width(const char* fn, int64_t C) {
  if (C > kMaxRowWidth)
    throw std::invalid_argument(std::string(fn) + ": rows of " + std::to_string(C) +
                                " elements; the CUDA kernel handles at most " +
                                std::to_string(kMaxRowWidth));
}

void check_aligned_16(const char* fn, const char* what, const void* p) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0)
    throw std::invalid_argument(std::string(fn) + ": " + what + " must be 16-byte aligned");
}

void check_attention_args(const char* fn, std::initializer_list<const void*> bf16_buffers,
                          int64_t B, int64_t Tn, int64_t H, int64_t D) {
  check_sizes(fn, {B, Tn, H, D});
  if (!attention_cuda_supports_head_dim(D))
    throw std::invalid_argument(std::string(fn) + ": head dim " + std::to_string(D) +
                                " not supported (32, 64, 80 or 128)");
  for (const void* p : bf16_buffers) check_aligned_16(fn, "bf16 buffers", p);
}

void check_workspace(const char* fn, const float* workspace, bool needed) {
  if (needed && !workspace) throw std::invalid_argument(std::string(fn) + ": workspace is nullptr");
}

void column_partials(const bf16* m, int64_t rows, int64_t C, int64_t ld, float* partials,
                     const RowChunks& part, cudaStream_t stream) {
  if (part.chunks == 0 || C <= 0) return;
  const auto grid = static_cast<unsigned>(part.chunks);
  const int threads = row_threads(C);
  if (C % kVec == 0 && ld % kVec == 0 && aligned16(m, partials))
    column_partials_kernel<kVec>
        <<<grid, threads, 0, stream>>>(m, partials, rows, C, ld, part.rows_per_chunk);
  else
    column_partials_kernel<1>
        <<<grid, threads, 0, stream>>>(m, partials, rows, C, ld, part.rows_per_chunk);
  DEIT_CUDA_CHECK_LAUNCH();
}

void sum_partials(const float* partials, int64_t chunks, int64_t C, float* out,
                  cudaStream_t stream) {
  PartialSets set;
  set.add(partials, out);
  sum_partial_sets(set, chunks, C, stream);
}

void sum_partial_sets(const PartialSets& sets, int64_t chunks, int64_t C, cudaStream_t stream) {
  if (C <= 0 || sets.count == 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(C, kPartialCols)), sets.count);
  const dim3 block(kPartialCols, partial_lanes(chunks));
  sum_partials_kernel<<<grid, block, 0, stream>>>(sets, chunks, C);
  DEIT_CUDA_CHECK_LAUNCH();
}

void sum_to_scalar(const float* v, int64_t n, float scale, float* out, cudaStream_t stream) {
  sum_to_scalar_kernel<<<1, kScalarThreads, 0, stream>>>(v, n, scale, out);
  DEIT_CUDA_CHECK_LAUNCH();
}

}  // namespace deit::kernels::gpu
