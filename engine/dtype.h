// Element types. f32 is the CPU reference and the master-weight type; bf16 the CUDA activation
// type; f64 exists for the CPU finite-difference gradient checks; u8 images; i32 labels and
// indices.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/bf16.h"

namespace deit {

enum class DType { f32, f64, bf16, u8, i32 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::u8: return 1;
    case DType::i32: return 4;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::u8: return "u8";
    case DType::i32: return "i32";
  }
  return "?";
}

// The DType of a C++ element type, for typed access to tensor data.
template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<kernels::bf16_bits> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };

}  // namespace deit
