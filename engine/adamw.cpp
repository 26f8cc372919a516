#include "engine/ops/op_utils.h"
#include "engine/optimizer.h"

namespace deit {

AdamW::AdamW(const ParameterRegistry& params, const OptimizerOptions& options)
    : Optimizer(params, options) {}

void AdamW::update(const std::vector<Slot*>& active, double grad_scale, double /*grad_norm*/) {
  for (Slot* slot : active) {
    Tensor& param = slot->param.value;
    const Tensor grad = param.grad();
    // torch keeps the step count per parameter: a parameter that missed a step (no gradient) has
    // its own, smaller, bias correction.
    const kernels::AdamStep adam = adam_step(slot->steps, grad_scale);
    ops::detail::dispatch_cpu_floating("adamw", {&param, &grad}, [&](auto zero) {
      using T = decltype(zero);
      kernels::adamw_update_cpu<T>(param.data<T>(), grad.data<T>(), slot->exp_avg.data<T>(),
                                   slot->exp_avg_sq.data<T>(), param.numel(), adam, lr(),
                                   weight_decay_of(*slot));
    });
  }
}

#if DEIT_HAVE_CUDA
void AdamW::update_on_device(kernels::CudaParamTable& table, cudaStream_t stream) {
  kernels::adamw_step_cuda(table, stream);
}
#endif

}  // namespace deit
