// Reductions the CPU kernels share (internal to kernels/cpu/). All accumulate in double, so the
// float reference is as accurate as its inputs allow, and all add their terms in one fixed order,
// so the result has the same bits whatever the number of OpenMP threads.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace deit::kernels {

// out[c] = sum_r term(r, c) for r = 0 .. rows-1, c < cols: the column sums behind every
// parameter gradient that is shared across rows (bias, LayerNorm affine, LayerScale gamma,
// position embedding, class token). Threads split the columns into fixed blocks and each walks
// all rows for its block, so every column is summed in row order by exactly one thread.
template <typename T, typename Term>
void column_sums(int64_t rows, int64_t cols, T* out, Term term) {
  constexpr int64_t kBlock = 64;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kBlock;
    const int64_t c1 = std::min(cols, c0 + kBlock);
    double acc[kBlock] = {};
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += term(r, c);
    for (int64_t c = c0; c < c1; ++c) out[c] = static_cast<T>(acc[c - c0]);
  }
}

// dbias: (N) = the column sums of dy: (M, N). The bias gradient of a linear layer y = x W^T + b
// whose output gradient is dy, since b is added to every row of y; the fused backward kernels
// (GELU, attention, LayerScale) take it from the dy they write, for the linear layer before them.
template <typename T>
void linear_bias_grad(const T* dy, T* dbias, int64_t M, int64_t N) {
  column_sums(M, N, dbias, [=](int64_t m, int64_t n) { return dy[m * N + n]; });
}

// sum_{i < n} value(i), with the values computed in parallel (value(i) may also write outputs of
// its own, such as row i of a gradient) and added serially in index order. A single value is
// computed on the calling thread: a parallel region would only wake the team.
template <typename Value>
double ordered_sum(int64_t n, Value value) {
  std::vector<double> values(static_cast<size_t>(n));
#pragma omp parallel for schedule(static) if (n > 1)
  for (int64_t i = 0; i < n; ++i) values[i] = value(i);
  double total = 0;
  for (double v : values) total += v;
  return total;
}

// log sum_i exp(x[i]) for i < n, shifted by the maximum so that no exp overflows (every term is
// then <= 1, and the largest is exactly 1, so the sum cannot underflow to 0 either). -inf for an
// empty row (n = 0).
template <typename T>
double logsumexp(const T* x, int64_t n) {
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::max(max, static_cast<double>(x[i]));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  return max + std::log(sum);
}

}  // namespace deit::kernels
