// engine/sharded_optimizer.h without a second rank: what a sharded optimizer asks of its
// communicator, with a one-rank stand-in whose collectives run (so the state is sharded, to the
// one rank) and which counts the waits for the device. Several ranks: test_distributed_train.cpp.
#include <catch2/catch.hpp>
#include <string>

#include "engine/communicator.h"
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
