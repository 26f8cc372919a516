// Shared plumbing of the engine ops: argument checks with messages that name the op, and the
// dispatch from a tensor's device and dtype to the templated CPU kernels.
#pragma once
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "engine/tensor.h"

namespace deit::ops::detail {

inline void check(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

// Element pointer of an optional tensor: nullptr when it is undefined.
template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

inline Tensor empty_if(bool wanted, const Tensor& like) {
  return wanted ? Tensor::empty(like.shape(), like.dtype(), like.device()) : Tensor();
}

// Runs fn(T{}) with T = float or double after checking that every defined tensor shares the
// first one's dtype and lives on the CPU. CUDA tensors get a clear error until their op has a
// CUDA path wired in.
template <typename Fn>
void dispatch_cpu_floating(const char* op, std::initializer_list<const Tensor*> tensors, Fn&& fn) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t || !t->defined()) continue;
    if (!first) first = t;
    check(t->dtype() == first->dtype(), op,
          "mixed dtypes: " + first->describe() + " and " + t->describe());
    check(t->device() == first->device(), op,
          "tensors on different devices: " + first->describe() + " and " + t->describe());
  }
  check(first != nullptr, op, "no tensor arguments");
  if (first->device().is_cuda())
    throw std::runtime_error(std::string(op) + ": no CUDA implementation is wired into the engine yet");
  switch (first->dtype()) {
    case DType::f32: fn(float{}); break;
    case DType::f64: fn(double{}); break;
    default:
      throw std::invalid_argument(std::string(op) + ": unsupported dtype " + first->describe());
  }
}

}  // namespace deit::ops::detail
