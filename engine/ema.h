// An exponential moving average of the model's weights, as timm's ModelEma / ModelEmaV2 keep it
// (DeiT III keeps one, decay 0.99996, but reports the raw weights): it starts as a copy of the
// weights and, after every optimizer step, becomes decay * ema + (1 - decay) * weights.
#pragma once
#include "engine/optimizer.h"
#include "engine/parameters.h"

namespace deit {

class WeightEma {
 public:
  // Copies the current values of every parameter (main.py builds its EMA right after the model,
  // before any step, and after loading --finetune weights).
  explicit WeightEma(const ParameterRegistry& params, double decay = 0.99996);

  // One update from the parameters' current values; call after each optimizer step. Throws
  // std::invalid_argument when `params` is not the registry this EMA was built from (names,
  // shapes).
  void update(const ParameterRegistry& params);

  double decay() const { return decay_; }
  // The averaged weights under the parameters' names: what evaluation or export of the EMA model
  // reads, and what a checkpoint saves. Live tensors, not copies.
  const NamedTensors& state() const { return averages_; }
  // Restores what state() returned; same errors as Optimizer::load_state.
  void load_state(const NamedTensors& state);

 private:
  NamedTensors averages_;
  double decay_;
};

}  // namespace deit
