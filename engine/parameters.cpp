#include "engine/parameters.h"

#include <stdexcept>

namespace deit {

Tensor ParameterRegistry::add(const std::string& name, Tensor value, bool weight_decay) {
  if (index_.count(name)) throw std::invalid_argument("parameter '" + name + "' registered twice");
  value.set_requires_grad(true).set_name(name);
  if (value.device().is_cuda() && value.dtype() == DType::f32) value.attach_bf16_copy();
  index_[name] = params_.size();
  params_.push_back({name, std::move(value), weight_decay});
  return params_.back().value;
}

const Parameter* ParameterRegistry::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

const Tensor& ParameterRegistry::get(const std::string& name) const {
  const Parameter* p = find(name);
  if (!p) throw std::out_of_range("no parameter named '" + name + "'");
  return p->value;
}

int64_t ParameterRegistry::element_count() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.value.numel();
  return n;
}

void ParameterRegistry::zero_grad() {
  for (auto& p : params_) p.value.set_grad(Tensor());
}

}  // namespace deit
