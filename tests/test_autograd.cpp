// The tape itself: what is recorded, when, how gradients accumulate, and what is freed.
#include <catch2/catch.hpp>

#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "engine/autograd.h"
#include "engine/op_observer.h"
#include "engine/ops.h"
#include "engine/parameters.h"
#include "engine/rng.h"

using namespace deit;

TEST_CASE("ops record only with grad mode on and an input that requires grad", "[autograd]") {
  Rng rng(1);
  Tensor x = Tensor::randn({2, 3}, rng);
  Tensor w = Tensor::randn({4, 3}, rng);
  ops::linear(x, w, Tensor());
  CHECK(tape_size() == 0);
  w.set_requires_grad(true);
  {
    NoGrad no_grad;
    Tensor y = ops::linear(x, w, Tensor());
    CHECK_FALSE(y.requires_grad());
    CHECK(tape_size() == 0);
  }
  Tensor y = ops::linear(x, w, Tensor());
  CHECK(y.requires_grad());
  CHECK(tape_size() == 1);
  clear_tape();
  CHECK(tape_size() == 0);
}

TEST_CASE("leaf gradients accumulate across backward calls", "[autograd]") {
  Rng rng(2);
  Tensor x = Tensor::randn({2, 3}, rng);
  Tensor w = Tensor::randn({1, 3}, rng).set_requires_grad(true);
  Tensor target = Tensor::zeros({2, 1});
  backward(ops::bce_with_logits(ops::linear(x, w, Tensor()), target));
  const std::vector<float> once = w.grad().to_vector<float>();
  backward(ops::bce_with_logits(ops::linear(x, w, Tensor()), target));
  const std::vector<float> twice = w.grad().to_vector<float>();
  for (size_t i = 0; i < once.size(); ++i) CHECK(twice[i] == Approx(2 * once[i]));
}

TEST_CASE("a leaf with a gradient home accumulates its gradient there, in place", "[autograd]") {
  Rng rng(4);
  const Tensor x = Tensor::randn({2, 3}, rng);
  Tensor w = Tensor::randn({1, 3}, rng).set_requires_grad(true);
  // add() hands one gradient tensor to both of its inputs: shift's home must get a copy.
  Tensor shift = Tensor::randn({2, 1}, rng).set_requires_grad(true);
  auto loss = [&] {
    return ops::bce_with_logits(ops::add(ops::linear(x, w, Tensor()), shift),
                                Tensor::zeros({2, 1}));
  };
  backward(loss());  // without homes, for the values
  const std::vector<float> w_once = w.grad().to_vector<float>();
  const std::vector<float> shift_once = shift.grad().to_vector<float>();
  w.set_grad(Tensor());
  shift.set_grad(Tensor());

  const Tensor w_home = Tensor::full({1, 3}, 7.0), shift_home = Tensor::full({2, 1}, 7.0);
  w.set_grad_home(w_home);
  shift.set_grad_home(shift_home);
  backward(loss());  // the first gradient is copied over what the homes held
  CHECK(w.grad().raw_data() == w_home.raw_data());
  CHECK(shift.grad().raw_data() == shift_home.raw_data());
  CHECK(w_home.to_vector<float>() == w_once);
  CHECK(shift_home.to_vector<float>() == shift_once);
  backward(loss(), Tensor::full({1}, 1.0), [](const Tensor&) {});  // hooked: added in place
  CHECK(w.grad().raw_data() == w_home.raw_data());
  const std::vector<float> twice = w_home.to_vector<float>();
  for (size_t i = 0; i < twice.size(); ++i) CHECK(twice[i] == Approx(2 * w_once[i]));
  w.set_grad(Tensor());  // zero_grad: the next first gradient overwrites the home
  backward(loss());
  CHECK(w_home.to_vector<float>() == w_once);

  CHECK_THROWS_AS(w.set_grad_home(Tensor::zeros({3})), std::invalid_argument);
  CHECK_THROWS_AS(w.set_grad_home(Tensor::zeros({1, 3}, DType::f64)), std::invalid_argument);
  w.set_grad_home(Tensor());
  w.set_grad(Tensor());
  backward(loss());
  CHECK(w.grad().raw_data() != w_home.raw_data());
  CHECK(w.grad().to_vector<float>() == w_once);
}

