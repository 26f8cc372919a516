// The named trainable tensors of a model, in registration order. Names are timm's (RECIPE.md
// section 1) so checkpoints and safetensors exports need no renaming table. Each parameter says
// whether weight decay (and with it LAMB's trust ratio) applies to it.
//
// On a CUDA device a parameter is three tensors (DESIGN.md "Precision"): `value` holds the fp32
// master weights, its .grad() the fp32 gradient the ops produce, and value.bf16_copy() the bf16
// copy that the CUDA ops read in forward and backward. Writing the value through copy_from or fill_
// refreshes the copy; the CUDA optimizers rewrite it with every update.
#pragma once
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/tensor.h"

namespace deit {

struct Parameter {
  std::string name;
  Tensor value;  // requires_grad; its .grad() accumulates over backward calls
  bool weight_decay = false;
};

class ParameterRegistry {
 public:
  // Registers `value` (marked requires_grad and named; an f32 CUDA tensor gets its bf16 copy) and
  // returns it (a handle sharing it); throws if the name is taken.
  Tensor add(const std::string& name, Tensor value, bool weight_decay);

  // Read-only: a name, position or tensor changed through it would leave find() and get() behind.
  // The values are written through the tensors (a Tensor is a handle: a copy of one shares it).
  const std::vector<Parameter>& all() const { return params_; }
  const Parameter* find(const std::string& name) const;
  // Throws std::out_of_range naming the missing parameter.
  const Tensor& get(const std::string& name) const;

  size_t size() const { return params_.size(); }
  int64_t element_count() const;
  // Drops every parameter's .grad (PyTorch's zero_grad(set_to_none=True)): the next backward's
  // first gradient starts it afresh, in its gradient home if it has one.
  void zero_grad();

 private:
  std::vector<Parameter> params_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace deit
