// Data parallelism over NCCL between the two processes of `mpirun -np 2`, one GPU each (the one its
// local rank picks): the collectives give every rank (or each tensor's owner) the reduction of both
// ranks' values, a sharded optimizer's step() leaves both with every owner's update, two ranks with
// batch b train like one process with batch 2b, with sharded optimizer state (--zero) too, and
// `deit bench step` times the buckets (and with --zero the all-gather). Every rank of the job must
// run these cases, so they are hidden from the other entries: CI runs them on two emulated devices
// (nccl_ranks_emulated_*, tests/emulated/runtime/CMakeLists.txt, where NCCL's collectives are
// MPI's); on a machine with two GPUs, `mpirun -np 2 build/tests/deit_tests "[nccl_ranks]"`. The
// hidden [.nccl_rank_hangs*] cases stop rank 0 on purpose; their entries
// (nccl_rank_hangs*_emulated) pass when the job then fails with rank 1's message.
#include "engine/comm_check.h"

#if DEIT_HAVE_NCCL && DEIT_HAVE_MPI
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench/step_bench.h"
#include "engine/communicator.h"
#include "engine/rng.h"
#include "engine/sharded_optimizer.h"
#include "model/config.h"
#include "tests/step_report_checks.h"
#include "tests/test_distributed_helpers.h"

using namespace deit;
using namespace deit::test;

namespace {

Device this_gpu() { return Device::cuda(detect_rendezvous().local_rank); }

std::unique_ptr<Communicator> nccl_ranks() {
  auto comm = make_communicator(this_gpu(), detect_rendezvous());
  REQUIRE(std::string(comm->backend()) == "nccl");
  REQUIRE(comm->world_size() == 2);
  return comm;
}

// Rank `rank`'s input: drawn on the host, so that every rank can make every rank's.
Tensor host_input(int rank, int64_t n, uint64_t seed) {
  Rng rng(seed, static_cast<uint64_t>(rank));
  return Tensor::randn({n}, rng, 1.0, DType::f32);
}

std::vector<Tensor> inputs_on(Device device, int rank, const std::vector<int64_t>& sizes,
                              uint64_t seed) {
  std::vector<Tensor> list;
  for (size_t i = 0; i < sizes.size(); ++i)
    list.push_back(host_input(rank, sizes[i], seed + i).to(device));
  return list;
}

// Checks `got` (on the device) against the mean over the ranks of host_input(., n, seed).
void check_mean(const Tensor& got, int world, uint64_t seed) {
  std::vector<double> mean(got.numel(), 0.0);
  for (int r = 0; r < world; ++r) {
    const std::vector<double> x = host_input(r, got.numel(), seed).to_vector<double>();
    for (size_t i = 0; i < mean.size(); ++i) mean[i] += x[i] / world;
  }
  const std::vector<double> values = got.to(Device::cpu()).to_vector<double>();
  for (size_t i = 0; i < values.size(); ++i)
    if (std::abs(values[i] - mean[i]) > 1e-6 * (1 + std::abs(mean[i])))
      FAIL("element " << i << ": " << values[i] << ", expected " << mean[i]);
}

// tiny_run's model at shapes the CUDA kernels take (head dim 32), on this rank's GPU.
train::TrainOptions cuda_tiny_run(const std::string& data, const std::string& out, int64_t batch) {
  train::TrainOptions o = tiny_run(data, out, batch);
  o.device = this_gpu().str();
  o.model.dim = 64;
  o.model.input_size = 16;
  o.model.patch = 8;
  return o;
}

}  // namespace

