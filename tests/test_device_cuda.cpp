// How deit uses the CUDA runtime from the host, where a mistake shows only on a real GPU run:
// - a failed device query (no driver, a driver older than the runtime, no device visible) is
//   reported with the runtime's own words and its likely cause, not as "0 GPUs" (engine/device.h);
// - a device index past the last device is refused by name (engine/device.h, cuda_context.h,
//   allocator.h);
// - a CUDA graph waits for its replays before its memory pool is handed back, and hands it back
//   when destroyed or recaptured (engine/cuda_graph.h); a capture may make the allocator call
//   cudaMalloc, which must leave the thread's capture mode as it was (engine/allocator.cpp); a
//   capture that fails leaves no error behind for the next launch;
// - the input feed's upload buffers grow geometrically, so that batches of varied sizes cause few
//   reallocations, each a device synchronisation (train/input_feed.h).
// The [device] and [feed] cases are host logic and run everywhere (deit_tests); the others are
// [gpu], run on the emulated runtime by CI (tests/emulated/runtime/).
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/cuda_context.h"
#include "engine/cuda_graph.h"
#include "engine/device.h"
#include "engine/ops.h"
#include "engine/stream.h"
#include "engine/tensor.h"
#include "kernels/check.h"
#include "train/input_feed.h"

namespace {

using namespace deit;
using Catch::Contains;
using Catch::EndsWith;

// A query that failed as the runtime reports `error`.
CudaDeviceQuery failed_query(cudaError_t error, const char* name, const char* text,
                             int driver_version) {
  CudaDeviceQuery q;
  q.error = static_cast<int>(error);
  q.error_name = name;
  q.error_text = text;
  q.driver_version = driver_version;
  q.runtime_version = 13000;
  return q;
}

// This thread's stream-capture mode (cudaThreadExchangeStreamCaptureMode), left as it was.
cudaStreamCaptureMode thread_capture_mode() {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  DEIT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  cudaStreamCaptureMode back = mode;
  DEIT_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&back));
  return mode;
}

}  // namespace

