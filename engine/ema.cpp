#include "engine/ema.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"

namespace deit {

WeightEma::WeightEma(const ParameterRegistry& params, double decay) : decay_(decay) {
  if (!(decay >= 0 && decay <= 1))
    throw std::invalid_argument("weight EMA: decay must be in [0, 1], got " +
                                std::to_string(decay));
  averages_.reserve(params.size());
  for (const Parameter& p : params.all()) averages_.emplace_back(p.name, p.value.clone());
}

void WeightEma::update(const ParameterRegistry& params) {
  NoGrad no_grad;
  const auto& all = params.all();
  if (all.size() != averages_.size())
    throw std::invalid_argument("weight EMA: built over " + std::to_string(averages_.size()) +
                                " parameters, updated from " + std::to_string(all.size()));
  for (size_t i = 0; i < all.size(); ++i) {
    const Tensor& value = all[i].value;
    Tensor& average = averages_[i].second;
    if (all[i].name != averages_[i].first || value.shape() != average.shape())
      throw std::invalid_argument("weight EMA: parameter " + std::to_string(i) + " is '" +
                                  all[i].name + "' " + value.describe() + ", the EMA holds '" +
                                  averages_[i].first + "' " + average.describe());
    ops::detail::dispatch_cpu_floating("weight EMA", {&average, &value}, [&](auto zero) {
      using T = decltype(zero);
      kernels::ema_update_cpu<T>(average.data<T>(), value.data<T>(), decay_, average.numel());
    });
  }
}

void WeightEma::load_state(const NamedTensors& state) {
  load_named_tensors("weight EMA state", averages_, state);
}

}  // namespace deit