// A view is a tensor of its own: marked requires_grad (as a recomputed segment's replay marks its
// inputs) it is a leaf whose gradient must not land in the home of the tensor it views.
TEST_CASE("a view of a leaf does not share the leaf's gradient home", "[autograd][recompute]") {
  Rng rng(7);
  Tensor w = Tensor::randn({2, 3}, rng).set_requires_grad(true);
  const Tensor home = Tensor::zeros({2, 3});
  w.set_grad_home(home);
  CHECK_FALSE(w.view({6}).grad_home().defined());
  CHECK_FALSE(w.slice(0, 1).grad_home().defined());

  // Two micro-batches through a segment that takes w as an input: the home gets their sum.
  const Segment segment = [](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{ops::linear(in[1], in[0], Tensor())};
  };
  const Tensor x1 = Tensor::randn({4, 3}, rng), x2 = Tensor::randn({4, 3}, rng);
  auto micro_batch = [&](const Tensor& x, bool recompute) {
    const std::vector<Tensor> out =
        recompute ? recompute_in_backward("segment", segment, {w, x}) : segment({w, x});
    backward(ops::bce_with_logits(out[0], Tensor::zeros({4, 2})));
  };
  micro_batch(x1, false);
  micro_batch(x2, false);
  const std::vector<float> expected = home.to_vector<float>();
  w.set_grad(Tensor());
  micro_batch(x1, true);
  micro_batch(x2, true);
  CHECK(w.grad().raw_data() == home.raw_data());
  const std::vector<float> got = home.to_vector<float>();
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(expected[i]));
}

TEST_CASE("backward frees the tape and refuses to run through it twice", "[autograd]") {
  Rng rng(3);
  Tensor x = Tensor::randn({4, 8}, rng).set_requires_grad(true);
  Tensor y = ops::gelu(ops::gelu(x));
  CHECK(tape_size() == 2);
  CHECK(tape_saved_bytes() == 2 * 4 * 8 * sizeof(float));
  Tensor loss = ops::bce_with_logits(ops::reshape(y, {1, 32}), Tensor::zeros({1, 32}));
  backward(loss);
  CHECK(tape_size() == 0);
  CHECK(tape_saved_bytes() == 0);
  CHECK_THROWS_WITH(backward(loss), Catch::Contains("already used"));
}

TEST_CASE("the graph holds what its ops saved, not every tensor they read", "[autograd]") {
  Rng rng(6);
  Tensor x = Tensor::randn({2, 3}, rng).set_requires_grad(true);
  Tensor h = ops::gelu(x);  // gelu saves x, not h; add saves nothing: h is no longer needed
  Tensor logits = ops::add(h, Tensor::zeros({2, 3}));
  const std::weak_ptr<Storage> h_memory = h.impl().storage;
  h = Tensor();
  CHECK(h_memory.expired());

  // After backward a tensor kept from the graph (a loss kept for logging) holds one empty node.
  const Tensor loss = ops::bce_with_logits(logits, Tensor::zeros({2, 3}));
  const std::weak_ptr<Node> add_node = logits.impl().grad_fn;
  const std::weak_ptr<Storage> logits_memory = logits.impl().storage;
  logits = Tensor();
  backward(loss);
  CHECK(x.grad().defined());
  CHECK(add_node.expired());
  CHECK(logits_memory.expired());
  CHECK(loss.impl().grad_fn->inputs.empty());
  CHECK(loss.impl().grad_fn->backward == nullptr);
}

