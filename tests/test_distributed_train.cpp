// Data-parallel training on the CPU, run by every rank of `mpirun -np 2` (tests/CMakeLists.txt:
// mpi_tests): the gradient reducer's averages; and end to end, two ranks with batch b step like
// one process with batch 2b; sharding the optimizer state (ZeRO-1) changes nothing in the result; a
// run resumes with the same number of ranks (also across --zero and back) and refuses another
// number clearly; `deit bench step` over the two ranks reports the communication (the step time
// difference), with --zero too; processes of two deit builds stop at their first collective. The
// one-process reference runs in rank 0's process, with a communicator of its own.
//
// The hidden [mpi][.mpi_rank_train_fails] case makes rank 1's training fail while rank 0 trains;
// its CTest entry passes when the job then ends with rank 1's error rather than hanging. By hand:
//   mpirun -np 2 build/tests/deit_tests "[mpi]~[.]"
#include <catch2/catch.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/step_bench.h"
#include "engine/autograd.h"
#include "engine/build_fingerprint.h"
#include "engine/communicator.h"
#include "engine/gradient_reducer.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/sharded_optimizer.h"
#include "model/checkpoint.h"
#include "tests/captured_stderr.h"
#include "tests/cli_runner.h"
#include "tests/step_report_checks.h"
#include "tests/test_data_helpers.h"
#include "tests/test_distributed_helpers.h"
#include "train/rank_agreement.h"
#include "train/stop_request.h"
#include "train/trainer.h"

using namespace deit;
using namespace deit::test;

namespace {

std::unique_ptr<Communicator> mpi_communicator() {
  auto comm = make_communicator(Device::cpu(), detect_rendezvous());
  REQUIRE(std::string(comm->backend()) == "mpi");
  REQUIRE(comm->world_size() == 2);
  return comm;
}

// A communicator for a run of this process alone, beside the MPI job it belongs to.
std::unique_ptr<Communicator> alone() { return make_communicator(Device::cpu(), Rendezvous{}); }

// A deit bench step of the tiny model, `steps` timed after one warm-up, no profile.
bench::StepBenchOptions tiny_step_bench(int64_t batch_size, int steps) {
  bench::StepBenchOptions o;
  o.model_name = "deit3_tiny";
  o.model = tiny_run("", "", 2).model;
  o.batch_size = batch_size;
  o.warmup = 1;
  o.steps = steps;
  o.profile_steps = 0;
  return o;
}

}  // namespace

