#include <cmath>

#include "engine/ops/op_utils.h"
#include "engine/optimizer.h"

namespace deit {

Lamb::Lamb(const ParameterRegistry& params, const OptimizerOptions& options)
    : Optimizer(params, options) {}

void Lamb::update(const std::vector<Slot*>& active, double grad_scale, double grad_norm) {
  // LAMB's own clip, on top of any --clip-grad: divide by norm / max_grad_norm when the norm
  // (of the gradients as already scaled) exceeds max_grad_norm.
  const double max_norm = options().max_grad_norm;
  if (max_norm > 0 && grad_norm > max_norm) grad_scale /= grad_norm / max_norm;
  const kernels::AdamStep adam = adam_step(step_count(), grad_scale);

  for (Slot* slot : active) {
    Tensor& param = slot->param.value;
    const Tensor grad = param.grad();
    const double weight_decay = weight_decay_of(*slot);
    Tensor update = Tensor::empty(param.shape(), param.dtype());
    ops::detail::dispatch_cpu_floating("lamb", {&param, &grad}, [&](auto zero) {
      using T = decltype(zero);
      kernels::lamb_update_cpu<T>(param.data<T>(), grad.data<T>(), slot->exp_avg.data<T>(),
                                  slot->exp_avg_sq.data<T>(), update.data<T>(), param.numel(),
                                  adam, weight_decay);
    });
    // Layer-wise adaptation (You et al., LAMB): the step is rescaled by trust = ||p|| / ||update||
    // so that each tensor moves by lr times its own norm, whatever its gradients' scale,
    // which is what lets large batches train at large learning rates. Only where weight decay
    // applies (timm's always_adapt=False): biases, norms, gammas, pos_embed and cls_token take
    // plain Adam steps.
    // A zero weight norm (a freshly zeroed tensor) or a zero update norm leaves the ratio at 1.
    double trust = 1.0;
    if (weight_decay != 0) {
      const double param_norm = std::sqrt(squared_norm(param));
      const double update_norm = std::sqrt(squared_norm(update));
      if (param_norm > 0 && update_norm > 0) trust = param_norm / update_norm;
    }
    ops::detail::dispatch_cpu_floating("lamb", {&param, &update}, [&](auto zero) {
      using T = decltype(zero);
      kernels::add_scaled_cpu<T>(param.data<T>(), update.data<T>(), -lr() * trust, param.numel());
    });
  }
}

#if DEIT_HAVE_CUDA
void Lamb::update_on_device(kernels::CudaParamTable& table, cudaStream_t stream) {
  kernels::lamb_step_cuda(table, stream);
}
#endif

}  // namespace deit