TEST_CASE("a gradient of the wrong shape is refused, naming the op", "[autograd]") {
  Tensor x = Tensor::zeros({2, 3}).set_requires_grad(true);
  Tensor y = x.clone();
  record("bad_op", y, {&x}, {}, [](Node&, const Tensor&) {
    return std::vector<Tensor>{Tensor::zeros({3, 2})};  // (3, 2) for a (2, 3) input
  });
  CHECK_THROWS_WITH(backward(y, Tensor::zeros({2, 3})), Catch::Contains("bad_op") &&
                                                            Catch::Contains("(3, 2)") &&
                                                            Catch::Contains("(2, 3)"));
  CHECK_FALSE(x.grad().defined());
  clear_tape();
}

// The tape is the recording thread's: another thread's backward would find nothing to walk.
TEST_CASE("backward refuses a root recorded on another thread", "[autograd]") {
  Tensor x = Tensor::zeros({2}).set_requires_grad(true);
  Tensor y;
  std::thread([&] { y = ops::gelu(x); }).join();
  REQUIRE(y.requires_grad());
  CHECK_THROWS_WITH(backward(y, Tensor::zeros({2})), Catch::Contains("another thread"));
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("the grad-ready hook reports each leaf once, when its gradient is final", "[autograd]") {
  Rng rng(5);
  Tensor x = Tensor::randn({3, 4}, rng);
  Tensor w1 = Tensor::randn({4, 4}, rng).set_requires_grad(true).set_name("w1");
  Tensor b1 = Tensor::randn({4}, rng).set_requires_grad(true).set_name("b1");
  Tensor w2 = Tensor::randn({2, 4}, rng).set_requires_grad(true).set_name("w2");
  Tensor shift = Tensor::randn({3, 2}, rng).set_requires_grad(true).set_name("shift");
  // w1 is used twice, first near the input: its gradient is final only at the very end. add()
  // hands the same gradient tensor to both of its inputs.
  Tensor h = ops::gelu(ops::linear(ops::linear(x, w1, b1), w1, Tensor()));
  Tensor logits = ops::add(ops::linear(h, w2, Tensor()), shift);
  Tensor loss = ops::bce_with_logits(logits, Tensor::zeros({3, 2}));

  std::vector<std::string> order;
  std::vector<std::vector<float>> at_report;
  backward(loss, Tensor::full({1}, 1.0), [&](const Tensor& leaf) {
    order.push_back(leaf.name());
    at_report.push_back(leaf.grad().to_vector<float>());
    leaf.grad().fill_(0.5);  // in place: must not reach any gradient backward still routes
  });
  REQUIRE(order == std::vector<std::string>{"shift", "w2", "w1", "b1"});

  // The same graph again without the hook: the gradients reported were already the final ones.
  Tensor reported[] = {shift, w2, w1, b1};
  for (Tensor& t : reported) t.set_grad(Tensor());
  h = ops::gelu(ops::linear(ops::linear(x, w1, b1), w1, Tensor()));
  backward(
      ops::bce_with_logits(ops::add(ops::linear(h, w2, Tensor()), shift), Tensor::zeros({3, 2})));
  for (size_t i = 0; i < order.size(); ++i) {
    INFO(order[i]);
    CHECK(at_report[i] == reported[i].grad().to_vector<float>());
  }
}

// A fused op that writes two tensors is one node: its backward runs once, when the walk reaches
// it, with the summed gradient of each output (undefined for an output nothing used).
TEST_CASE("an op with two outputs gets each output's gradient in one backward call",
          "[autograd]") {
  Tensor x = Tensor::from_vector<float>({1, 2}, {2}).set_requires_grad(true);
  int calls = 0;
  std::vector<Tensor> seen;
  auto two_outputs = [&] {
    Tensor a = x.clone(), b = x.clone();  // stand-ins for what a fused kernel would write
    record("pair", {&a, &b}, {&x}, {},
           [&](Node&, const std::vector<Tensor>& grads) {
             ++calls;
             seen = grads;
             Tensor dx = Tensor::zeros({2});
             for (const Tensor& g : grads)
               if (g.defined()) dx = ops::add(dx, g);
             return std::vector<Tensor>{dx};
           });
    return std::make_pair(a, b);
  };
  auto [a, b] = two_outputs();
  CHECK(tape_size() == 1);
  // a is read twice (its gradients add up), b once.
  backward(ops::add(ops::add(a, a), b), Tensor::from_vector<float>({1, 10}, {2}));
  CHECK(calls == 1);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].to_vector<float>() == std::vector<float>{2, 20});
  CHECK(seen[1].to_vector<float>() == std::vector<float>{1, 10});
  CHECK(x.grad().to_vector<float>() == std::vector<float>{3, 30});

  auto [c, d] = two_outputs();
  backward(d, Tensor::from_vector<float>({5, 7}, {2}));  // c is never used
  CHECK(calls == 2);
  REQUIRE(seen.size() == 2);
  CHECK_FALSE(seen[0].defined());
  CHECK(seen[1].to_vector<float>() == std::vector<float>{5, 7});
  CHECK(tape_size() == 0);
}

