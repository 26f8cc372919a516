// Activation checkpointing (engine/autograd.h recompute_in_backward): a segment recorded as one
// node that keeps only its inputs gives the gradients of the segment recorded op by op, bit for
// bit, and the grad-ready hook still reports each parameter once, with its final gradient.
#include <catch2/catch.hpp>

#include "engine/autograd.h"
#include "engine/ops.h"
#include "engine/rng.h"

using namespace deit;

namespace {

// A small two-output segment with parameters of its own: (x, y) -> (x + gelu(y W^T + b), LN(x)).
struct SegmentParams {
  Tensor w, b, ln_w, ln_b;
  explicit SegmentParams(Rng& rng)
      : w(Tensor::randn({4, 4}, rng).set_requires_grad(true).set_name("w")),
        b(Tensor::randn({4}, rng).set_requires_grad(true).set_name("b")),
        ln_w(Tensor::randn({4}, rng).set_requires_grad(true).set_name("ln_w")),
        ln_b(Tensor::randn({4}, rng).set_requires_grad(true).set_name("ln_b")) {}
  std::vector<Tensor> all() const { return {w, b, ln_w, ln_b}; }
};

Segment two_output_segment(const SegmentParams& p, int* runs) {
  return [&p, runs](const std::vector<Tensor>& in) {
    ++*runs;
    Tensor sum = ops::add(in[0], ops::gelu(ops::linear(in[1], p.w, p.b)));
    return std::vector<Tensor>{sum, ops::layernorm(in[0], p.ln_w, p.ln_b, 1e-6)};
  };
}

// loss = BCE(first output + second output) with x and y produced by ops before the segment, so
// the inputs' gradients must travel on through the tape.
Tensor loss_through(const Segment& segment, bool recompute, const Tensor& x0, const Tensor& y0) {
  const std::vector<Tensor> inputs{ops::gelu(x0), ops::gelu(y0)};
  const std::vector<Tensor> out =
      recompute ? recompute_in_backward("segment", segment, inputs) : segment(inputs);
  return ops::bce_with_logits(ops::add(out[0], out[1]), Tensor::zeros({3, 4}));
}

std::vector<std::vector<float>> grads_of(const std::vector<Tensor>& tensors) {
  std::vector<std::vector<float>> grads;
  for (const Tensor& t : tensors) grads.push_back(t.grad().to_vector<float>());
  return grads;
}

void reset_grads(const std::vector<Tensor>& tensors) {
  for (Tensor t : tensors) t.set_grad(Tensor());
}

}  // namespace

TEST_CASE("a recomputed segment keeps only its inputs and gives the same gradients",
          "[autograd][recompute]") {
  Rng rng(11);
  const SegmentParams p(rng);
  Tensor x0 = Tensor::randn({3, 4}, rng).set_requires_grad(true).set_name("x0");
  Tensor y0 = Tensor::randn({3, 4}, rng).set_requires_grad(true).set_name("y0");
  std::vector<Tensor> leaves = p.all();
  leaves.push_back(x0);
  leaves.push_back(y0);
  int runs = 0;
  const Segment segment = two_output_segment(p, &runs);

  backward(loss_through(segment, false, x0, y0));
  const auto plain = grads_of(leaves);
  CHECK(runs == 1);

  reset_grads(leaves);
  {
    const std::vector<Tensor> inputs{ops::gelu(x0), ops::gelu(y0)};
    const size_t before = tape_size(), saved_before = tape_saved_bytes();
    const std::vector<Tensor> out = recompute_in_backward("segment", segment, inputs);
    CHECK(tape_size() == before + 1);
    CHECK(tape_saved_bytes() == saved_before + 2 * 3 * 4 * sizeof(float));  // x and y alone
    CHECK(out[0].requires_grad());
    CHECK(out[1].requires_grad());
    clear_tape();
  }
  CHECK(runs == 2);

  reset_grads(leaves);
  backward(loss_through(segment, true, x0, y0));
  CHECK(runs == 4);  // once in forward, once more in backward
  const auto recomputed = grads_of(leaves);
  for (size_t i = 0; i < leaves.size(); ++i) {
    INFO(leaves[i].name());
    CHECK(recomputed[i] == plain[i]);
  }

  // Gradients accumulate over micro-batches as they do without recomputation.
  backward(loss_through(segment, true, x0, y0));
  const auto twice = grads_of(leaves);
  for (size_t i = 0; i < leaves.size(); ++i)
    for (size_t k = 0; k < twice[i].size(); ++k) CHECK(twice[i][k] == Approx(2 * plain[i][k]));
}

