// [gpu] What the benchmarks compare must be the same job: cuDNN's fused attention (the rival in
// `deit bench kernels`) reads our packed qkv and writes our output and log-sum-exp layouts, so its
// results must match our kernel's on the same inputs. And `deit bench step` on the GPU reports what
// it documents (bench/step_bench.h), with the engine's CUDA ops in its breakdown.
// Without a device: the kernel report's JSON carries the fields and units bench/report.py and
// bench/torch_baseline.py read, so a GPU session's results are not lost to a renamed field.
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <exception>
#include <memory>
#include <set>
#include <string>

#include "bench/cuda_timing.h"
#include "bench/kernel_bench.h"
#include "bench/step_bench.h"
#include "cuda_test_util.h"
#include "engine/communicator.h"
#include "engine/cuda_context.h"
#include "engine/rendezvous.h"
#include "kernels/attention.h"
#include "kernels/cuda/cublaslt.h"
#include "model/config.h"
#include "tests/step_report_checks.h"

#if DEIT_HAVE_CUDNN
#include <cudnn.h>

#include "bench/cudnn_attention.h"
#endif

using namespace deit::test;

#if DEIT_HAVE_CUDNN
TEST_CASE("cuDNN's fused attention (the bench rival) matches our attention forward",
          "[gpu][bench][cudnn]") {
  // The same gate as the rival's own (bench/cudnn_attention.h): too old a cuDNN has no rival.
  if (const std::string why = deit::bench::cudnn_sdpa_unavailable_reason(); !why.empty()) {
    WARN(why << ": no cuDNN rival to check");
    return;
  }
  struct Shape {
    int64_t B, Tn, H, D;
  };
  for (const Shape s : {Shape{2, 65, 3, 64}, Shape{3, 197, 2, 64}, Shape{2, 145, 2, 80},
                        Shape{1, 577, 1, 80}}) {
    INFO("B=" << s.B << " T=" << s.Tn << " H=" << s.H << " D=" << s.D);
    // A shape no engine of this cuDNN plans is the benchmark's "unavailable" row, not a wrong
    // result: said and skipped. What the rival computes where it runs is still checked below.
    const double scale = 1.0 / std::sqrt(static_cast<double>(s.D));
    std::unique_ptr<deit::bench::CudnnAttentionForward> cudnn;
    try {
      cudnn = std::make_unique<deit::bench::CudnnAttentionForward>(s.B, s.Tn, s.H, s.D, scale);
    } catch (const std::exception& e) {
      WARN("B=" << s.B << " T=" << s.Tn << " H=" << s.H << " D=" << s.D
                << ": no cuDNN rival for this shape, skipped: " << e.what());
      continue;
    }
    const int64_t C = s.H * s.D;
    deit::Rng rng(s.Tn * 100 + s.D);
    const Bf16Host qkv_host = random_bf16(rng, s.B * s.Tn * 3 * C, -2.0, 2.0);
    const Bf16Buffer qkv(qkv_host.bits);
    Bf16Buffer ours(s.B * s.Tn * C), theirs(s.B * s.Tn * C);
    F32Buffer ours_lse(s.B * s.H * s.Tn), theirs_lse(s.B * s.H * s.Tn);
    Stream stream;
    deit::kernels::attention_forward_cuda(qkv.get(), ours.get(), ours_lse.get(), s.B, s.Tn, s.H,
                                          s.D, scale, stream);
    INFO("cuDNN " << deit::bench::cudnn_runtime_version() << ", " << cudnn->engine());
    cudnn->run(qkv.get(), theirs.get(), theirs_lse.get(), stream);
    stream.sync();
    // Both are bf16 outputs of fp32 arithmetic on the same bf16 inputs (DESIGN's bf16 tolerance);
    // the log-sum-exp is fp32 on both sides.
    check_close("attention output, cuDNN vs ours", download_float(theirs), download_float(ours),
                1e-2);
    check_close("log-sum-exp, cuDNN vs ours", download_float(theirs_lse),
                download_float(ours_lse), 1e-4);
  }
}
#endif

