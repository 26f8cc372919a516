// engine/sharded_optimizer.h without a second rank: what a sharded optimizer asks of its
// communicator, with a one-rank stand-in whose collectives run (so the state is sharded, to the
// one rank) and which counts the waits for the device; how the parameters are shared out; what
// rank 1 of two does on its own (a stand-in whose collectives never run) when it loads a state;
// and, with the one-rank stand-in, when the gradient reducer (engine/gradient_reducer.h) that
// feeds it reduces its buckets. Several ranks: test_distributed_train.cpp.
#include <catch2/catch.hpp>
#include <functional>
#include <string>

#include "engine/autograd.h"
#include "engine/communicator.h"
#include "engine/gradient_reducer.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/sharded_optimizer.h"
#include "engine/tensor.h"

using namespace deit;

namespace {

// World size 1 with collectives that are not no-ops (as NCCL on one GPU): a sum or a broadcast
// over one rank leaves the values as they are.
class CountingCommunicator final : public SingleProcessCommunicator {
 public:
  CountingCommunicator() : SingleProcessCommunicator(Device::cpu(), 0) {}
  bool collectives_are_noops() const override { return false; }
  void wait_for_device() override { ++waits; }
  int waits = 0;
  std::function<void()> on_all_reduce = [] {};

 protected:
  void all_reduce_flat(const Tensor&, ReduceOp) override { on_all_reduce(); }
};

}  // namespace

TEST_CASE("a sharded optimizer's gathered state reaches the host through the timed wait",
          "[optimizer][comm]") {
  // Each moment is copied to the host after a broadcast; a rank lost in it must end the copy in
  // wait_for_device's DEIT_COMM_TIMEOUT error, not in a device sync that never returns.
  ParameterRegistry params;
  params.add("w", Tensor::zeros({3, 2}), true);
  params.add("b", Tensor::zeros({3}), false);
  CountingCommunicator comm;
  ShardedOptimizer optimizer("adamw", params, OptimizerOptions{}, comm, /*shard_state=*/true);
  REQUIRE(optimizer.sharded());
  const int before = comm.waits;
  const NamedTensors state = optimizer.gather_state();
  CHECK(comm.waits - before >= 4);  // two moments of two parameters, each copied after a wait
  for (const auto& [name, tensor] : state) {
    INFO(name);
    CHECK(tensor.device().is_cpu());
  }
}

namespace {

// Rank 1 of a world of 2 whose collectives never run: enough for what a sharded optimizer does
// without its peers (sharding, loading a state), and a failure if it ever tried to communicate.
class SecondRankCommunicator final : public Communicator {
 public:
  SecondRankCommunicator() : Communicator(Device::cpu(), 1, 2, 1) {}
  const char* backend() const override { return "second rank"; }
  void barrier() override { FAIL("barrier"); }

 protected:
  void all_reduce_flat(const Tensor&, ReduceOp) override { FAIL("all_reduce"); }
  void broadcast_flat(const Tensor&, int) override { FAIL("broadcast"); }
  void reduce_scatter_flat(const Tensor&, const std::vector<int64_t>&, ReduceOp) override {
    FAIL("reduce_scatter");
  }
  void all_gather_flat(const Tensor&, const std::vector<int64_t>&) override { FAIL("all_gather"); }
};

}  // namespace

TEST_CASE("partition_parameters: contiguous owners in range, even with no elements to share",
          "[optimizer][comm]") {
  ParameterRegistry params;
  params.add("a", Tensor::zeros({4}), true);
  params.add("b", Tensor::zeros({4}), true);
  CHECK(partition_parameters(params, 2) == std::vector<int>{0, 1});
  CHECK(partition_parameters(params, 1) == std::vector<int>{0, 0});
  // Fewer tensors than ranks: whole tensors, so some ranks own nothing.
  CHECK(partition_parameters(params, 4) == std::vector<int>{1, 3});
  // An empty tensor at the end sits at the last element, where a rank past the last would start.
  ParameterRegistry tail;
  tail.add("a", Tensor::zeros({4}), true);
  tail.add("b", Tensor::zeros({4}), true);
  tail.add("z", Tensor::zeros({0}), false);
  CHECK(partition_parameters(tail, 2) == std::vector<int>{0, 1, 1});

  // Nothing to share out (0 / 0 elements): every tensor stays with rank 0.
  ParameterRegistry empty;
  empty.add("e", Tensor::zeros({0}), true);
  empty.add("f", Tensor::zeros({0, 3}), false);
  CHECK(partition_parameters(empty, 2) == std::vector<int>{0, 0});
}

TEST_CASE("alone, --zero leaves the whole state to the one rank and asks for no reduce-scatter",
          "[optimizer][comm]") {
  // Collectives that do nothing have no other rank to share with: the replicated optimizer.
  ParameterRegistry params;
  params.add("a", Tensor::zeros({4}), true);
  params.add("b", Tensor::zeros({4}), true);
  SingleProcessCommunicator comm(Device::cpu(), 0);
  ShardedOptimizer optimizer("adamw", params, OptimizerOptions{}, comm, /*shard_state=*/true);
  CHECK_FALSE(optimizer.sharded());
  CHECK(optimizer.gradient_owners().empty());
  CHECK(optimizer.owned() == std::vector<size_t>{0, 1});
}

