#include "engine/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>

#include "engine/allocator.h"
#include "engine/rng.h"
#include "kernels/cast.h"

#if DEIT_HAVE_CUDA
#include "engine/stream.h"
#include "kernels/check.h"
#include "kernels/elementwise.h"
#endif

namespace deit {

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ")";
  return out.str();
}

// factor * the dimensions of `shape`, in *product; false where that passes int64. A dimension of 0
// makes it 0 however large the others are; a negative one is refused.
static bool shape_product(const Shape& shape, int64_t factor, int64_t* product) {
  for (int64_t d : shape)
    if (d < 0) throw std::invalid_argument("negative dimension in shape " + shape_str(shape));
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) {
    *product = 0;
    return true;
  }
  *product = factor;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(*product, d, product)) return false;
  return true;
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 0;
  if (!shape_product(shape, 1, &n))
    throw std::invalid_argument("shape " + shape_str(shape) + " has more than 2^63 - 1 elements");
  return n;
}

static CachingAllocator& allocator_for(Device device) {
  return device.is_cpu() ? cpu_allocator() : cuda_allocator(device.index);
}

Storage::Storage(size_t bytes_, Device device_) : bytes(bytes_), device(device_) {
  data = allocator_for(device).allocate(bytes);
}

Storage::~Storage() { allocator_for(device).deallocate(data); }

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  // The bytes, counted without overflow: a size from a command line (--batch-size 2^62) would
  // otherwise wrap to a small allocation that the tensor's writes run past.
  int64_t bytes = 0;
  if (!shape_product(shape, static_cast<int64_t>(dtype_size(dtype)), &bytes))
    throw OutOfMemory("cannot make a tensor of shape " + shape_str(shape) +
                      ": it would hold more than 2^63 bytes");
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(bytes), device);
  impl->shape = shape;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))
    throw std::invalid_argument(std::to_string(values.size()) + " values for shape " +
                                shape_str(shape));
  Tensor host = empty(shape, dtype_of<T>::value, Device::cpu());
  if (!values.empty()) std::memcpy(host.raw_data(), values.data(), values.size() * sizeof(T));
  return device.is_cpu() ? host : host.to(device);
}
template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<double>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<kernels::bf16_bits>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<uint8_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&, Device);

Tensor Tensor::randn(const Shape& shape, Rng& rng, double std, DType dtype, Device device) {
  Tensor host = empty(shape, DType::f64);
  double* p = host.data<double>();
  for (int64_t i = 0; i < host.numel(); ++i) p[i] = std * rng.normal();
  return host.to(dtype).to(device);
}

int64_t Tensor::size(int d) const {
  const int n = dim();
  const int index = d < 0 ? d + n : d;
  if (index < 0 || index >= n)
    throw std::out_of_range("dimension " + std::to_string(d) + " of a " + std::to_string(n) +
                            "-d tensor");
  return shape()[index];
}

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype())) + " " + shape_str(shape()) + " on " + device().str();
}

TensorImpl& Tensor::impl() const {
  if (!impl_) throw std::logic_error("use of an undefined tensor");
  return *impl_;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl().storage->data) + impl().offset;
}

bool Tensor::same_storage(const Tensor& other) const {
  return defined() && other.defined() && impl().storage == other.impl().storage;
}

Tensor& Tensor::set_requires_grad(bool value) {
  impl().requires_grad = value;
  return *this;
}

void Tensor::set_grad_home(const Tensor& home) {
  if (home.defined() &&
      (home.shape() != shape() || home.dtype() != dtype() || home.device() != device()))
    throw std::invalid_argument("set_grad_home: " + home.describe() + " for " + describe());
  impl().grad_home = home.impl_;
}

Tensor& Tensor::set_name(std::string name) {
  impl().name = std::move(name);
  return *this;
}