TEST_CASE("mpi: the gradient reducer averages every gradient over the ranks, once per step",
          "[mpi]") {
  auto comm = mpi_communicator();
  ParameterRegistry params;
  Rng init(7);
  // Last in the reducer's (reverse) order, so the other buckets go while backward runs and this
  // one, which backward never reaches, after it.
  const Tensor unused = params.add("unused", Tensor::randn({5}, init), false);
  const Tensor w1 = params.add("w1", Tensor::randn({8, 6}, init), true);
  const Tensor b1 = params.add("b1", Tensor::randn({8}, init), false);
  const Tensor w2 = params.add("w2", Tensor::randn({3, 8}, init), true);
  // One micro-batch of rank `rank`: its own inputs, so the ranks' gradients differ. An input that
  // requires grad gets one, which is no parameter's and in no bucket.
  bool input_requires_grad = false;
  auto loss_of = [&](int rank, int micro_batch) {
    Rng rng(100 + micro_batch, static_cast<uint64_t>(rank));
    Tensor x = Tensor::randn({4, 6}, rng);
    x.set_requires_grad(input_requires_grad);
    const Tensor h = ops::gelu(ops::linear(x, w1, b1));
    return ops::bce_with_logits(ops::linear(h, w2, Tensor()), Tensor::zeros({4, 3}));
  };
  const Tensor half = Tensor::full({1}, 0.5);
  // What every rank must end with: the mean over the ranks of two accumulated micro-batches.
  std::map<std::string, std::vector<double>> expected;
  for (int r = 0; r < comm->world_size(); ++r) {
    backward(loss_of(r, 0), half);
    backward(loss_of(r, 1), half);
    for (const Parameter& p : params.all()) {
      if (!p.value.grad().defined()) continue;
      std::vector<double>& sum = expected[p.name];
      const std::vector<double> g = p.value.grad().to_vector<double>();
      sum.resize(g.size(), 0.0);
      for (size_t i = 0; i < g.size(); ++i) sum[i] += g[i] / comm->world_size();
    }
    params.zero_grad();
  }

  // The gradients of `registry` against `expected` (with `owners`, only this rank's).
  auto check_averages = [&](const ParameterRegistry& registry, const std::vector<int>& owners) {
    for (size_t k = 0; k < registry.size(); ++k) {
      const Parameter& p = registry.all()[k];
      if (!p.value.grad().defined() || (!owners.empty() && owners[k] != comm->rank())) continue;
      INFO(p.name);
      const std::vector<double> got = p.value.grad().to_vector<double>();
      const std::vector<double>& want = expected.at(p.name);
      REQUIRE(got.size() == want.size());
      for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).epsilon(1e-5));
    }
  };

  // The same two micro-batches through a reducer: plain backward, then the reducer's. With
  // `owners` (a reduce-scatter), only this rank's gradients are checked. `while_homed` runs while
  // the reducer (and the homes it gave) exist.
  auto reduce_and_check = [&](
                              const ParameterRegistry& registry, size_t bucket_bytes,
                              const std::vector<int>& owners = {},
                              const std::function<void()>& while_homed = [] {}) {
    params.zero_grad();
    auto reducer = std::make_unique<GradientReducer>(registry, *comm, bucket_bytes, owners);
    backward(loss_of(comm->rank(), 0), half);  // plain backward: accumulates on this rank only
    reducer->backward(loss_of(comm->rank(), 1), half);
    CHECK_FALSE(unused.grad().defined());
    for (const Parameter& p : registry.all()) {
      INFO(p.name);
      // Accumulated in its home, and reduced there or through the scratch.
      if (p.value.grad().defined())
        CHECK(p.value.grad().impl_ptr() == p.value.grad_home().impl_ptr());
    }
    check_averages(registry, owners);
    while_homed();
    const size_t buckets = reducer->bucket_count();
    reducer.reset();
    for (const Parameter& p : registry.all()) CHECK_FALSE(p.value.grad_home().defined());
    return buckets;
  };
  SECTION("64-byte buckets: each tensor alone, reduced in its home") {
    CHECK(reduce_and_check(params, 64) == 4);
  }
  SECTION("one bucket that a gradient is missing from: packed into the scratch and back") {
    CHECK(reduce_and_check(params, 1 << 20) == 1);
  }
  SECTION("one bucket of every gradient: reduced where the homes lie, packed in reverse order") {
    ParameterRegistry used;
    used.add("w1", w1, true);
    used.add("b1", b1, false);
    used.add("w2", w2, true);
    const size_t buckets = reduce_and_check(used, 1 << 20, {}, [&] {
      CHECK(static_cast<const char*>(w2.grad_home().raw_data()) + w2.nbytes() ==
            b1.grad_home().raw_data());
      CHECK(static_cast<const char*>(b1.grad_home().raw_data()) + b1.nbytes() ==
            w1.grad_home().raw_data());
    });
    CHECK(buckets == 1);
  }
  SECTION("one bucket whose middle parameter backward never reaches: through the scratch") {
    // In the homes, w1's gradient lies past the gap that unused's leaves: the bucket's gradients
    // do not lie packed there, so its home cannot be where they are packed.
    ParameterRegistry gap;
    gap.add("w1", w1, true);
    gap.add("unused", unused, false);
    gap.add("w2", w2, true);
    CHECK(reduce_and_check(gap, 1 << 20) == 1);
  }
  SECTION("two buckets through the scratch, the larger first: the scratch fits the largest") {
    // In reduction order: w2, unused and b1 (37 elements, 32 of them gradients to pack), then e1
    // and e2 (8, without gradients), then w1 alone.
    ParameterRegistry two;
    two.add("w1", w1, true);
    two.add("e2", Tensor::zeros({4}), false);
    two.add("e1", Tensor::zeros({4}), false);
    two.add("b1", b1, false);
    two.add("unused", unused, false);
    two.add("w2", w2, true);
    CHECK(reduce_and_check(two, 160) == 3);
  }
  SECTION("a bucket of two with a gradient away from its home: through the scratch") {
    // A gradient set by hand before backward accumulates out of place, so the bucket is packed:
    // a bucket of two needs the scratch as much as a larger one.
    ParameterRegistry pair;
    pair.add("b1", b1, false);
    pair.add("w2", w2, true);
    params.zero_grad();
    GradientReducer reducer(pair, *comm, 1 << 20);
    REQUIRE(reducer.bucket_count() == 1);
    Tensor(b1).set_grad(Tensor::zeros({8}));
    backward(loss_of(comm->rank(), 0), half);
    reducer.backward(loss_of(comm->rank(), 1), half);
    CHECK(b1.grad().impl_ptr() != b1.grad_home().impl_ptr());
    check_averages(pair, {});
  }
  SECTION("an input that requires grad: its gradient, in no bucket, changes nothing") {
    input_requires_grad = true;
    CHECK(reduce_and_check(params, 64) == 4);
  }
  // Sharded optimizer state: rank 0 owns the first parameters, rank 1 the others.
  SECTION("reduce-scatter, 64-byte buckets: each tensor alone, averaged on its owner") {
    CHECK(reduce_and_check(params, 64, {0, 0, 1, 1}) == 4);
  }
  SECTION("reduce-scatter, one bucket that a gradient is missing from: through the scratch") {
    CHECK(reduce_and_check(params, 1 << 20, {0, 0, 1, 1}) == 1);
  }
  SECTION("reduce-scatter, one bucket of every gradient: homes in order of owner, reduced there") {
    ParameterRegistry used;
    used.add("w1", w1, true);
    used.add("b1", b1, false);
    used.add("w2", w2, true);
    const size_t buckets = reduce_and_check(used, 1 << 20, {0, 1, 1}, [&] {
      // Rank 0's w1 first, then rank 1's in reverse registration order.
      CHECK(static_cast<const char*>(w1.grad_home().raw_data()) + w1.nbytes() ==
            w2.grad_home().raw_data());
      CHECK(static_cast<const char*>(w2.grad_home().raw_data()) + w2.nbytes() ==
            b1.grad_home().raw_data());
    });
    CHECK(buckets == 1);
  }
}

