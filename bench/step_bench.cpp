#include "bench/step_bench.h"

#include <algorithm>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench/op_profiler.h"
#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/build_fingerprint.h"
#include "engine/device.h"
#include "engine/gradient_reducer.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "engine/sharded_optimizer.h"
#include "engine/staged_upload.h"
#include "model/cost.h"
#include "model/vit.h"
#include "train/graph_step.h"
#include "train/rank_agreement.h"

#if DEIT_HAVE_CUDA
#include <cuda_runtime.h>

#include "bench/cuda_timing.h"
#include "engine/cuda_context.h"
#include "engine/stream.h"
#include "kernels/check.h"
#include "kernels/cuda/cublaslt.h"
#endif

namespace deit::bench {

namespace {

// Points in time along the step: the host clock on the CPU (ops run as they are called), events on
// the compute stream on CUDA (ops are only queued when the host moves on).
class Marks {
 public:
  explicit Marks(Device device) : device_(device) {}
  ~Marks() {
#if DEIT_HAVE_CUDA
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
#endif
  }
  Marks(const Marks&) = delete;
  Marks& operator=(const Marks&) = delete;

  void mark() {
    if (device_.is_cpu()) {
      host_ms_.push_back(now_ms());
      return;
    }
#if DEIT_HAVE_CUDA
    cudaEvent_t e = nullptr;
    DEIT_CUDA_CHECK(cudaEventCreate(&e));
    events_.push_back(e);
    DEIT_CUDA_CHECK(cudaEventRecord(e, compute_stream(device_.index)));
#endif
  }

  // Every mark's time after the first, in ms, once the device has passed them all.
  std::vector<double> since_first_ms() const {
    std::vector<double> t;
    if (device_.is_cpu()) {
      for (double ms : host_ms_) t.push_back(ms - host_ms_.front());
      return t;
    }
#if DEIT_HAVE_CUDA
    DEIT_CUDA_CHECK(cudaEventSynchronize(events_.back()));
    for (cudaEvent_t e : events_) {
      float ms = 0;
      DEIT_CUDA_CHECK(cudaEventElapsedTime(&ms, events_.front(), e));
      t.push_back(ms);
    }
#endif
    return t;
  }

 private:
  Device device_;
  std::vector<double> host_ms_;
#if DEIT_HAVE_CUDA
  std::vector<cudaEvent_t> events_;
#endif
};

void wait_for_device(Device device) {
#if DEIT_HAVE_CUDA
  if (device.is_cuda()) DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(device.index)));
#else
  (void)device;
#endif
}

// A batch of normalised-looking images and binarised mixup targets (two classes on per sample, as
// the recipe's BCE sees after mixing), made on the host once and moved to the device.
struct SyntheticBatch {
  Tensor images;
  Tensor targets;
};

SyntheticBatch make_batch(const model::ViTConfig& c, int64_t B, Device device, uint64_t seed) {
  Rng rng(seed, 1);
  SyntheticBatch batch;
  batch.images = Tensor::randn({B, c.in_channels, c.input_size, c.input_size}, rng, 1.0,
                               DType::f32, device);
  std::vector<float> targets(static_cast<size_t>(B * c.num_classes), 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int i = 0; i < 2; ++i)
      targets[b * c.num_classes + static_cast<int64_t>(rng.below(c.num_classes))] = 1.0f;
  batch.targets = Tensor::from_vector(targets, {B, c.num_classes}, device);
  return batch;
}

// The gradient reduction alone, per step, over buffers the size of the gradients: in buckets as
// the reducer plans them (in registration order, where the reducer goes backwards: the same
// sizes), all-reduced, or reduce-scattered to `owners` (a rank per parameter) when sharded.
double reduction_alone_ms(Communicator& comm, const ParameterRegistry& params,
                          const std::vector<int>& owners, int steps) {
  const Device device = comm.device();
  std::vector<Tensor> gradients;
  for (const Parameter& p : params.all())
    gradients.push_back(Tensor::zeros(p.value.shape(), DType::f32, device));
  const std::vector<std::vector<size_t>> buckets =
      plan_buckets(gradients, Communicator::kDefaultBucketBytes);
  int64_t largest = 0;
  for (const std::vector<size_t>& bucket : buckets) {
    int64_t numel = 0;
    for (size_t i : bucket) numel += gradients[i].numel();
    largest = std::max(largest, numel);
  }
  const Tensor scratch = Tensor::zeros({largest}, DType::f32, device);
  comm.barrier();
  Marks marks(device);
  marks.mark();
  for (int step = 0; step < steps; ++step) {
    for (const std::vector<size_t>& bucket : buckets) {
      std::vector<Tensor> tensors;
      std::vector<int> bucket_owners;
      for (size_t i : bucket) {
        tensors.push_back(gradients[i]);
        if (!owners.empty()) bucket_owners.push_back(owners[i]);
      }
      comm.start_bucket_mean(tensors, scratch, bucket_owners);
    }
    comm.finish_buckets();
  }
  marks.mark();
  return marks.since_first_ms().back() / steps;
}

