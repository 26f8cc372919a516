// deit bench: how fast deit is. `kernels`: every fused CUDA kernel against the hardware's ceilings
// and its library rival (bench/kernel_bench.h); `step`: the training step's images/s, MFU, memory
// and time per op (bench/step_bench.h); `data`: the input pipeline (apps/cmd_bench_data.cpp).
// bench/compare.sh runs them next to PyTorch + timm (bench/torch_baseline.py).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "apps/cli_checks.h"
#include "apps/commands.h"
#include "apps/model_options.h"
#include "bench/step_bench.h"
#include "engine/communicator.h"
#include "engine/device.h"
#include "engine/rendezvous.h"
#include "model/config.h"
#include "train/recipe.h"

#if DEIT_HAVE_CUDA
#include "bench/kernel_bench.h"
#endif

namespace deit::apps {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// --- deit bench kernels -------------------------------------------------------------------------

struct KernelsOptions {
  std::string device = "cuda";
  bool full = false;
  std::optional<int> warmup, repeats;
  bool json = false;
};

#if DEIT_HAVE_CUDA
std::string format_rate(const bench::KernelMeasurement& m) {
  char buf[64];
  if (m.bytes > 0)
    std::snprintf(buf, sizeof(buf), "%8.0f GB/s", bench::achieved_gbps(m));
  else
    std::snprintf(buf, sizeof(buf), "%6.1f TFLOP/s", bench::achieved_tflops(m));
  return buf;
}

void print_kernel_table(const bench::KernelReport& r) {
  std::printf("device %s, cuDNN %s\n", r.device.c_str(), r.cudnn.c_str());
  std::printf("median of %d runs after %d warm-up runs, L2 flushed before each\n",
              r.timing.repeats, r.timing.warmup);
  std::printf("ceilings: copy %.0f GB/s (read + write), bf16 GEMM %.1f TFLOP/s\n\n", r.copy_gbps,
              r.gemm_tflops);
  std::printf("%-30s %-8s %-26s %10s %15s %8s  %s\n", "kernel", "impl", "shape", "median ms",
              "rate", "ceiling", "note");
  for (const bench::KernelMeasurement& m : r.kernels) {
    if (!m.available) {
      std::printf("%-30s %-8s %-26s %10s %15s %8s  %s\n", m.kernel.c_str(), m.impl.c_str(),
                  m.shape.c_str(), "-", "-", "-", m.note.c_str());
      continue;
    }
    std::printf("%-30s %-8s %-26s %10.4f %15s %7.1f%%  %s\n", m.kernel.c_str(), m.impl.c_str(),
                m.shape.c_str(), m.timing.median_ms, format_rate(m).c_str(),
                100.0 * bench::fraction_of_ceiling(m, r), m.note.c_str());
  }
}
#endif

void run_kernels(const KernelsOptions& o) {
  // A name that is not cuda's gets this command's message (parse_device's would offer cpu too);
  // a malformed cuda one keeps parse_device's, which says what is wrong with it.
  Device device;
  try {
    device = parse_device(o.device);
  } catch (const std::invalid_argument&) {
    if (o.device.rfind("cuda", 0) == 0) throw;
  }
  if (!device.is_cuda())
    throw std::invalid_argument(
        "deit bench kernels times the CUDA kernels: --device must be "
        "cuda or cuda:N, got '" +
        o.device + "'");
#if DEIT_HAVE_CUDA
  const CudaDeviceQuery query = query_cuda_devices();
  if (device.index >= query.count)
    throw std::runtime_error(
        "deit bench kernels needs a CUDA device: " +
        missing_cuda_device_message(device, query, "run it on a GPU machine (bench/gpu-check.sh)"));
  bench::KernelBenchOptions options;
  options.all_widths = o.full;
  options.timing.warmup = o.warmup.value_or(o.full ? 10 : 5);
  options.timing.repeats = o.repeats.value_or(o.full ? 100 : 30);
  const bench::KernelReport report = bench::run_kernel_benchmarks(
      device.index, options,
      [](const std::string& line) { std::fprintf(stderr, "bench kernels: %s\n", line.c_str()); });
  if (o.json)
    std::printf("%s\n", bench::to_json(report).dump().c_str());
  else
    print_kernel_table(report);
  // The rows measured before a failure are printed above; the exit status still says it failed.
  if (!report.error.empty())
    throw std::runtime_error("deit bench kernels stopped early: " + report.error);
#else
  throw std::runtime_error("deit bench kernels needs a CUDA device, and this deit was built "
                           "without CUDA");
#endif
}

// --- deit bench step ----------------------------------------------------------------------------

struct StepOptions {
  ModelOptions model;
  std::optional<int64_t> batch_size;
  std::string device = "cuda";
  std::string opt = "lamb";
  std::optional<double> drop_path, peak_tflops;
  int warmup = 3, steps = 10, profile_steps = 2;
  uint64_t seed = 0;
  bool cuda_graph = false;
  bool recompute_gelu = false;
  bool whole_batch_branches = false;
  bool grad_checkpointing = false;
  bool no_gemm_epilogues = false;
  bool gemm_autotune = false;
  bool zero = false;
  bool json = false;
};

void print_step(const bench::StepReport& r, const nlohmann::ordered_json& j) {
  const bench::StepBenchOptions& o = r.options;
  const std::string where =
      r.device == r.device_name ? r.device : r.device + " (" + r.device_name + ")";
  // A preset with overridden sizes is named with the sizes it ran at.
  const model::ViTConfig preset = model::preset(o.model_name);
  std::string model = o.model_name;
  if (preset.patch != o.model.patch || preset.dim != o.model.dim || preset.depth != o.model.depth ||
      preset.heads != o.model.heads)
    model += " (custom: patch " + std::to_string(o.model.patch) + ", dim " +
             std::to_string(o.model.dim) + ", depth " + std::to_string(o.model.depth) + ", heads " +
             std::to_string(o.model.heads) + ")";
  std::printf("%s at %lld px, batch %lld per process, %d process%s on %s, %s, %s%s\n",
              model.c_str(), (long long)o.model.input_size, (long long)o.batch_size, r.world_size,
              r.world_size == 1 ? "" : "es", where.c_str(), r.precision.c_str(), o.opt.c_str(),
              r.sharded ? " with its state sharded (ZeRO-1)" : "");
  std::printf("step          %9.2f ms  (forward %.2f, backward %.2f, optimizer %.2f; mean of %d "
              "after %d warm-up)\n",
              r.step_ms, r.forward_ms, r.backward_ms, r.optimizer_ms, j["timed_steps"].get<int>(),
              o.warmup);
  std::printf("throughput    %9.1f images/s per process\n", r.images_per_s);
  if (r.branch_sample_share < 1)
    std::printf(
        "branches      %9.1f%% of the samples (drop-path's kept ones alone; "
        "--whole-batch-branches: all)\n",
        100.0 * r.branch_sample_share);
  if (r.graph_step_ms)
    std::printf("CUDA graph    %9.2f ms per replayed step, %.1f images/s per process\n",
                *r.graph_step_ms, j["graph_images_per_s"].get<double>());
  if (!r.graph_error.empty())
    std::printf("CUDA graph    failed: %s\n", r.graph_error.c_str());
  std::printf("compute       %9.2f GFLOP per image (6 x forward MACs) -> %.2f TFLOP/s",
              r.train_gflops_per_image, j["achieved_tflops"].get<double>());
  if (r.peak_tflops)
    std::printf(", MFU %.1f%% of %.4g TFLOP/s (%s)\n", 100.0 * j["mfu"].get<double>(),
                *r.peak_tflops, r.peak_tflops_source.c_str());
  else
    std::printf(" (MFU: peak unknown for this device; give --peak-tflops)\n");
  std::printf("peak memory   %9.2f GiB (caching allocator)\n", r.peak_memory_bytes / kGiB);
  if (o.gemm_autotune && r.gemm_plans_off_first_choice)
    std::printf(
        "GEMMs         autotuned: %zu plans run another algorithm than cuBLASLt's first "
        "choice\n",
        *r.gemm_plans_off_first_choice);
  if (!r.breakdown.empty()) {
    std::printf("time per op (profiled step %.2f ms):\n", r.profiled_step_ms);
    int width = 13;  // "(outside ops)"
    for (const auto& op : j["breakdown"])
      width = std::max(width, static_cast<int>(op["op"].get<std::string>().size()));
    for (const auto& op : j["breakdown"]) {
      const double calls = op["calls_per_step"].get<double>();
      std::printf("  %-*s %9.3f ms %6.1f%%  %5.0f %s\n", width, op["op"].get<std::string>().c_str(),
                  op["ms_per_step"].get<double>(), 100.0 * op["fraction_of_step"].get<double>(),
                  calls, std::lround(calls) == 1 ? "call" : "calls");
    }
    std::printf("  %-*s %9.3f ms\n", width, "(outside ops)", j["other_ms"].get<double>());
  }
  // By step time difference the exposed part is what the reduction adds to the step, waiting for
  // the slowest rank included, so it can exceed the reduction timed alone.
  if (r.comm_total_ms)
    std::printf("communication %9.2f ms per step (%s %s, by %s), %.2f ms %s\n", *r.comm_total_ms,
                r.comm_backend.c_str(), j["comm"]["reduction"].get<std::string>().c_str(),
                r.comm_measured_by.c_str(), *r.comm_exposed_ms,
                r.comm_measured_by == "step time difference"
                    ? "added to the step by it (waiting for the slowest rank included)"
                    : "not hidden behind backward");
  if (r.all_gather_ms)
    std::printf(
        "all-gather    %9.2f ms per step (the updated parameters, after the optimizer: "
        "none of it hidden)\n",
        *r.all_gather_ms);
}

void run_step(const StepOptions& o) {
  const train::TrainOptions recipe = train::recipe_for(o.model.model);
  bench::StepBenchOptions options;
  options.model_name = o.model.model;
  options.model = o.model.apply_to(recipe.model);
  options.batch_size = o.batch_size.value_or(64);
  options.opt = o.opt;
  options.lr = recipe.lr;
  options.drop_path = o.drop_path.value_or(recipe.drop_path);
  // Before the model is built and timed, in deit train's words.
  if (!(options.drop_path >= 0 && options.drop_path < 1)) {
    char given[32];
    std::snprintf(given, sizeof given, "%g", options.drop_path);
    throw std::invalid_argument(std::string("--drop-path must be in [0, 1), got ") + given);
  }
  options.warmup = o.warmup;
  options.steps = o.steps;
  options.profile_steps = o.profile_steps;
  if (o.peak_tflops && !(*o.peak_tflops > 0 && std::isfinite(*o.peak_tflops)))
    throw std::invalid_argument("--peak-tflops must be a positive number");
  options.peak_tflops = o.peak_tflops;
  options.seed = o.seed;
  options.cuda_graph = o.cuda_graph;
  options.recompute_gelu = o.recompute_gelu;
  options.whole_batch_branches = o.whole_batch_branches;
  options.grad_checkpointing = o.grad_checkpointing;
  options.gemm_epilogues = !o.no_gemm_epilogues;
  options.gemm_autotune = o.gemm_autotune;
  options.zero = o.zero;
  if (options.batch_size < 1)
    throw std::invalid_argument("--batch-size must be at least 1, got " +
                                std::to_string(options.batch_size));

  const Rendezvous rendezvous = detect_rendezvous();
  // As `deit train`: a bare --device cuda takes the GPU of the process's local rank.
  const std::string device =
      o.device == "cuda" ? Device::cuda(rendezvous.local_rank).str() : o.device;
  if (o.cuda_graph && !parse_device(device).is_cuda())
    throw std::invalid_argument("--cuda-graph needs --device cuda (got " + device + ")");
  if (o.no_gemm_epilogues && !parse_device(device).is_cuda())
    throw std::invalid_argument("--no-gemm-epilogues needs --device cuda (got " + device + ")");
  if (o.gemm_autotune && !parse_device(device).is_cuda())
    throw std::invalid_argument("--gemm-autotune needs --device cuda (got " + device + ")");
  // Before the line that says what is being timed: a device this machine lacks ends it at once.
  require_device(parse_device(device));
  const std::unique_ptr<Communicator> comm = make_communicator(parse_device(device), rendezvous);
  if (o.zero && comm->collectives_are_noops())
    std::fprintf(stderr,
                 "bench step: --zero shards the optimizer state over several processes; "
                 "in one there is nothing to shard, and the step is timed unsharded\n");
  // A CPU step of a real model takes seconds: say what is running before the report comes.
  if (!o.json && comm->rank() == 0)
    std::fprintf(stderr,
                 "timing %s at batch %lld on %s: %d warm-up, %d timed and %d profiled steps\n",
                 options.model_name.c_str(), static_cast<long long>(options.batch_size),
                 device.c_str(), options.warmup, options.steps, options.profile_steps);
  const bench::StepReport report = bench::run_step_benchmark(options, *comm);
  if (comm->rank() != 0) return;
  const nlohmann::ordered_json j = bench::to_json(report);
  if (o.json)
    std::printf("%s\n", j.dump().c_str());
  else
    print_step(report, j);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks: kernels, the training step, data");
  bench->require_subcommand(1);

  auto k = std::make_shared<KernelsOptions>();
  CLI::App* kernels = bench->add_subcommand(
      "kernels",
      "The memory-bound kernels against the copy bandwidth, attention and the linear GEMMs "
      "against a large cuBLASLt GEMM's rate, both measured in the same run, and attention against "
      "cuDNN's. Needs a CUDA device: without one it fails (exit 1).");
  kernels->add_option("--device", k->device, "CUDA device (cuda or cuda:N)")
      ->capture_default_str();
  kernels->add_flag("--full", k->full,
                    "Every preset width for the memory-bound kernels, 100 runs each (default: "
                    "ViT-B's width, 30 runs)");
  // The report states both counts, and the timing loop would run once where zero runs were asked.
  kernels->add_option("--warmup", k->warmup, "Untimed runs before timing (default 5; 10 --full)")
      ->check(int_at_least(0));
  kernels
      ->add_option("--repeats", k->repeats, "Timed runs, median reported (default 30; 100 --full)")
      ->check(int_at_least(1));
  kernels->add_flag("--json", k->json, "Print one JSON object (progress goes to stderr)");
  kernels->callback([k] { run_kernels(*k); });

  auto s = std::make_shared<StepOptions>();
  CLI::App* step = bench->add_subcommand(
      "step",
      "Training step speed on a synthetic batch already on the device: images/s, MFU, peak "
      "memory, time per op, and under mpirun/torchrun (or with DEIT_NCCL_ONE_RANK=1 on one GPU) "
      "the communication not hidden by backward");
  s->model.add_to(*step,
                  "the recipe's training resolution: 224 for T, S and M, 192 for B and L, 160 "
                  "for H",
                  "1000, ImageNet-1k's");
  step->add_option("--batch-size", s->batch_size, "Images per process (default 64)");
  step->add_option("--device", s->device, "cpu, cuda or cuda:N")->capture_default_str();
  step->add_option("--opt", s->opt, "Optimizer: lamb or adamw")
      ->capture_default_str()
      ->check(CLI::IsMember({"lamb", "adamw"}));
  step->add_option("--drop-path", s->drop_path, "Drop-path rate (default: the recipe's)");
  step->add_option("--warmup", s->warmup, "Untimed steps first")
      ->capture_default_str()
      ->check(int_at_least(0));
  step->add_option("--steps", s->steps, "Timed steps")
      ->capture_default_str()
      ->check(int_at_least(1));
  step->add_option("--profile-steps", s->profile_steps,
                   "Steps run again with per-op timing for the breakdown (0: none)")
      ->capture_default_str()
      ->check(int_at_least(0));
  step->add_option("--peak-tflops", s->peak_tflops,
                   "Peak TFLOP/s for MFU (default: known GPUs' dense bf16 peak, e.g. 989 for "
                   "H100/H200 SXM)");
  step->add_option("--seed", s->seed, "Seed of the weights and the synthetic batch")
      ->capture_default_str();
  step->add_flag("--recompute-gelu", s->recompute_gelu,
                 "Recompute GELU in backward, as deit train --recompute-gelu does");
  step->add_flag("--whole-batch-branches", s->whole_batch_branches,
                 "Run every drop-path branch over the whole batch, as deit train "
                 "--whole-batch-branches does and timm always: what computing the kept samples "
                 "alone saves");
  step->add_flag("--grad-checkpointing", s->grad_checkpointing,
                 "Recompute every block's forward in backward, as deit train "
                 "--grad-checkpointing does");
  step->add_flag("--no-gemm-epilogues", s->no_gemm_epilogues,
                 "Add the biases with deit's own kernel instead of cuBLASLt's bias epilogue: "
                 "what the epilogue saves (CUDA only)");
  step->add_flag("--gemm-autotune", s->gemm_autotune,
                 "Time every algorithm cuBLASLt offers for each GEMM on its first run and keep "
                 "the fastest, as deit train --gemm-autotune does (CUDA only)");
  step->add_flag("--zero", s->zero,
                 "Shard the optimizer state over the processes, as deit train --zero does "
                 "(gradients reduce-scattered, updates all-gathered; the all-gather is timed "
                 "too)");
  step->add_flag("--cuda-graph", s->cuda_graph,
                 "Also time the step captured once as a CUDA graph and replayed (CUDA only; "
                 "drop-path's branches then run on the whole batch)");
  step->add_flag("--json", s->json,
                 "Print one JSON object (fields: bench/step_bench.h; the same as "
                 "bench/torch_baseline.py)");
  step->callback([s] { run_step(*s); });

  add_bench_data_subcommand(*bench);
}

}  // namespace deit::apps
