// `deit bench step`: the speed of one DeiT III training step, as the trainer runs it (forward,
// BCE loss, backward with the data-parallel gradient reduction, the optimizer update; eager), on a
// synthetic batch that already sits on the device, so the input pipeline is not part of it
// (`deit bench data` measures that). With --cuda-graph, also the same step captured once as a CUDA
// graph and replayed: what the step costs when the host launches one graph instead of every
// kernel.
//
// One JSON object per run (to_json), with the same field names as bench/torch_baseline.py prints
// for PyTorch + timm, so bench/compare.sh can set the two side by side:
//   impl                 "deit"
//   model                the preset the model starts from
//   shape                {patch, dim, depth, heads, num_classes}: the model measured, overrides
//                        included, so a comparison can check that both sides ran the same one
//   input_size, batch_size (per process), world_size, device, device_name, precision,
//   optimizer, drop_path, recompute_gelu, whole_batch_branches, grad_checkpointing
//   branch_sample_share  the share of the batch the timed steps' residual branches ran on, over
//                        every branch: 1 over the whole batch, less where drop-path's kept samples
//                        ran alone (model/vit.h); train_gflops_per_image counts them all anyway
//   zero                 whether the optimizer state was sharded (ZeRO-1, --zero): the gradient
//                        buckets reduce-scattered, the updates all-gathered after the optimizer
//                        (in phases_ms' optimizer). False in one process without
//                        DEIT_NCCL_ONE_RANK, where there is nothing to shard
//   warmup_steps, timed_steps
//   step_ms              mean time of a timed step (wall clock from the first step's start to the
//                        last one's end, on the device for CUDA)
//   images_per_s         per process: batch_size / step_ms
//   train_gflops_per_image  6 x forward MACs (model/cost.h, the convention of `deit info`):
//                        forward + backward = 3 x the forward's 2 x MACs; elementwise work is not
//                        counted, nor the forward a grad_checkpointing run computes twice (MFU
//                        counts useful work, as PyTorch's convention does)
//   achieved_tflops      train_gflops_per_image x images_per_s
//   peak_tflops, peak_tflops_source   the dense bf16 peak MFU is taken against (null if unknown)
//   mfu                  achieved_tflops / peak_tflops (null if the peak is unknown)
//   peak_memory_bytes    the most bytes the device's caching allocator had handed out at once
//                        (torch.cuda.max_memory_allocated's meaning); cuBLASLt's workspace
//                        (32 MiB, allocated outside it) is not included
//   phases_ms            {forward (with the loss), backward (with the gradient reduction),
//                        optimizer}: per step, from events at the phase boundaries of the timed
//                        steps
//   breakdown            per engine op, from profiled steps run after the timed ones
//                        (bench/op_profiler.h): [{op, ms_per_step, calls_per_step,
//                        fraction_of_step}], plus profiled_step_ms and other_ms (the profiled
//                        step's time outside any op: casts, optimizer, launch gaps)
//   graph_step_ms, graph_images_per_s   --cuda-graph only (else null): the mean time of a
//                        replayed step (drop-path keep scales refilled and the optimizer's
//                        scalars written before each replay), and batch_size / it
//   graph_error          --cuda-graph only: why the capture or a replay failed (then the two
//                        above are null and the eager numbers stand), else null
//   comm                 several ranks, or one with DEIT_NCCL_ONE_RANK=1 (else null): {backend,
//                        measured_by, reduction, total_ms_per_step, exposed_ms_per_step,
//                        all_gather_ms_per_step}: the gradient reduction ("all-reduce", or
//                        "reduce-scatter" with zero), its time and the part of it backward does
//                        not hide, per step; and with zero the all-gather of the updated
//                        parameters alone, which nothing hides (null without zero).
//                        measured_by "bucket events" (NCCL: Communicator::last_bucket_timing over
//                        steps of their own): the buckets' busy time on the communication stream,
//                        beside backward, and how long the compute stream waited for them after it;
//                        "step time difference" (MPI, whose buckets run on the host): the
//                        reduction of buffers the size of the gradients alone, in the same
//                        buckets, and step_ms minus the step time without the reduction (which
//                        includes waiting for the slowest rank, so it can exceed the former)
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/communicator.h"
#include "model/config.h"

namespace deit::bench {

struct StepBenchOptions {
  std::string model_name;  // for the report
  model::ViTConfig model;
  int64_t batch_size = 64;  // per process
  std::string opt = "lamb";
  double lr = 1e-3;
  double drop_path = 0;
  int warmup = 3;
  int steps = 10;
  int profile_steps = 2;  // 0: no breakdown
  std::optional<double> peak_tflops;  // overrides the table of known GPUs
  bool cuda_graph = false;            // also time the step replayed as a CUDA graph (CUDA only)
  bool recompute_gelu = false;        // VisionTransformer::set_recompute_gelu
  bool whole_batch_branches = false;  // VisionTransformer::set_whole_batch_branches
  bool grad_checkpointing = false;    // VisionTransformer::set_grad_checkpointing
  // cuBLASLt's bias epilogue (CublasLt::set_bias_epilogue); off, deit's own kernel adds the
  // biases: what the epilogue saves. CUDA only.
  bool gemm_epilogues = true;
  // CublasLt::set_autotune: each GEMM's first run times the algorithms cuBLASLt offers and keeps
  // the fastest. CUDA only.
  bool gemm_autotune = false;
  bool zero = false;  // shard the optimizer state as deit train --zero (several ranks)
  uint64_t seed = 0;
};

struct OpShare {
  std::string op;
  double ms_per_step = 0;
  double calls_per_step = 0;
};

struct StepReport {
  StepBenchOptions options;
  int world_size = 1;
  std::string device;
  std::string device_name;
  std::string precision;
  double step_ms = 0;
  double images_per_s = 0;
  double branch_sample_share = 1;
  double train_gflops_per_image = 0;
  std::optional<double> peak_tflops;
  std::string peak_tflops_source;
  int64_t peak_memory_bytes = 0;
  double forward_ms = 0, backward_ms = 0, optimizer_ms = 0;
  std::vector<OpShare> breakdown;  // largest first
  double profiled_step_ms = 0;
  bool sharded = false;  // options.zero, where the collectives run (ShardedOptimizer::sharded)
  std::string comm_backend;
  std::string comm_measured_by;  // "bucket events" or "step time difference" (to_json)
  std::optional<double> comm_total_ms, comm_exposed_ms;
  std::optional<double> all_gather_ms;  // sharded only
  std::optional<double> graph_step_ms;
  std::string graph_error;  // empty: none
  // CUDA: the device's GEMM plans (CublasLt, shared by the process) whose algorithm is not
  // cuBLASLt's first choice, once the timed steps have run.
  std::optional<size_t> gemm_plans_off_first_choice;
};

// Runs the benchmark on comm.device() (a CUDA device, or the CPU), every rank of `comm` alike.
StepReport run_step_benchmark(const StepBenchOptions& options, Communicator& comm);

// The dense bf16 tensor-core peak of a GPU from its name (NVIDIA's datasheets: H100 / H200 SXM
// 989 TFLOP/s, H100 PCIe 756, H100 / H200 NVL 835, A100 312); nullopt when unknown, and for a MIG
// instance (a share of a GPU).
std::optional<double> known_peak_tflops(const std::string& device_name);

nlohmann::ordered_json to_json(const StepReport& report);

}  // namespace deit::bench