// Every process runs the same benchmark, or all stop here, naming the flags that differ: a rank
// with another model or step count meets the others' collectives with buffers of other sizes
// (MPI_ERR_TRUNCATE) or waits for one they never call, and one with another batch size makes
// rank 0's report describe a run that did not happen.
void agree_across_ranks(const StepBenchOptions& o, Communicator& comm) {
  if (comm.world_size() == 1) return;
  // First: another build may compare other flags, in a collective of another size.
  train::agree_on_build(comm, build_fingerprint(), "benchmark");
  const auto flag = [](bool on) { return std::string(on ? "on" : "off"); };
  const model::ViTConfig& m = o.model;
  const std::vector<std::pair<std::string, std::string>> entries = {
      {"--model", o.model_name},
      {"--patch", std::to_string(m.patch)},
      {"--dim", std::to_string(m.dim)},
      {"--depth", std::to_string(m.depth)},
      {"--heads", std::to_string(m.heads)},
      {"--num-classes", std::to_string(m.num_classes)},
      {"--input-size", std::to_string(m.input_size)},
      {"--batch-size", std::to_string(o.batch_size)},
      {"--opt", o.opt},
      {"--drop-path", nlohmann::json(o.drop_path).dump()},
      {"--warmup", std::to_string(o.warmup)},
      {"--steps", std::to_string(o.steps)},
      {"--profile-steps", std::to_string(o.profile_steps)},
      {"--seed", std::to_string(o.seed)},
      {"--recompute-gelu", flag(o.recompute_gelu)},
      {"--whole-batch-branches", flag(o.whole_batch_branches)},
      {"--grad-checkpointing", flag(o.grad_checkpointing)},
      {"--no-gemm-epilogues", flag(!o.gemm_epilogues)},
      {"--gemm-autotune", flag(o.gemm_autotune)},
      {"--zero", flag(o.zero)},
      {"--cuda-graph", flag(o.cuda_graph)}};
  train::require_agreement(comm, entries, "benchmark",
                           "every process must run the same deit bench step command");
}

}  // namespace

std::optional<double> known_peak_tflops(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  // A MIG instance ("NVIDIA H100 80GB HBM3 MIG 3g.40gb") has a share of the GPU's SMs that its
  // name does not give as a fraction: no peak rather than the whole GPU's.
  if (has("MIG")) return std::nullopt;
  // Dense bf16 peaks from NVIDIA's datasheets; the PCIe and NVL cards run at lower clocks.
  if (has("H100") && has("PCIe")) return 756.0;
  if ((has("H100") || has("H200")) && has("NVL")) return 835.0;
  if (has("H100") || has("H200")) return 989.0;
  if (has("A100")) return 312.0;
  return std::nullopt;
}

