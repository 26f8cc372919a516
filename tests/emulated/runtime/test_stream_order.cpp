// The emulated device's check that work on two streams touching the same memory is ordered
// (stream_order.h), on work of each kind: copies, memsets, kernels through their pointer
// arguments and through a table of pointers in device memory, the legacy stream's synchronous
// copies. Compiled into deit_tests_emulated only: a
// GPU gives no such check. The ordered cases run with the other [gpu] cases; each hidden
// [.emulated_race_*] case forgets one wait and must end the emulation with a report
// (tests/emulated/runtime/CMakeLists.txt runs them through tests/expect_job_failure.cmake).
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <vector>

#include "kernels/check.h"
#include "kernels/elementwise.h"
#include "kernels/optimizer.h"

namespace {

constexpr int64_t kFloats = 1024;

// Two non-blocking streams (as the engine's are) and a buffer, with the event that orders them.
struct TwoStreams {
  TwoStreams() {
    DEIT_CUDA_CHECK(cudaStreamCreateWithFlags(&first, cudaStreamNonBlocking));
    DEIT_CUDA_CHECK(cudaStreamCreateWithFlags(&second, cudaStreamNonBlocking));
    DEIT_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    DEIT_CUDA_CHECK(cudaMalloc(&buffer, kFloats * sizeof(float)));
    DEIT_CUDA_CHECK(cudaMalloc(&other, kFloats * sizeof(float)));
  }
  ~TwoStreams() {
    cudaFree(buffer);
    cudaFree(other);
    cudaEventDestroy(done);
    cudaStreamDestroy(first);
    cudaStreamDestroy(second);
  }
  void second_waits_for_first() {
    DEIT_CUDA_CHECK(cudaEventRecord(done, first));
    DEIT_CUDA_CHECK(cudaStreamWaitEvent(second, done, 0));
  }
  // A kernel writes the buffer on the first stream.
  void fill_on_first(float value) { deit::kernels::fill_cuda(buffer, value, kFloats, first); }
  // A copy reads it on the second.
  void copy_on_second() {
    DEIT_CUDA_CHECK(
        cudaMemcpyAsync(other, buffer, kFloats * sizeof(float), cudaMemcpyDeviceToDevice, second));
  }
  // A kernel on the first stream writes `other` through a table of pointers (the multi-tensor
  // optimizer's), not through an argument: other = (other + buffer) / 2.
  void ema_on_first(deit::kernels::CudaParamTable& table) {
    deit::kernels::ema_update_cuda(table, 0.5, first);
  }
  // The table that update reads: `buffer` the weights, `other` their average.
  static deit::kernels::CudaParam ema_param(float* weights, float* average) {
    deit::kernels::CudaParam p;
    p.param = weights;
    p.ema = average;
    p.n = kFloats;
    return p;
  }
  std::vector<float> read_other() {
    std::vector<float> host(kFloats);
    DEIT_CUDA_CHECK(cudaStreamSynchronize(second));
    DEIT_CUDA_CHECK(
        cudaMemcpy(host.data(), other, kFloats * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
  }

  cudaStream_t first = nullptr, second = nullptr;
  cudaEvent_t done = nullptr;
  float* buffer = nullptr;
  float* other = nullptr;
};

}  // namespace

TEST_CASE("emulated device: work on two streams ordered by an event or by the host passes",
          "[gpu][emulated]") {
  TwoStreams s;
  SECTION("an event") {
    s.fill_on_first(3.0f);
    s.second_waits_for_first();
    s.copy_on_second();
    CHECK(s.read_other() == std::vector<float>(kFloats, 3.0f));
  }
  SECTION("the host") {
    s.fill_on_first(4.0f);
    DEIT_CUDA_CHECK(cudaStreamSynchronize(s.first));
    s.copy_on_second();
    CHECK(s.read_other() == std::vector<float>(kFloats, 4.0f));
  }
  SECTION("reads on both streams need no order") {
    s.fill_on_first(5.0f);
    DEIT_CUDA_CHECK(cudaStreamSynchronize(s.first));
    std::vector<float> seen(kFloats);
    DEIT_CUDA_CHECK(cudaMemcpyAsync(seen.data(), s.buffer, kFloats * sizeof(float),
                                    cudaMemcpyDeviceToHost, s.first));
    s.copy_on_second();
    CHECK(s.read_other() == std::vector<float>(kFloats, 5.0f));
    DEIT_CUDA_CHECK(cudaStreamSynchronize(s.first));
    CHECK(seen == std::vector<float>(kFloats, 5.0f));
  }
  SECTION("an event after a kernel that writes through a table of pointers") {
    deit::kernels::CudaParamTable table({TwoStreams::ema_param(s.buffer, s.other)});
    s.fill_on_first(2.0f);
    deit::kernels::fill_cuda(s.other, 6.0f, kFloats, s.first);
    s.ema_on_first(table);
    s.second_waits_for_first();
    std::vector<float> average(kFloats);
    DEIT_CUDA_CHECK(cudaMemcpyAsync(average.data(), s.other, kFloats * sizeof(float),
                                    cudaMemcpyDeviceToHost, s.second));
    DEIT_CUDA_CHECK(cudaStreamSynchronize(s.second));
    CHECK(average == std::vector<float>(kFloats, 4.0f));
  }
}

TEST_CASE("emulated device race: a copy reads what a kernel on another stream writes",
          "[.emulated_race_kernel_then_copy]") {
  TwoStreams s;
  s.fill_on_first(1.0f);
  s.copy_on_second();
}

TEST_CASE("emulated device race: a kernel writes what a copy on another stream reads",
          "[.emulated_race_copy_then_kernel]") {
  TwoStreams s;
  s.copy_on_second();
  s.fill_on_first(2.0f);
}

TEST_CASE("emulated device race: a copy reads what a kernel writes through a table of pointers",
          "[.emulated_race_pointer_table]") {
  TwoStreams s;
  deit::kernels::CudaParamTable table({TwoStreams::ema_param(s.buffer, s.other)});
  s.ema_on_first(table);
  std::vector<float> average(kFloats);
  DEIT_CUDA_CHECK(cudaMemcpyAsync(average.data(), s.other, kFloats * sizeof(float),
                                  cudaMemcpyDeviceToHost, s.second));
}

TEST_CASE("emulated device race: a synchronous copy reads what a non-blocking stream writes",
          "[.emulated_race_legacy_copy]") {
  TwoStreams s;
  DEIT_CUDA_CHECK(cudaMemsetAsync(s.buffer, 0, kFloats * sizeof(float), s.first));
  std::vector<float> host(kFloats);
  DEIT_CUDA_CHECK(
      cudaMemcpy(host.data(), s.buffer, kFloats * sizeof(float), cudaMemcpyDeviceToHost));
}
