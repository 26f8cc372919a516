#include "engine/ops/tokens.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/tokens.h"

namespace deit::ops {

using detail::check;
using detail::data_or_null;
using detail::empty_if;

Tensor patch_unfold(const Tensor& image, int64_t patch) {
  check(image.dim() == 4 && patch > 0 && image.size(2) >= patch && image.size(3) >= patch,
        "patch_unfold", "image " + image.describe() + " is not (B, C, H, W) of at least one " +
                            std::to_string(patch) + "-pixel patch");
  const int64_t B = image.size(0), Cin = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t patches_per_image = (H / patch) * (W / patch);
  Tensor out = Tensor::empty({B, patches_per_image, Cin * patch * patch}, image.dtype(),
                             image.device());
  detail::dispatch_cpu_floating("patch_unfold", {&image}, [&](auto zero) {
    using T = decltype(zero);
    kernels::patch_unfold_cpu<T>(image.data<T>(), out.data<T>(), B, Cin, H, W, patch);
  });
  if (needs_recording({&image}))
    record("patch_unfold", out, {&image}, {}, [B, Cin, H, W, patch](Node&, const Tensor& dout) {
      Tensor dimage = Tensor::empty({B, Cin, H, W}, dout.dtype(), dout.device());
      detail::dispatch_cpu_floating("patch_unfold backward", {&dout}, [&](auto zero) {
        using T = decltype(zero);
        kernels::patch_fold_cpu<T>(dout.data<T>(), dimage.data<T>(), B, Cin, H, W, patch);
      });
      return std::vector<Tensor>{dimage};
    });
  return out;
}

Tensor pos_embed_cls(const Tensor& x, const Tensor& pos, const Tensor& cls) {
  check(x.dim() == 3, "pos_embed_cls", "x " + x.describe() + " is not (B, N, C)");
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  check(pos.shape() == Shape{1, N, C} && cls.shape() == Shape{1, 1, C}, "pos_embed_cls",
        "pos " + pos.describe() + " must be (1, " + std::to_string(N) + ", " + std::to_string(C) +
            ") and cls " + cls.describe() + " (1, 1, " + std::to_string(C) + ")");
  Tensor out = Tensor::empty({B, 1 + N, C}, x.dtype(), x.device());
  detail::dispatch_cpu_floating("pos_embed_cls", {&x, &pos, &cls}, [&](auto zero) {
    using T = decltype(zero);
    kernels::pos_embed_cls_forward_cpu<T>(x.data<T>(), pos.data<T>(), cls.data<T>(),
                                          out.data<T>(), B, N, C);
  });
  if (needs_recording({&x, &pos, &cls}))
    record("pos_embed_cls", out, {&x, &pos, &cls}, {}, [B, N, C](Node& node, const Tensor& dout) {
      Tensor dx = node.needs_input_grad[0] ? Tensor::empty({B, N, C}, dout.dtype(), dout.device())
                                           : Tensor();
      Tensor dpos = node.needs_input_grad[1]
                        ? Tensor::empty({1, N, C}, dout.dtype(), dout.device()) : Tensor();
      Tensor dcls = node.needs_input_grad[2]
                        ? Tensor::empty({1, 1, C}, dout.dtype(), dout.device()) : Tensor();
      detail::dispatch_cpu_floating("pos_embed_cls backward", {&dout}, [&](auto zero) {
        using T = decltype(zero);
        kernels::pos_embed_cls_backward_cpu<T>(dout.data<T>(), data_or_null<T>(dx),
                                               data_or_null<T>(dpos), data_or_null<T>(dcls), B, N,
                                               C);
      });
      return std::vector<Tensor>{dx, dpos, dcls};
    });
  return out;
}

Tensor cls_select(const Tensor& x) {
  check(x.dim() == 3, "cls_select", "x " + x.describe() + " is not (B, T, C)");
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2);
  Tensor out = Tensor::empty({B, C}, x.dtype(), x.device());
  detail::dispatch_cpu_floating("cls_select", {&x}, [&](auto zero) {
    using T = decltype(zero);
    kernels::cls_select_forward_cpu<T>(x.data<T>(), out.data<T>(), B, Tn, C);
  });
  if (needs_recording({&x}))
    record("cls_select", out, {&x}, {}, [B, Tn, C](Node&, const Tensor& dout) {
      Tensor dx = Tensor::empty({B, Tn, C}, dout.dtype(), dout.device());
      detail::dispatch_cpu_floating("cls_select backward", {&dout}, [&](auto zero) {
        using T = decltype(zero);
        kernels::cls_select_backward_cpu<T>(dout.data<T>(), dx.data<T>(), B, Tn, C);
      });
      return std::vector<Tensor>{dx};
    });
  return out;
}

}  // namespace deit::ops