TEST_CASE("backward needs a scalar or an explicit gradient of the right shape", "[autograd]") {
  Rng rng(4);
  Tensor x = Tensor::randn({2, 2}, rng).set_requires_grad(true);
  Tensor y = ops::gelu(x);
  CHECK_THROWS_WITH(backward(y), Catch::Contains("one-element"));
  CHECK_THROWS_WITH(backward(y, Tensor::zeros({3})), Catch::Contains("gradient"));
  CHECK_THROWS_WITH(backward(Tensor::zeros({1})), Catch::Contains("does not require grad"));
  clear_tape();
}

TEST_CASE("the parameter registry names, counts and zeroes parameters", "[autograd]") {
  ParameterRegistry params;
  Tensor w = params.add("blocks.0.attn.qkv.weight", Tensor::zeros({6, 2}), true);
  params.add("blocks.0.attn.qkv.bias", Tensor::zeros({6}), false);
  CHECK(w.requires_grad());
  CHECK(w.name() == "blocks.0.attn.qkv.weight");
  CHECK(params.size() == 2);
  CHECK(params.element_count() == 18);
  CHECK(params.find("blocks.0.attn.qkv.bias")->weight_decay == false);
  CHECK_THROWS_WITH(params.get("head.weight"), Catch::Contains("head.weight"));
  CHECK_THROWS_AS(params.get("head.weight"), std::out_of_range);  // as the header promises
  CHECK_THROWS_WITH(params.add("blocks.0.attn.qkv.bias", Tensor::zeros({6}), false),
                    Catch::Contains("twice"));
  Rng rng(5);
  backward(ops::softmax_cross_entropy(ops::linear(Tensor::randn({1, 2}, rng), w, Tensor()),
                                      Tensor::full({1, 6}, 1.0 / 6)));
  CHECK(w.grad().defined());
  // Every parameter's gradient goes, not the first one's alone.
  Tensor b = params.get("blocks.0.attn.qkv.bias");
  b.set_grad(Tensor::zeros({6}));
  params.zero_grad();
  CHECK_FALSE(w.grad().defined());
  CHECK_FALSE(b.grad().defined());

  // Its list is read-only (a parameter renamed or replaced through it would leave find() and get()
  // behind); values are written through a handle to the tensor.
  STATIC_REQUIRE(std::is_const_v<std::remove_reference_t<decltype(params.all())>>);
  Tensor(params.all().front().value).fill_(2.0);
  CHECK(w.to_vector<float>() == std::vector<float>(12, 2.0f));
}

