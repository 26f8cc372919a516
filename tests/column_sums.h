// The column sums of a (rows, cols) row-major matrix, each added in double and rounded once to
// float: the reference a kernel's column sums (a bias gradient, per-chunk partials added up) are
// held to. A bias gradient the kernels sum from bf16 values they store is held to the sums of those
// stored values, not to the CPU twin's exact ones: a column whose terms cancel makes bf16's
// rounding of each term a large part of a small sum, however right the kernel.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace deit::test {

inline std::vector<float> column_sums(const std::vector<float>& m, int64_t rows, int64_t cols) {
  std::vector<float> sums(static_cast<size_t>(cols));
  for (int64_t c = 0; c < cols; ++c) {
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum += m[static_cast<size_t>(r * cols + c)];
    sums[static_cast<size_t>(c)] = static_cast<float>(sum);
  }
  return sums;
}

}  // namespace deit::test