TEST_CASE("a sharded optimizer checks the whole state on every rank before loading its share",
          "[optimizer][comm]") {
  // Rank 1 owns b only. A state without one of rank 0's entries must stop rank 1 too, with its
  // share untouched: a rank that loaded and went on would wait for rank 0 in its first collective.
  ParameterRegistry params;
  params.add("a", Tensor::zeros({4}), true);
  params.add("b", Tensor::zeros({4}), true);
  SecondRankCommunicator comm;
  ShardedOptimizer optimizer("adamw", params, OptimizerOptions{}, comm, /*shard_state=*/true);
  REQUIRE(optimizer.sharded());
  REQUIRE(optimizer.owned() == std::vector<size_t>{1});

  const auto whole_state = [] {
    NamedTensors state{{"step", Tensor::from_vector<int32_t>({3}, {1})}};
    for (const char* name : {"a", "b"}) {
      const std::string p = name;
      state.emplace_back(p + ".exp_avg", Tensor::full({4}, 0.5f));
      state.emplace_back(p + ".exp_avg_sq", Tensor::full({4}, 0.25f));
      state.emplace_back(p + ".step", Tensor::from_vector<int32_t>({3}, {1}));
    }
    return state;
  };
  const auto without = [&](const std::string& name) {
    NamedTensors state;
    for (const auto& entry : whole_state())
      if (entry.first != name) state.push_back(entry);
    return state;
  };
  const auto misshaped = [&](const std::string& name) {
    NamedTensors state = whole_state();
    for (auto& entry : state)
      if (entry.first == name) entry.second = Tensor::zeros({5});
    return state;
  };
  CHECK_THROWS_WITH(optimizer.load_state(without("a.exp_avg")),
                    Catch::Contains("missing entry 'a.exp_avg'"));
  CHECK_THROWS_WITH(optimizer.load_state(misshaped("a.exp_avg_sq")),
                    Catch::Contains("'a.exp_avg_sq'"));
  // A negative count of one of rank 0's parameters stops rank 1 as well.
  NamedTensors negative = whole_state();
  for (auto& entry : negative)
    if (entry.first == "a.step") entry.second = Tensor::from_vector<int32_t>({-2}, {1});
  CHECK_THROWS_WITH(optimizer.load_state(negative), Catch::Contains("'a.step' counts -2 steps"));
  CHECK(optimizer.step_count() == 0);

  optimizer.load_state(whole_state());
  CHECK(optimizer.step_count() == 3);
}

TEST_CASE("the gradient reducer wants an owner per parameter, and alone gives no gradient homes",
          "[optimizer][comm]") {
  ParameterRegistry params;
  const Tensor a = params.add("a", Tensor::zeros({3}), true);
  const Tensor b = params.add("b", Tensor::zeros({2}), true);
  SingleProcessCommunicator alone(Device::cpu(), 0);
  CHECK_THROWS_WITH(GradientReducer(params, alone, 64, {0}),
                    Catch::Contains("1 owners for 2 parameters"));
  // Alone, its backward is plain backward: homes would only hold bucket memory for nothing.
  const GradientReducer reducer(params, alone);
  CHECK_FALSE(a.grad_home().defined());
  CHECK_FALSE(b.grad_home().defined());
}

TEST_CASE("the gradient reducer reduces each bucket as soon as backward has made it final",
          "[optimizer][comm]") {
  // Buckets of one tensor each, reduced in reverse registration order: every bucket but the first
  // layer's must go while backward has that layer still to reach (the overlap that hides the
  // reduction), at every step, not all at once after backward. The gradient of an input next to
  // the loss, final before any parameter's, belongs to no bucket and must not start one.
  ParameterRegistry params;
  Rng rng(5);
  const Tensor w0 = params.add("w0", Tensor::randn({4, 3}, rng), true);
  const Tensor w1 = params.add("w1", Tensor::randn({4, 4}, rng), true);
  const Tensor b1 = params.add("b1", Tensor::randn({4}, rng), false);
  const Tensor w2 = params.add("w2", Tensor::randn({2, 4}, rng), true);
  CountingCommunicator comm;
  std::vector<bool> first_layer_reached;
  comm.on_all_reduce = [&] { first_layer_reached.push_back(w0.grad().defined()); };
  GradientReducer reducer(params, comm, /*bucket_bytes=*/16);
  REQUIRE(reducer.bucket_count() == 4);
  const Tensor x = Tensor::randn({5, 3}, rng);
  Tensor shift = Tensor::zeros({5, 2});
  shift.set_requires_grad(true);
  for (int step = 0; step < 2; ++step) {
    INFO("step " << step);
    params.zero_grad();
    first_layer_reached.clear();
    const Tensor h = ops::gelu(ops::linear(ops::gelu(ops::linear(x, w0, Tensor())), w1, b1));
    const Tensor logits = ops::add(ops::linear(h, w2, Tensor()), shift);
    reducer.backward(ops::bce_with_logits(logits, Tensor::zeros({5, 2})), Tensor::full({1}, 1.0));
    CHECK(first_layer_reached == std::vector<bool>{false, false, false, true});
  }
}
