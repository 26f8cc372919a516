#include "engine/ema.h"

#include "engine/autograd.h"
#include "engine/ops/op_utils.h"

#if DEIT_HAVE_CUDA
#include "engine/stream.h"
#endif

namespace deit {

WeightEma::WeightEma(const ParameterRegistry& params, double decay) : decay_(decay) {
  if (!(decay >= 0 && decay <= 1))
    throw std::invalid_argument("weight EMA: decay must be in [0, 1], got " +
                                std::to_string(decay));
  const std::vector<Parameter>& all = params.all();
  // The averages live beside the parameters, and on CUDA one launch on the first one's device
  // updates them all: parameters on several devices are refused here, where that can be said,
  // rather than met in update() as tensors this EMA was not built over.
  for (const Parameter& p : all)
    if (p.value.device() != all.front().value.device())
      throw std::invalid_argument("weight EMA: parameter '" + p.name + "' is on " +
                                  p.value.device().str() + ", '" + all.front().name + "' on " +
                                  all.front().value.device().str() +
                                  "; all parameters must be on one device");
  averages_.reserve(params.size());
  for (const Parameter& p : all) averages_.emplace_back(p.name, p.value.clone());
  const bool on_cuda = !averages_.empty() && averages_.front().second.device().is_cuda();
  if (!on_cuda) return;
#if DEIT_HAVE_CUDA
  std::vector<kernels::CudaParam> table;
  for (size_t i = 0; i < averages_.size(); ++i) {
    const Tensor& value = all[i].value;
    Tensor& average = averages_[i].second;
    if (average.dtype() != DType::f32)
      throw std::invalid_argument("weight EMA: parameter '" + averages_[i].first + "' is " +
                                  value.describe() + "; CUDA parameters must be f32");
    kernels::CudaParam entry;
    entry.param = value.data<float>();
    entry.ema = average.data<float>();
    entry.n = value.numel();
    table.push_back(entry);
    device_sources_.push_back(value);
  }
  device_table_ = std::make_unique<kernels::CudaParamTable>(table);
#endif
}

WeightEma::~WeightEma() = default;

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
    if (value.device().is_cuda()) {
#if DEIT_HAVE_CUDA
      // Updated below, in one launch over the addresses taken at construction.
      if (!device_table_ || value.raw_data() != device_sources_[i].raw_data())
        throw std::invalid_argument("weight EMA: parameter '" + all[i].name +
                                    "' is not the tensor this EMA was built over");
#endif
      continue;
    }
    ops::detail::dispatch_cpu_floating("weight EMA", {&average, &value}, [&](auto zero) {
      using T = decltype(zero);
      kernels::ema_update_cpu<T>(average.data<T>(), value.data<T>(), decay_, average.numel());
    });
  }
#if DEIT_HAVE_CUDA
  if (device_table_)
    kernels::ema_update_cuda(*device_table_, decay_,
                             compute_stream(averages_.front().second.device().index));
#endif
}

void WeightEma::load_state(const NamedTensors& state) {
  load_named_tensors("weight EMA state", averages_, state);
}

}  // namespace deit
