#include "engine/ops/shape.h"

#include "engine/autograd.h"

namespace deit::ops {

Tensor reshape(const Tensor& x, const Shape& shape) {
  Tensor out = x.view(shape);
  if (needs_recording({&x})) {
    const Shape in_shape = x.shape();
    record("reshape", out, {&x}, {}, [in_shape](Node&, const Tensor& dout) {
      return std::vector<Tensor>{dout.view(in_shape)};
    });
  }
  return out;
}

}  // namespace deit::ops