TEST_CASE("nccl, two ranks: every collective reduces or spreads both ranks' values",
          "[mpi][.nccl_ranks]") {
  auto comm = nccl_ranks();
  const Device gpu = comm->device();
  const int world = comm->world_size();
  const int rank = comm->rank();

  const Tensor one = host_input(rank, 1000, 1).to(gpu);
  comm->all_reduce_mean(one);
  check_mean(one, world, 1);

  // In buckets of 1 KiB: some tensors packed together, some alone.
  const std::vector<int64_t> sizes = {300, 1, 40, 77, 1000};
  std::vector<Tensor> list = inputs_on(gpu, rank, sizes, 10);
  comm->all_reduce_mean(list, 1024);
  for (size_t i = 0; i < list.size(); ++i) check_mean(list[i], world, 10 + i);

  const Tensor from_last = host_input(rank, 500, 20).to(gpu);
  comm->broadcast(from_last, world - 1);
  CHECK(from_last.to(Device::cpu()).to_vector<float>() ==
        host_input(world - 1, 500, 20).to_vector<float>());

  // Gradient buckets on the communication stream: all-reduced, and reduce-scattered to owners
  // (rank 0 the first two tensors, rank 1 the rest), through the scratch and where they lie.
  const std::vector<int> owners = {0, 0, 1, 1, 1};
  const Tensor scratch = Tensor::empty({1418}, DType::f32, gpu);
  std::vector<Tensor> reduced = inputs_on(gpu, rank, sizes, 30);
  std::vector<Tensor> scattered = inputs_on(gpu, rank, sizes, 40);
  const Tensor home = Tensor::empty({1418}, DType::f32, gpu);
  std::vector<Tensor> homed;
  int64_t offset = 0;
  for (const Tensor& t : inputs_on(gpu, rank, sizes, 50)) {
    homed.push_back(home.slice(offset, offset + t.numel()));
    homed.back().copy_from(t);
    offset += t.numel();
  }
  comm->start_bucket_mean(reduced, scratch);
  comm->start_bucket_mean(scattered, scratch, owners);  // after the last: the scratch is free
  comm->start_bucket_mean(homed, home, owners);
  comm->finish_buckets();
  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO("tensor " << i);
    check_mean(reduced[i], world, 30 + i);
    if (owners[i] != rank) continue;
    check_mean(scattered[i], world, 40 + i);
    check_mean(homed[i], world, 50 + i);
  }

  // Each owner's tensors to every rank, in buckets of 1 KiB and in one.
  for (size_t bucket_bytes : {size_t{1024}, Communicator::kDefaultBucketBytes}) {
    INFO("buckets of " << bucket_bytes << " bytes");
    std::vector<Tensor> gathered = inputs_on(gpu, rank, sizes, 60);
    comm->all_gather(gathered, owners, bucket_bytes);
    for (size_t i = 0; i < sizes.size(); ++i)
      CHECK(gathered[i].to(Device::cpu()).to_vector<float>() ==
            host_input(owners[i], sizes[i], 60 + i).to_vector<float>());
  }

  std::vector<double> metrics = {rank + 1.0, 0.5};
  comm->all_reduce_sum(metrics);
  CHECK(metrics == std::vector<double>{3.0, 1.0});
  comm->barrier();
}

TEST_CASE("nccl, two ranks: a sharded optimizer's step() brings every owner's update to both ranks",
          "[mpi][.nccl_ranks]") {
  // Training calls step_async(); step() on CUDA waits for the norm and must all-gather too. Every
  // rank starts from the same weights and gradients (as averaged ones are), so each tensor must
  // end as a replicated optimizer's update of it, whichever rank owns it.
  auto comm = nccl_ranks();
  const Device gpu = comm->device();
  const std::vector<int64_t> sizes = {96, 7, 64, 33};
  auto weights = [&](ParameterRegistry& registry) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      Tensor value = host_input(0, sizes[i], 70 + i).to(gpu);
      value.set_grad(host_input(1, sizes[i], 80 + i).to(gpu));
      registry.add("p" + std::to_string(i), value, /*weight_decay=*/i % 2 == 0);
    }
  };
  ParameterRegistry sharded_params, replicated_params;
  weights(sharded_params);
  weights(replicated_params);
  ShardedOptimizer sharded("adamw", sharded_params, OptimizerOptions{}, *comm, true);
  ShardedOptimizer replicated("adamw", replicated_params, OptimizerOptions{}, *comm, false);
  REQUIRE(sharded.sharded());
  REQUIRE(sharded.owned().size() < sizes.size());  // the other rank owns some
  const double sharded_norm = sharded.step();
  CHECK(sharded_norm == Approx(replicated.step()).epsilon(1e-6));
  for (size_t i = 0; i < sizes.size(); ++i) {
    INFO("p" << i);
    const std::vector<double> got =
        sharded_params.all()[i].value.to(Device::cpu()).to_vector<double>();
    const std::vector<double> want =
        replicated_params.all()[i].value.to(Device::cpu()).to_vector<double>();
    REQUIRE(got.size() == want.size());
    for (size_t k = 0; k < got.size(); ++k) CHECK(got[k] == Approx(want[k]).epsilon(1e-6));
  }
  comm->barrier();
}

