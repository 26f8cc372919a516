// [gpu] The NCCL communicator's two streams (engine/communicator.h, engine/stream.h), on a
// communicator of one rank: one GPU allows no more (NCCL refuses two ranks on one device), and
// the ordering is what these cases are about. An average over one rank is its input, bit for bit,
// so every collective here must leave the values as they were; what could go wrong is when it
// reads and writes them:
//   - a collective must read its input after the compute-stream work queued before it: that work
//     is long (many passes over a large buffer) and ends by writing the input over a NaN poison;
//   - the compute stream must touch the result only after the collective: the work queued after
//     the join overwrites the tensors, so an unpacking that ran late would leave the old values.
// On a GPU only the second shows in the values: a collective that ran early wrote its input's old
// values back before the compute stream overwrote them, and on one rank an in-place collective
// writes nothing at all. The emulated device (tests/emulated/runtime/stream_order.h) catches both:
// it fails any collective, copy or kernel that touches memory another stream's unordered work
// touches.
#include "engine/comm_check.h"  // detail::make_nccl_communicator

#if DEIT_HAVE_NCCL
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/communicator.h"
#include "engine/cuda_graph.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/stream.h"
#include "tests/cuda_test_util.h"

namespace {

using namespace deit;

const Device kGpu = Device::cuda(0);
constexpr float kAfterJoin = 7.0f;

std::unique_ptr<Communicator> one_rank_nccl() {
  auto comm = detail::make_nccl_communicator(kGpu, Rendezvous{});
  REQUIRE(std::string(comm->backend()) == "nccl");
  REQUIRE(comm->world_size() == 1);
  return comm;
}

void sync_device() {
  DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(0)));
  DEIT_CUDA_CHECK(cudaGetLastError());
}

// Tensors of awkward sizes with random values, kept on the device as the sources of the inputs.
std::vector<Tensor> random_sources(Rng& rng, const std::vector<int64_t>& sizes) {
  std::vector<Tensor> sources;
  for (int64_t n : sizes) sources.push_back(Tensor::randn({n}, rng, 1.0, DType::f32, kGpu));
  return sources;
}

// Elements of the work that holds the compute stream up. On a GPU it must last long enough (256
// MiB a pass) for a collective that does not wait to overtake it. The emulated device
// (tests/emulated/runtime) runs every other stream as soon as work is queued on it, so there a
// collective that does not wait overtakes work of any length, and a long stretch would only cost
// minutes of host time.
int64_t busy_elements() { return test::on_emulated_device() ? 4096 : int64_t{1} << 26; }

// Queues on the compute stream: a long stretch of work on `busy`, then each input poisoned and
// overwritten with its source. Returns at once. (Tensors are handles: the copies share storage.)
void queue_inputs(Tensor busy, std::vector<Tensor> inputs, const std::vector<Tensor>& sources) {
  for (int pass = 0; pass < 200; ++pass) busy.fill_(pass);
  for (size_t i = 0; i < inputs.size(); ++i) {
    inputs[i].fill_(std::numeric_limits<double>::quiet_NaN());
    inputs[i].copy_from(sources[i]);
  }
}

// After the collective and the join: copies of the results, then the results overwritten, all on
// the compute stream; checks both once the device is done.
void check_ordered(std::vector<Tensor> results, const std::vector<Tensor>& sources) {
  std::vector<Tensor> seen;
  for (const Tensor& t : results) seen.push_back(t.clone());
  for (Tensor& t : results) t.fill_(kAfterJoin);
  sync_device();
  for (size_t i = 0; i < results.size(); ++i) {
    INFO("tensor " << i << " of " << results[i].numel() << " elements");
    test::check_same_bits("reduced values", seen[i].to_vector<float>(),
                          sources[i].to_vector<float>());
    CHECK(results[i].to_vector<float>() == std::vector<float>(results[i].numel(), kAfterJoin));
  }
}

}  // namespace

