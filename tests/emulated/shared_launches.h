// What the emulated tests share of the launchers: the choice between a kernel's vector and scalar
// paths, and the launches every kernel family makes, with the grids and blocks of
// kernels/cuda/common.cuh and common.cu: the elementwise kernel, sum_partials and sum_partial_sets
// (the second stage of
// every deterministic column sum) and sum_to_scalar.
#pragma once
#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/cuda/common_kernels.cuh"
#include "kernels/cuda/launch_shape.h"
#include "tests/emulated/cuda_emulator.h"

namespace emu {

// Calls f with the vector width as a std::integral_constant: kVec when the launcher takes the
// vector path, 1 otherwise.
template <typename F>
void with_width(bool vector_path, F&& f) {
  if (vector_path)
    f(std::integral_constant<int, deit::kernels::gpu::kVec>{});
  else
    f(std::integral_constant<int, 1>{});
}

// common.cuh's launch_elementwise of elementwise_kernel<Op>, named "elementwise_kernel<op_name>";
// a grid capped at max_grid makes every thread walk several vectors and elements.
template <typename Op>
void launch_elementwise(const char* op_name, const Op& op, int64_t n, bool vectorize,
                        unsigned max_grid = UINT_MAX) {
  namespace gpu = deit::kernels::gpu;
  if (n <= 0) return;
  const gpu::ElementwiseWork w = gpu::elementwise_work(n, vectorize);
  const unsigned grid = std::min(gpu::grid_for(w.work, gpu::kThreads), max_grid);
  launch({std::string("elementwise_kernel<") + op_name + ">", grid, gpu::kThreads, 0},
         [=] { gpu::elementwise_kernel<Op>(op, n, w.nvec); });
}

// common.cu's column_partials: the per-chunk column sums of m (rows, C; rows ld elements apart)
// over row_chunks' chunks `part`, into partials.
inline void column_partials(const deit::kernels::gpu::bf16* m, int64_t rows, int64_t C, int64_t ld,
                            float* partials, const deit::kernels::gpu::RowChunks& part) {
  namespace gpu = deit::kernels::gpu;
  if (part.chunks == 0 || C <= 0) return;
  const bool vectors = C % gpu::kVec == 0 && ld % gpu::kVec == 0 && gpu::aligned16(m, partials);
  with_width(vectors, [&](auto width) {
    constexpr int V = decltype(width)::value;
    launch({"column_partials_kernel<" + std::to_string(V) + ">", static_cast<unsigned>(part.chunks),
            static_cast<unsigned>(gpu::row_threads(C)), 0},
           [=] { gpu::column_partials_kernel<V>(m, partials, rows, C, ld, part.rows_per_chunk); });
  });
}

// common.cu's sum_partial_sets: for each set, out[c] = the sum over chunks of
// partials[chunk * C + c], in one launch.
inline void sum_partial_sets(const deit::kernels::gpu::PartialSets& sets, int64_t chunks,
                             int64_t C) {
  namespace gpu = deit::kernels::gpu;
  if (C <= 0 || sets.count == 0) return;
  const dim3 grid(static_cast<unsigned>(gpu::ceil_div(C, gpu::kPartialCols)), sets.count);
  launch({"sum_partials_kernel", grid, dim3(gpu::kPartialCols, gpu::partial_lanes(chunks)), 0},
         [=] { gpu::sum_partials_kernel(sets, chunks, C); });
}

// common.cu's sum_partials: one set.
inline void sum_partials(const float* partials, int64_t chunks, int64_t C, float* out) {
  deit::kernels::gpu::PartialSets set;
  set.add(partials, out);
  sum_partial_sets(set, chunks, C);
}

// common.cu's sum_to_scalar: *out = scale * the sum of v[0, n).
inline void sum_to_scalar(const float* v, int64_t n, float scale, float* out) {
  namespace gpu = deit::kernels::gpu;
  launch({"sum_to_scalar_kernel", 1, gpu::kScalarThreads, 0},
         [=] { gpu::sum_to_scalar_kernel(v, n, scale, out); });
}

}  // namespace emu
