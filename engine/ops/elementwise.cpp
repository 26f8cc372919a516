#include "engine/ops/elementwise.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/elementwise.h"

namespace deit::ops {

using detail::check;

Tensor add(const Tensor& a, const Tensor& b) {
  check(a.shape() == b.shape(), "add", "shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()));
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  detail::dispatch_cpu_floating("add", {&a, &b}, [&](auto zero) {
    using T = decltype(zero);
    kernels::add_cpu<T>(a.data<T>(), b.data<T>(), out.data<T>(), a.numel());
  });
  if (needs_recording({&a, &b}))
    record("add", out, {&a, &b}, {}, [](Node&, const Tensor& g) { return std::vector<Tensor>{g, g}; });
  return out;
}

Tensor scale_by(const Tensor& t, const Tensor& s) {
  check(s.numel() == 1, "scale_by", "scale must have one element, got " + s.describe());
  const double factor = s.item();
  Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
  detail::dispatch_cpu_floating("scale_by", {&t}, [&](auto zero) {
    using T = decltype(zero);
    kernels::scale_cpu<T>(t.data<T>(), static_cast<T>(factor), out.data<T>(), t.numel());
  });
  return out;
}

}  // namespace deit::ops