void Tensor::copy_from(const Tensor& src) {
  if (src.shape() != shape() || src.dtype() != dtype())
    throw std::invalid_argument("copy_from: " + src.describe() + " into " + describe());
  if (nbytes() == 0) return;
  if (same_storage(src)) {
    // Views of one storage (slices of its rows) may overlap, which neither memcpy nor
    // cudaMemcpyAsync defines. Refused, as PyTorch's copy_ refuses it, on every device alike; a
    // tensor copied onto itself is left as it is.
    const size_t to = impl().offset, from = src.impl().offset;
    if (to == from) return;
    if (to < from + nbytes() && from < to + nbytes())
      throw std::invalid_argument("copy_from: the source " + src.describe() +
                                  " partly overlaps the tensor (views of one storage); copy a "
                                  "clone() of it");
  }
  if (device().is_cpu() && src.device().is_cpu()) {
    std::memcpy(raw_data(), src.raw_data(), nbytes());
    return;
  }
#if DEIT_HAVE_CUDA
  const Device cuda_side = device().is_cuda() ? device() : src.device();
  cudaStream_t stream = compute_stream(cuda_side.index);
  DEIT_CUDA_CHECK(cudaMemcpyAsync(raw_data(), src.raw_data(), nbytes(), cudaMemcpyDefault, stream));
  refresh_bf16_copy();
  // The host side may be read or freed as soon as this returns.
  if (device().is_cpu() || src.device().is_cpu()) DEIT_CUDA_CHECK(cudaStreamSynchronize(stream));
#else
  throw std::runtime_error("copy between " + src.device().str() + " and " + device().str() +
                           " in a build without CUDA");
#endif
}

void Tensor::attach_bf16_copy() {
  if (!device().is_cuda() || dtype() != DType::f32)
    throw std::invalid_argument("a bf16 copy is kept for f32 CUDA tensors only, not " + describe());
  if (!impl().bf16_copy) impl().bf16_copy = empty(shape(), DType::bf16, device()).impl_ptr();
  refresh_bf16_copy();
}

void Tensor::refresh_bf16_copy() const {
  if (!impl().bf16_copy) return;
#if DEIT_HAVE_CUDA
  kernels::cast_f32_to_bf16_cuda(data<float>(), bf16_copy().data<kernels::bf16_bits>(), numel(),
                                 compute_stream(device().index));
#endif
}

Tensor Tensor::to(Device target) const {
  if (target == device()) return *this;
  Tensor out = empty(shape(), dtype(), target);
  out.copy_from(*this);
  return out;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype(), device());
  out.copy_from(*this);
  return out;
}

namespace {

double host_element_as_double(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::f32: return t.data<float>()[i];
    case DType::f64: return t.data<double>()[i];
    case DType::bf16: return kernels::bf16_to_float(t.data<kernels::bf16_bits>()[i]);
    case DType::u8: return t.data<uint8_t>()[i];
    case DType::i32: return t.data<int32_t>()[i];
  }
  return 0;
}

}  // namespace