TEST_CASE("nccl, two ranks with batch b train like one process with batch 2b, with --zero too",
          "[mpi][.nccl_ranks]") {
  // Also with micro-batches of b / 2 (--accum-steps 2: the first one's gradients stay in their
  // homes until the second's reduction), and with the steps after the first replayed as one CUDA
  // graph, whose captured buckets must reduce across the ranks as the eager ones do.
  auto comm = nccl_ranks();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  auto cuda_run = [&](const std::string& out, int64_t batch) {
    return cuda_tiny_run(data, dir.file(out), batch);
  };

  const train::TrainSummary two = train::train(cuda_run("two", 4), *comm);
  train::TrainOptions zero_options = cuda_run("zero", 4);
  zero_options.zero = true;
  const train::TrainSummary zero = train::train(zero_options, *comm);
  train::TrainOptions accum_options = cuda_run("accum", 2);
  accum_options.accum_steps = 2;
  train::train(accum_options, *comm);
  for (const bool sharded : {false, true}) {
    train::TrainOptions graph_options = cuda_run(sharded ? "zero_graph" : "graph", 4);
    graph_options.zero = sharded;
    graph_options.cuda_graph = true;
    train::train(graph_options, *comm);
  }
  CHECK(two.world_size == 2);
  CHECK(two.last.images == 3);  // each validation image once, on one rank or the other
  CHECK(zero.last.images == 3);

  if (comm->rank() == 0) {
    const auto alone = make_communicator(this_gpu(), Rendezvous{});
    const train::TrainSummary one = train::train(cuda_run("one", 8), *alone);
    CHECK(two.last.loss == Approx(one.last.loss).epsilon(1e-4));
    const Tensors reference = model_of(dir.file("one/checkpoint.safetensors"));
    const double replicated =
        max_relative_error(model_of(dir.file("two/checkpoint.safetensors")), reference);
    const double sharded =
        max_relative_error(model_of(dir.file("zero/checkpoint.safetensors")), reference);
    // The sharded moments, gathered to rank 0 over NCCL for the checkpoint, are the replicated.
    CHECK(max_relative_error(
              read_tensors(model::read_checkpoint(dir.file("zero/checkpoint.safetensors")).extra),
              read_tensors(model::read_checkpoint(dir.file("two/checkpoint.safetensors")).extra)) <
          1e-4);
    const double accumulated =
        max_relative_error(model_of(dir.file("accum/checkpoint.safetensors")), reference);
    std::printf(
        "CUDA, 2 ranks x batch 4 vs 1 process x batch 8, 3 LAMB steps: largest per-tensor "
        "relative weight difference %.3g (replicated), %.3g (--zero), %.3g (2 micro-batches of "
        "2)\n",
        replicated, sharded, accumulated);
    // bf16 activations: the batch's split changes the order of the gradients' sums, and three
    // LAMB steps carry that on. Measured on the emulated device: 1.6e-3, in blocks.1.attn.qkv.bias
    // (1e-5 or less in most tensors); DESIGN.md allows a bf16 step 2e-2 per tensor. The same runs
    // in fp32 on the CPU (test_distributed_train.cpp) hold the reducer's logic to a tighter bound.
    CHECK(replicated < 5e-3);
    CHECK(sharded < 5e-3);
    CHECK(accumulated < 5e-3);
    // Replayed, each step is the eager one's.
    CHECK(max_relative_error(model_of(dir.file("graph/checkpoint.safetensors")),
                             model_of(dir.file("two/checkpoint.safetensors"))) < 1e-6);
    CHECK(max_relative_error(model_of(dir.file("zero_graph/checkpoint.safetensors")),
                             model_of(dir.file("zero/checkpoint.safetensors"))) < 1e-6);

    // The comparison means something: the steps moved the weights far more than the tolerance.
    train::TrainOptions untrained = cuda_run("init", 8);
    untrained.lr = 1e-30;
    train::train(untrained, *alone);
    CHECK(max_relative_error(model_of(dir.file("init/checkpoint.safetensors")), reference) > 1e-2);
  }
}