TEST_CASE("op argument errors name the op and the shapes", "[autograd]") {
  Tensor x = Tensor::zeros({2, 3});
  CHECK_THROWS_WITH(ops::linear(x, Tensor::zeros({4, 5}), Tensor()),
                    Catch::Contains("linear") && Catch::Contains("(4, 5)"));
  CHECK_THROWS_WITH(ops::layernorm(x, Tensor::zeros({2}), Tensor::zeros({2}), 1e-6),
                    Catch::Contains("layernorm"));
  CHECK_THROWS_WITH(ops::attention(Tensor::zeros({1, 2, 10}), 2), Catch::Contains("attention"));
  CHECK_THROWS_WITH(ops::add(x, Tensor::zeros({2, 3}, DType::f64)), Catch::Contains("dtype"));
  CHECK_THROWS_WITH(ops::cls_select(Tensor::zeros({2, 0, 3})), Catch::Contains("class token"));
  // Width 0: the rows are numel / width (an integer division by zero ended the process).
  CHECK_THROWS_WITH(ops::linear(Tensor::zeros({2, 0}), Tensor::zeros({3, 0}), Tensor()),
                    Catch::Contains("linear") && Catch::Contains("no features"));
  CHECK_THROWS_WITH(
      ops::layernorm(Tensor::zeros({2, 0}), Tensor::zeros({0}), Tensor::zeros({0}), 1e-6),
      Catch::Contains("layernorm") && Catch::Contains("no features"));
  // Shapes of as many elements are not the same shape.
  CHECK_THROWS_WITH(ops::add(x, Tensor::zeros({3, 2})),
                    Catch::Contains("add") && Catch::Contains("(3, 2)"));
  CHECK_THROWS_WITH(ops::bce_with_logits(x, Tensor::zeros({3, 2})),
                    Catch::Contains("bce_with_logits") && Catch::Contains("(3, 2)"));
  CHECK_THROWS_WITH(ops::softmax_cross_entropy(x, Tensor::zeros({2, 3}).set_requires_grad(true)),
                    Catch::Contains("targets are not differentiable"));
  CHECK_THROWS_WITH(ops::linear(x, Tensor::zeros({4, 3}), Tensor::zeros({3})),
                    Catch::Contains("linear") && Catch::Contains("bias"));
  CHECK_THROWS_WITH(ops::layernorm(x, Tensor::zeros({3}), Tensor::zeros({2}), 1e-6),
                    Catch::Contains("layernorm") && Catch::Contains("bias"));
  CHECK_THROWS_WITH(ops::class_attention(Tensor::zeros({1, 0, 6}), 1),
                    Catch::Contains("class_attention") || Catch::Contains("class token"));
  CHECK_THROWS_WITH(ops::patch_unfold(Tensor::zeros({1, 3, 4, 2}), 4),
                    Catch::Contains("patch_unfold"));
  // pos_embed (1, N, C) = (1, 2, 3) for x (B, N, C) = (2, 2, 3), not its transpose.
  CHECK_THROWS_WITH(ops::pos_embed_cls(Tensor::zeros({2, 2, 3}), Tensor::zeros({1, 3, 2}),
                                       Tensor::zeros({1, 1, 3})),
                    Catch::Contains("pos_embed_cls"));
  // The residual update: keep_scale (B) for x (B, T, C), not differentiable; LayerNorm's bias (C).
  const Tensor x3 = Tensor::zeros({2, 4, 3}), gamma = Tensor::zeros({3});
  CHECK_THROWS_WITH(ops::layerscale_residual(x3, x3, gamma, Tensor::zeros({4})),
                    Catch::Contains("keep_scale"));
  CHECK_THROWS_WITH(
      ops::layerscale_residual(x3, x3, gamma, Tensor::zeros({2}).set_requires_grad(true)),
      Catch::Contains("keep_scale is not differentiable"));
  CHECK_THROWS_WITH(ops::layerscale_residual_layernorm(x3, x3, gamma, Tensor::zeros({2}), gamma,
                                                       Tensor::zeros({2}), 1e-6),
                    Catch::Contains("LayerNorm"));
}