Tensor Tensor::to(DType target) const {
  if (target == dtype()) return *this;
  const int64_t n = numel();
  if (device().is_cuda()) {
#if DEIT_HAVE_CUDA
    Tensor out = empty(shape(), target, device());
    cudaStream_t stream = compute_stream(device().index);
    if (dtype() == DType::f32 && target == DType::bf16)
      kernels::cast_f32_to_bf16_cuda(data<float>(), out.data<kernels::bf16_bits>(), n, stream);
    else if (dtype() == DType::bf16 && target == DType::f32)
      kernels::cast_bf16_to_f32_cuda(data<kernels::bf16_bits>(), out.data<float>(), n, stream);
    else
      return to(Device::cpu()).to(target).to(device());
    return out;
#endif
  }
  Tensor out = empty(shape(), target, device());
  if (dtype() == DType::f32 && target == DType::bf16) {
    kernels::cast_f32_to_bf16_cpu(data<float>(), out.data<kernels::bf16_bits>(), n);
  } else if (dtype() == DType::bf16 && target == DType::f32) {
    kernels::cast_bf16_to_f32_cpu(data<kernels::bf16_bits>(), out.data<float>(), n);
  } else if (target == DType::f32) {
    for (int64_t i = 0; i < n; ++i)
      out.data<float>()[i] = static_cast<float>(host_element_as_double(*this, i));
  } else if (target == DType::f64) {
    for (int64_t i = 0; i < n; ++i) out.data<double>()[i] = host_element_as_double(*this, i);
  } else if (target == DType::bf16) {
    return to(DType::f32).to(DType::bf16);
  } else {
    throw std::invalid_argument(std::string("no conversion from ") + dtype_name(dtype()) + " to " +
                                dtype_name(target));
  }
  return out;
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  const Tensor host = to(Device::cpu());
  std::vector<T> values(host.numel());
  for (int64_t i = 0; i < host.numel(); ++i)
    values[i] = static_cast<T>(host_element_as_double(host, i));
  return values;
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;

double Tensor::item() const {
  if (numel() != 1) throw std::invalid_argument("item() of a tensor " + describe());
  return host_element_as_double(to(Device::cpu()), 0);
}

void Tensor::fill_(double value) {
  // Converting a double an integer type cannot hold (a fraction, out of range, NaN) is undefined
  // behaviour in C++, not a wrapped or rounded value: refused, as for an empty tensor too.
  const auto holds = [value](double lowest, double highest) {
    return value >= lowest && value <= highest && value == std::trunc(value);
  };
  if ((dtype() == DType::u8 && !holds(0, 255)) ||
      (dtype() == DType::i32 && !holds(INT32_MIN, INT32_MAX)))
    throw std::invalid_argument("fill_: " + std::to_string(value) + " is not a value of " +
                                describe());
  if (numel() == 0) return;
  if (device().is_cuda()) {
#if DEIT_HAVE_CUDA
    cudaStream_t stream = compute_stream(device().index);
    if (value == 0.0) {
      DEIT_CUDA_CHECK(cudaMemsetAsync(raw_data(), 0, nbytes(), stream));
    } else if (dtype() == DType::f32) {
      kernels::fill_cuda(data<float>(), static_cast<float>(value), numel(), stream);
    } else if (dtype() == DType::bf16) {
      kernels::fill_cuda(data<kernels::bf16_bits>(), static_cast<float>(value), numel(), stream);
    } else {
      copy_from(full(shape(), value, dtype(), Device::cpu()));
      return;  // copy_from refreshed the bf16 copy
    }
    refresh_bf16_copy();
#else
    copy_from(full(shape(), value, dtype(), Device::cpu()));  // says: no CUDA in this build
#endif
    return;
  }
  const int64_t n = numel();
  switch (dtype()) {
    case DType::f32: std::fill_n(data<float>(), n, static_cast<float>(value)); break;
    case DType::f64: std::fill_n(data<double>(), n, value); break;
    case DType::bf16:
      std::fill_n(data<kernels::bf16_bits>(), n, kernels::float_to_bf16(static_cast<float>(value)));
      break;
    case DType::u8: std::fill_n(data<uint8_t>(), n, static_cast<uint8_t>(value)); break;
    case DType::i32: std::fill_n(data<int32_t>(), n, static_cast<int32_t>(value)); break;
  }
}

// A TensorImpl for a view of `impl`'s storage. Autograd state belongs to a tensor, not to its
// storage, so the view starts with none: no .grad, no producing node, no gradient home (a view
// marked requires_grad is a leaf of its own, whose gradient must not land in the home of the
// tensor it views).
static std::shared_ptr<TensorImpl> view_impl(const TensorImpl& impl) {
  auto view = std::make_shared<TensorImpl>(impl);
  view->requires_grad = false;
  view->grad.reset();
  view->grad_home.reset();
  view->grad_fn.reset();
  view->grad_fn_output = 0;
  return view;
}

Tensor Tensor::view(const Shape& new_shape) const {
  const auto cannot = [&](const std::string& why) {
    return std::invalid_argument("view: cannot view " + describe() + " as " + shape_str(new_shape) +
                                 why);
  };
  Shape shape_out = new_shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < shape_out.size(); ++i) {
    if (shape_out[i] == -1) {
      if (infer >= 0) throw cannot(": more than one -1");
      infer = static_cast<int>(i);
    } else if (shape_out[i] < 0) {
      throw cannot(": a negative size");
    } else if (__builtin_mul_overflow(known, shape_out[i], &known)) {
      throw cannot("");
    }
  }
  if (infer >= 0) {
    // With no elements in the other dimensions, any size fits the -1: refused, as PyTorch does.
    if (known == 0) throw cannot(": the -1 could be any size");
    shape_out[infer] = numel() / known;
  }
  if (shape_numel(shape_out) != numel()) throw cannot("");
  auto impl = view_impl(*impl_);
  impl->shape = shape_out;
  if (impl->bf16_copy) impl->bf16_copy = bf16_copy().view(shape_out).impl_ptr();
  return Tensor(std::move(impl));
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  if (dim() == 0 || begin < 0 || end < begin || end > shape()[0])
    throw std::out_of_range("slice [" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") of " + describe());
  // From the shape, not numel() / rows: a tensor of no rows has rows of a size too.
  size_t row_elements = 1;
  for (size_t d = 1; d < shape().size(); ++d) row_elements *= static_cast<size_t>(shape()[d]);
  const size_t row_bytes = row_elements * dtype_size(dtype());
  auto impl = view_impl(*impl_);
  impl->shape[0] = end - begin;
  impl->offset += begin * row_bytes;
  if (impl->bf16_copy) impl->bf16_copy = bf16_copy().slice(begin, end).impl_ptr();
  return Tensor(std::move(impl));
}

}  // namespace deit
