#include "engine/ops/samples.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "engine/staged_upload.h"
#include "kernels/samples.h"

namespace deit::ops {

using detail::check;

std::vector<int64_t> kept_sample_counts(const Tensor& keep_scales, int64_t granularity,
                                        int64_t max_count) {
  check(keep_scales.dim() == 2 && keep_scales.device().is_cpu(), "kept_samples",
        "keep scales " + keep_scales.describe() + " are not (rows, B) on the host");
  check(granularity >= 1, "kept_samples",
        "granularity " + std::to_string(granularity) + " is not positive");
  const int64_t rows = keep_scales.size(0), B = keep_scales.size(1);
  const std::vector<double> scales = keep_scales.to_vector<double>();
  std::vector<int64_t> counts(static_cast<size_t>(rows), 0);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t kept = 0;
    for (int64_t b = 0; b < B; ++b) kept += scales[r * B + b] != 0;
    // A branch that keeps no sample still runs, on its first dropped ones, for its parameters'
    // gradients (zeros, as on the whole batch): the whole batch did that work for nothing (at
    // drop rate 0.6 and 4 samples a process, 13% of ViT-H's branches keep none).
    const int64_t count =
        std::min(B, (std::max<int64_t>(kept, 1) + granularity - 1) / granularity * granularity);
    if (count <= max_count) counts[r] = count;
  }
  return counts;
}

std::vector<SampleSelection> kept_samples(const Tensor& keep_scales, int64_t granularity,
                                          int64_t max_count, Device device) {
  const std::vector<int64_t> counts = kept_sample_counts(keep_scales, granularity, max_count);
  const int64_t rows = keep_scales.size(0), B = keep_scales.size(1);
  const std::vector<double> scales = keep_scales.to_vector<double>();
  // Each selected row's index, then its slot, back to back in one i32 tensor: one upload for all.
  std::vector<int32_t> packed;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t count = counts[r];
    if (count == 0) continue;
    // The kept samples and the first dropped ones up to count, in sample order.
    int64_t dropped_left = count;
    for (int64_t b = 0; b < B; ++b) dropped_left -= scales[r * B + b] != 0;
    std::vector<int32_t> index, slot(static_cast<size_t>(B), -1);
    for (int64_t b = 0; b < B; ++b) {
      const bool dropped = scales[r * B + b] == 0;
      if (dropped && dropped_left == 0) continue;
      dropped_left -= dropped;
      slot[b] = static_cast<int32_t>(index.size());
      index.push_back(static_cast<int32_t>(b));
    }
    packed.insert(packed.end(), index.begin(), index.end());
    packed.insert(packed.end(), slot.begin(), slot.end());
  }
  std::vector<SampleSelection> selections(static_cast<size_t>(rows));
  if (packed.empty()) return selections;
  const Tensor all = upload_without_waiting(
      Tensor::from_vector<int32_t>(packed, {static_cast<int64_t>(packed.size())}), device);
  int64_t at = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = counts[r];
    if (n == 0) continue;
    selections[r] = {all.slice(at, at + n), all.slice(at + n, at + n + B)};
    at += n + B;
  }
  return selections;
}

namespace {

// The elements of one sample of t (B, ...), after checking the selection against it.
int64_t sample_elements(const char* op, const Tensor& t, int64_t samples,
                        const SampleSelection& s) {
  check(t.dim() >= 1 && t.size(0) == samples, op,
        "got " + t.describe() + " for a selection of " + std::to_string(s.count()) + " of " +
            std::to_string(s.batch()) + " samples");
  check(s.index.dtype() == DType::i32 && s.slot.dtype() == DType::i32 &&
            s.index.device() == t.device() && s.slot.device() == t.device(),
        op, "the selection is not i32 on " + t.describe() + "'s device");
  int64_t elements = 1;  // from the shape: a selection of no samples still has whole samples
  for (int64_t d = 1; d < t.dim(); ++d) elements *= t.size(d);
  return elements;
}

Shape with_samples(const Tensor& t, int64_t samples) {
  Shape shape = t.shape();
  shape[0] = samples;
  return shape;
}

Tensor gather(const Tensor& x, const SampleSelection& s, const char* op) {
  const int64_t S = sample_elements(op, x, s.batch(), s);
  Tensor out = Tensor::empty(with_samples(x, s.count()), x.dtype(), x.device());
  detail::dispatch(
      op, {&x},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::gather_samples_cpu<T>(x.data<T>(), s.index.data<int32_t>(), out.data<T>(),
                                       s.count(), S);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::gather_samples_cuda(x.raw_data(), s.index.data<int32_t>(), out.raw_data(),
                                     s.count(), S * static_cast<int64_t>(dtype_size(x.dtype())),
                                     cuda.stream);
      }));
  return out;
}

Tensor scatter(const Tensor& y, const SampleSelection& s, const char* op) {
  const int64_t S = sample_elements(op, y, s.count(), s);
  Tensor out = Tensor::empty(with_samples(y, s.batch()), y.dtype(), y.device());
  detail::dispatch(
      op, {&y},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::scatter_samples_cpu<T>(y.data<T>(), s.slot.data<int32_t>(), out.data<T>(),
                                        s.batch(), S);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::scatter_samples_cuda(y.raw_data(), s.slot.data<int32_t>(), out.raw_data(),
                                      s.batch(), S * static_cast<int64_t>(dtype_size(y.dtype())),
                                      cuda.stream);
      }));
  return out;
}

}  // namespace

Tensor gather_samples(const Tensor& x, const SampleSelection& selection) {
  if (selection.empty()) return x;  // the whole batch
  Tensor out = gather(x, selection, "gather_samples");
  if (needs_recording({&x}))
    record("gather_samples", out, {&x}, {}, [selection](Node&, const Tensor& dout) {
      return std::vector<Tensor>{scatter(dout, selection, "gather_samples backward")};
    });
  return out;
}

Tensor scatter_samples(const Tensor& y, const SampleSelection& selection) {
  if (selection.empty()) return y;  // the whole batch
  Tensor out = scatter(y, selection, "scatter_samples");
  if (needs_recording({&y}))
    record("scatter_samples", out, {&y}, {}, [selection](Node&, const Tensor& dout) {
      return std::vector<Tensor>{gather(dout, selection, "scatter_samples backward")};
    });
  return out;
}

}  // namespace deit::ops
