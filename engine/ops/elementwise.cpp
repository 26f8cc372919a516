#include "engine/ops/elementwise.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/elementwise.h"

namespace deit::ops {

using detail::check;

Tensor add(const Tensor& a, const Tensor& b) {
  check(a.shape() == b.shape(), "add",
        "shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()));
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  detail::dispatch("add", {&a, &b},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::add_cpu<T>(a.data<T>(), b.data<T>(), out.data<T>(), a.numel());
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        check(a.dtype() == b.dtype(), "add",
              "mixed dtypes: " + a.describe() + " and " + b.describe());
        if (a.dtype() == DType::f32)
          kernels::add_cuda(a.data<float>(), b.data<float>(), out.data<float>(), a.numel(),
                            cuda.stream);
        else
          kernels::add_cuda(detail::cuda_data<kernels::bf16_bits>("add", "a", a),
                            b.data<kernels::bf16_bits>(), out.data<kernels::bf16_bits>(),
                            a.numel(), cuda.stream);
      }));
  if (needs_recording({&a, &b}))
    record("add", out, {&a, &b}, {}, [](Node&, const Tensor& g) {
      return std::vector<Tensor>{g, g};
    });
  return out;
}

Tensor scale_by(const Tensor& t, const Tensor& s) {
  check(s.numel() == 1, "scale_by", "scale must have one element, got " + s.describe());
  Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
  detail::dispatch("scale_by", {&t, &s},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::scale_cpu<T>(t.data<T>(), static_cast<T>(s.item()), out.data<T>(), t.numel());
      },
      // The scale stays on the device (an fp32 upstream gradient): no host read in the step.
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        const float* factor = detail::cuda_data<float>("scale_by", "scale", s);
        if (t.dtype() == DType::f32)
          kernels::scale_by_device_scalar_cuda(t.data<float>(), factor, out.data<float>(),
                                               t.numel(), cuda.stream);
        else
          kernels::scale_by_device_scalar_cuda(
              detail::cuda_data<kernels::bf16_bits>("scale_by", "t", t), factor,
              out.data<kernels::bf16_bits>(), t.numel(), cuda.stream);
      }));
  return out;
}

}  // namespace deit::ops