TEST_CASE("nccl: a gradient bucket runs after the compute stream's inputs and before what "
          "follows finish_buckets",
          "[gpu][nccl]") {
  auto comm = one_rank_nccl();
  // All-reduced, or reduce-scattered to their owner (ZeRO-1's gradients): one group of reduces.
  const bool scattered = GENERATE(false, true);
  INFO((scattered ? "reduce-scatter" : "all-reduce"));
  const std::vector<int> owners_of_three =
      scattered ? std::vector<int>{0, 0, 0} : std::vector<int>{};
  const std::vector<int> owner_of_one = scattered ? std::vector<int>{0} : std::vector<int>{};
  Rng rng(61);
  const Tensor busy = Tensor::empty({busy_elements()}, DType::f32, kGpu);
  // A packed bucket of three tensors, with scratch to spare, and one reduced in place.
  const std::vector<Tensor> sources = random_sources(rng, {1000, 3, 70001, 4097});
  std::vector<Tensor> inputs;
  for (const Tensor& s : sources) inputs.push_back(Tensor::empty(s.shape(), DType::f32, kGpu));
  const Tensor scratch = Tensor::empty({80000}, DType::f32, kGpu);
  for (int round = 0; round < 3; ++round) {
    INFO("round " << round);  // the same events and scratch, reused
    queue_inputs(busy, inputs, sources);
    comm->start_bucket_mean({inputs[0], inputs[1], inputs[2]}, scratch, owners_of_three);
    comm->start_bucket_mean({inputs[3]}, scratch, owner_of_one);
    comm->finish_buckets();
    check_ordered(inputs, sources);
    const std::optional<BucketTiming> timing = comm->last_bucket_timing();
    REQUIRE(timing);
    CHECK(timing->buckets == 2);
    CHECK(timing->busy_ms >= 0);
    CHECK(timing->exposed_ms >= 0);
  }
  // A new backward's first bucket records over the events timed above, and a finish_buckets()
  // that joined no bucket has nothing to time: neither may pass off the last step's timing.
  comm->start_bucket_mean({inputs[3]}, scratch);
  CHECK_FALSE(comm->last_bucket_timing());
  comm->finish_buckets();
  CHECK(comm->last_bucket_timing());
  comm->finish_buckets();
  CHECK_FALSE(comm->last_bucket_timing());
  sync_device();
}

TEST_CASE("nccl: plain collectives are ordered like compute-stream kernels", "[gpu][nccl]") {
  auto comm = one_rank_nccl();
  Rng rng(62);
  const Tensor busy = Tensor::empty({busy_elements()}, DType::f32, kGpu);
  const std::vector<Tensor> sources = random_sources(rng, {5000, 17, 33000});
  std::vector<Tensor> inputs;
  for (const Tensor& s : sources) inputs.push_back(Tensor::empty(s.shape(), DType::f32, kGpu));

  SECTION("all-reduce") {
    queue_inputs(busy, inputs, sources);
    comm->all_reduce_mean(inputs[0]);
    comm->all_reduce_sum(inputs[1]);
    comm->all_reduce_mean(inputs[2]);
    check_ordered(inputs, sources);
  }
  SECTION("broadcast") {
    queue_inputs(busy, inputs, sources);
    for (const Tensor& t : inputs) comm->broadcast(t, 0);
    check_ordered(inputs, sources);
  }
  SECTION("all-gather, in buckets: the first two tensors packed, the last alone") {
    queue_inputs(busy, inputs, sources);
    comm->all_gather(inputs, {0, 0, 0}, 100000);
    check_ordered(inputs, sources);
  }
  // No bucket ran: nothing to time.
  CHECK_FALSE(comm->last_bucket_timing());
}

TEST_CASE("nccl: a wait that found the device busy leaves no error for the next launch",
          "[gpu][nccl]") {
  // The wait polls an event; "not ready", seen while the stream is held up, must not stay
  // behind as the thread's last error, or the next kernel's launch check reports it.
  std::unique_ptr<Communicator> comm = detail::make_nccl_communicator(kGpu, Rendezvous{});
  const auto hold_up = [](void*) { std::this_thread::sleep_for(std::chrono::milliseconds(200)); };
  DEIT_CUDA_CHECK(cudaLaunchHostFunc(compute_stream(0), hold_up, nullptr));
  comm->wait_for_device();
  CHECK(cudaPeekAtLastError() == cudaSuccess);
  const Tensor zero = Tensor::zeros({2, 8}, DType::bf16, kGpu);
  CHECK(ops::gelu(zero).to_vector<float>() == std::vector<float>(16, 0.0f));  // launch + check
}

TEST_CASE(
    "nccl: a wait for the device and a barrier cover the compute stream's work, not only "
    "collectives",
    "[gpu][nccl]") {
  // The step reads its values back after one wait for the device (train/step_readback.cpp), so
  // the wait must cover the compute stream's kernels, not only the collectives on the
  // communication stream. With NCCL a barrier is a one-element all-reduce; it too must wait for
  // this rank's queued work (engine/communicator.h): queuing the collective alone would return at
  // once. A synchronous copy runs on the legacy stream, which does not wait for the (non-blocking)
  // compute stream: it reads the values only because the host waited. The emulated device fails
  // a copy that is not ordered after the work that wrote what it reads (stream_order.h),
  // whichever streams run early.
  std::unique_ptr<Communicator> comm = one_rank_nccl();
  for (const bool barrier : {false, true}) {
    INFO((barrier ? "barrier" : "wait_for_device"));
    const Tensor values = Tensor::zeros({4096}, DType::f32, kGpu);
    sync_device();
    DEIT_CUDA_CHECK(cudaMemsetAsync(values.raw_data(), 0x3f, values.nbytes(), compute_stream(0)));
    std::atomic<bool> ran{false};
    const auto mark = [](void* flag) { static_cast<std::atomic<bool>*>(flag)->store(true); };
    DEIT_CUDA_CHECK(cudaLaunchHostFunc(compute_stream(0), mark, &ran));
    if (barrier)
      comm->barrier();
    else
      comm->wait_for_device();
    CHECK(ran.load());
    std::vector<unsigned char> bytes(values.nbytes());
    DEIT_CUDA_CHECK(
        cudaMemcpy(bytes.data(), values.raw_data(), bytes.size(), cudaMemcpyDeviceToHost));
    CHECK(std::count(bytes.begin(), bytes.end(), 0x3f) ==
          static_cast<std::ptrdiff_t>(bytes.size()));
    sync_device();
  }
}

