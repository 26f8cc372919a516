// Shared plumbing of the engine ops: argument checks with messages that name the op, and the
// dispatch from a tensor's device and dtype to the CPU kernels (templated on f32 / f64) or to the
// CUDA kernels (bf16 activations, an fp32 residual stream, fp32 statistics and parameter
// gradients; DESIGN.md "Precision", and kernels/layerscale.h for why the stream is fp32).
//
// An op passes both paths to dispatch():
//
//   detail::dispatch("gelu", {&x},
//       [&](auto zero) { using T = decltype(zero); kernels::gelu_forward_cpu<T>(...); },
//       DEIT_CUDA_PATH([&](CudaContext& cuda) { kernels::gelu_forward_cuda(..., cuda.stream); }));
//
// DEIT_CUDA_PATH drops the CUDA lambda from a build without CUDA (its kernels are not declared
// there); such a build says so if it ever meets a CUDA tensor.
#pragma once
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "engine/op_observer.h"
#include "engine/tensor.h"

#if DEIT_HAVE_CUDA
#include "engine/cuda_context.h"
#define DEIT_CUDA_PATH(...) __VA_ARGS__
#else
#define DEIT_CUDA_PATH(...) ::deit::ops::detail::NoCudaPath{}
#endif

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

// The element type of what a kernel keeps in fp32 whatever the activations are (LayerNorm and
// softmax statistics, losses, parameter gradients): the tensor's own dtype on the CPU (f32, or
// f64 in the gradient checks), fp32 on CUDA where activations are bf16.
inline DType fp32_on_cuda(const Tensor& like) {
  return like.device().is_cuda() ? DType::f32 : like.dtype();
}

// The element type of an activation made from `like` (a GEMM's input or output, a LayerNorm's y,
// whether `like` is the fp32 residual stream or bf16): bf16 on CUDA, `like`'s dtype on the CPU.
inline DType bf16_on_cuda(const Tensor& like) {
  return like.device().is_cuda() ? DType::bf16 : like.dtype();
}

// A gradient for `param` (a parameter, or any tensor whose gradient feeds fp32 master weights)
// when wanted: same shape, dtype fp32_on_cuda.
inline Tensor empty_param_grad_if(bool wanted, const Tensor& param) {
  return wanted ? Tensor::empty(param.shape(), fp32_on_cuda(param), param.device()) : Tensor();
}

// The first defined tensor, after checking that every defined one lives on its device.
inline const Tensor& common_device_tensor(const char* op,
                                          std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t || !t->defined()) continue;
    if (!first) first = t;
    check(t->device() == first->device(), op,
          "tensors on different devices: " + first->describe() + " and " + t->describe());
  }
  check(first != nullptr, op, "no tensor arguments");
  return *first;
}

// Runs fn(T{}) with T = float or double after checking that every defined tensor shares the
// first one's dtype and lives on the CPU. For what has a CPU implementation only.
template <typename Fn>
void dispatch_cpu_floating(const char* op, std::initializer_list<const Tensor*> tensors, Fn&& fn) {
  const Tensor& first = common_device_tensor(op, tensors);
  for (const Tensor* t : tensors)
    if (t && t->defined())
      check(t->dtype() == first.dtype(), op,
            "mixed dtypes: " + first.describe() + " and " + t->describe());
  if (first.device().is_cuda())
    throw std::runtime_error(std::string(op) + ": has no CUDA implementation (got " +
                             first.describe() + ")");
  switch (first.dtype()) {
    case DType::f32: fn(float{}); break;
    case DType::f64: fn(double{}); break;
    default:
      throw std::invalid_argument(std::string(op) + ": unsupported dtype " + first.describe());
  }
}

// Stands in for the CUDA lambda in a build without CUDA.
struct NoCudaPath {};

// CPU tensors: dispatch_cpu_floating(op, tensors, cpu_fn). CUDA tensors (all on one device):
// cuda_fn(cuda_context(device)), which reads its operands with the accessors below; the dtypes
// differ by role there, so each accessor checks its own.
template <typename CpuFn, typename CudaFn>
void dispatch(const char* op, std::initializer_list<const Tensor*> tensors, CpuFn&& cpu_fn,
              CudaFn&& cuda_fn) {
  const Tensor& first = common_device_tensor(op, tensors);
  const ObservedOp observed(op, first.device());  // a profiler's hook (engine/op_observer.h)
  if (first.device().is_cpu()) {
    dispatch_cpu_floating(op, tensors, cpu_fn);
    return;
  }
#if DEIT_HAVE_CUDA
  cuda_fn(cuda_context(first.device().index));
#else
  (void)cuda_fn;
  throw std::runtime_error(std::string(op) + ": got " + first.describe() +
                           ", but this deit was built without CUDA");
#endif
}

#if DEIT_HAVE_CUDA
// The typed device pointer of a CUDA operand (nullptr when undefined), with an error naming the op
// and the operand when the dtype is not the one its kernel takes.
template <typename T>
T* cuda_data(const char* op, const char* operand, const Tensor& t) {
  if (!t.defined()) return nullptr;
  check(t.dtype() == dtype_of<T>::value, op,
        std::string(operand) + " is " + t.describe() + ", the CUDA kernel takes " +
            dtype_name(dtype_of<T>::value));
  return t.data<T>();
}

// The bf16 values a CUDA kernel reads for a weight-like operand: a bf16 tensor's own, or the bf16
// copy of an fp32 parameter (engine/parameters.h). nullptr when undefined.
inline const kernels::bf16_bits* cuda_bf16_weights(const char* op, const char* operand,
                                                   const Tensor& t) {
  if (!t.defined()) return nullptr;
  if (t.dtype() == DType::f32) {
    const Tensor copy = t.bf16_copy();
    check(copy.defined(), op,
          std::string(operand) + " is " + t.describe() +
              " without a bf16 copy: register it in a ParameterRegistry, or pass bf16");
    return copy.data<kernels::bf16_bits>();
  }
  return cuda_data<kernels::bf16_bits>(op, operand, t);
}

// Scratch of n floats for a CUDA kernel, from the caching allocator: freed when the op returns,
// reused by the next op (the stream orders them), so a warm step allocates nothing.
inline Tensor cuda_workspace(const CudaContext& cuda, int64_t floats) {
  return Tensor::empty({floats}, DType::f32, Device::cuda(cuda.device));
}
#endif

}  // namespace deit::ops::detail
