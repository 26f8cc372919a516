#include "engine/autograd.h"

#include <stdexcept>
#include <unordered_set>

#include "engine/ops/elementwise.h"

namespace deit {

namespace {
thread_local bool t_grad_enabled = true;
thread_local std::vector<std::shared_ptr<Node>> t_tape;
}  // namespace

bool grad_enabled() { return t_grad_enabled; }

NoGrad::NoGrad() : previous_(t_grad_enabled) { t_grad_enabled = false; }
NoGrad::~NoGrad() { t_grad_enabled = previous_; }

bool needs_recording(const std::vector<const Tensor*>& inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

void record(const std::string& op, Tensor& output, const std::vector<const Tensor*>& inputs,
            std::vector<Tensor> saved, Node::BackwardFn backward_fn) {
  auto node = std::make_shared<Node>();
  node->op = op;
  for (const Tensor* t : inputs) {
    const bool wants = t && t->defined() && t->requires_grad();
    node->inputs.push_back(wants ? t->impl_ptr() : nullptr);
    node->needs_input_grad.push_back(wants);
  }
  // Saved tensors are kept as detached views: a saved output must not point back at its own node.
  for (Tensor& t : saved)
    if (t.defined()) t = t.view(t.shape());
  node->saved = std::move(saved);
  node->backward = std::move(backward_fn);
  output.impl().grad_fn = node;
  output.impl().requires_grad = true;
  t_tape.push_back(std::move(node));
}

void accumulate_grad(Tensor& dst, const Tensor& g) {
  if (!dst.defined()) {
    dst = g;
    return;
  }
  if (dst.shape() != g.shape())
    throw std::logic_error("gradient of shape " + shape_str(g.shape()) + " for a tensor of shape " +
                           shape_str(dst.shape()));
  dst = ops::add(dst, g);
}

// Sends a gradient to where it belongs: the node that produced the tensor, or the leaf's .grad.
static void route_grad(TensorImpl& target, const Tensor& g) {
  if (target.grad_fn) {
    if (target.grad_fn->released)
      throw std::logic_error("backward through a graph whose tape was already used or cleared");
    accumulate_grad(target.grad_fn->grad_output, g);
  } else {
    Tensor grad(target.grad);
    accumulate_grad(grad, g);
    target.grad = grad.impl_ptr();
  }
}

void backward(const Tensor& root) {
  if (root.numel() != 1)
    throw std::invalid_argument("backward() without a gradient needs a one-element tensor, got " +
                                root.describe());
  backward(root, Tensor::full(root.shape(), 1.0, root.dtype(), root.device()));
}

void backward(const Tensor& root, const Tensor& grad_root) {
  if (!root.requires_grad())
    throw std::invalid_argument("backward() on a tensor that does not require grad");
  if (grad_root.shape() != root.shape())
    throw std::invalid_argument("backward(): gradient " + grad_root.describe() + " for " +
                                root.describe());
  NoGrad no_grad;  // the backward functions run ops; they must not record
  route_grad(root.impl(), grad_root);
  for (auto it = t_tape.rbegin(); it != t_tape.rend(); ++it) {
    Node& node = **it;
    if (node.grad_output.defined()) {
      std::vector<Tensor> grads = node.backward(node, node.grad_output);
      if (grads.size() != node.inputs.size())
        throw std::logic_error("op " + node.op + " returned " + std::to_string(grads.size()) +
                               " gradients for " + std::to_string(node.inputs.size()) + " inputs");
      for (size_t i = 0; i < grads.size(); ++i)
        if (node.needs_input_grad[i] && grads[i].defined()) route_grad(*node.inputs[i], grads[i]);
    }
    node.grad_output = Tensor();
    node.saved.clear();
    node.released = true;
  }
  t_tape.clear();
}

size_t tape_size() { return t_tape.size(); }

size_t tape_saved_bytes() {
  std::unordered_set<const Storage*> seen;
  size_t bytes = 0;
  for (const auto& node : t_tape)
    for (const Tensor& t : node->saved)
      if (t.defined() && seen.insert(t.impl().storage.get()).second) bytes += t.impl().storage->bytes;
  return bytes;
}

void clear_tape() {
  for (auto& node : t_tape) {
    node->saved.clear();
    node->released = true;
  }
  t_tape.clear();
}

}  // namespace deit
