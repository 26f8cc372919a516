// An exponential moving average of the model's weights, as timm's ModelEma / ModelEmaV2 keep it
// (DeiT III keeps one, decay 0.99996, but reports the raw weights): it starts as a copy of the
// weights and, after every optimizer step, becomes decay * ema + (1 - decay) * weights.
// The weight of the step k steps back is (1 - decay) decay^k: the average remembers about
// 1 / (1 - decay) steps, 25,000 at 0.99996 (some 40 epochs of ImageNet-1k at batch 2048), and
// the initial weights keep a share decay^t after t steps. timm's ModelEma has no warm-up of the
// decay, so an average of a short run is still mostly its initialisation.
#pragma once
#include "engine/optimizer.h"
#include "engine/parameters.h"

namespace deit {

class WeightEma {
 public:
  // Copies the current values of every parameter (main.py builds its EMA right after the model,
  // before any step, and after loading --finetune weights). On CUDA the averages are fp32 on the
  // parameters' device and one multi-tensor launch updates them all (kernels/optimizer.h).
  // std::invalid_argument for parameters on more than one device, or CUDA parameters not f32.
  explicit WeightEma(const ParameterRegistry& params, double decay = 0.99996);
  ~WeightEma();

  // One update from the parameters' current values; call after each optimizer step. Throws
  // std::invalid_argument when `params` is not the registry this EMA was built from (names,
  // shapes; on CUDA, the very tensors). On CUDA it is only enqueued: no host synchronisation.
  void update(const ParameterRegistry& params);

  double decay() const { return decay_; }
  // The averaged weights under the parameters' names: what evaluation or export of the EMA model
  // reads, and what a checkpoint saves. Live tensors, not copies.
  const NamedTensors& state() const { return averages_; }
  // Restores what state() returned (by name, in any order). Throws std::runtime_error naming a
  // missing, unexpected or mis-shaped entry, with nothing modified (load_named_tensors).
  void load_state(const NamedTensors& state);

 private:
  NamedTensors averages_;
  double decay_;
#if DEIT_HAVE_CUDA
  // CUDA parameters: the table of (parameter, average) addresses, fixed at construction, and the
  // parameter tensors it reads (held, so the addresses stay valid).
  std::unique_ptr<kernels::CudaParamTable> device_table_;
  std::vector<Tensor> device_sources_;
#endif
};

}  // namespace deit