TEST_CASE("timed runs after a read-only L2 flush leave their work's result and time it",
          "[gpu][bench]") {
  // The flush reads four L2s of zeros and writes nothing; the work between the events is what
  // is timed, once per repeat after the warm-up.
  // The stream is non-blocking, as the benchmarks' is: the flusher's zeroing must be on it.
  cudaStream_t stream = nullptr;
  DEIT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const deit::bench::L2Flusher flusher(0, stream);
  const deit::bench::DeviceMemory buffer(size_t{1} << 20);
  int runs = 0;
  const deit::bench::Timing t = deit::bench::time_on_stream(stream, {2, 5}, flusher, [&] {
    DEIT_CUDA_CHECK(cudaMemsetAsync(buffer.as<void>(), 0x5a, buffer.bytes(), stream));
    ++runs;
  });
  DEIT_CUDA_CHECK(cudaStreamSynchronize(stream));
  DEIT_CUDA_CHECK(cudaStreamDestroy(stream));
  CHECK(runs == 7);
  CHECK(t.repeats == 5);
  CHECK(t.min_ms > 0);
  CHECK(t.min_ms <= t.median_ms);
  CHECK(t.median_ms <= t.max_ms);
  unsigned char first = 0;
  DEIT_CUDA_CHECK(cudaMemcpy(&first, buffer.as<void>(), 1, cudaMemcpyDeviceToHost));
  CHECK(first == 0x5a);
}

TEST_CASE("deit bench kernels' JSON has the fields and units the report scripts read", "[bench]") {
  deit::bench::KernelReport report;
  report.device = "NVIDIA H200";
  report.cudnn = "9.13.0";
  report.timing.warmup = 5;
  report.timing.repeats = 30;
  report.copy_gbps = 4000;
  report.gemm_tflops = 800;
  deit::bench::KernelMeasurement layernorm;
  layernorm.kernel = "layernorm forward";
  layernorm.impl = "deit";
  layernorm.shape = "rows=50432 C=768";
  layernorm.bytes = 2e9;
  layernorm.timing.median_ms = 1;
  deit::bench::KernelMeasurement attention;
  attention.kernel = "attention forward";
  attention.impl = "deit";
  attention.shape = "B=256 T=197 H=12 D=64";
  attention.flops = 4e11;
  attention.timing.median_ms = 2;
  deit::bench::KernelMeasurement rival;
  rival.kernel = "attention forward";
  rival.impl = "cudnn";
  rival.shape = attention.shape;
  rival.available = false;
  rival.note = "no engine";
  report.kernels = {layernorm, attention, rival};

  const auto j = deit::bench::to_json(report);
  CHECK(j["device"] == "NVIDIA H200");
  CHECK(j["cudnn"] == "9.13.0");
  CHECK(j["warmup"] == 5);
  CHECK(j["repeats"] == 30);
  CHECK(j["copy_gbps"] == 4000.0);
  CHECK(j["gemm_tflops"] == 800.0);
  REQUIRE(j["kernels"].size() == 3);
  const auto& memory_row = j["kernels"][0];
  CHECK(memory_row["kernel"] == "layernorm forward");
  CHECK(memory_row["impl"] == "deit");
  CHECK(memory_row["shape"] == "rows=50432 C=768");
  CHECK(memory_row["available"] == true);
  CHECK(memory_row["median_ms"] == 1.0);
  CHECK(memory_row["gbps"].get<double>() == Approx(2000));  // 1e9 bytes per second
  CHECK(memory_row["fraction_of_ceiling"].get<double>() == Approx(0.5));
  CHECK_FALSE(memory_row.contains("tflops"));
  const auto& flops_row = j["kernels"][1];
  CHECK(flops_row["tflops"].get<double>() == Approx(200));  // 1e12 FLOP per second
  CHECK(flops_row["fraction_of_ceiling"].get<double>() == Approx(0.25));
  CHECK_FALSE(flops_row.contains("gbps"));
  const auto& unavailable_row = j["kernels"][2];
  CHECK(unavailable_row["available"] == false);
  CHECK(unavailable_row["note"] == "no engine");
  CHECK_FALSE(unavailable_row.contains("median_ms"));
}

namespace {

// A two-block ViT-S at 64 px, batch 8, narrowed to 2 heads of 64: a step of a few milliseconds,
// and of a few seconds on the emulated device, whose time goes with the parameter count (the
// optimizer's launches run a thread per few parameters).
deit::bench::StepBenchOptions small_step() {
  deit::bench::StepBenchOptions o;
  o.model_name = "deit3_small";
  o.model = deit::model::preset("deit3_small");
  o.model.depth = 2;
  o.model.dim = 128;
  o.model.heads = 2;
  o.model.input_size = 64;
  o.batch_size = 8;
  o.warmup = 1;
  o.steps = 2;
  return o;
}

}  // namespace

