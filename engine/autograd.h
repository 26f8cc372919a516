// Define-by-run autograd on a tape.
//
// An op called while grad mode is on, with an input that requires grad, appends a Node to the
// current thread's tape: which inputs want gradients and where to send them (Edge), the tensors it
// saves for backward, and its backward function. backward(loss) seeds d loss = 1 and walks the tape
// in reverse recording order, which is a valid topological order (an op can only read tensors that
// already exist, so the node of each of its inputs was recorded before its own), handing each node
// the gradients of its outputs and routing the input gradients it returns: to the producing node,
// or, for a leaf (a parameter or an input marked requires_grad), added into the leaf's .grad. Leaf
// gradients accumulate across calls, so gradient accumulation over micro-batches needs nothing
// special; zero them (ParameterRegistry::zero_grad) when a step is done.
//
// The tape, not the tensors, owns the nodes: what a forward's ops saved stays alive until backward
// or clear_tape(), even after every output is gone (unlike PyTorch, where dropping the loss frees
// the graph), so run forwards that will not be differentiated under NoGrad. Each thread has its own
// tape and grad mode, and differentiates only what it recorded itself. The tape is cleared after
// backward, freeing every saved activation. recompute_in_backward trades time for memory: a
// segment of the forward keeps only its inputs, and its activations are recomputed when backward
// reaches it.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace deit {

struct Node;

// Where the gradient of one input of a recorded op goes: for a tensor some op produced, that op's
// node and which of its outputs the tensor is; for a leaf, the leaf itself (its .grad). An edge
// names the producer rather than holding the input tensor, so an activation outlives forward only
// if an op saved it for backward (Node::saved), not merely because a later op read it.
struct Edge {
  std::shared_ptr<Node> node;        // the producing node, for a produced input
  size_t output = 0;                 // which of node's outputs the input is
  std::shared_ptr<TensorImpl> leaf;  // for a leaf
  Shape shape;                       // the input's: the gradient sent along the edge must match it
};

struct Node {
  // Gradients for the inputs, given the gradient of the output. An entry may be left undefined
  // where needs_input_grad is false.
  using BackwardFn = std::function<std::vector<Tensor>(Node& self, const Tensor& grad_output)>;
  // The same for an op with several outputs (a fused kernel that writes two tensors), given one
  // gradient per output: undefined for an output that nothing differentiated depends on.
  using MultiBackwardFn =
      std::function<std::vector<Tensor>(Node& self, const std::vector<Tensor>& grad_outputs)>;

  std::string op;
  std::vector<Edge> inputs;  // one per input: empty where the input needs no gradient
  std::vector<bool> needs_input_grad;
  std::vector<Tensor> saved;
  MultiBackwardFn backward;
  std::vector<Tensor> grad_outputs;  // one per output, accumulated during backward
  // Set once backward has run the node or the tape was cleared: its saved tensors, edges and
  // backward function are gone, so a tensor kept after backward (a loss kept for logging) holds
  // one empty node, not the whole graph behind it.
  bool released = false;
};

// Turns grad recording off for its lifetime (evaluation, optimizer updates).
class NoGrad {
 public:
  NoGrad();
  ~NoGrad();
  NoGrad(const NoGrad&) = delete;
  NoGrad& operator=(const NoGrad&) = delete;

 private:
  bool previous_;
};

// Does an op with these inputs need recording? (grad mode on and some input requires grad)
bool needs_recording(const std::vector<const Tensor*>& inputs);

// Records `output` as produced by an op over `inputs` and returns it marked requires_grad.
// Call only when needs_recording(inputs) is true.
void record(const std::string& op, Tensor& output, const std::vector<const Tensor*>& inputs,
            std::vector<Tensor> saved, Node::BackwardFn backward);
// The same for an op with several outputs: one node produces them all, and its backward runs once,
// with every output's gradient, when the walk reaches it.
void record(const std::string& op, const std::vector<Tensor*>& outputs,
            const std::vector<const Tensor*>& inputs, std::vector<Tensor> saved,
            Node::MultiBackwardFn backward);

// Backpropagates from a one-element tensor (seed 1) or from any tensor with a given gradient.
// The walk covers, and then clears, the thread's whole tape: every graph recorded since the last
// backward, not only the root's (the others' nodes are passed over and released). For two losses
// from one forward, differentiate their sum rather than each in turn.
void backward(const Tensor& root);
void backward(const Tensor& root, const Tensor& grad_root);

// Told about a leaf (a handle sharing it) as soon as its .grad is final for this backward: the walk
// has passed the earliest-recorded node that uses it, so no node still to be walked can route a
// gradient to it. Data-parallel training starts reducing a bucket of gradients there, while the
// rest of backward runs (engine/gradient_reducer.h).
using GradReadyHook = std::function<void(const Tensor& leaf)>;
// As backward(root, grad_root), calling `on_grad_ready` once for every leaf that some recorded node
// takes as an input needing a gradient, in the order their gradients become final (a leaf no node
// reached from the root sends a gradient to is reported with its .grad as it was). A leaf's first
// gradient is copied into it rather than shared, so the hook may modify .grad in place: without
// the hook, a leaf's .grad may share storage with a gradient that backward still routes elsewhere.
//
// Gradient homes (Tensor::set_grad_home), with or without the hook: a leaf with a home gets its
// first gradient copied into the home, which becomes its .grad, and the later ones (further
// backward calls before zero_grad) added into it in place. So its gradient is always in the same
// memory, private to it (the gradient reducer reduces a bucket's homes where they lie).
void backward(const Tensor& root, const Tensor& grad_root, const GradReadyHook& on_grad_ready);

// Activation checkpointing. Runs `segment` on `inputs` and returns its outputs, recorded as one
// node that saves only the inputs: the segment's own activations are freed as soon as it returns.
// When backward reaches the node it runs `segment` again, on the saved inputs and with grad mode
// on, and backpropagates through that replay; so the segment must compute the same values both
// times (no random draws inside it: pass drop-path keep scales in as inputs). The leaves the
// segment uses (its parameters) are found while it runs, and receive their gradients, and their
// grad-ready hook calls, when the node's backward is done. With grad mode off it is `segment`.
using Segment = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;
std::vector<Tensor> recompute_in_backward(const std::string& name, const Segment& segment,
                                          const std::vector<Tensor>& inputs);

// The current thread's tape, for inspection: how many nodes, and the bytes their saved tensors
// hold (each storage counted once).
size_t tape_size();
size_t tape_saved_bytes();
// Drops the tape without running backward (e.g. after a forward that will not be differentiated).
void clear_tape();

}  // namespace deit