TEST_CASE("a recomputed segment's unused output and grad mode off need nothing special",
          "[autograd][recompute]") {
  Rng rng(12);
  const SegmentParams p(rng);
  Tensor x = Tensor::randn({3, 4}, rng), y = Tensor::randn({3, 4}, rng);
  int runs = 0;
  const Segment segment = two_output_segment(p, &runs);
  {
    NoGrad no_grad;
    const std::vector<Tensor> out = recompute_in_backward("segment", segment, {x, y});
    CHECK(tape_size() == 0);
    CHECK_FALSE(out[0].requires_grad());
  }
  // Only the second output is used: ln_w and ln_b get gradients, w and b none.
  const std::vector<Tensor> out = recompute_in_backward("segment", segment, {x, y});
  backward(ops::bce_with_logits(out[1], Tensor::zeros({3, 4})));
  CHECK(runs == 3);
  CHECK(p.ln_w.grad().defined());
  CHECK(p.ln_b.grad().defined());
  CHECK_FALSE(p.w.grad().defined());
  CHECK_FALSE(p.b.grad().defined());
  CHECK(tape_size() == 0);
}

TEST_CASE("the grad-ready hook reports a recomputed segment's parameters after its backward",
          "[autograd][recompute]") {
  Rng rng(13);
  const SegmentParams p(rng);
  Tensor x0 = Tensor::randn({3, 4}, rng).set_requires_grad(true).set_name("x0");
  Tensor y0 = Tensor::randn({3, 4}, rng).set_requires_grad(true).set_name("y0");
  Tensor head = Tensor::randn({4, 4}, rng).set_requires_grad(true).set_name("head");
  int runs = 0;
  const Segment segment = two_output_segment(p, &runs);
  auto loss = [&] {
    const std::vector<Tensor> out =
        recompute_in_backward("segment", segment, {ops::gelu(x0), ops::gelu(y0)});
    return ops::bce_with_logits(ops::linear(ops::add(out[0], out[1]), head, Tensor()),
                                Tensor::zeros({3, 4}));
  };
  std::vector<Tensor> leaves = p.all();
  for (const Tensor& t : {head, x0, y0}) leaves.push_back(t);
  backward(loss());
  const auto unhooked = grads_of(leaves);

  reset_grads(leaves);
  std::vector<std::string> order;
  std::vector<std::vector<float>> at_report;
  backward(loss(), Tensor::full({1}, 1.0), [&](const Tensor& leaf) {
    order.push_back(leaf.name());
    at_report.push_back(leaf.grad().to_vector<float>());
    leaf.grad().fill_(0.5);  // in place: must not reach any gradient backward still routes
  });
  // head first; the segment's parameters in the order the segment first used them; then x0, y0
  // (gelu(y0) was recorded last, so its node runs first).
  REQUIRE(order == std::vector<std::string>{"head", "w", "b", "ln_w", "ln_b", "y0", "x0"});
  const std::vector<size_t> index_of_reported{4, 0, 1, 2, 3, 6, 5};
  for (size_t i = 0; i < order.size(); ++i) {
    INFO(order[i]);
    CHECK(at_report[i] == unhooked[index_of_reported[i]]);
  }
}

TEST_CASE("a segment with nothing to differentiate runs once and is not recorded",
          "[autograd][recompute]") {
  Rng rng(14);
  const Tensor w = Tensor::randn({4, 4}, rng);  // requires no grad, nor does the input
  int runs = 0;
  const Segment segment = [&](const std::vector<Tensor>& in) {
    ++runs;
    return std::vector<Tensor>{ops::linear(in[0], w, Tensor())};
  };
  const std::vector<Tensor> out =
      recompute_in_backward("segment", segment, {Tensor::randn({3, 4}, rng)});
  CHECK(runs == 1);
  CHECK(tape_size() == 0);
  CHECK_FALSE(out[0].requires_grad());
}

// add() hands one gradient tensor to both of its inputs. Inside a recomputed segment one of them
// is the segment's input, whose gradient travels on through the outer tape, and the other a
// parameter: its first gradient must be a copy, as outside a segment, so that the grad-ready hook
// may change it in place.
TEST_CASE("the grad-ready hook may modify a recomputed segment's parameter gradient in place",
          "[autograd][recompute]") {
  Rng rng(15);
  Tensor x0 = Tensor::randn({3, 4}, rng).set_requires_grad(true).set_name("x0");
  Tensor shift = Tensor::randn({3, 4}, rng).set_requires_grad(true).set_name("shift");
  const Segment segment = [&shift](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{ops::add(in[0], shift)};
  };
  auto loss = [&] {
    const std::vector<Tensor> out = recompute_in_backward("segment", segment, {ops::gelu(x0)});
    return ops::bce_with_logits(out[0], Tensor::zeros({3, 4}));
  };
  backward(loss());
  const auto unhooked = grads_of({x0, shift});
  reset_grads({x0, shift});

  std::vector<std::string> order;
  backward(loss(), Tensor::full({1}, 1.0), [&](const Tensor& leaf) {
    order.push_back(leaf.name());
    if (leaf.name() == "shift") {
      CHECK(leaf.grad().to_vector<float>() == unhooked[1]);
      leaf.grad().fill_(0.5);  // in place: must not reach x0's gradient, still on its way
    }
  });
  REQUIRE(order == std::vector<std::string>{"shift", "x0"});
  CHECK(x0.grad().to_vector<float>() == unhooked[0]);
}