TEST_CASE("mpi: a sharded optimizer steps, clips and gathers its state as a replicated one does",
          "[mpi]") {
  auto comm = mpi_communicator();
  // 16 elements: rank 0 owns a and b (8), rank 1 c and d (8).
  const std::vector<int64_t> sizes = {6, 2, 5, 3};
  auto make = [&](ParameterRegistry& params) {
    for (size_t k = 0; k < sizes.size(); ++k) {
      Rng rng(20 + k);
      params.add(std::string(1, static_cast<char>('a' + k)), Tensor::randn({sizes[k]}, rng),
                 k % 2 == 0);
    }
  };
  // The same averages on every rank, as the reducer leaves them: parameter k's gradient is all
  // (k + 1) * (step + 1), a norm of (step + 1) * sqrt(6 + 2 * 4 + 5 * 9 + 3 * 16). Past both clip
  // thresholds, so a norm of one rank's share alone would move the weights otherwise.
  auto set_grads = [&](const ParameterRegistry& params, int step) {
    for (size_t k = 0; k < sizes.size(); ++k)
      Tensor(params.all()[k].value).set_grad(Tensor::full({sizes[k]}, (k + 1.0) * (step + 1)));
  };
  for (const char* name : {"lamb", "adamw"}) {
    INFO(name);
    OptimizerOptions options;
    options.lr = 0.01;
    options.clip_grad = 2;
    ParameterRegistry replicated_params, sharded_params;
    make(replicated_params);
    make(sharded_params);
    ShardedOptimizer replicated(name, replicated_params, options, *comm, /*shard_state=*/false);
    ShardedOptimizer sharded(name, sharded_params, options, *comm, /*shard_state=*/true);
    REQUIRE(sharded.gradient_owners() == std::vector<int>{0, 0, 1, 1});
    // Unsharded, every rank keeps the state of every parameter.
    CHECK(replicated.owned() == std::vector<size_t>{0, 1, 2, 3});
    for (int step = 0; step < 2; ++step) {
      set_grads(replicated_params, step);
      set_grads(sharded_params, step);
      const double norm = (step + 1) * std::sqrt(107.0);
      CHECK(replicated.step() == Approx(norm).epsilon(1e-12));
      CHECK(sharded.step() == Approx(norm).epsilon(1e-12));
    }
    for (size_t k = 0; k < sizes.size(); ++k) {
      INFO(replicated_params.all()[k].name);
      CHECK(sharded_params.all()[k].value.to_vector<float>() ==
            replicated_params.all()[k].value.to_vector<float>());
    }
    // Rank 0 gets the whole state, in the replicated layout and with its values; the others none.
    const NamedTensors whole = replicated.gather_state();
    const NamedTensors gathered = sharded.gather_state();
    if (comm->rank() != 0) {
      CHECK(gathered.empty());
      continue;
    }
    REQUIRE(gathered.size() == whole.size());
    for (size_t i = 0; i < whole.size(); ++i) {
      INFO(whole[i].first);
      CHECK(gathered[i].first == whole[i].first);
      CHECK(gathered[i].second.to_vector<double>() == whole[i].second.to_vector<double>());
    }
  }
}

