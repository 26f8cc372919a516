// Tensor: a shape, an element type and a device over shared, contiguous, row-major storage.
// Copies of a Tensor share storage (like a shared_ptr); views share it too and exist only where
// they are free: a reshape, or a slice of the leading dimension. Autograd state (requires_grad,
// the accumulated grad, the node that produced it) lives here; engine/autograd.h records and walks
// the graph.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"

namespace deit {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);
// The element count. std::invalid_argument naming the shape for a negative dimension, or for a
// count past int64 (a size from a command line or a file, multiplied out).
int64_t shape_numel(const Shape& shape);

class Rng;
struct Node;

// Memory owned by one allocator; returned to it when the last tensor viewing it goes away.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  size_t offset = 0;  // bytes from storage->data
  Shape shape;
  DType dtype = DType::f32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;  // leaves only: accumulated by backward
  std::shared_ptr<TensorImpl> grad_home;  // leaves only: where backward accumulates, if set
  std::shared_ptr<Node> grad_fn;     // the recorded op that produced this tensor, if any
  size_t grad_fn_output = 0;         // which of grad_fn's outputs this tensor is
  std::string name;
  // fp32 CUDA parameters only: the bf16 copy of the values that the CUDA ops read
  // (engine/parameters.h). copy_from and fill_ keep it current; the CUDA optimizers rewrite it.
  std::shared_ptr<TensorImpl> bf16_copy;
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  // Host data copied in; T decides the dtype.
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape,
                            Device device = Device::cpu());
  // Normal(0, std) on the host (f32 or f64), then moved to `device`.
  static Tensor randn(const Shape& shape, Rng& rng, double std = 1.0, DType dtype = DType::f32,
                      Device device = Device::cpu());

  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  int dim() const { return static_cast<int>(shape().size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape()); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype()); }
  std::string describe() const;  // e.g. "f32 (2, 3) on cpu"

  void* raw_data() const;
  template <typename T>
  T* data() const {
    if (dtype() != dtype_of<T>::value)
      throw std::logic_error(std::string("tensor is ") + dtype_name(dtype()) + ", accessed as " +
                             dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw_data());
  }
  // Host copy of the elements, converted to T (float, double or int32_t) from any dtype.
  template <typename T>
  std::vector<T> to_vector() const;
  double item() const;  // the single element of a one-element tensor, as double

  // A copy on `device` (*this itself when it is there already).
  Tensor to(Device device) const;
  // The values converted to `dtype` (*this itself when it is that already): from any dtype to f32,
  // f64 or bf16 (rounded to nearest even); a conversion to u8 or i32 throws std::invalid_argument.
  Tensor to(DType dtype) const;
  Tensor clone() const;  // the values only (no grad, no bf16 copy)
  // Same shape and dtype, any devices. A copy that involves the host waits for it to finish; a copy
  // between device tensors is only enqueued on the compute stream. std::invalid_argument for a
  // source that partly overlaps the tensor (views of one storage); copy a clone() of it instead.
  void copy_from(const Tensor& src);
  // Every element set to `value`, rounded to f32 / bf16 as a cast does. u8 and i32 take only the
  // whole numbers they hold (std::invalid_argument otherwise). On a CUDA device f32, bf16 (and any
  // dtype for 0) are filled by a kernel, without a host copy; other dtypes copy a host tensor.
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // Views: shared storage, and none of the viewed tensor's autograd state (requires_grad, .grad,
  // producing node, gradient home); engine/ops/shape.h has the recorded reshape.
  Tensor view(const Shape& shape) const;  // one dimension may be -1
  Tensor slice(int64_t begin, int64_t end) const;  // rows [begin, end) of the leading dimension

  bool requires_grad() const { return impl().requires_grad; }
  Tensor& set_requires_grad(bool value);
  Tensor grad() const { return Tensor(impl().grad); }
  void set_grad(const Tensor& grad) { impl().grad = grad.impl_; }
  // A leaf's gradient home (engine/autograd.h): memory of the leaf's shape, dtype and device that
  // backward accumulates the leaf's gradient into, in place, so that .grad is the home rather than
  // new memory each step (the gradient reducer's buckets, engine/gradient_reducer.h). An undefined
  // home goes back to new memory. std::invalid_argument for a home unlike the leaf.
  Tensor grad_home() const { return Tensor(impl().grad_home); }
  void set_grad_home(const Tensor& home);
  const std::string& name() const { return impl().name; }
  Tensor& set_name(std::string name);

  TensorImpl& impl() const;
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same_storage(const Tensor& other) const;

  // The bf16 copy of an fp32 CUDA tensor (a parameter's master weights), made by
  // attach_bf16_copy(); undefined when there is none.
  Tensor bf16_copy() const { return Tensor(impl().bf16_copy); }
  void attach_bf16_copy();
  // Recasts the values into the bf16 copy, if there is one (enqueued, no wait). copy_from and
  // fill_ do it themselves; call it after anything else wrote the values in place, such as a
  // collective (engine/communicator.h).
  void refresh_bf16_copy() const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// Tensors under names, in a fixed order: parameters, optimizer and EMA state, file contents.
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

}  // namespace deit