TEST_CASE("a CUDA device the runtime cannot use is reported with the runtime's error and cause",
          "[device]") {
  const Device gpu = Device::cuda(0);
  // libcuda.so missing: the runtime says "insufficient driver" and the driver version is 0.
  const std::string no_driver = missing_cuda_device_message(
      gpu, failed_query(cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
                        "CUDA driver version is insufficient for CUDA runtime version", 0));
  CHECK_THAT(no_driver, Contains("cuda:0") && Contains("cudaErrorInsufficientDriver") &&
                            Contains("CUDA driver version is insufficient") &&
                            Contains("no NVIDIA driver is installed") && Contains("--device cpu"));
  // A driver too old for the CUDA 13 runtime: both versions, and what to do.
  const std::string old_driver = missing_cuda_device_message(
      gpu, failed_query(cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
                        "CUDA driver version is insufficient for CUDA runtime version", 12080));
  CHECK_THAT(old_driver, Contains("supports CUDA 12.8") && Contains("CUDA 13.0 runtime") &&
                             Contains("update the driver") && Contains("--device cpu"));
  CHECK_THAT(old_driver, !Contains("no NVIDIA driver"));
  // A container started without GPU access.
  const std::string hidden =
      missing_cuda_device_message(gpu, failed_query(cudaErrorNoDevice, "cudaErrorNoDevice",
                                                    "no CUDA-capable device is detected", 13000));
  CHECK_THAT(hidden, Contains("no CUDA-capable device is detected") &&
                         Contains("no CUDA device is visible") && Contains("--gpus") &&
                         Contains("CUDA_VISIBLE_DEVICES") && Contains("--device cpu"));
  // Any other failure still carries the runtime's words.
  const std::string other = missing_cuda_device_message(
      gpu, failed_query(cudaErrorUnknown, "cudaErrorUnknown", "unknown error", 13000));
  CHECK_THAT(other, Contains("cudaErrorUnknown (unknown error)") && Contains("--device cpu"));
  // A query that worked: the machine has fewer devices than asked for.
  CudaDeviceQuery one;
  one.count = 1;
  CHECK_THAT(missing_cuda_device_message(Device::cuda(1), one),
             Contains("cuda:1") && Contains("this machine has 1") && Contains("--device cpu"));
  // A command with no CPU path says what to do instead.
  const std::string bench = missing_cuda_device_message(
      gpu, failed_query(cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device", 13000),
      "run it on a GPU machine");
  CHECK_THAT(bench,
             Contains("no CUDA device is visible") && EndsWith("or run it on a GPU machine"));
  CHECK_THAT(bench, !Contains("--device cpu"));
}

TEST_CASE("require_device reports what this machine's CUDA runtime said", "[device]") {
  // The real query: on a GPU machine it finds the devices; elsewhere (CI, the development
  // machines) it fails, and the failure must reach the message, not turn into "0 GPUs".
  const CudaDeviceQuery query = query_cuda_devices();
  CHECK(cuda_device_count() == query.count);
  if (query.count > 0) {
    CHECK(query.error == cudaSuccess);
    CHECK_NOTHROW(require_device(Device::cuda(0)));
    CHECK_THROWS_WITH(require_device(Device::cuda(query.count)),
                      Contains("this machine has " + std::to_string(query.count)));
  } else {
    // cudaGetDeviceCount does not succeed with no device: it says why there is none.
    CHECK(query.error != cudaSuccess);
    CHECK_FALSE(query.error_text.empty());
    CHECK_FALSE(query.error_name.empty());
    CHECK_THROWS_WITH(require_device(Device::cuda(0)),
                      Contains(query.error_text) && Contains("--device cpu"));
  }
  CHECK_NOTHROW(require_device(Device::cpu()));
}

TEST_CASE("cuda:N with N the device count is refused with a clear error", "[gpu][device]") {
  // Device indices run from 0 to count - 1: the first index past them is the one an off-by-one
  // check lets through, to fail later in a driver call that names no device.
  const int count = cuda_device_count();
  REQUIRE(count > 0);
  const std::string past = "cuda:" + std::to_string(count);
  CHECK_NOTHROW(require_device(Device::cuda(count - 1)));
  CHECK_THROWS_WITH(
      require_device(Device::cuda(count)),
      Contains("no CUDA device " + past) && Contains("this machine has " + std::to_string(count)));
  CHECK_THROWS_WITH(cuda_context(count), Contains("no CUDA device " + past));
  CHECK_THROWS_WITH(cuda_allocator(count), Contains("no CUDA device " + past));
}

TEST_CASE("a CUDA graph waits for its replays before it is captured again or destroyed",
          "[gpu][graph]") {
  // The graph's pool goes back to the allocator then, and a replay still running would write
  // blocks handed to someone else. CUDA itself does not wait: an executable graph destroyed in
  // flight is freed when its replays end. So on a GPU, 16 replays over 8 MB queued just before
  // are most likely still running unless the graph waited. (The emulated runtime's
  // cudaGraphExecDestroy runs all queued work itself, so there this checks the contract only.)
  NoGrad no_grad;
  const Tensor x = Tensor::full({4096, 1024}, 0.5, DType::bf16, Device::cuda(0));
  // Once eagerly first: the device's context (its cuBLASLt workspace) is made outside a capture.
  CHECK(ops::gelu(x).to_vector<float>().size() == 4096 * 1024);
  const auto capture_gelu = [&](CudaGraph& graph) {
    graph.capture(0, [&] { const Tensor y = ops::gelu(x); });  // y's block: the graph's pool
  };
  cudaEvent_t replayed = nullptr;
  DEIT_CUDA_CHECK(cudaEventCreateWithFlags(&replayed, cudaEventDisableTiming));
  const auto replay_then_record = [&](CudaGraph& graph) {
    for (int i = 0; i < 16; ++i) graph.launch();
    DEIT_CUDA_CHECK(cudaEventRecord(replayed, compute_stream(0)));
  };
  {
    CudaGraph graph;
    capture_gelu(graph);
    replay_then_record(graph);
    capture_gelu(graph);
    CHECK(cudaEventQuery(replayed) == cudaSuccess);
    REQUIRE(graph.captured());
    replay_then_record(graph);
  }
  CHECK(cudaEventQuery(replayed) == cudaSuccess);
  DEIT_CUDA_CHECK(cudaEventDestroy(replayed));
}

TEST_CASE("a capture that needs a fresh cudaMalloc succeeds and restores the thread's capture mode",
          "[gpu][graph]") {
  // A capture in global mode refuses cudaMalloc; the caching allocator relaxes this thread's mode
  // for its own call and must put it back: left relaxed, a synchronisation or a pageable copy this
  // thread issues during a later capture would be let through instead of failing loudly.
  NoGrad no_grad;
  const Tensor x = Tensor::full({997, 1001}, 0.5, DType::bf16, Device::cuda(0));
  // Once eagerly first: the device's context is made outside a capture.
  CHECK(ops::gelu(x).to_vector<float>().size() == 997 * 1001);
  CachingAllocator& allocator = cuda_allocator(0);
  allocator.release_cached();  // nothing cached: the captured gelu's block needs a cudaMalloc
  const uint64_t system_allocations = allocator.stats().system_allocations;
  CHECK(thread_capture_mode() == cudaStreamCaptureModeGlobal);  // after the eager cudaMalloc
  cudaStreamCaptureMode mode_after_allocation = cudaStreamCaptureModeRelaxed;
  CudaGraph graph;
  REQUIRE_NOTHROW(graph.capture(0, [&] {
    const Tensor y = ops::gelu(x);
    mode_after_allocation = thread_capture_mode();
  }));
  CHECK(allocator.stats().system_allocations > system_allocations);
  CHECK(mode_after_allocation == cudaStreamCaptureModeGlobal);
  CHECK(thread_capture_mode() == cudaStreamCaptureModeGlobal);
  REQUIRE(graph.captured());
  graph.launch();
  DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(0)));
  DEIT_CUDA_CHECK(cudaGetLastError());
}