TEST_CASE("nccl: buckets captured into a CUDA graph leave no timing, captured or replayed",
          "[gpu][nccl]") {
  // An event recorded while the compute stream is captured is not recorded: it only orders the
  // captured work, and the replays do not record it either. last_bucket_timing() must then say
  // nullopt (engine/communicator.h), not wait on such events or read their times.
  auto comm = one_rank_nccl();
  Rng rng(63);
  const std::vector<Tensor> grads = random_sources(rng, {1000, 3, 4097});
  const Tensor scratch = Tensor::empty({2000}, DType::f32, kGpu);
  const auto buckets = [&] {
    comm->start_bucket_mean({grads[0], grads[1]}, scratch);
    comm->start_bucket_mean({grads[2]}, scratch);
    comm->finish_buckets();
  };
  buckets();  // eager: timed
  const std::optional<BucketTiming> eager = comm->last_bucket_timing();
  REQUIRE(eager);
  CHECK(eager->buckets == 2);
  CudaGraph graph;
  graph.capture(0, buckets);
  REQUIRE(graph.captured());
  CHECK_FALSE(comm->last_bucket_timing());
  graph.launch();
  sync_device();
  CHECK_FALSE(comm->last_bucket_timing());
  // An eager step after the replays is timed again.
  buckets();
  const std::optional<BucketTiming> again = comm->last_bucket_timing();
  REQUIRE(again);
  CHECK(again->buckets == 2);
  sync_device();
}

TEST_CASE("nccl: a bucket timing's busy time adds up every bucket the step joined", "[gpu][nccl]") {
  // busy_ms sums each bucket's time between its own events. After a tiny first bucket, a long
  // second one (256 tensors, each packed and unpacked on the communication stream) must add to it:
  // the sum is more than the tiny bucket's time alone.
  auto comm = one_rank_nccl();
  Rng rng(64);
  const std::vector<Tensor> tiny = random_sources(rng, {3});
  const std::vector<Tensor> many = random_sources(rng, std::vector<int64_t>(256, 5));
  const Tensor scratch = Tensor::empty({256 * 5}, DType::f32, kGpu);
  comm->start_bucket_mean(tiny, scratch);
  comm->finish_buckets();
  const std::optional<BucketTiming> tiny_alone = comm->last_bucket_timing();
  REQUIRE(tiny_alone);
  CHECK(tiny_alone->buckets == 1);
  comm->start_bucket_mean(tiny, scratch);
  comm->start_bucket_mean(many, scratch);
  comm->finish_buckets();
  const std::optional<BucketTiming> both = comm->last_bucket_timing();
  REQUIRE(both);
  CHECK(both->buckets == 2);
  CHECK(both->busy_ms > tiny_alone->busy_ms);
  sync_device();
}

// [concurrent]: it needs a device that runs while the host waits, which the emulated one does not.
TEST_CASE("nccl: a wait for the device gives up after DEIT_COMM_TIMEOUT and aborts",
          "[gpu][nccl][concurrent]") {
  Rendezvous alone;
  alone.comm_timeout = std::chrono::seconds(1);
  std::unique_ptr<Communicator> comm = detail::make_nccl_communicator(kGpu, alone);
  comm->wait_for_device();  // nothing queued: at once

  // A stream held up for 3 s stands for a collective whose peer never comes.
  const auto hold_up = [](void*) { std::this_thread::sleep_for(std::chrono::seconds(3)); };
  DEIT_CUDA_CHECK(cudaLaunchHostFunc(compute_stream(0), hold_up, nullptr));
  // A wait that waited the stream out would return without throwing. How long the throw takes
  // is not checked: ncclCommAbort frees device memory, which waits for the held-up stream (on an
  // H200 the throw came after the whole 3 s); in a real hang NCCL's kernels see the abort and end.
  const auto start = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(comm->wait_for_device(),
                    Catch::Contains("rank 0 of 1") && Catch::Contains("did not complete in 1 s"));
  CHECK(std::chrono::steady_clock::now() - start >= std::chrono::seconds(1));
  CHECK_THROWS_WITH(comm->wait_for_device(), Catch::Contains("aborted"));
  sync_device();
  comm.reset();  // an aborted communicator is not destroyed again
}

#endif
