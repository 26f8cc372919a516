#include "engine/ops/tokens.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"
#include "kernels/tokens.h"

namespace deit::ops {

using detail::check;
using detail::data_or_null;

Tensor patch_unfold(const Tensor& image, int64_t patch) {
  check(image.dim() == 4 && patch > 0 && image.size(2) >= patch && image.size(3) >= patch,
        "patch_unfold", "image " + image.describe() + " is not (B, C, H, W) of at least one " +
                            std::to_string(patch) + "-pixel patch");
  const int64_t B = image.size(0), Cin = image.size(1), H = image.size(2), W = image.size(3);
  const int64_t patches_per_image = (H / patch) * (W / patch);
  // On CUDA the image is fp32 (the augmentation stage's output) and the patches bf16: the unfold
  // kernel does the cast the patch-embedding GEMM needs.
  Tensor out = Tensor::empty({B, patches_per_image, Cin * patch * patch},
                             detail::bf16_on_cuda(image), image.device());
  detail::dispatch("patch_unfold", {&image},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::patch_unfold_cpu<T>(image.data<T>(), out.data<T>(), B, Cin, H, W, patch);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        kernels::patch_unfold_cuda(detail::cuda_data<float>("patch_unfold", "image", image),
                                   out.data<kernels::bf16_bits>(), B, Cin, H, W, patch,
                                   cuda.stream);
      }));
  if (needs_recording({&image}))
    record("patch_unfold", out, {&image}, {}, [B, Cin, H, W, patch](Node&, const Tensor& dout) {
      Tensor dimage = Tensor::empty({B, Cin, H, W}, detail::fp32_on_cuda(dout), dout.device());
      detail::dispatch("patch_unfold backward", {&dout},
          [&](auto zero) {
            using T = decltype(zero);
            kernels::patch_fold_cpu<T>(dout.data<T>(), dimage.data<T>(), B, Cin, H, W, patch);
          },
          DEIT_CUDA_PATH([&](CudaContext& cuda) {
            kernels::patch_fold_cuda(
                detail::cuda_data<kernels::bf16_bits>("patch_unfold backward", "dout", dout),
                dimage.data<float>(), B, Cin, H, W, patch, cuda.stream);
          }));
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
  // On CUDA x is the patch-embedding GEMM's bf16 output and out, which starts the residual
  // stream, is fp32 (bf16 would round LayerScale's small block updates away).
  Tensor out = Tensor::empty({B, 1 + N, C}, detail::fp32_on_cuda(x), x.device());
  detail::dispatch("pos_embed_cls", {&x, &pos, &cls},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::pos_embed_cls_forward_cpu<T>(x.data<T>(), pos.data<T>(), cls.data<T>(),
                                              out.data<T>(), B, N, C);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        // pos and cls are read as their fp32 master weights: the sum is fp32 anyway.
        const char* op = "pos_embed_cls";
        kernels::pos_embed_cls_forward_cuda(detail::cuda_data<kernels::bf16_bits>(op, "x", x),
                                            detail::cuda_data<float>(op, "pos", pos),
                                            detail::cuda_data<float>(op, "cls", cls),
                                            out.data<float>(), B, N, C, cuda.stream);
      }));
  if (needs_recording({&x, &pos, &cls}))
    record("pos_embed_cls", out, {&x, &pos, &cls}, {}, [B, N, C](Node& node, const Tensor& dout) {
      // dout is fp32 (f64 in the CPU gradient checks); on CUDA dx goes to the GEMM in bf16.
      const DType param_grad_dtype = detail::fp32_on_cuda(dout);
      Tensor dx = node.needs_input_grad[0]
                      ? Tensor::empty({B, N, C}, detail::bf16_on_cuda(dout), dout.device())
                      : Tensor();
      Tensor dpos = node.needs_input_grad[1]
                        ? Tensor::empty({1, N, C}, param_grad_dtype, dout.device()) : Tensor();
      Tensor dcls = node.needs_input_grad[2]
                        ? Tensor::empty({1, 1, C}, param_grad_dtype, dout.device()) : Tensor();
      detail::dispatch("pos_embed_cls backward", {&dout},
          [&](auto zero) {
            using T = decltype(zero);
            kernels::pos_embed_cls_backward_cpu<T>(dout.data<T>(), data_or_null<T>(dx),
                                                   data_or_null<T>(dpos), data_or_null<T>(dcls),
                                                   B, N, C);
          },
          DEIT_CUDA_PATH([&](CudaContext& cuda) {
            kernels::pos_embed_cls_backward_cuda(
                detail::cuda_data<float>("pos_embed_cls backward", "dout", dout),
                data_or_null<kernels::bf16_bits>(dx), data_or_null<float>(dpos),
                data_or_null<float>(dcls), B, N, C, cuda.stream);
          }));
      return std::vector<Tensor>{dx, dpos, dcls};
    });
  return out;
}

Tensor cls_select(const Tensor& x) {
  // T >= 1: with no token the kernel would read a class token that is not there.
  check(x.dim() == 3 && x.size(1) >= 1, "cls_select",
        "x " + x.describe() + " is not (B, T, C) with a class token (T >= 1)");
  const int64_t B = x.size(0), Tn = x.size(1), C = x.size(2);
  // The kernel's dtype, not x's: a wrong x then fails its own check below, by name.
  Tensor out = Tensor::empty({B, C}, detail::fp32_on_cuda(x), x.device());
  detail::dispatch("cls_select", {&x},
      [&](auto zero) {
        using T = decltype(zero);
        kernels::cls_select_forward_cpu<T>(x.data<T>(), out.data<T>(), B, Tn, C);
      },
      DEIT_CUDA_PATH([&](CudaContext& cuda) {
        // fp32 on CUDA: x is the residual stream.
        kernels::cls_select_forward_cuda(detail::cuda_data<float>("cls_select", "x", x),
                                         out.data<float>(), B, Tn, C, cuda.stream);
      }));
  if (needs_recording({&x}))
    record("cls_select", out, {&x}, {}, [B, Tn, C](Node&, const Tensor& dout) {
      Tensor dx = Tensor::empty({B, Tn, C}, dout.dtype(), dout.device());
      detail::dispatch("cls_select backward", {&dout},
          [&](auto zero) {
            using T = decltype(zero);
            kernels::cls_select_backward_cpu<T>(dout.data<T>(), dx.data<T>(), B, Tn, C);
          },
          DEIT_CUDA_PATH([&](CudaContext& cuda) {
            kernels::cls_select_backward_cuda(
                detail::cuda_data<float>("cls_select backward", "dout", dout), dx.data<float>(), B,
                Tn, C, cuda.stream);
          }));
      return std::vector<Tensor>{dx};
    });
  return out;
}

}  // namespace deit::ops