StepReport run_step_benchmark(const StepBenchOptions& o, Communicator& comm) {
  const Device device = comm.device();
  require_device(device);
  agree_across_ranks(o, comm);
  StepReport r;
  r.options = o;
  r.world_size = comm.world_size();
  r.device = device.str();
  r.device_name = "cpu";
  r.precision = device.is_cuda() ? "bf16" : "fp32";
#if DEIT_HAVE_CUDA
  if (device.is_cuda()) r.device_name = device_name(device.index);
  std::optional<CublasLtSettingsScope> gemm_settings;
  if (device.is_cuda()) {
    gemm_settings.emplace(device.index);
    gemm_settings->lt().set_bias_epilogue(o.gemm_epilogues);
    gemm_settings->lt().set_autotune(o.gemm_autotune);
  }
#endif
  r.train_gflops_per_image = 6.0 * static_cast<double>(model::forward_macs(o.model)) / 1e9;
  if (o.peak_tflops) {
    r.peak_tflops = o.peak_tflops;
    r.peak_tflops_source = "--peak-tflops";
  } else if (device.is_cuda()) {
    r.peak_tflops = known_peak_tflops(r.device_name);
    if (r.peak_tflops) r.peak_tflops_source = "NVIDIA datasheet, dense bf16";
  }

  model::VisionTransformer vit(o.model, device);
  vit.set_recompute_gelu(o.recompute_gelu);
  vit.set_whole_batch_branches(o.whole_batch_branches);
  vit.set_grad_checkpointing(o.grad_checkpointing);
  Rng init_rng(o.seed);
  vit.initialize(init_rng);
  ParameterRegistry& params = vit.parameters();
  OptimizerOptions opt_options;
  opt_options.lr = o.lr;
  ShardedOptimizer optimizer(o.opt, params, opt_options, comm, o.zero);
  r.sharded = optimizer.sharded();
  GradientReducer reducer(params, comm, Communicator::kDefaultBucketBytes,
                          optimizer.gradient_owners());
  const SyntheticBatch batch =
      make_batch(o.model, o.batch_size, device, o.seed * 1000 + comm.rank());
  const Tensor grad_loss = Tensor::full({1}, 1.0, DType::f32, device);
  Rng drop_path_rng(o.seed, 2 + comm.rank());

  // The samples the timed steps' residual branches ran on, and the most they could have.
  int64_t branch_samples = 0, branch_batches = 0;
  // One training step as the trainer runs it; `marks` (if any: a timed step) hears the phase
  // boundaries.
  auto step = [&](bool reduce_gradients, Marks* marks) {
    if (marks) marks->mark();
    // vit.forward(images, rate, &rng), with the draws in hand to count the branches' samples.
    const Tensor drawn = vit.draw_keep_scales(o.batch_size, o.drop_path, drop_path_rng, DType::f32);
    if (marks)
      for (const int64_t n : vit.branch_samples(drawn)) {
        branch_samples += n;
        branch_batches += o.batch_size;
      }
    const Tensor loss = ops::bce_with_logits(vit.forward_drawn(batch.images, drawn), batch.targets);
    if (marks) marks->mark();
    if (reduce_gradients)
      reducer.backward(loss, grad_loss);
    else
      backward(loss, grad_loss);
    if (marks) marks->mark();
    if (device.is_cuda())
      optimizer.step_async();
    else
      optimizer.step();
    params.zero_grad();
    if (marks) marks->mark();
  };
  // Runs n steps with phase marks; returns the mean step time and fills the phase means.
  auto timed_steps = [&](int n, bool reduce_gradients, double* phase_ms) {
    comm.barrier();
    Marks marks(device);
    for (int i = 0; i < n; ++i) step(reduce_gradients, &marks);
    const std::vector<double> t = marks.since_first_ms();
    for (int i = 0; i < n && phase_ms; ++i)
      for (int p = 0; p < 3; ++p) phase_ms[p] += (t[4 * i + p + 1] - t[4 * i + p]) / n;
    return t.back() / n;
  };

  // The same step captured once and replayed as `deit train --cuda-graph` runs it
  // (train/graph_step.h), after everything else: the capture's blocks stay the graph's, so they
  // are not in the peak above.
  auto replayed_step_ms = [&]() -> double {
    const int64_t B = o.batch_size;
    train::GraphStep graph(device, [&](const Tensor& images, const Tensor& targets,
                                       const Tensor& keep_scales) {
      const Tensor loss = ops::bce_with_logits(vit.forward(images, keep_scales), targets);
      reducer.backward(loss, grad_loss);
      optimizer.update_async();
      return loss;
    });
    auto keep_scales = [&] {
      return vit.draw_keep_scales(B, o.drop_path, drop_path_rng, DType::f32);
    };
    // The eager steps above may have run drop-path's branches on their kept samples; one eager
    // step over the whole batch first warms the captured step's own shapes (cuBLASLt plans, the
    // allocator's cache).
    params.zero_grad();
    backward(ops::bce_with_logits(
                 vit.forward(batch.images, upload_without_waiting(keep_scales(), device)),
                 batch.targets),
             grad_loss);
    params.zero_grad();
    const std::string failure = graph.capture(batch.images, batch.targets, keep_scales(), comm);
    if (!failure.empty()) {
      params.zero_grad();
      throw std::runtime_error("the step could not be captured: " + failure);
    }
    auto replay = [&] {
      (void)graph.run(batch.images, batch.targets, keep_scales(),
                      [&] { optimizer.begin_step_async(); });
    };
    // At least one untimed replay: the first launch of a graph uploads it to the device.
    for (int i = 0; i < std::max(1, o.warmup); ++i) replay();
    wait_for_device(device);
    comm.barrier();
    const int n = std::max(1, o.steps);
    Marks marks(device);
    marks.mark();
    for (int i = 0; i < n; ++i) replay();
    marks.mark();
    const double ms = marks.since_first_ms().back() / n;
    params.zero_grad();  // the gradients the graph writes are not a later eager step's to add to
    return ms;
  };

  for (int i = 0; i < o.warmup; ++i) step(true, nullptr);
  wait_for_device(device);
  double phases[3] = {0, 0, 0};
  r.step_ms = timed_steps(std::max(1, o.steps), true, phases);
  r.forward_ms = phases[0];
  r.backward_ms = phases[1];
  r.optimizer_ms = phases[2];
  r.images_per_s = r.step_ms > 0 ? 1000.0 * static_cast<double>(o.batch_size) / r.step_ms : 0;
  r.branch_sample_share =
      branch_batches > 0 ? static_cast<double>(branch_samples) / static_cast<double>(branch_batches)
                         : 1.0;
  const CachingAllocator& allocator =
      device.is_cuda() ? cuda_allocator(device.index) : cpu_allocator();
  r.peak_memory_bytes = static_cast<int64_t>(allocator.stats().peak_bytes_in_use);

  if (o.profile_steps > 0) {
    OpProfiler profiler;
    {
      ObserveOps observe(profiler);
      // One profiled step first, not counted: it makes the events the counted steps reuse, so
      // that their host does not pause to create two per op.
      timed_steps(1, true, nullptr);
      (void)profiler.totals();
      profiler.clear();
      r.profiled_step_ms = timed_steps(o.profile_steps, true, nullptr);
    }
    for (const auto& [op, total] : profiler.totals())
      r.breakdown.push_back({op, total.ms / o.profile_steps,
                             static_cast<double>(total.calls) / o.profile_steps});
    std::sort(r.breakdown.begin(), r.breakdown.end(),
              [](const OpShare& a, const OpShare& b) { return a.ms_per_step > b.ms_per_step; });
  }

  if (!comm.collectives_are_noops()) {  // several ranks, or NCCL alone (DEIT_NCCL_ONE_RANK)
    r.comm_backend = comm.backend();
    const int n = std::max(1, o.steps);
    // The steps above ended with the device done (timed_steps waits for its last mark), so the
    // last one's buckets can be read, where the backend times them.
    if (comm.last_bucket_timing()) {
      // Reading a step's bucket timing waits for its buckets: steps of their own, not the timed
      // ones, whose host would otherwise fall out of step with the device.
      r.comm_measured_by = "bucket events";
      double busy_ms = 0, exposed_ms = 0;
      comm.barrier();
      for (int i = 0; i < n; ++i) {
        step(true, nullptr);
        const BucketTiming timing = comm.last_bucket_timing().value();
        busy_ms += timing.busy_ms;
        exposed_ms += timing.exposed_ms;
      }
      r.comm_total_ms = busy_ms / n;
      r.comm_exposed_ms = exposed_ms / n;
    } else {
      r.comm_measured_by = "step time difference";
      const double local_step_ms = timed_steps(n, false, nullptr);
      r.comm_exposed_ms = std::max(0.0, r.step_ms - local_step_ms);
      r.comm_total_ms = reduction_alone_ms(comm, params, optimizer.gradient_owners(), n);
    }
    if (r.sharded) {
      // The all-gather alone: after the update, before the next forward, so never hidden. Every
      // rank holds the same values after a step, so gathering them again changes nothing.
      std::vector<Tensor> values;
      for (const Parameter& p : params.all()) values.push_back(p.value);
      comm.barrier();
      Marks marks(device);
      marks.mark();
      for (int i = 0; i < n; ++i) comm.all_gather(values, optimizer.gradient_owners());
      marks.mark();
      r.all_gather_ms = marks.since_first_ms().back() / n;
    }
  }
#if DEIT_HAVE_CUDA
  if (gemm_settings) r.gemm_plans_off_first_choice = gemm_settings->lt().plans_off_first_choice();
#endif
  if (o.cuda_graph) {
    try {
      r.graph_step_ms = replayed_step_ms();
      wait_for_device(device);
    } catch (const std::exception& e) {
      // A fault in the replay can leave the device unusable: the eager numbers above still stand.
      r.graph_error = e.what();
    }
    return r;
  }
  wait_for_device(device);
  return r;
}