TEST_CASE("mpi: 2 ranks with batch b train like 1 process with batch 2b, with ZeRO-1 or without",
          "[mpi]") {
  auto comm = mpi_communicator();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));

  const train::TrainSummary two = train::train(tiny_run(data, dir.file("two"), 4), *comm);
  train::TrainOptions zero_options = tiny_run(data, dir.file("zero"), 4);
  zero_options.zero = true;
  const train::TrainSummary zero = train::train(zero_options, *comm);
  // Checkpointed blocks hand their parameters' gradients to the reducer's buckets later in
  // backward, all at once per block: the same averages.
  train::TrainOptions checkpointed_options = tiny_run(data, dir.file("checkpointed"), 4);
  checkpointed_options.grad_checkpointing = true;
  train::train(checkpointed_options, *comm);
  CHECK(two.world_size == 2);
  CHECK(two.last.images == 3);  // each validation image once, on one rank or the other
  CHECK(zero.last.loss == two.last.loss);

  if (comm->rank() == 0) {
    const auto single_comm = alone();
    const train::TrainSummary one =
        train::train(tiny_run(data, dir.file("one"), 8), *single_comm);
    CHECK(one.last.images == 3);
    CHECK(two.last.loss == Approx(one.last.loss).epsilon(1e-5));

    const Tensors reference = model_of(dir.file("one/checkpoint.safetensors"));
    const Tensors replicated = model_of(dir.file("two/checkpoint.safetensors"));
    const double error = max_relative_error(replicated, reference);
    std::printf("2 ranks x batch 4 vs 1 process x batch 8, 3 LAMB steps: largest per-tensor "
                "relative weight difference %.3g\n", error);
    CHECK(error < 1e-5);

    // The comparison means something: the steps moved the weights far more than the tolerance.
    train::TrainOptions untrained = tiny_run(data, dir.file("init"), 8);
    untrained.lr = 1e-30;
    train::train(untrained, *single_comm);
    CHECK(max_relative_error(model_of(dir.file("init/checkpoint.safetensors")), reference) > 1e-3);

    // ZeRO-1 makes the replicated update bit for bit, and gathers the same optimizer state.
    const model::Checkpoint zero_ck =
        model::read_checkpoint(dir.file("zero/checkpoint.safetensors"));
    const model::Checkpoint two_ck = model::read_checkpoint(dir.file("two/checkpoint.safetensors"));
    CHECK(read_tensors(zero_ck.model) == read_tensors(two_ck.model));
    CHECK(read_tensors(zero_ck.extra) == read_tensors(two_ck.extra));
    CHECK(zero_ck.extra.size() == two_ck.extra.size());
    CHECK(read_tensors(model::read_checkpoint(dir.file("checkpointed/checkpoint.safetensors"))
                           .model) == read_tensors(two_ck.model));
  }
}

TEST_CASE("mpi: every rank starts from rank 0's weights, whatever it loaded itself", "[mpi]") {
  auto comm = mpi_communicator();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  // Two sets of starting weights: untrained runs of two seeds.
  for (const uint64_t seed : {1, 2}) {
    train::TrainOptions untrained = tiny_run(data, dir.file("init" + std::to_string(seed)), 4);
    untrained.seed = seed;
    untrained.lr = 1e-30;
    train::train(untrained, *comm);
  }
  const std::string a = dir.file("init1/checkpoint.safetensors");
  const std::string b = dir.file("init2/checkpoint.safetensors");
  // --finetune may name another file on each rank (node-local copies): rank 1's own weights
  // must not reach the gradients it contributes.
  train::TrainOptions same = tiny_run(data, dir.file("same"), 4);
  same.finetune = a;
  train::train(same, *comm);
  train::TrainOptions differing = tiny_run(data, dir.file("differing"), 4);
  differing.finetune = comm->rank() == 0 ? a : b;
  train::train(differing, *comm);
  if (comm->rank() == 0) {
    REQUIRE(model_of(a) != model_of(b));
    CHECK(model_of(dir.file("differing/checkpoint.safetensors")) ==
          model_of(dir.file("same/checkpoint.safetensors")));
  }
}

