#include "engine/autograd.h"

#include <algorithm>
#include <stdexcept>
#include <unordered_set>

#include "engine/ops/elementwise.h"

namespace deit {

namespace {
// Grad mode, per thread: ops record on the tape only while it is on (NoGrad turns it off).
thread_local bool t_grad_enabled = true;
thread_local std::vector<std::shared_ptr<Node>> t_tape;
// Whether the backward walk under way copies a leaf's first gradient (the hooked form, autograd.h):
// a recomputed segment's walk, which runs inside it, routes to the leaves in the same way.
thread_local bool t_copy_into_leaf = false;

// Sets a variable for the lifetime of the object, then puts the old value back.
template <typename T>
class Restore {
 public:
  Restore(T& variable, T value) : variable_(variable), old_(variable) { variable = value; }
  ~Restore() { variable_ = old_; }
  Restore(const Restore&) = delete;
  Restore& operator=(const Restore&) = delete;

 private:
  T& variable_;
  T old_;
};

// Gives the thread an empty tape for the lifetime of the object; then drops what was recorded on
// it and puts the previous tape back.
class FreshTape {
 public:
  FreshTape() { outer_.swap(t_tape); }
  ~FreshTape() {
    clear_tape();
    outer_.swap(t_tape);
  }
  FreshTape(const FreshTape&) = delete;
  FreshTape& operator=(const FreshTape&) = delete;

