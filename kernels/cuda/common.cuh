// Private to kernels/cuda/: what the CUDA kernels share. The device code (loads and stores, the
// elementwise kernel, block reductions, the row layout's loads and stores) is in common_device.cuh,
// included here, which a host compiler can read too (the emulated tests compile it); this file
// holds what launches kernels or runs on the host:
//  - the elementwise launcher: a grid-stride loop over 8-element vectors where every pointer is
//    16-byte aligned, then a scalar loop over what is left (or over everything, when not aligned);
//  - argument checks (the grid sizes, the row layout's block size and the row chunking are in
//    launch_shape.h, plain C++ the emulated tests share);
//  - the deterministic two-stage column sum behind every parameter gradient shared across rows:
//    blocks own fixed chunks of rows (row_chunks) and write per-chunk partial sums, sum_partials
//    adds them.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "kernels/bf16.h"
#include "kernels/check.h"
#include "kernels/cuda/common_device.cuh"
#include "kernels/cuda/launch_shape.h"

namespace deit::kernels::gpu {

inline const bf16* as_bf16(const bf16_bits* p) { return reinterpret_cast<const bf16*>(p); }
inline bf16* as_bf16(bf16_bits* p) { return reinterpret_cast<bf16*>(p); }

// Throws std::invalid_argument naming `fn` when any size is negative.
void check_sizes(const char* fn, std::initializer_list<int64_t> sizes);

// Throws std::invalid_argument naming `fn` and `what` when p is not 16-byte aligned, as kernels
// that move 16-byte chunks (cp.async, vector loads) need.
void check_aligned_16(const char* fn, const char* what, const void* p);

// The attention kernels' checks (attention.cu, class_attention.cu): sizes not negative, a head dim
// they are built for (attention_cuda_supports_head_dim), every bf16 buffer 16-byte aligned.
// Throws std::invalid_argument naming `fn`.
void check_attention_args(const char* fn, std::initializer_list<const void*> bf16_buffers,
                          int64_t B, int64_t Tn, int64_t H, int64_t D);

// ---------------------------------------------------------------------------------------------
// Elementwise launcher (the kernel is common_device.cuh's elementwise_kernel).

// Runs op over n elements; vectorised over the first n / kVec * kVec when `vectorize`.
template <typename Op>
void launch_elementwise(const Op& op, int64_t n, bool vectorize, cudaStream_t stream) {
  if (n <= 0) return;
  const ElementwiseWork w = elementwise_work(n, vectorize);
  elementwise_kernel<Op><<<grid_for(w.work, kThreads), kThreads, 0, stream>>>(op, n, w.nvec);
  DEIT_CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------------------------------------
// Row kernels (launch_shape.h sizes them): their checks and the second stage of their column sums.

// Throws std::invalid_argument naming `fn` when C > kMaxRowWidth.
void check_row_width(const char* fn, int64_t C);

// Throws std::invalid_argument naming `fn` when the workspace is `needed` but nullptr.
void check_workspace(const char* fn, const float* workspace, bool needed);

// The first stage of a column sum of m (rows, C) bf16, its rows ld elements apart:
// partials[chunk * C + c] = the sum of column c over the chunk's rows of `part` (row_chunks(rows,
// C)), in row order. Vector loads when C and ld are multiples of 8 and m and partials 16-byte
// aligned.
void column_partials(const bf16* m, int64_t rows, int64_t C, int64_t ld, float* partials,
                     const RowChunks& part, cudaStream_t stream);

// out[c] = sum over chunks of partials[chunk * C + c], c < C (0 when chunks == 0).
void sum_partials(const float* partials, int64_t chunks, int64_t C, float* out,
                  cudaStream_t stream);

// sum_partials for each set of `sets` (the same chunks and C), in one launch: the same bits as a
// launch each, at a fraction of the time where C is narrow (C = 384: 48 blocks of a set alone).
void sum_partial_sets(const PartialSets& sets, int64_t chunks, int64_t C, cudaStream_t stream);

// Deterministic column sums of an (M, N) matrix, tile by tile of at most kMaxRowWidth columns:
// launch(c0, width, part) starts the row kernel that writes the per-chunk sums of columns
// [c0, c0 + width) to `partials` (row_chunks(M, width) = part), then sum_partials adds them into
// out + c0. The linear layer's bias gradient and GELU's backward with it share this.
template <typename Launch>
void column_sum_tiles(int64_t M, int64_t N, const float* partials, float* out, cudaStream_t stream,
                      Launch&& launch) {
  for (int64_t c0 = 0; c0 < N; c0 += kMaxRowWidth) {
    const int64_t width = std::min(kMaxRowWidth, N - c0);
    const RowChunks part = row_chunks(M, width);
    launch(c0, width, part);
    sum_partials(partials, part.chunks, width, out + c0, stream);
  }
}

// *out = scale * sum of v[0..n), one block, fixed order.
void sum_to_scalar(const float* v, int64_t n, float scale, float* out, cudaStream_t stream);

}  // namespace deit::kernels::gpu