nlohmann::ordered_json to_json(const StepReport& r) {
  const StepBenchOptions& o = r.options;
  nlohmann::ordered_json j;
  j["impl"] = "deit";
  j["model"] = o.model_name;
  j["shape"] = {{"patch", o.model.patch},
                {"dim", o.model.dim},
                {"depth", o.model.depth},
                {"heads", o.model.heads},
                {"num_classes", o.model.num_classes}};
  j["input_size"] = o.model.input_size;
  j["batch_size"] = o.batch_size;
  j["world_size"] = r.world_size;
  j["device"] = r.device;
  j["device_name"] = r.device_name;
  j["precision"] = r.precision;
  j["optimizer"] = o.opt;
  j["drop_path"] = o.drop_path;
  j["recompute_gelu"] = o.recompute_gelu;
  j["whole_batch_branches"] = o.whole_batch_branches;
  j["branch_sample_share"] = r.branch_sample_share;
  j["grad_checkpointing"] = o.grad_checkpointing;
  // null on the CPU, which has no GEMM epilogues
  const bool cuda = parse_device(r.device).is_cuda();
  j["gemm_epilogues"] = cuda ? nlohmann::ordered_json(o.gemm_epilogues) : nullptr;
  j["gemm_autotune"] = cuda ? nlohmann::ordered_json(o.gemm_autotune) : nullptr;
  // The process's GEMM plans, so far, that run another algorithm than cuBLASLt's first choice
  j["gemm_plans_off_first_choice"] = r.gemm_plans_off_first_choice
                                         ? nlohmann::ordered_json(*r.gemm_plans_off_first_choice)
                                         : nullptr;
  j["zero"] = r.sharded;
  j["warmup_steps"] = o.warmup;
  j["timed_steps"] = std::max(1, o.steps);
  j["step_ms"] = r.step_ms;
  j["images_per_s"] = r.images_per_s;
  j["train_gflops_per_image"] = r.train_gflops_per_image;
  const double achieved = r.train_gflops_per_image * r.images_per_s / 1000.0;
  j["achieved_tflops"] = achieved;
  j["peak_tflops"] = r.peak_tflops ? nlohmann::ordered_json(*r.peak_tflops) : nullptr;
  j["peak_tflops_source"] = r.peak_tflops ? nlohmann::ordered_json(r.peak_tflops_source) : nullptr;
  j["mfu"] = r.peak_tflops ? nlohmann::ordered_json(achieved / *r.peak_tflops) : nullptr;
  j["peak_memory_bytes"] = r.peak_memory_bytes;
  j["phases_ms"] = {{"forward", r.forward_ms},
                    {"backward", r.backward_ms},
                    {"optimizer", r.optimizer_ms}};
  if (o.profile_steps > 0) {
    nlohmann::ordered_json ops = nlohmann::ordered_json::array();
    double in_ops = 0;
    for (const OpShare& s : r.breakdown) {
      in_ops += s.ms_per_step;
      ops.push_back({{"op", s.op},
                     {"ms_per_step", s.ms_per_step},
                     {"calls_per_step", s.calls_per_step},
                     {"fraction_of_step",
                      r.profiled_step_ms > 0 ? s.ms_per_step / r.profiled_step_ms : 0.0}});
    }
    j["breakdown"] = ops;
    j["profiled_step_ms"] = r.profiled_step_ms;
    j["other_ms"] = std::max(0.0, r.profiled_step_ms - in_ops);
  } else {
    j["breakdown"] = nullptr;
  }
  j["graph_step_ms"] = r.graph_step_ms ? nlohmann::ordered_json(*r.graph_step_ms) : nullptr;
  j["graph_images_per_s"] =
      r.graph_step_ms && *r.graph_step_ms > 0
          ? nlohmann::ordered_json(1000.0 * static_cast<double>(o.batch_size) / *r.graph_step_ms)
          : nullptr;
  j["graph_error"] = r.graph_error.empty() ? nullptr : nlohmann::ordered_json(r.graph_error);
  if (r.comm_total_ms) {
    j["comm"] = {
        {"backend", r.comm_backend},
        {"measured_by", r.comm_measured_by},
        {"reduction", r.sharded ? "reduce-scatter" : "all-reduce"},
        {"total_ms_per_step", *r.comm_total_ms},
        {"exposed_ms_per_step", *r.comm_exposed_ms},
        {"all_gather_ms_per_step", r.all_gather_ms ? nlohmann::ordered_json(*r.all_gather_ms)
                                                   : nlohmann::ordered_json(nullptr)}};
  } else {
    j["comm"] = nullptr;
  }
  return j;
}

}  // namespace deit::bench