TEST_CASE("mpi: a run resumes with the same number of ranks, across --zero, and not with another",
          "[mpi]") {
  auto comm = mpi_communicator();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));

  const train::TrainOptions run = tiny_run(data, dir.file("run"), 4);
  CHECK(train_resumed_across_zero(run, dir, *comm).epochs_run == 1);

  if (comm->rank() == 0) {
    const model::Checkpoint a = model::read_checkpoint(dir.file("whole/checkpoint.safetensors"));
    const model::Checkpoint b = model::read_checkpoint(dir.file("rest/checkpoint.safetensors"));
    CHECK(read_tensors(a.model) == read_tensors(b.model));
    CHECK(read_tensors(a.extra) == read_tensors(b.extra));
    CHECK(b.state.at("world_size") == 2);

    train::TrainOptions other_world = run;
    other_world.output_dir = dir.file("one");
    other_world.epochs = 2;
    other_world.resume = dir.file("first/checkpoint.safetensors");
    CHECK_THROWS_WITH(train::train(other_world, *alone()),
                      Catch::Contains("run of 2 process(es), this run has 1") &&
                          Catch::Contains("first/checkpoint.safetensors"));
  }
  // Rank 1 resumes a stale copy (the run an epoch earlier, as a node's own folder might hold):
  // every rank stops before training, and the run's checkpoint is left as it was.
  const std::vector<uint8_t> saved =
      deit::test::read_bytes(dir.file("rest/checkpoint.safetensors"));
  train::TrainOptions stale = run;
  stale.epochs = 3;
  stale.output_dir = dir.file(comm->rank() == 0 ? "rest" : "first");
  stale.resume = stale.output_dir + "/checkpoint.safetensors";
  CHECK_THROWS_WITH(train::train(stale, *comm),
                    Catch::Contains("processes of this run resume different checkpoints"));
  comm->barrier();
  CHECK(deit::test::read_bytes(dir.file("rest/checkpoint.safetensors")) == saved);
}

TEST_CASE("mpi: a stop one rank is asked for stops both after the same step, and resumes exactly",
          "[mpi]") {
  auto comm = mpi_communicator();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  train::TrainOptions whole = tiny_run(data, dir.file("whole"), 4);
  whole.epochs = 2;
  whole.zero = true;  // the sharded optimizer state is gathered for the stop's checkpoint
  train::train(whole, *comm);

  // Rank 1 alone "receives" SIGTERM before the first step: both ranks stop after it.
  train::TrainOptions stopped = whole;
  stopped.output_dir = dir.file("stopped");
  if (comm->rank() == 1) train::request_stop(SIGTERM);
  const train::TrainSummary at = train::train(stopped, *comm);
  CHECK(at.stop.signal == SIGTERM);
  CHECK(at.stop.rank == 1);
  CHECK(at.stop.epoch == 0);
  CHECK(at.stop.batches_done == 1);
  CHECK(at.stop.batches == 3);
  CHECK(at.epochs_run == 0);

  if (comm->rank() == 0) {
    // deit info says the position is each process's, and how to go on (run from a rank, whose
    // launch variables it inherits).
    const test::CliResult info = test::run_deit("info --checkpoint " + dir.file("stopped"));
    INFO(info.output);
    CHECK_THAT(info.output, Catch::Contains("then 1 of the 3 batches per process of epoch 1") &&
                                Catch::Contains("(launched as this run was, 2 processes)"));
  }

  train::TrainOptions rest = stopped;
  rest.resume = dir.file("stopped/checkpoint.safetensors");
  const train::TrainSummary resumed = train::train(rest, *comm);
  CHECK(resumed.stop.signal == 0);
  CHECK(resumed.epochs_run == 2);
  CHECK(resumed.resumed_at_batch == 1);
  CHECK(resumed.resumed_epoch_batches == 3);

  if (comm->rank() == 0) {
    const model::Checkpoint a = model::read_checkpoint(dir.file("whole/checkpoint.safetensors"));
    const model::Checkpoint b = model::read_checkpoint(dir.file("stopped/checkpoint.safetensors"));
    CHECK(read_tensors(a.model) == read_tensors(b.model));
    CHECK(read_tensors(a.extra) == read_tensors(b.extra));
    CHECK_FALSE(b.state.contains("within_epoch"));
    // The first epoch's loss sums the stopped run's batches and the resumed run's.
    const std::vector<nlohmann::json> a_log = log_lines(dir.file("whole/log.txt"));
    const std::vector<nlohmann::json> b_log = log_lines(dir.file("stopped/log.txt"));
    REQUIRE(a_log.size() == 2);
    REQUIRE(b_log.size() == 2);
    for (size_t e = 0; e < 2; ++e)
      CHECK(b_log[e]["train_loss"].get<double>() ==
            Approx(a_log[e]["train_loss"].get<double>()).epsilon(1e-12));
  }
}

