// Whole samples of a batch picked by index: the samples a residual branch keeps under drop-path.
// A dropped sample's branch output is multiplied by 0, so model/vit.cpp runs a branch on the kept
// samples (and a few dropped ones that round their count up, engine/ops/samples.h) alone. Between
// branches the fused residual + LayerNorm kernels find the selected rows themselves (selected_row
// below, kernels/layerscale.h); before the first block the kept samples are gathered, and after
// the last the branch's result is scattered back with zeros for the others.
//
// A selection of n of B samples is given twice, for the two directions: index (n), the selected
// sample numbers in ascending order, and slot (B), each sample's place in index or -1.
// S: elements per sample (T * C for tokens), the same for input and output.
#pragma once
#include <cstdint>

#include "kernels/host_device.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace deit::kernels {

// x (B, S) -> out (n, S): out[j] = x[index[j]].
template <typename T>
void gather_samples_cpu(const T* x, const int32_t* index, T* out, int64_t n, int64_t S);

// y (n, S) -> out (B, S): out[b] = y[slot[b]] where slot[b] >= 0, else zeros.
template <typename T>
void scatter_samples_cpu(const T* y, const int32_t* slot, T* out, int64_t B, int64_t S);

#if DEIT_HAVE_CUDA
// The same on the device for any element type: a sample is sample_bytes bytes, copied in the
// widest of 16, 8, 4, 2 or 1 bytes that sample_bytes and the buffers' alignment allow. index and
// slot are device arrays (the caller keeps index within the batch); out must not overlap the
// input.
void gather_samples_cuda(const void* x, const int32_t* index, void* out, int64_t n,
                         int64_t sample_bytes, cudaStream_t stream);
void scatter_samples_cuda(const void* y, const int32_t* slot, void* out, int64_t B,
                          int64_t sample_bytes, cudaStream_t stream);
#endif

// The row of a selection's (n, T, ...) rows that holds row r of the batch's (B * T, ...) rows (r
// of sample r / T): r itself with no selection (slot nullptr), -1 for a sample it leaves out.
DEIT_HD int64_t selected_row(const int32_t* slot, int64_t r, int64_t T) {
  if (!slot) return r;
  const int64_t b = r / T;
  return slot[b] < 0 ? -1 : slot[b] * T + (r - b * T);
}

}  // namespace deit::kernels