TEST_CASE("nccl, two ranks: a --zero run resumes without it where it stopped",
          "[mpi][.nccl_ranks]") {
  auto comm = nccl_ranks();
  const SharedDir dir(*comm);
  const std::string data = write_dataset(*comm, dir.file("data"));
  CHECK(train_resumed_across_zero(cuda_tiny_run(data, dir.file("run"), 4), dir, *comm).epochs_run ==
        1);
  if (comm->rank() == 0) {
    const model::Checkpoint a = model::read_checkpoint(dir.file("whole/checkpoint.safetensors"));
    const model::Checkpoint b = model::read_checkpoint(dir.file("rest/checkpoint.safetensors"));
    // The second epoch's clipping norm is summed from the shares with --zero, whole without.
    CHECK(max_relative_error(read_tensors(b.model), read_tensors(a.model)) < 1e-5);
    CHECK(max_relative_error(read_tensors(b.extra), read_tensors(a.extra)) < 1e-4);
    CHECK(b.state.at("world_size") == 2);
  }
}

TEST_CASE("nccl, two ranks: deit bench step times the buckets, eager and replayed, --zero too",
          "[mpi][.nccl_ranks]") {
  auto comm = nccl_ranks();
  bench::StepBenchOptions o;
  o.model_name = "deit3_tiny";
  o.model = model::preset("deit3_tiny");
  o.model.depth = 2;
  o.model.dim = 64;
  o.model.heads = 2;
  o.model.patch = 8;
  o.model.input_size = 16;
  o.batch_size = 4;
  o.warmup = 1;
  o.steps = 2;
  o.profile_steps = 0;
  o.cuda_graph = true;
  o.zero = GENERATE(false, true);
  const bench::StepReport r = bench::run_step_benchmark(o, *comm);
  CHECK(r.world_size == 2);
  check_comm_report(r, "nccl", o.zero);
  INFO(r.graph_error);
  CHECK(r.graph_error.empty());
  CHECK(r.graph_step_ms.has_value());
}

TEST_CASE(
    "nccl, two ranks: a rank 0 that hangs before sending NCCL's id ends the job after the "
    "wait",
    "[mpi][.nccl_rank_hangs]") {
  // Stopped, rank 0 never broadcasts the id: rank 1 gives up on it and exits by the exception,
  // which Catch reports, and mpirun ends the job.
  const StoppedRank job = stop_rank(0);
  make_communicator(this_gpu(), job.rendezvous);
  FAIL("an NCCL communicator was made without rank 0");
}

TEST_CASE("nccl, two ranks: a rank 0 that hangs in ncclCommInitRank ends the job after the wait",
          "[mpi][.nccl_rank_hangs_in_init]") {
  // The entry stops rank 0 inside the emulated ncclCommInitRank (DEIT_EMULATED_NCCL_STOP_IN_INIT),
  // after the id went out: rank 1 waits there for it until the watchdog ends the process.
  Rendezvous rendezvous = detect_rendezvous();
  rendezvous.comm_timeout = std::chrono::seconds(2);
  make_communicator(this_gpu(), rendezvous);
  FAIL("an NCCL communicator was made without rank 0");
}

TEST_CASE(
    "nccl, two ranks: a rank 0 that hangs after the last collective ends the job after the "
    "wait",
    "[mpi][.nccl_rank_hangs_at_exit]") {
  Rendezvous rendezvous = detect_rendezvous();
  rendezvous.comm_timeout = std::chrono::seconds(2);
  const auto comm = make_communicator(this_gpu(), rendezvous);
  comm->barrier();
  if (comm->rank() == 0) std::raise(SIGSTOP);
  // Rank 1 goes on to free the communicator, which waits for rank 0 (ncclCommDestroy is a
  // collective of the node's ranks) until the watchdog ends the process.
}
#endif
