// Elementwise arithmetic the engine itself needs (gradient accumulation, scaling by an upstream
// scalar gradient).
#pragma once
#include <cstdint>

namespace deit::kernels {

// a, b: (n) -> out: (n) = a + b. out may alias a or b.
template <typename T>
void add_cpu(const T* a, const T* b, T* out, int64_t n);

// x: (n) -> out: (n) = x * s. out may alias x.
template <typename T>
void scale_cpu(const T* x, T s, T* out, int64_t n);

}  // namespace deit::kernels
