// Where each row of the batch lies in a tensor that holds some samples' rows alone (a selection's,
// kernels/samples.h): the CPU twins that read or write a branch computed for drop-path's kept
// samples alone look their rows up here once, rather than dividing by T for every element.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/samples.h"

namespace deit::kernels {

// rows: the batch's B * T rows; data: (n, T, C) of the samples `slot` selects, or (B, T, C) with
// slot nullptr  ->  each row's first element in data, nullptr for a sample slot leaves out.
template <typename T>
std::vector<T*> selected_rows(T* data, const int32_t* slot, int64_t rows, int64_t Tn, int64_t C) {
  std::vector<T*> at(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = selected_row(slot, r, Tn);
    at[static_cast<size_t>(r)] = row < 0 ? nullptr : data + row * C;
  }
  return at;
}

}  // namespace deit::kernels