TEST_CASE("mpi: a stop asked for during an evaluation stops at the epoch's checkpoint", "[mpi]") {
  auto comm = mpi_communicator();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  // An epoch is one optimizer step (12 images per rank): no step of it is followed by another
  // in the epoch, so a stop asked for before it is first seen after the epoch's evaluation.
  train::TrainOptions run = tiny_run(data, dir.file("two"), 12);
  run.epochs = 2;
  if (comm->rank() == 1) train::request_stop(SIGUSR1);
  const train::TrainSummary at_first = train::train(run, *comm);
  CHECK(at_first.stop.signal == SIGUSR1);
  CHECK(at_first.stop.rank == 1);
  CHECK(at_first.stop.epoch == 1);
  CHECK(at_first.stop.batches_done == 0);
  CHECK_FALSE(at_first.stop.finished);
  CHECK(at_first.epochs_run == 1);
  if (comm->rank() == 0)
    CHECK(model::read_checkpoint_header(dir.file("two/checkpoint.safetensors")).state["epoch"] ==
          0);

  // After the last epoch's evaluation the run has finished, and says so.
  run.output_dir = dir.file("one");
  run.epochs = 1;
  if (comm->rank() == 1) train::request_stop(SIGUSR1);
  const train::TrainSummary at_last = train::train(run, *comm);
  CHECK(at_last.stop.signal == SIGUSR1);
  CHECK(at_last.stop.finished);
  CHECK(at_last.epochs_run == 1);
}

TEST_CASE("mpi: every rank learns rank 0's wish to save and the first rank a signal reached",
          "[mpi]") {
  // --save-every's clock is rank 0's alone: every rank must save with it, or rank 0 would wait in
  // the save's collectives for ranks that went on training.
  auto comm = mpi_communicator();
  train::AfterStep after = train::after_step(*comm, comm->rank() == 0);
  CHECK(after.save);
  CHECK(after.signal == 0);
  after = train::after_step(*comm, comm->rank() == 1);  // only rank 0's wish counts
  CHECK_FALSE(after.save);
  // Signals on both ranks: every rank names the same one, the lowest rank's.
  train::request_stop(comm->rank() == 0 ? SIGUSR1 : SIGTERM);
  after = train::after_step(*comm, false);
  train::request_stop(0);  // nothing left pending for the cases after this one
  CHECK(after.signal == SIGUSR1);
  CHECK(after.rank == 0);
}

TEST_CASE("mpi: rank 0's progress ends an evaluation with the whole split's loss", "[mpi]") {
  auto comm = mpi_communicator();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  train::TrainOptions run = tiny_run(data, dir.file("two"), 4);
  run.progress = true;  // rank 0 alone shows it
  // Rank 0's stderr while it trains: its progress lines, plain (not a terminal).
  train::TrainSummary summary;
  const auto train_run = [&] { summary = train::train(run, *comm); };
  if (comm->rank() != 0) return train_run();
  const std::string captured = test::stderr_of(dir.file("stderr.txt"), train_run);
  // Rank 0 scores 2 of the 3 val images, rank 1 the third: the last eval line shows the loss over
  // all 3, which the epoch's line reports after it, not rank 0's share's.
  std::istringstream lines(captured);
  std::string line, last_eval;
  while (std::getline(lines, line))
    if (line.rfind("eval ", 0) == 0) last_eval = line;
  char loss[32];
  std::snprintf(loss, sizeof loss, "loss %.4f ", summary.last.loss);
  CHECK_THAT(last_eval, Catch::Contains("took") && Catch::Contains(loss));
}