TEST_CASE("a destroyed or recaptured CUDA graph hands its memory pool back to the allocator",
          "[gpu][graph]") {
  // Kept by a dead pool, the graph's blocks would serve nothing again: every capture of a step
  // (each epoch's, each resize's) would leak its activations.
  NoGrad no_grad;
  const Shape shape = {991, 1003};
  const Tensor x = Tensor::full(shape, 0.5, DType::bf16, Device::cuda(0));
  CHECK(ops::gelu(x).to_vector<float>().size() == 991 * 1003);
  CachingAllocator& allocator = cuda_allocator(0);
  allocator.release_cached();  // the graphs' blocks are then the only ones of their size
  void* first_block = nullptr;
  void* second_block = nullptr;
  {
    CudaGraph graph;
    graph.capture(0, [&] { first_block = ops::gelu(x).raw_data(); });
    graph.launch();
    // Recaptured: the first capture's pool goes back to the shared cache, where the second
    // capture finds the block (its own pool is still empty).
    const uint64_t system_allocations = allocator.stats().system_allocations;
    graph.capture(0, [&] { second_block = ops::gelu(x).raw_data(); });
    CHECK(second_block == first_block);
    CHECK(allocator.stats().system_allocations == system_allocations);
    graph.launch();
  }
  // Destroyed: the block serves the next allocation of its size, outside any capture.
  const uint64_t system_allocations = allocator.stats().system_allocations;
  const Tensor z = Tensor::empty(shape, DType::bf16, Device::cuda(0));
  CHECK(z.raw_data() == second_block);
  CHECK(allocator.stats().system_allocations == system_allocations);
}

TEST_CASE("a live CUDA graph's blocks serve no allocation outside it", "[gpu][graph]") {
  // Every replay writes them: an eager tensor given one would be overwritten by the next launch.
  NoGrad no_grad;
  const Shape shape = {983, 1009};
  const Tensor x = Tensor::full(shape, 0.5, DType::bf16, Device::cuda(0));
  CHECK(ops::gelu(x).to_vector<float>().size() == 983 * 1009);
  cuda_allocator(0).release_cached();  // the captured block is then the only one of its size
  void* captured_block = nullptr;
  CudaGraph graph;
  graph.capture(0, [&] { captured_block = ops::gelu(x).raw_data(); });
  const Tensor eager = Tensor::empty(shape, DType::bf16, Device::cuda(0));
  CHECK(eager.raw_data() != captured_block);
  graph.launch();
  DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(0)));
}

