#pragma once
#include <vector>

#include "engine/tensor.h"

namespace deit::ops {

// Some samples of a batch of B (kernels/samples.h): index (n), the chosen sample numbers in
// ascending order, and slot (B), each sample's place among them or -1; i32 tensors on the device
// of the tensors they select from.
// An empty selection (no tensors) stands for the whole batch.
struct SampleSelection {
  Tensor index, slot;
  bool empty() const { return !index.defined(); }
  int64_t count() const { return index.numel(); }
  int64_t batch() const { return slot.numel(); }
};

// One selection per row of `keep_scales` (rows, B), a host tensor: the samples whose scale is not
// 0, i.e. those drop-path keeps in each residual branch, then the first dropped ones up to a
// multiple of `granularity` samples (a dropped sample's branch output is multiplied by its scale,
// 0, whether it was computed or not), for the rows where that count is from 1 to max_count (a row
// that keeps none selects its first `granularity` samples); the other rows get an empty
// selection. Few counts make few shapes for the work on the selection:
// cuBLASLt plans and the allocator's cached blocks serve every step after the first few. What is
// selected reaches `device` in one upload the host does not wait for (engine/staged_upload.h),
// or none if nothing is.
std::vector<SampleSelection> kept_samples(const Tensor& keep_scales, int64_t granularity,
                                          int64_t max_count, Device device);
// The number of samples kept_samples selects in each row: 0 for a row it leaves to the whole batch.
std::vector<int64_t> kept_sample_counts(const Tensor& keep_scales, int64_t granularity,
                                        int64_t max_count);

// x (B, ...) -> (n, ...): the selected samples, in order. An empty selection (the whole batch)
// returns x itself.
Tensor gather_samples(const Tensor& x, const SampleSelection& selection);

// y (n, ...) -> (B, ...): each selected sample's row of y in its place, zeros in the others. An
// empty selection (the whole batch) returns y itself.
Tensor scatter_samples(const Tensor& y, const SampleSelection& selection);

}  // namespace deit::ops
