#include "engine/autograd.h"

#include <algorithm>
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
  record(op, std::vector<Tensor*>{&output}, inputs, std::move(saved),
         [fn = std::move(backward_fn)](Node& self, const std::vector<Tensor>& grad_outputs) {
           return fn(self, grad_outputs[0]);
         });
}

void record(const std::string& op, const std::vector<Tensor*>& outputs,
            const std::vector<const Tensor*>& inputs, std::vector<Tensor> saved,
            Node::MultiBackwardFn backward_fn) {
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
  node->grad_outputs.resize(outputs.size());
  for (size_t k = 0; k < outputs.size(); ++k) {
    TensorImpl& output = outputs[k]->impl();
    output.grad_fn = node;
    output.grad_fn_output = k;
    output.requires_grad = true;
  }
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
// With `copy_into_leaf`, a leaf's first gradient is copied rather than shared (see the hooked
// backward in autograd.h).
static void route_grad(TensorImpl& target, const Tensor& g, bool copy_into_leaf) {
  if (target.grad_fn) {
    if (target.grad_fn->released)
      throw std::logic_error("backward through a graph whose tape was already used or cleared");
    accumulate_grad(target.grad_fn->grad_outputs.at(target.grad_fn_output), g);
  } else {
    Tensor grad(target.grad);
    if (!grad.defined() && copy_into_leaf)
      grad = g.clone();
    else
      accumulate_grad(grad, g);
    target.grad = grad.impl_ptr();
  }
}

// The leaves among the tape's inputs, grouped by the tape index of the earliest node that uses
// each: walking the tape backwards, a leaf's gradient is final once that node has run.
static std::vector<std::vector<std::shared_ptr<TensorImpl>>> leaves_by_first_use() {
  std::vector<std::vector<std::shared_ptr<TensorImpl>>> final_after(t_tape.size());
  std::unordered_set<const TensorImpl*> seen;
  for (size_t i = 0; i < t_tape.size(); ++i)
    for (const auto& input : t_tape[i]->inputs)
      if (input && !input->grad_fn && seen.insert(input.get()).second)
        final_after[i].push_back(input);
  return final_after;
}

static void run_backward(const Tensor& root, const Tensor& grad_root, const GradReadyHook* hook) {
  if (!root.requires_grad())
    throw std::invalid_argument("backward() on a tensor that does not require grad");
  if (grad_root.shape() != root.shape())
    throw std::invalid_argument("backward(): gradient " + grad_root.describe() + " for " +
                                root.describe());
  NoGrad no_grad;  // the backward functions run ops; they must not record
  const auto final_after = hook ? leaves_by_first_use()
                                : std::vector<std::vector<std::shared_ptr<TensorImpl>>>();
  const bool copy_into_leaf = hook != nullptr;
  route_grad(root.impl(), grad_root, copy_into_leaf);
  for (size_t i = t_tape.size(); i-- > 0;) {
    Node& node = *t_tape[i];
    const bool reached = std::any_of(node.grad_outputs.begin(), node.grad_outputs.end(),
                                     [](const Tensor& g) { return g.defined(); });
    if (reached) {
      std::vector<Tensor> grads = node.backward(node, node.grad_outputs);
      if (grads.size() != node.inputs.size())
        throw std::logic_error("op " + node.op + " returned " + std::to_string(grads.size()) +
                               " gradients for " + std::to_string(node.inputs.size()) + " inputs");
      for (size_t k = 0; k < grads.size(); ++k)
        if (node.needs_input_grad[k] && grads[k].defined())
          route_grad(*node.inputs[k], grads[k], copy_into_leaf);
    }
    node.grad_outputs.clear();
    node.saved.clear();
    node.released = true;
    if (hook)
      for (const auto& leaf : final_after[i]) (*hook)(Tensor(leaf));
  }
  t_tape.clear();
}

void backward(const Tensor& root) {
  if (root.numel() != 1)
    throw std::invalid_argument("backward() without a gradient needs a one-element tensor, got " +
                                root.describe());
  backward(root, Tensor::full(root.shape(), 1.0, root.dtype(), root.device()));
}

void backward(const Tensor& root, const Tensor& grad_root) {
  run_backward(root, grad_root, nullptr);
}

void backward(const Tensor& root, const Tensor& grad_root, const GradReadyHook& on_grad_ready) {
  run_backward(root, grad_root, &on_grad_ready);
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