TEST_CASE("a capture broken by a refused call leaves no error for the next launch",
          "[gpu][graph]") {
  // A synchronisation during a global-mode capture is refused and invalidates the capture, and
  // ending it reports that too. The caller may go on without the graph (eagerly): neither error
  // may stay behind as the thread's last error, which the next launch check would report as its
  // own.
  NoGrad no_grad;
  const Tensor x = Tensor::zeros({4, 16}, DType::bf16, Device::cuda(0));
  CHECK(ops::gelu(x).to_vector<float>() == std::vector<float>(64, 0.0f));
  CudaGraph graph;
  CHECK_THROWS(graph.capture(0, [&] {
    const Tensor y = ops::gelu(x);
    DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(0)));
  }));
  CHECK_FALSE(graph.captured());
  CHECK(cudaPeekAtLastError() == cudaSuccess);
  std::vector<float> eager;
  CHECK_NOTHROW(eager = ops::gelu(x).to_vector<float>());  // a launch and its check
  CHECK(eager == std::vector<float>(64, 0.0f));
  // And the graph can be captured afresh.
  CHECK_NOTHROW(graph.capture(0, [&] { const Tensor y = ops::gelu(x); }));
  CHECK(graph.captured());
}

TEST_CASE("a capture refuses an allocation made by another thread while it runs", "[gpu][graph]") {
  // Captured in global mode, a call unsafe during a capture fails whichever thread makes it (a
  // loader's pinned allocation, another thread's synchronisation), rather than running outside
  // the graph. In thread-local or relaxed mode another thread's cudaMalloc would succeed.
  NoGrad no_grad;
  const Tensor x = Tensor::zeros({4, 16}, DType::bf16, Device::cuda(0));
  CHECK(ops::gelu(x).to_vector<float>() == std::vector<float>(64, 0.0f));
  cudaError_t other_thread = cudaSuccess;
  void* allocated = nullptr;
  CudaGraph graph;
  graph.capture(0, [&] { const Tensor y = ops::gelu(x); });
  graph.launch();
  CHECK_THROWS(graph.capture(0, [&] {
    const Tensor y = ops::gelu(x);
    std::thread([&] {
      other_thread = cudaMalloc(&allocated, 256);
      cudaGetLastError();
    }).join();
  }));
  CHECK(other_thread != cudaSuccess);
  // The failed capture replaced the graph captured before it: nothing is left to launch (not a
  // graph already destroyed).
  CHECK_FALSE(graph.captured());
  CHECK_THROWS_AS(graph.launch(), std::logic_error);
  CHECK(cudaPeekAtLastError() == cudaSuccess);
  if (allocated) DEIT_CUDA_CHECK(cudaFree(allocated));
}

TEST_CASE("the input feed's upload buffers grow geometrically with the batches", "[feed]") {
  // Batches 1% larger each time, over a 100-fold rise (ImageNet's sources vary widely): a buffer
  // that grew to 1.25x each need would be reallocated about 21 times, each a device sync.
  size_t buffer = 0;
  int reallocations = 0;
  size_t largest = 0;
  for (double need = 1e6; need < 1e8; need *= 1.01) {
    const size_t needed = static_cast<size_t>(need);
    largest = needed;
    if (needed <= buffer) continue;
    const size_t grown = train::grown_upload_bytes(needed, buffer);
    CHECK(grown >= needed);
    CHECK(grown >= 2 * buffer);
    buffer = grown;
    ++reallocations;
  }
  // log2(100 / 1.25) + 1 = 7.3, and the buffer stays within twice the largest batch.
  CHECK(reallocations <= 8);
  CHECK(buffer <= 2 * largest);
  // The first allocation leaves a quarter of headroom.
  CHECK(train::grown_upload_bytes(1000, 0) == 1250);
}