TEST_CASE("mpi: deit bench step over two ranks reports the communication, with --zero too",
          "[mpi]") {
  auto comm = mpi_communicator();
  bench::StepBenchOptions o = tiny_step_bench(2, 2);
  o.zero = GENERATE(false, true);
  const bench::StepReport r = bench::run_step_benchmark(o, *comm);
  CHECK(r.world_size == 2);
  check_comm_report(r, "mpi", o.zero);
}

TEST_CASE("mpi: deit bench step on ranks that differ stops on every rank, naming the flag",
          "[mpi]") {
  auto comm = mpi_communicator();
  // The gradients are of the same sizes, so the steps would run, and rank 0 report a batch of 2
  // per process that rank 1 did not use.
  const bench::StepBenchOptions o = tiny_step_bench(2 + comm->rank(), 1);
  CHECK_THROWS_WITH(bench::run_step_benchmark(o, *comm),
                    Catch::Contains("differ in --batch-size") &&
                        Catch::Contains("the same deit bench step command"));
}

TEST_CASE("mpi: ranks that differ in settings or classes all stop before training, saying where",
          "[mpi]") {
  auto comm = mpi_communicator();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  // Another batch size and learning rate on rank 1: every rank throws (none waits for the others).
  train::TrainOptions o = tiny_run(data, dir.file("settings"), 4);
  if (comm->rank() == 1) {
    o.batch_size = 2;
    o.lr = 1e-3;
  }
  CHECK_THROWS_WITH(train::train(o, *comm),
                    Catch::Contains("the 2 processes of this run differ in batch_size, lr: every "
                                    "process must run the same command"));
  // Settings that leave a run's course alone but decide its collectives must agree as well.
  train::TrainOptions collectives = tiny_run(data, dir.file("collectives"), 4);
  if (comm->rank() == 1) {
    collectives.zero = true;
    collectives.bucket_mb = 1;
  }
  CHECK_THROWS_WITH(train::train(collectives, *comm),
                    Catch::Contains("differ in bucket_mb, zero: every process"));
  // Rank 1 trains on a copy of the dataset that `change` alters (rank 0 makes it): every rank
  // stops, naming `what` differs.
  auto refused_with_rank1_copy = [&](const std::string& name,
                                     const std::function<void(const std::string&)>& change,
                                     const std::string& what) {
    const std::string copy = dir.file(name);
    if (comm->rank() == 0) {
      std::filesystem::copy(data, copy, std::filesystem::copy_options::recursive);
      change(copy);
    }
    comm->barrier();
    CHECK_THROWS_WITH(
        train::train(tiny_run(comm->rank() == 1 ? copy : data, dir.file(name + "_run"), 4), *comm),
        Catch::Contains("differ in " + what));
  };
  const std::string first_class = data::synthetic_class_names()[0];
  auto first_image = [&](const std::string& folder) {
    return std::filesystem::directory_iterator(folder + "/" + first_class)->path();
  };
  // A class named otherwise.
  refused_with_rank1_copy(
      "renamed",
      [&](const std::string& copy) {
        for (const char* split : {"/train/", "/val/"})
          std::filesystem::rename(copy + split + first_class, copy + split + "zigzag");
      },
      "the dataset's classes");
  // A training image fewer: the ranks would shard different orders.
  refused_with_rank1_copy(
      "fewer",
      [&](const std::string& copy) { std::filesystem::remove(first_image(copy + "/train")); },
      "the train split's image count");
  // As many training images, one under another name: its indices would pick other images.
  refused_with_rank1_copy(
      "other",
      [&](const std::string& copy) {
        std::filesystem::rename(first_image(copy + "/train"),
                                copy + "/train/" + first_class + "/renamed.png");
      },
      "the train split's images (by relative path");
  // A val image fewer: the ranks' shares would not tile one split.
  refused_with_rank1_copy(
      "fewer_val",
      [&](const std::string& copy) { std::filesystem::remove(first_image(copy + "/val")); },
      "the val split's images");
  // Rank 0 refuses its --output (a folder holding another run's log): every rank stops.
  if (comm->rank() == 0) {
    std::filesystem::create_directories(dir.file("held"));
    std::ofstream(dir.file("held/log.txt")) << "{}\n";
  }
  comm->barrier();
  CHECK_THROWS_WITH(train::train(tiny_run(data, dir.file("held"), 4), *comm),
                    Catch::Contains(comm->rank() == 0 ? "holds the log of a run"
                                                      : "rank 0 refused the run's --output"));
  // Nothing was made for any of the runs (rank 0 removed what it had made once the others are
  // past their refusals).
  comm->barrier();
  CHECK_FALSE(std::filesystem::exists(dir.file("settings")));
  CHECK_FALSE(std::filesystem::exists(dir.file("collectives")));
  CHECK_FALSE(std::filesystem::exists(dir.file("renamed_run")));
}