// A view starts with none of the viewed tensor's autograd state (engine/tensor.h): not a leaf that
// requires grad, nor one holding the leaf's gradient. An op on it records nothing.
TEST_CASE("a view of a leaf neither requires grad nor holds the leaf's gradient", "[autograd]") {
  Rng rng(8);
  Tensor w = Tensor::randn({2, 3}, rng).set_requires_grad(true);
  backward(ops::bce_with_logits(ops::reshape(w, {1, 6}), Tensor::zeros({1, 6})));
  REQUIRE(w.grad().defined());
  for (const Tensor& view : {w.view({6}), w.slice(0, 1)}) {
    INFO(view.describe());
    CHECK_FALSE(view.requires_grad());
    CHECK_FALSE(view.grad().defined());
    ops::gelu(view);
    CHECK(tape_size() == 0);
  }
}

// backward walks the whole tape: a graph it does not reach from the root is passed over and
// released all the same, as a cleared tape's nodes are. What their ops saved is freed, and a
// tensor kept from them cannot be differentiated any more.
TEST_CASE("backward and clear_tape release the nodes backward does not reach", "[autograd]") {
  Rng rng(9);
  Tensor x = Tensor::randn({2, 3}, rng).set_requires_grad(true);
  // other = gelu(x + x): gelu saves its input, h.
  auto other_graph = [&](std::weak_ptr<Storage>* h_memory) {
    const Tensor h = ops::add(x, x);
    *h_memory = h.impl().storage;
    return ops::gelu(h);
  };
  std::weak_ptr<Storage> h_memory;
  Tensor other = other_graph(&h_memory);
  backward(ops::bce_with_logits(ops::reshape(ops::gelu(x), {1, 6}), Tensor::zeros({1, 6})));
  CHECK(h_memory.expired());
  CHECK_THROWS_WITH(backward(other, Tensor::zeros({2, 3})), Catch::Contains("already used"));

  other = other_graph(&h_memory);
  clear_tape();
  CHECK(h_memory.expired());
  CHECK_THROWS_WITH(backward(other, Tensor::zeros({2, 3})), Catch::Contains("cleared"));
}

namespace {

// Records every op it is told about, as `deit bench step`'s profiler does.
struct RecordingObserver : OpObserver {
  std::vector<std::string> begun, ended;
  void begin(const char* op, Device) override { begun.emplace_back(op); }
  void end(const char* op, Device) noexcept override { ended.emplace_back(op); }
};

}  // namespace

TEST_CASE("an op observer sees its thread's ops until a nested one takes over, then again",
          "[autograd]") {
  const Tensor x = Tensor::zeros({2, 3});
  RecordingObserver outer, inner;
  {
    const ObserveOps observe(outer);
    ops::gelu(x);
    {
      const ObserveOps nested(inner);
      ops::layernorm(x, Tensor::full({3}, 1.0), Tensor::zeros({3}), 1e-6);
    }
    // Refused inside dispatch (mixed dtypes): the op still ends for the observer.
    CHECK_THROWS(ops::add(x, Tensor::zeros({2, 3}, DType::f64)));
  }
  CHECK(op_observer() == nullptr);
  ops::gelu(x);  // no observer: nobody is told
  CHECK(outer.begun == std::vector<std::string>{"gelu", "add"});
  CHECK(outer.ended == outer.begun);
  CHECK(inner.begun == std::vector<std::string>{"layernorm"});
  CHECK(inner.ended == inner.begun);
}

TEST_CASE("an op observer is not told of another thread's ops", "[autograd]") {
  const Tensor x = Tensor::zeros({2, 3});
  RecordingObserver observer;
  const ObserveOps observe(observer);
  const OpObserver* other_threads = &observer;
  std::thread([&] {
    other_threads = op_observer();
    ops::gelu(x);
  }).join();
  CHECK(other_threads == nullptr);
  CHECK(observer.begun.empty());
  ops::layernorm(x, Tensor::full({3}, 1.0), Tensor::zeros({3}), 1e-6);
  CHECK(observer.begun == std::vector<std::string>{"layernorm"});
}