#if DEIT_HAVE_NCCL
TEST_CASE("deit bench step through NCCL on one GPU times the gradient reduction",
          "[gpu][bench][nccl]") {
  deit::bench::StepBenchOptions o = small_step();
  o.profile_steps = 0;
  // Sharded, the one rank owns everything: a reduce-scatter and an all-gather of one run.
  o.zero = GENERATE(false, true);
  deit::Rendezvous one_rank;
  one_rank.nccl_one_rank = true;
  const auto comm = deit::make_communicator(deit::Device::cuda(0), one_rank);
  deit::test::check_comm_report(deit::bench::run_step_benchmark(o, *comm), "nccl", o.zero);
}
#endif

TEST_CASE("deit bench step on the GPU reports the documented fields", "[gpu][bench]") {
  deit::bench::StepBenchOptions o = small_step();
  o.drop_path = 0.1;
  o.profile_steps = 1;
  o.cuda_graph = true;
  const auto comm = deit::make_communicator(deit::Device::cuda(0), deit::Rendezvous{});
  const deit::bench::StepReport r = deit::bench::run_step_benchmark(o, *comm);
  INFO(r.graph_error);
  CHECK(r.graph_error.empty());
  REQUIRE(r.graph_step_ms.has_value());
  CHECK(*r.graph_step_ms > 0);
  CHECK(r.device == "cuda:0");
  CHECK(r.precision == "bf16");
  CHECK(r.step_ms > 0);
  CHECK(r.images_per_s == Approx(8 * 1000.0 / r.step_ms));
  CHECK(r.peak_memory_bytes > 0);
  CHECK(r.forward_ms > 0);
  CHECK(r.backward_ms > 0);
  CHECK(r.optimizer_ms > 0);
  CHECK((r.branch_sample_share > 0 && r.branch_sample_share <= 1));
  // The peak MFU is taken against is known for the GPUs deit is benchmarked on.
  if (deit::bench::known_peak_tflops(r.device_name)) CHECK(r.peak_tflops.has_value());
  std::set<std::string> ops;
  double in_ops = 0;
  for (const auto& op : r.breakdown) {
    ops.insert(op.op);
    in_ops += op.ms_per_step;
    // Two blocks: the first's attention, and the last's, for the class token alone.
    if (op.op == "attention" || op.op == "class_attention") CHECK(op.calls_per_step == 1.0);
  }
  for (const char* op :
       {"linear", "linear backward", "attention", "attention backward", "class_attention",
        "class_attention backward", "layernorm backward", "bce_with_logits"}) {
    INFO(op);
    CHECK(ops.count(op) == 1);
  }
  CHECK(in_ops <= r.profiled_step_ms * (1 + 1e-6));
  CHECK_FALSE(r.comm_total_ms.has_value());
}

TEST_CASE("deit bench step --no-gemm-epilogues runs the step and leaves the setting as it found it",
          "[gpu][bench]") {
  deit::bench::StepBenchOptions o = small_step();
  o.profile_steps = 0;
  o.gemm_epilogues = false;
  const auto comm = deit::make_communicator(deit::Device::cuda(0), deit::Rendezvous{});
  const deit::bench::StepReport r = deit::bench::run_step_benchmark(o, *comm);
  CHECK(r.step_ms > 0);
  CHECK(deit::bench::to_json(r)["gemm_epilogues"] == false);
  CHECK(deit::cuda_context(0).cublas_lt->bias_epilogue());
}

TEST_CASE("deit bench step --gemm-autotune runs the step and leaves the setting as it found it",
          "[gpu][bench]") {
  deit::bench::StepBenchOptions o = small_step();
  o.profile_steps = 0;
  o.gemm_autotune = true;
  // A width no other case of this process runs, so that its GEMMs are planned (and tuned) here.
  o.model.dim = 96;
  o.model.heads = 3;
  const auto comm = deit::make_communicator(deit::Device::cuda(0), deit::Rendezvous{});
  const deit::bench::StepReport r = deit::bench::run_step_benchmark(o, *comm);
  CHECK(r.step_ms > 0);
  const nlohmann::ordered_json j = deit::bench::to_json(r);
  CHECK(j["gemm_autotune"] == true);
  REQUIRE(r.gemm_plans_off_first_choice.has_value());
  CHECK(j["gemm_plans_off_first_choice"] == *r.gemm_plans_off_first_choice);
  // The emulated heuristic's first choice is always the slower
  // (tests/emulated/runtime/cublaslt.cpp).
  if (deit::test::on_emulated_device()) CHECK(*r.gemm_plans_off_first_choice > 0);
  CHECK_FALSE(deit::cuda_context(0).cublas_lt->autotune());
}