 private:
  std::vector<std::shared_ptr<Node>> outer_;
};
}  // namespace

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

// The edge a gradient for `t` travels (t requires grad).
static Edge edge_to(const Tensor& t) {
  const TensorImpl& impl = t.impl();
  Edge edge;
  if (impl.grad_fn) {
    edge.node = impl.grad_fn;
    edge.output = impl.grad_fn_output;
  } else {
    edge.leaf = t.impl_ptr();
  }
  edge.shape = impl.shape;
  return edge;
}

// Drops what a node holds once its backward can no longer run.
static void release(Node& node) {
  node.inputs.clear();
  node.saved.clear();
  node.grad_outputs.clear();
  node.backward = nullptr;  // its captures too (sample selections, a recomputed segment)
  node.released = true;
}

void record(const std::string& op, const std::vector<Tensor*>& outputs,
            const std::vector<const Tensor*>& inputs, std::vector<Tensor> saved,
            Node::MultiBackwardFn backward_fn) {
  auto node = std::make_shared<Node>();
  node->op = op;
  for (const Tensor* t : inputs) {
    const bool wants = t && t->defined() && t->requires_grad();
    node->inputs.push_back(wants ? edge_to(*t) : Edge());
    node->needs_input_grad.push_back(wants);
  }
  // Saved tensors are kept as detached views (no grad_fn): a saved output pointing back at its own
  // node would make a shared_ptr cycle, node -> saved tensor -> node, that is never freed.
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

// dst += g, out of place, so a gradient tensor handed to several consumers is never modified.
static void accumulate_grad(Tensor& dst, const Tensor& g) {
  if (!dst.defined()) {
    dst = g;
    return;
  }
  if (dst.shape() != g.shape())
    throw std::logic_error("gradient of shape " + shape_str(g.shape()) + " for a tensor of shape " +
                           shape_str(dst.shape()));
  dst = ops::add(dst, g);
}

// Sends a gradient along an edge: to the node that produced the tensor, or to the leaf's .grad.
// A leaf with a gradient home accumulates there in place. Otherwise, with `copy_into_leaf`, a
// leaf's first gradient is copied rather than shared (see the hooked backward in autograd.h).
static void route_grad(const Edge& edge, const Tensor& g, bool copy_into_leaf) {
  if (edge.node) {
    if (edge.node->released)
      throw std::logic_error("backward through a graph whose tape was already used or cleared");
    accumulate_grad(edge.node->grad_outputs.at(edge.output), g);
  } else {
    TensorImpl& target = *edge.leaf;
    Tensor grad(target.grad);
    Tensor home(target.grad_home);
    if (home.defined() && !grad.defined()) {
      home.copy_from(g);
      grad = home;
    } else if (home.defined() && grad.impl_ptr() == home.impl_ptr()) {
      home.copy_from(ops::add(home, g));
    } else if (!grad.defined() && copy_into_leaf) {
      grad = g.clone();
    } else {
      accumulate_grad(grad, g);
    }
    target.grad = grad.impl_ptr();
  }
}

// The leaves among the tape's inputs, grouped by the tape index of the earliest node that uses
// each: walking the tape backwards, a leaf's gradient is final once that node has run.
static std::vector<std::vector<std::shared_ptr<TensorImpl>>> leaves_by_first_use() {
  std::vector<std::vector<std::shared_ptr<TensorImpl>>> final_after(t_tape.size());
  std::unordered_set<const TensorImpl*> seen;
  for (size_t i = 0; i < t_tape.size(); ++i)
    for (const Edge& input : t_tape[i]->inputs)
      if (input.leaf && seen.insert(input.leaf.get()).second) final_after[i].push_back(input.leaf);
  return final_after;
}

// Walks the tape back from `roots`, seeded with `grad_roots` (an undefined gradient skips its
// root). `private_leaves` are leaves only the caller reads (a recomputed segment's inputs): their
// first gradient is shared even when the others are copied.
static void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
                         const GradReadyHook* hook, bool copy_into_leaf,
                         const std::unordered_set<const TensorImpl*>& private_leaves = {}) {
  for (size_t k = 0; k < roots.size(); ++k) {
    if (!grad_roots[k].defined()) continue;
    if (!roots[k].requires_grad())
      throw std::invalid_argument("backward() on a tensor that does not require grad");
    if (grad_roots[k].shape() != roots[k].shape())
      throw std::invalid_argument("backward(): gradient " + grad_roots[k].describe() + " for " +
                                  roots[k].describe());
  }
  NoGrad no_grad;  // the backward functions run ops; they must not record
  const Restore<bool> copy_mode(t_copy_into_leaf, copy_into_leaf);
  const auto final_after = hook ? leaves_by_first_use()
                                : std::vector<std::vector<std::shared_ptr<TensorImpl>>>();
  auto route = [&](const Edge& edge, const Tensor& g) {
    route_grad(edge, g, copy_into_leaf && !(edge.leaf && private_leaves.count(edge.leaf.get())));
  };
  for (size_t k = 0; k < roots.size(); ++k)
    if (grad_roots[k].defined()) route(edge_to(roots[k]), grad_roots[k]);
  for (size_t i = t_tape.size(); i-- > 0;) {
    Node& node = *t_tape[i];
    const bool reached = std::any_of(node.grad_outputs.begin(), node.grad_outputs.end(),
                                     [](const Tensor& g) { return g.defined(); });
    if (reached) {
      std::vector<Tensor> grads = node.backward(node, node.grad_outputs);
      if (grads.size() != node.inputs.size())
        throw std::logic_error("op " + node.op + " returned " + std::to_string(grads.size()) +
                               " gradients for " + std::to_string(node.inputs.size()) + " inputs");
      for (size_t k = 0; k < grads.size(); ++k) {
        if (!node.needs_input_grad[k] || !grads[k].defined()) continue;
        // Checked here, where the op is known: a wrong shape caught later names no op, or none
        // at all (a leaf's first gradient is taken as it is).
        if (grads[k].shape() != node.inputs[k].shape)
          throw std::logic_error("op " + node.op + " returned a gradient of shape " +
                                 shape_str(grads[k].shape()) + " for its input " +
                                 std::to_string(k) + " of shape " +
                                 shape_str(node.inputs[k].shape));
        route(node.inputs[k], grads[k]);
      }
    }
    release(node);
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

// What backward() needs beyond run_backward's checks: a gradient, and the root's node (if any) on
// this thread's tape. A root another thread recorded would take its gradient into a node this walk
// never reaches: no error, and no gradients anywhere.
static void check_root(const Tensor& root, const Tensor& grad_root) {
  if (!grad_root.defined())
    throw std::invalid_argument("backward(): no gradient given for the root");
  const std::shared_ptr<Node> node = root.defined() ? root.impl().grad_fn : nullptr;
  if (node && !node->released && std::find(t_tape.begin(), t_tape.end(), node) == t_tape.end())
    throw std::logic_error("backward(): the root " + root.describe() +
                           " was recorded on another thread's tape; a thread can differentiate "
                           "only what it recorded");
}

void backward(const Tensor& root, const Tensor& grad_root) {
  check_root(root, grad_root);
  run_backward({root}, {grad_root}, nullptr, false);
}

void backward(const Tensor& root, const Tensor& grad_root, const GradReadyHook& on_grad_ready) {
  check_root(root, grad_root);
  run_backward({root}, {grad_root}, &on_grad_ready, true);
}

// The backward of a recompute_in_backward node: the segment runs again on its saved inputs, on a
// tape of its own, and the walk back through that replay routes the parameters' gradients
// straight into their .grad; the inputs' gradients are returned for the outer walk to route.
static std::vector<Tensor> replay_and_backpropagate(Node& self, const Segment& segment,
                                                    size_t num_inputs,
                                                    const std::vector<Tensor>& grad_outputs) {
  const FreshTape replay_tape;
  const Restore<bool> grad_on(t_grad_enabled, true);
  std::vector<Tensor> inputs;
  std::unordered_set<const TensorImpl*> private_leaves;
  for (size_t k = 0; k < num_inputs; ++k) {
    const Tensor& saved = self.saved[k];
    Tensor input = saved.defined() ? saved.view(saved.shape()) : Tensor();
    if (self.needs_input_grad[k]) {
      input.set_requires_grad(true);
      private_leaves.insert(&input.impl());
    }
    inputs.push_back(input);
  }
  const std::vector<Tensor> outputs = segment(inputs);
  if (outputs.size() != grad_outputs.size())
    throw std::logic_error("recomputed segment " + self.op + " returned " +
                           std::to_string(outputs.size()) + " outputs, not " +
                           std::to_string(grad_outputs.size()));
  std::vector<Tensor> roots, grad_roots;
  for (size_t k = 0; k < outputs.size(); ++k)
    if (grad_outputs[k].defined() && outputs[k].requires_grad()) {
      roots.push_back(outputs[k]);
      grad_roots.push_back(grad_outputs[k]);
    }
  run_backward(roots, grad_roots, nullptr, t_copy_into_leaf, private_leaves);
  std::vector<Tensor> grads(self.inputs.size());  // the leaves' entries stay undefined
  for (size_t k = 0; k < num_inputs; ++k)
    if (self.needs_input_grad[k]) grads[k] = inputs[k].grad();
  return grads;
}

std::vector<Tensor> recompute_in_backward(const std::string& name, const Segment& segment,
                                          const std::vector<Tensor>& inputs) {
  if (!t_grad_enabled) return segment(inputs);
  std::vector<Tensor> outputs;
  std::vector<Tensor> leaves;
  {
    // The first run records on a scratch tape, only to learn which leaves the segment uses; the
    // scratch tape, and every activation it saved, goes when this scope ends.
    const FreshTape scratch_tape;
    outputs = segment(inputs);
    if (t_tape.empty()) return outputs;  // nothing in it needs a gradient
    std::unordered_set<const TensorImpl*> seen;
    for (const Tensor& input : inputs)
      if (input.defined()) seen.insert(&input.impl());
    for (const auto& node : t_tape)
      for (const Edge& input : node->inputs)
        if (input.leaf && seen.insert(input.leaf.get()).second) leaves.emplace_back(input.leaf);
  }
  std::vector<Tensor*> recorded_outputs;
  for (Tensor& output : outputs) {
    output = output.view(output.shape());  // detached from the scratch tape
    recorded_outputs.push_back(&output);
  }
  std::vector<const Tensor*> node_inputs;
  for (const Tensor& input : inputs) node_inputs.push_back(&input);
  for (const Tensor& leaf : leaves) node_inputs.push_back(&leaf);
  record(name, recorded_outputs, node_inputs, inputs,
         [segment, num_inputs = inputs.size()](Node& self, const std::vector<Tensor>& grads) {
           return replay_and_backpropagate(self, segment, num_inputs, grads);
         });
  return outputs;
}

size_t tape_size() { return t_tape.size(); }

size_t tape_saved_bytes() {
  std::unordered_set<const Storage*> seen;
  size_t bytes = 0;
  for (const auto& node : t_tape)
    for (const Tensor& t : node->saved)
      if (t.defined() && seen.insert(t.impl().storage.get()).second)
        bytes += t.impl().storage->bytes;
  return bytes;
}

void clear_tape() {
  for (auto& node : t_tape) release(*node);
  t_tape.clear();
}

}  // namespace deit