TEST_CASE("mpi: processes of two deit builds stop at their first collective, naming the builds",
          "[mpi]") {
  auto comm = mpi_communicator();
  const std::string ours = build_fingerprint();
  std::string other = ours;  // another build's, on rank 1
  other.back() = other.back() == '0' ? '1' : '0';
  const std::string differ = "differ in the deit build (rank 0 runs build " + ours;
  // The same build: nothing to say, and the ranks go on to the next collective together.
  train::agree_on_build(*comm, ours, "run");
  CHECK(from_rank0(*comm, "after") == "after");
  // Each rank names rank 0's build, and its own where that differs.
  CHECK_THROWS_WITH(
      train::agree_on_build(*comm, comm->rank() == 1 ? other : ours, "run"),
      Catch::Contains("the 2 processes of this run " + differ +
                      (comm->rank() == 1 ? ", this process build " + other : "") +
                      "): every process must run the same deit build (`deit --version` shows it)"));

  // Rank 1 stands for a build whose first collective is the build check, as every build's is: in
  // a run or a benchmark, rank 0's first collective must meet it (another collective before it,
  // such as the older builds' refusal of --output, of another size, fails as MPI_ERR_TRUNCATE or
  // hangs).
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  if (comm->rank() == 0) {
    CHECK_THROWS_WITH(train::train(tiny_run(data, dir.file("run"), 4), *comm),
                      Catch::Contains("the 2 processes of this run " + differ));
    CHECK_THROWS_WITH(bench::run_step_benchmark(tiny_step_bench(2, 1), *comm),
                      Catch::Contains("the 2 processes of this benchmark " + differ));
  } else {
    CHECK_THROWS_WITH(train::agree_on_build(*comm, other, "run"), Catch::Contains(differ));
    CHECK_THROWS_WITH(train::agree_on_build(*comm, other, "benchmark"), Catch::Contains(differ));
  }
  comm->barrier();
  CHECK_FALSE(std::filesystem::exists(dir.file("run")));  // rank 0 made nothing for it
}

TEST_CASE("mpi: every rank's summary counts the unusable files any rank met", "[mpi]") {
  auto comm = mpi_communicator();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  // A val image sorted second of four: rank 1's to score (each rank takes every other one). A
  // train image, met by one rank or the other as each epoch deals the split out: counted once.
  if (comm->rank() == 0)
    for (const char* split : {"/val/", "/train/"})
      test::write_bytes(data + split + data::synthetic_class_names()[0] + "/zz_broken.png",
                        std::vector<uint8_t>(64, 7));
  comm->barrier();
  train::TrainOptions run = tiny_run(data, dir.file("run"), 4);
  run.epochs = 4;
  const train::TrainSummary summary = train::train(run, *comm);
  CHECK(summary.skipped_images == 2);
}

TEST_CASE("mpi: a rank whose training fails ends the job", "[mpi][.mpi_rank_train_fails]") {
  auto comm = mpi_communicator();
  // mpirun ends rank 0 before it could clean up: a fixed folder beside the test binary (so two
  // build trees' runs stay apart), replaced by the next run.
  const std::filesystem::path dir =
      std::filesystem::read_symlink("/proc/self/exe").parent_path() / "mpi_rank_train_fails.tmp";
  if (comm->rank() == 0) std::filesystem::remove_all(dir);
  const std::string data = write_dataset(*comm, (dir / "data").string());
  // Rank 1 cannot open its data and leaves by the exception, while rank 0 goes on to the first
  // collective of training (the ranks' agreement check) and waits there until mpirun ends it.
  const std::string rank_data = comm->rank() == 1 ? data + "/missing" : data;
  if (comm->rank() == 1) {
    std::printf("rank 1 trains on a dataset that is not there\n");
    std::fflush(stdout);
  }
  train::train(tiny_run(rank_data, (dir / "run").string(), 4), *comm);
  FAIL("training returned without rank 1");
}
