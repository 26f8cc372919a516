// [gpu] A whole training step of a small ViT on the GPU, through the engine (ops, autograd,
// optimizer, EMA), judged against the CPU reference with the same weights and batch, and the
// properties the CUDA step promises: it can be captured once and replayed as a CUDA graph step
// after step with the eager steps' results (the learning rate and step count read from the device),
// and once warm it allocates no device memory. Data-parallel: the gradient reducer over a one-rank
// NCCL communicator (engine/gradient_reducer.h: buckets on the communication stream) leaves the
// step exactly as it was without it, eager and captured.
//
// The model is small but has every op family at shapes the kernels take: patch 8 on 32x32 images
// (16 patches + the class token), width 128, two heads of 64, two blocks, 16 classes. LayerScale
// starts at 0.1 rather than the recipe's 1e-4 so that the blocks change the logits measurably
// (one case checks the recipe's 1e-4: the fp32 residual stream keeps the blocks' tiny updates).
// The CPU model gets weights rounded to bf16 (what the GPU's bf16 copies hold exactly), so the two
// differ only in the bf16 activations of the GPU path.
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "engine/allocator.h"
#include "engine/autograd.h"
#include "engine/comm_check.h"  // detail::make_nccl_communicator
#include "engine/cuda_graph.h"
#include "engine/ema.h"
#include "engine/gradient_reducer.h"
#include "engine/ops.h"
#include "engine/optimizer.h"
#include "engine/rng.h"
#include "engine/staged_upload.h"
#include "engine/stream.h"
#include "model/vit.h"
#include "train/graph_step.h"

namespace {

using namespace deit;
using deit::model::ViTConfig;
using deit::model::VisionTransformer;
using deit::test::check_close;

constexpr int64_t kBatch = 4;
const Device kGpu = Device::cuda(0);

ViTConfig small_config() {
  ViTConfig c;
  c.name = "step-test";
  c.patch = 8;
  c.input_size = 32;
  c.dim = 128;
  c.heads = 2;
  c.depth = 2;
  c.num_classes = 16;
  c.layerscale_init = 0.1;
  return c;
}

void sync_device() {
  DEIT_CUDA_CHECK(cudaStreamSynchronize(compute_stream(0)));
  DEIT_CUDA_CHECK(cudaGetLastError());
}

// A CPU model with recipe initialisation, weights rounded to bf16 values.
VisionTransformer make_cpu_model(uint64_t seed, const ViTConfig& config = small_config()) {
  VisionTransformer vit(config);
  Rng rng(seed);
  vit.initialize(rng);
  for (const Parameter& p : vit.parameters().all())
    Tensor(p.value).copy_from(p.value.to(DType::bf16).to(DType::f32));
  return vit;
}

// Copies every parameter value of `from` into `to` (any devices; refreshes bf16 copies).
void copy_weights(const VisionTransformer& from, VisionTransformer& to) {
  const auto& src = from.parameters().all();
  const auto& dst = to.parameters().all();
  REQUIRE(src.size() == dst.size());
  for (size_t i = 0; i < src.size(); ++i) Tensor(dst[i].value).copy_from(src[i].value);
}

struct Batch {
  Tensor images;   // (B, 3, 32, 32) f32
  Tensor targets;  // (B, classes) f32 soft targets in [0, 1], as mixup + smoothing make them
};

Batch make_batch(uint64_t seed, Device device) {
  const ViTConfig c = small_config();
  Rng rng(seed);
  Batch b;
  b.images = Tensor::randn({kBatch, 3, c.input_size, c.input_size}, rng, 1.0, DType::f32, device);
  std::vector<float> t(kBatch * c.num_classes);
  for (float& v : t) v = static_cast<float>(rng.uniform(0.0, 1.0));
  b.targets = Tensor::from_vector(t, {kBatch, c.num_classes}, device);
  return b;
}

// B random images on the GPU, every target 0.25: for drop-path's draws over a batch of B.
Batch drop_path_batch(int64_t B, uint64_t seed) {
  const ViTConfig c = small_config();
  Rng rng(seed);
  return {Tensor::randn({B, 3, c.input_size, c.input_size}, rng, 1.0, DType::f32, kGpu),
          Tensor::full({B, c.num_classes}, 0.25, DType::f32, kGpu)};
}

// Forward, loss and backward from fresh gradients; returns the loss.
Tensor forward_backward(VisionTransformer& vit, const Batch& batch) {
  vit.parameters().zero_grad();
  Tensor loss = ops::bce_with_logits(vit.forward(batch.images), batch.targets);
  backward(loss);
  return loss;
}

std::vector<float> host_values(const Tensor& t) { return t.to_vector<float>(); }

OptimizerOptions test_options() {
  OptimizerOptions o;
  o.lr = 0.01;
  o.weight_decay = 0.05;
  return o;
}

}  // namespace

TEST_CASE("CUDA training step matches the CPU step: loss, gradients, LAMB, EMA", "[gpu][step]") {
  VisionTransformer cpu = make_cpu_model(11);
  VisionTransformer gpu(small_config(), kGpu);
  copy_weights(cpu, gpu);
  for (const Parameter& p : gpu.parameters().all()) {
    INFO(p.name);
    REQUIRE(p.value.dtype() == DType::f32);
    REQUIRE(p.value.bf16_copy().defined());
    // The weights are bf16 values, so the bf16 copy is exact.
    check_close(p.name + " bf16 copy", host_values(p.value.bf16_copy()), host_values(p.value), 0.0);
  }
  const Batch cpu_batch = make_batch(12, Device::cpu());
  const Batch gpu_batch{cpu_batch.images.to(kGpu), cpu_batch.targets.to(kGpu)};

  const Tensor cpu_loss = forward_backward(cpu, cpu_batch);
  const Tensor gpu_loss = forward_backward(gpu, gpu_batch);
  sync_device();
  REQUIRE(gpu_loss.dtype() == DType::f32);
  CHECK(std::isfinite(gpu_loss.item()));
  CHECK(gpu_loss.item() == Approx(cpu_loss.item()).epsilon(1e-2));

  // Per-tensor gradients, DESIGN.md's whole-step tolerance for bf16.
  const auto& cpu_params = cpu.parameters().all();
  const auto& gpu_params = gpu.parameters().all();
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    const Tensor g = gpu_params[i].value.grad();
    INFO(gpu_params[i].name);
    REQUIRE(g.defined());
    REQUIRE(g.dtype() == DType::f32);
    REQUIRE(g.device() == kGpu);
    REQUIRE(g.shape() == gpu_params[i].value.shape());
    check_close(gpu_params[i].name + " gradient", host_values(g),
                host_values(cpu_params[i].value.grad()), 2e-2);
  }

  // The optimizer and EMA are judged on the same gradients: the CPU optimizer is given the GPU's
  // gradients, so the comparison measures the update arithmetic alone (fp32 on the device vs
  // double-rounded-to-fp32 on the CPU), not the gradient noise of bf16.
  for (size_t i = 0; i < cpu_params.size(); ++i)
    Tensor(cpu_params[i].value).set_grad(gpu_params[i].value.grad().to(Device::cpu()));
  WeightEma cpu_ema(cpu.parameters(), 0.9);
  WeightEma gpu_ema(gpu.parameters(), 0.9);
  const OptimizerOptions options = test_options();
  for (const std::string name : {"lamb", "adamw"}) {
    INFO(name);
    auto cpu_opt = make_optimizer(name, cpu.parameters(), options);
    auto gpu_opt = make_optimizer(name, gpu.parameters(), options);
    const double cpu_norm = cpu_opt->step();
    const double gpu_norm = gpu_opt->step();
    CHECK(gpu_norm == Approx(cpu_norm).epsilon(1e-5));
    cpu_ema.update(cpu.parameters());
    gpu_ema.update(gpu.parameters());
    sync_device();
    for (size_t i = 0; i < cpu_params.size(); ++i) {
      const std::string& pname = gpu_params[i].name;
      const std::vector<float> w = host_values(gpu_params[i].value);
      check_close(pname + " weights after " + name, w, host_values(cpu_params[i].value), 1e-5);
      // The update rewrote the bf16 copy from the new master weights.
      std::vector<float> rounded(w.size());
      for (size_t k = 0; k < w.size(); ++k)
        rounded[k] = kernels::bf16_to_float(kernels::float_to_bf16(w[k]));
      check_close(pname + " bf16 copy after " + name, host_values(gpu_params[i].value.bf16_copy()),
                  rounded, 0.0);
      check_close(pname + " EMA after " + name, host_values(gpu_ema.state()[i].second),
                  host_values(cpu_ema.state()[i].second), 1e-5);
    }
  }
}

TEST_CASE("CUDA gradients match the CPU with drop-path, soft cross-entropy and accumulation",
          "[gpu][step]") {
  VisionTransformer cpu = make_cpu_model(41);
  VisionTransformer gpu(small_config(), kGpu);
  copy_weights(cpu, gpu);
  const Batch cpu_a = make_batch(42, Device::cpu()), cpu_b = make_batch(43, Device::cpu());
  const Batch gpu_a{cpu_a.images.to(kGpu), cpu_a.targets.to(kGpu)};
  const Batch gpu_b{cpu_b.images.to(kGpu), cpu_b.targets.to(kGpu)};
  // Two micro-batches into the same gradients; drop-path at 0.25 drawn from the same seeds, so
  // both devices drop the same samples (the keep scales come from the host RNG on both).
  auto accumulate = [](VisionTransformer& vit, const Batch& a, const Batch& b) {
    vit.parameters().zero_grad();
    double total = 0;
    Rng drop_rng(44);
    for (const Batch* batch : {&a, &b}) {
      const Tensor loss =
          ops::softmax_cross_entropy(vit.forward(batch->images, 0.25, &drop_rng), batch->targets);
      backward(loss);
      total += loss.item();
    }
    return total;
  };
  const double cpu_loss = accumulate(cpu, cpu_a, cpu_b);
  const double gpu_loss = accumulate(gpu, gpu_a, gpu_b);
  sync_device();
  CHECK(gpu_loss == Approx(cpu_loss).epsilon(1e-2));
  const auto& cpu_params = cpu.parameters().all();
  const auto& gpu_params = gpu.parameters().all();
  for (size_t i = 0; i < cpu_params.size(); ++i) {
    INFO(gpu_params[i].name);
    REQUIRE(gpu_params[i].value.grad().defined());
    check_close(gpu_params[i].name + " accumulated gradient",
                host_values(gpu_params[i].value.grad()), host_values(cpu_params[i].value.grad()),
                2e-2);
  }
}

TEST_CASE("CUDA branches run on their kept samples give the whole batch's loss and gradients",
          "[gpu][step]") {
  // The same keep scales both ways: over the whole batch (every branch's dropped samples
  // multiplied by 0), and with each branch that keeps at most 90% of the samples run on the kept
  // ones alone (the residual + LayerNorm kernels reading and writing their rows through the slot
  // maps). At a rate of 0.5 over 8 samples nearly every branch does. The same arithmetic on fewer
  // rows: only the GEMMs' choice of algorithm for the other row count may change the last bits.
  VisionTransformer gpu(small_config(), kGpu);
  copy_weights(make_cpu_model(51), gpu);
  const auto [images, targets] = drop_path_batch(8, 52);
  double losses[2];
  size_t saved[2];
  std::vector<std::vector<float>> grads[2];
  for (int whole = 0; whole < 2; ++whole) {
    gpu.set_whole_batch_branches(whole == 1);
    gpu.parameters().zero_grad();
    Rng drop_path(53);
    const Tensor loss = ops::bce_with_logits(gpu.forward(images, 0.5, &drop_path), targets);
    saved[whole] = tape_saved_bytes();
    backward(loss);
    losses[whole] = loss.item();
    for (const Parameter& p : gpu.parameters().all())
      grads[whole].push_back(host_values(p.value.grad()));
  }
  CHECK(saved[0] < saved[1]);  // the tape kept the kept samples' activations alone
  CHECK(losses[0] == Approx(losses[1]).epsilon(1e-3));
  const auto& params = gpu.parameters().all();
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(params[i].name);
    check_close(params[i].name + " gradient", grads[0][i], grads[1][i], 1e-2);
  }
}

TEST_CASE("a CUDA step captured once and replayed N times gives N eager steps as the lr changes",
          "[gpu][step]") {
  // The graph holds forward, backward and Optimizer::update_async(); begin_step_async() runs
  // before each replay and writes that step's learning rate and bias corrections to the device.
  // A graph that froze them at capture would diverge from the eager run at the second replay:
  // the learning rates differ by up to 10x, and AdamW's step scales with 1 / (1 - beta1^t). Every
  // kernel of the step is deterministic (no atomics; fixed cuBLASLt plans), so replays and eager
  // steps agree to the last bits; 1e-6 leaves room for nothing else.
  constexpr int kSteps = 4;
  const double lrs[kSteps] = {0.01, 0.002, 0.02, 0.005};
  const VisionTransformer init = make_cpu_model(21);
  const Batch batch = make_batch(22, kGpu);
  for (const std::string name : {"lamb", "adamw"}) {
    INFO(name);
    VisionTransformer gpu(small_config(), kGpu);
    auto opt = make_optimizer(name, gpu.parameters(), test_options());
    NamedTensors fresh_state;
    for (const auto& [key, t] : opt->state()) fresh_state.emplace_back(key, t.to(Device::cpu()));
    auto reset = [&] {
      copy_weights(init, gpu);
      opt->load_state(fresh_state);
      sync_device();
    };
    Tensor loss;
    auto forward_backward_update = [&] {
      loss = forward_backward(gpu, batch);
      opt->update_async();
    };

    // Warm-up: creates the cuBLASLt plans and fills the allocator's cache.
    reset();
    opt->begin_step_async();
    forward_backward_update();
    sync_device();

    reset();
    std::vector<double> eager_losses;
    std::vector<std::vector<float>> eager_norms;
    for (int t = 0; t < kSteps; ++t) {
      opt->set_lr(lrs[t]);
      opt->begin_step_async();
      forward_backward_update();
      sync_device();
      eager_losses.push_back(loss.item());
      eager_norms.push_back(host_values(opt->device_grad_norm()));
    }
    std::vector<std::vector<float>> eager_weights, eager_bf16;
    for (const Parameter& p : gpu.parameters().all()) {
      eager_weights.push_back(host_values(p.value));
      eager_bf16.push_back(host_values(p.value.bf16_copy()));
    }

    reset();
    gpu.parameters().zero_grad();
    loss = Tensor();
    CudaGraph graph;
    graph.capture(0, forward_backward_update);  // throws if the step waits for the device
    REQUIRE(graph.captured());
    // Capture ran nothing: the weights are still the initial ones.
    check_close("weights before replay", host_values(gpu.parameters().all().front().value),
                host_values(init.parameters().all().front().value), 0.0);
    for (int t = 0; t < kSteps; ++t) {
      INFO("replay " << t + 1 << " at lr " << lrs[t]);
      opt->set_lr(lrs[t]);
      opt->begin_step_async();
      graph.launch();
      sync_device();
      CHECK(loss.item() == Approx(eager_losses[t]).epsilon(1e-6));
      check_close("grad norm", host_values(opt->device_grad_norm()), eager_norms[t], 1e-6);
    }
    CHECK(opt->step_count() == kSteps);
    const auto& params = gpu.parameters().all();
    for (size_t i = 0; i < params.size(); ++i) {
      INFO(params[i].name);
      check_close(params[i].name + " weights after the replays", host_values(params[i].value),
                  eager_weights[i], 1e-6);
      check_close(params[i].name + " bf16 copy after the replays",
                  host_values(params[i].value.bf16_copy()), eager_bf16[i], 1e-6);
    }
  }
}

TEST_CASE("a CUDA step with GELU or whole blocks recomputed gives the same loss and gradients",
          "[gpu][step]") {
  // ops::gelu_linear runs the same GELU kernel again in backward, on the same bf16 input, and a
  // checkpointed block runs its forward kernels again on the same inputs: the bits cannot change,
  // while the tape holds one fc1-wide activation less per block, or two activations per block.
  VisionTransformer gpu(small_config(), kGpu);
  copy_weights(make_cpu_model(41), gpu);
  const Batch batch = make_batch(42, kGpu);
  const std::pair<bool, bool> variants[] = {{false, false}, {true, false}, {false, true}};
  std::vector<std::vector<float>> grads[3];
  double losses[3];
  for (int v = 0; v < 3; ++v) {
    gpu.set_recompute_gelu(variants[v].first);
    gpu.set_grad_checkpointing(variants[v].second);
    losses[v] = forward_backward(gpu, batch).item();
    for (const Parameter& p : gpu.parameters().all())
      grads[v].push_back(host_values(p.value.grad()));
  }
  const auto& params = gpu.parameters().all();
  for (int v = 1; v < 3; ++v) {
    INFO((v == 1 ? "GELU recomputed" : "blocks checkpointed"));
    CHECK(losses[v] == losses[0]);
    for (size_t i = 0; i < params.size(); ++i) {
      INFO(params[i].name);
      CHECK(grads[v][i] == grads[0][i]);
    }
  }
}

TEST_CASE("a warm CUDA step allocates no device memory, with blocks checkpointed or not",
          "[gpu][step]") {
  VisionTransformer gpu(small_config(), kGpu);
  copy_weights(make_cpu_model(31), gpu);
  const Batch batch = make_batch(32, kGpu);
  auto opt = make_optimizer("lamb", gpu.parameters(), test_options());
  WeightEma ema(gpu.parameters(), 0.99);
  CachingAllocator& allocator = cuda_allocator(0);
  for (const bool checkpointing : {false, true}) {
    INFO((checkpointing ? "blocks checkpointed" : "plain tape"));
    gpu.set_grad_checkpointing(checkpointing);
    uint64_t after_first = 0;
    for (int step = 1; step <= 4; ++step) {
      {
        const Tensor loss = forward_backward(gpu, batch);
        opt->step_async();
        ema.update(gpu.parameters());
      }  // the loss goes before the next step starts, as in a training loop that logs it
      sync_device();
      const uint64_t driver_allocations = allocator.stats().system_allocations;
      INFO("step " << step << ": " << driver_allocations << " cudaMalloc calls so far");
      if (step == 1)
        after_first = driver_allocations;
      else
        CHECK(driver_allocations == after_first);
    }
  }
  CHECK(std::isfinite(opt->device_grad_norm().item()));
}

TEST_CASE("warm CUDA steps with branches on their kept samples seldom allocate device memory",
          "[gpu][step]") {
  // A branch's kept-sample count changes from step to step, and with it the shapes of its
  // activations. Counts rounded to a sixteenth of the batch (model/vit.h) leave few shapes, and the
  // caching allocator serves a request from a cached block of up to twice its size, so after a few
  // steps most draws find blocks that fit; a draw whose counts together need more large blocks
  // than any before still adds some. (With fixed shapes, --whole-batch-branches or a CUDA graph,
  // none is added after the first step: the test above.) The draws are seeded, so these are the
  // same steps on every run, on a GPU as on the emulated device (the allocations are the host's),
  // from an empty cache: 231 blocks in the first step, 23 more by step 14 and 5 more by step 30.
  VisionTransformer gpu(small_config(), kGpu);
  copy_weights(make_cpu_model(71), gpu);
  const auto [images, targets] = drop_path_batch(32, 72);  // counts in steps of 2, at most 28
  auto opt = make_optimizer("lamb", gpu.parameters(), test_options());
  CachingAllocator& allocator = cuda_allocator(0);
  sync_device();
  allocator.release_cached();
  Rng drop_path(73);
  constexpr int kSteps = 30;
  std::vector<uint64_t> allocations;  // cudaMalloc calls so far, after each step
  for (int step = 0; step < kSteps; ++step) {
    {
      gpu.parameters().zero_grad();
      const Tensor loss = ops::bce_with_logits(gpu.forward(images, 0.5, &drop_path), targets);
      backward(loss);
      opt->step_async();
    }
    sync_device();
    allocations.push_back(allocator.stats().system_allocations);
  }
  std::string counts;
  for (uint64_t a : allocations) counts += std::to_string(a) + " ";
  INFO("cudaMalloc calls so far after each step: " << counts);
  // The last half adds fewer than a tenth of the first step's blocks: the cache is not growing
  // with every step.
  CHECK(10 * (allocations.back() - allocations[kSteps / 2 - 1]) < allocations.front());
}

TEST_CASE("at the recipe's LayerScale init a block's update survives in the CUDA residual stream",
          "[gpu][step]") {
  // gamma = 1e-4 makes a block's update ~1e-4 of the residual stream, while half a bf16 ulp is
  // ~2e-3 of a value: a bf16 stream would round nearly all of it away, so the stream is fp32 on
  // CUDA. Both residual ops must add to it what the CPU adds. (The logits cannot show this: the
  // LayerNorm before the head writes bf16, whose rounding is far larger than the update.)
  Rng rng(61);
  const int64_t B = 2, T = 5, C = 64;
  const Tensor x = Tensor::randn({B, T, C}, rng);
  const Tensor branch = Tensor::randn({B, T, C}, rng).to(DType::bf16).to(DType::f32);
  const Tensor gamma = Tensor::full({C}, 1e-4).to(DType::bf16).to(DType::f32);
  const Tensor keep = Tensor::full({B}, 1.0);
  const Tensor ln_weight = Tensor::full({C}, 1.0), ln_bias = Tensor::zeros({C});
  const auto weight_on_gpu = [](const Tensor& t) {  // as a ParameterRegistry keeps a parameter
    Tensor g = t.to(kGpu);
    g.attach_bf16_copy();
    return g;
  };
  const Tensor x_gpu = x.to(kGpu), branch_gpu = branch.to(kGpu).to(DType::bf16);
  const Tensor gamma_gpu = weight_on_gpu(gamma), keep_gpu = keep.to(kGpu);
  const Tensor ln_weight_gpu = weight_on_gpu(ln_weight), ln_bias_gpu = weight_on_gpu(ln_bias);
  const std::vector<float> x_values = x.to_vector<float>();
  const auto update = [&](const Tensor& out) {  // out - x, on the host
    REQUIRE(out.dtype() == DType::f32);
    std::vector<float> v = out.to(Device::cpu()).to_vector<float>();
    for (size_t i = 0; i < v.size(); ++i) v[i] -= x_values[i];
    return v;
  };
  NoGrad no_grad;
  const std::vector<float> expected = update(ops::layerscale_residual(x, branch, gamma, keep));
  check_close("layerscale_residual's update",
              update(ops::layerscale_residual(x_gpu, branch_gpu, gamma_gpu, keep_gpu)), expected,
              1e-2);
  const ops::ResidualAndNorm fused = ops::layerscale_residual_layernorm(
      x_gpu, branch_gpu, gamma_gpu, keep_gpu, ln_weight_gpu, ln_bias_gpu, 1e-6);
  check_close("the fused residual + LayerNorm's update", update(fused.residual), expected, 1e-2);
}

TEST_CASE("a capture that waits for the host fails and leaves the stream usable", "[gpu][step]") {
  Tensor x = Tensor::full({4}, 2.0, DType::f32, kGpu);
  CudaGraph graph;
  CHECK_THROWS(graph.capture(0, [&] { (void)x.item(); }));
  CHECK_FALSE(graph.captured());
  x.fill_(3.0);
  CHECK(x.to_vector<float>() == std::vector<float>(4, 3.0f));
}

// [api-error]: it makes cudaStreamEndCapture fail on purpose, which compute-sanitizer reports.
TEST_CASE("a capture refused as it ends leaves no error for the next launch",
          "[gpu][step][api-error]") {
  // Work forked onto a second stream and never joined back: cudaStreamEndCapture refuses the
  // graph. The trainer then goes on without one, so the failure must not stay behind as the
  // thread's last error, where the next kernel's launch check would find it.
  Tensor x = Tensor::zeros({4}, DType::f32, kGpu);
  cudaStream_t side = nullptr;
  cudaEvent_t fork = nullptr;
  DEIT_CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  DEIT_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CudaGraph graph;
  CHECK_THROWS(graph.capture(0, [&] {
    DEIT_CUDA_CHECK(cudaEventRecord(fork, compute_stream(0)));
    DEIT_CUDA_CHECK(cudaStreamWaitEvent(side, fork, 0));
    DEIT_CUDA_CHECK(cudaMemsetAsync(x.data<float>(), 0, 4 * sizeof(float), side));
  }));
  CHECK_FALSE(graph.captured());
  CHECK(cudaPeekAtLastError() == cudaSuccess);
  const Tensor zero = Tensor::zeros({2, 8}, DType::bf16, kGpu);
  CHECK(ops::gelu(zero).to_vector<float>() == std::vector<float>(16, 0.0f));  // launch + check
  DEIT_CUDA_CHECK(cudaEventDestroy(fork));
  DEIT_CUDA_CHECK(cudaStreamDestroy(side));
}

TEST_CASE("uploads without waiting arrive intact through every pinned slot, refused in a capture",
          "[gpu][step]") {
  // More uploads than slots, each with its own values and freed at once (the host side is
  // copied before the call returns); one too large for a slot goes the waiting way.
  std::vector<Tensor> uploaded;
  std::vector<std::vector<float>> expected;
  for (int i = 0; i < 40; ++i) {
    std::vector<float> values(static_cast<size_t>(1 + 97 * i));
    for (size_t j = 0; j < values.size(); ++j) values[j] = static_cast<float>(i * 1000 + j);
    uploaded.push_back(
        upload_without_waiting(Tensor::from_vector(values, {int64_t(values.size())}), kGpu));
    expected.push_back(values);
  }
  const std::vector<float> large(size_t{1} << 17, 0.5f);  // 512 KiB
  const Tensor large_uploaded = upload_without_waiting(Tensor::from_vector(large, {1 << 17}), kGpu);
  for (size_t i = 0; i < uploaded.size(); ++i) {
    INFO("upload " << i);
    CHECK(uploaded[i].device() == kGpu);
    CHECK(uploaded[i].to_vector<float>() == expected[i]);
  }
  CHECK(large_uploaded.to_vector<float>() == large);

  const Tensor small = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  CudaGraph graph;
  CHECK_THROWS_WITH(graph.capture(0, [&] { (void)upload_without_waiting(small, kGpu); }),
                    Catch::Contains("graph capture"));
  CHECK(upload_without_waiting(small, kGpu).to_vector<float>() == std::vector<float>{1, 2, 3});
}

TEST_CASE("uploads without waiting keep the host tensor's dtype and refuse device memory",
          "[gpu][step]") {
  // The keep scales are f32, so only the case above's f32 would hide an output made f32 always.
  const std::vector<int32_t> ints = {-3, 0, 7, 1 << 20, -(1 << 30), 42};
  const Tensor uploaded = upload_without_waiting(Tensor::from_vector(ints, {2, 3}), kGpu);
  CHECK(uploaded.device() == kGpu);
  CHECK(uploaded.dtype() == DType::i32);
  CHECK(uploaded.shape() == Shape{2, 3});
  CHECK(uploaded.to_vector<int32_t>() == ints);
  const Tensor halves = Tensor::from_vector(std::vector<float>{0.5f, -2.0f, 3.0f}, {3});
  const Tensor bf16_uploaded = upload_without_waiting(halves.to(DType::bf16), kGpu);
  CHECK(bf16_uploaded.dtype() == DType::bf16);
  CHECK(bf16_uploaded.to(DType::f32).to_vector<float>() == std::vector<float>{0.5f, -2.0f, 3.0f});
  // A device tensor is a caller's mistake: the emulated device's memory is host memory, so only
  // the check stands between it and a copy that would pass here and fault on a GPU.
  CHECK_THROWS_WITH(upload_without_waiting(uploaded, kGpu),
                    Catch::Contains("is not in host memory"));
}

TEST_CASE("uploads without waiting leave the work queued before them queued", "[gpu][step]") {
  // What the slots are for: the host queues a step's uploads without waiting for the device.
  // Only the emulated device says for certain whether queued work has run: there an event query
  // answers "not ready" for work still queued on a stream that runs late. On a GPU, or where the
  // compute stream runs early (the other DEIT_EMULATED_EAGER setting), this checks the values only.
  const bool emulated = test::on_emulated_device();
  cudaStream_t stream = compute_stream(0);
  cudaEvent_t queued = nullptr;
  DEIT_CUDA_CHECK(cudaEventCreateWithFlags(&queued, cudaEventDisableTiming));
  // "Not ready" stays behind as the last error, which the next launch check would report.
  const auto pending = [&] {
    const bool not_ready = cudaEventQuery(queued) == cudaErrorNotReady;
    cudaGetLastError();
    return not_ready;
  };
  Tensor busy = Tensor::zeros({256}, DType::f32, kGpu);
  DEIT_CUDA_CHECK(cudaStreamSynchronize(stream));  // every slot's earlier copy is done
  busy.fill_(1.0);
  DEIT_CUDA_CHECK(cudaEventRecord(queued, stream));
  const bool runs_late = emulated && pending();
  // That query ran it; queue more, then one upload fewer than the slots, so that none needs a
  // copy queued behind the event.
  busy.fill_(2.0);
  DEIT_CUDA_CHECK(cudaEventRecord(queued, stream));
  std::vector<Tensor> uploaded;
  for (int i = 0; i < 15; ++i)
    uploaded.push_back(upload_without_waiting(Tensor::full({3}, i, DType::f32), kGpu));
  if (runs_late) CHECK(pending());
  DEIT_CUDA_CHECK(cudaEventSynchronize(queued));
  for (int i = 0; i < 15; ++i) CHECK(uploaded[i].to_vector<float>() == std::vector<float>(3, i));
  CHECK(busy.to_vector<float>() == std::vector<float>(256, 2.0f));
  DEIT_CUDA_CHECK(cudaEventDestroy(queued));
}

TEST_CASE("CUDA ops name the operand whose dtype or device is wrong", "[gpu][step]") {
  const Tensor x = Tensor::zeros({2, 8}, DType::bf16, kGpu);
  const Tensor plain_weight = Tensor::zeros({8, 8}, DType::f32, kGpu);  // no bf16 copy
  CHECK_THROWS_WITH(ops::linear(x, plain_weight, Tensor()), Catch::Contains("without a bf16 copy"));
  // A wrong dtype is named by operand, whatever order the arguments of the kernel call are
  // evaluated in (an output's own dtype check must not fire first).
  CHECK_THROWS_WITH(ops::gelu(Tensor::zeros({2, 8}, DType::f32, kGpu)),
                    Catch::Contains("x is") && Catch::Contains("the CUDA kernel takes bf16"));
  const Tensor bf16_weight = Tensor::zeros({8, 8}, DType::bf16, kGpu);
  CHECK_THROWS_WITH(ops::linear(Tensor::zeros({2, 8}, DType::f32, kGpu), bf16_weight, Tensor()),
                    Catch::Contains("x is") && Catch::Contains("the CUDA kernel takes bf16"));
  CHECK_THROWS_WITH(ops::attention(Tensor::zeros({1, 3, 3 * 64}, DType::f32, kGpu), 1),
                    Catch::Contains("qkv is") && Catch::Contains("the CUDA kernel takes bf16"));
  CHECK_THROWS_WITH(ops::cls_select(Tensor::zeros({2, 3, 8}, DType::bf16, kGpu)),
                    Catch::Contains("x is") && Catch::Contains("the CUDA kernel takes f32"));
  const Tensor stream_bf16 = Tensor::zeros({2, 3, 8}, DType::bf16, kGpu);  // should be fp32
  CHECK_THROWS_WITH(ops::layerscale_residual(stream_bf16, stream_bf16,
                                             Tensor::zeros({8}, DType::bf16, kGpu),
                                             Tensor::full({2}, 1.0, DType::f32, kGpu)),
                    Catch::Contains("x is") && Catch::Contains("the CUDA kernel takes f32"));
  CHECK_THROWS_WITH(ops::add(x, Tensor::zeros({2, 8}, DType::bf16)),
                    Catch::Contains("different devices"));
}

TEST_CASE("a weight EMA over parameters on two devices names them, whichever comes first",
          "[gpu][step]") {
  // With the host's first, the EMA used to be built and its update() to call the CUDA one a
  // tensor it was not built over.
  ParameterRegistry host_first;
  host_first.add("w_host", Tensor::zeros({4}), true);
  host_first.add("w_gpu", Tensor::zeros({4}, DType::f32, kGpu), true);
  CHECK_THROWS_WITH(WeightEma(host_first, 0.5),
                    Catch::Contains("'w_gpu' is on cuda:0, 'w_host' on cpu") &&
                        Catch::Contains("all parameters must be on one device"));
  ParameterRegistry gpu_first;
  gpu_first.add("w_gpu", Tensor::zeros({4}, DType::f32, kGpu), true);
  gpu_first.add("w_host", Tensor::zeros({4}), true);
  CHECK_THROWS_WITH(WeightEma(gpu_first, 0.5),
                    Catch::Contains("'w_host' is on cpu, 'w_gpu' on cuda:0"));
  ParameterRegistry bf16;
  bf16.add("w_bf16", Tensor::zeros({4}, DType::bf16, kGpu), true);
  CHECK_THROWS_WITH(WeightEma(bf16, 0.5), Catch::Contains("CUDA parameters must be f32"));
}

#if DEIT_HAVE_NCCL
TEST_CASE("the gradient reducer over a one-rank NCCL communicator leaves the step as it was",
          "[gpu][step][nccl]") {
  // An average over one rank is its input, bit for bit, so with every bucket ordered right
  // (after the kernels that wrote its gradients, before the optimizer that reads them) the
  // reduced run makes exactly the plain run's steps. Small buckets spread the model over many,
  // packed ones and tensors alone; they reduce while backward still runs.
  auto comm = detail::make_nccl_communicator(kGpu, Rendezvous{});
  const VisionTransformer init = make_cpu_model(51);
  const Batch batch = make_batch(52, kGpu);
  VisionTransformer plain(small_config(), kGpu), reduced(small_config(), kGpu);
  copy_weights(init, plain);
  copy_weights(init, reduced);
  auto plain_opt = make_optimizer("lamb", plain.parameters(), test_options());
  auto reduced_opt = make_optimizer("lamb", reduced.parameters(), test_options());
  GradientReducer reducer(reduced.parameters(), *comm, /*bucket_bytes=*/64 << 10);
  REQUIRE(reducer.bucket_count() > 4);
  const Tensor one = Tensor::full({1}, 1.0, DType::f32, kGpu);
  Tensor reduced_loss;
  auto reduced_step_update = [&] {
    reduced.parameters().zero_grad();
    reduced_loss = ops::bce_with_logits(reduced.forward(batch.images), batch.targets);
    reducer.backward(reduced_loss, one);
    reduced_opt->update_async();
  };
  auto check_same = [&](const std::string& when) {
    const auto& a = plain.parameters().all();
    const auto& b = reduced.parameters().all();
    for (size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].name << " " << when);
      // Accumulated in its home, where its bucket was reduced (engine/gradient_reducer.h).
      CHECK(b[i].value.grad().impl_ptr() == b[i].value.grad_home().impl_ptr());
      check_close("gradient", host_values(b[i].value.grad()), host_values(a[i].value.grad()), 0.0);
      check_close("weights", host_values(b[i].value), host_values(a[i].value), 0.0);
    }
  };

  for (int step = 1; step <= 2; ++step) {
    const Tensor plain_loss = forward_backward(plain, batch);
    plain_opt->step_async();
    reduced_opt->begin_step_async();
    reduced_step_update();
    sync_device();
    CHECK(reduced_loss.item() == plain_loss.item());
    check_same("after eager step " + std::to_string(step));
    const std::optional<BucketTiming> timing = comm->last_bucket_timing();
    REQUIRE(timing);
    CHECK(timing->buckets == static_cast<int>(reducer.bucket_count()));
    CHECK(timing->busy_ms >= 0);
    CHECK(timing->exposed_ms >= 0);
  }

  // The same step captured in a graph, collectives and all (the communication stream joins the
  // capture through the events), and replayed.
  CudaGraph graph;
  graph.capture(0, reduced_step_update);
  REQUIRE(graph.captured());
  for (int replay = 1; replay <= 2; ++replay) {
    const Tensor plain_loss = forward_backward(plain, batch);
    plain_opt->step_async();
    reduced_opt->begin_step_async();
    graph.launch();
    sync_device();
    CHECK(reduced_loss.item() == plain_loss.item());
    check_same("after replay " + std::to_string(replay));
  }
}
#endif

TEST_CASE("a graph step copies each step's inputs in and runs before_launch ahead of the replay",
          "[gpu][step]") {
  // train/graph_step.h without a model: the loss is (images + targets + bias) * keep scale, so
  // every input shows in it. The replay reads the fixed buffers the capture saw: an input not
  // copied in, or a bias set after the launch (as the learning rate is by begin_step_async), would
  // leave a replay computing with the previous step's values.
  const int64_t B = 2, K = 12;
  const Tensor bias = Tensor::zeros({B, K}, DType::f32, kGpu);
  const auto work = [&](const Tensor& images, const Tensor& targets, const Tensor& keep_scales) {
    return ops::scale_by(ops::add(ops::add(images.view({B, K}), targets), bias), keep_scales);
  };
  train::GraphStep step(kGpu, work);
  CHECK_FALSE(step.captured());
  SingleProcessCommunicator comm(kGpu, 0);
  const auto inputs = [&](double r) {
    return std::vector<Tensor>{Tensor::full({B, 3, 2, 2}, r, DType::f32, kGpu),
                               Tensor::full({B, K}, 10 * r, DType::f32, kGpu),
                               Tensor::full({1}, r + 0.5, DType::f32)};
  };
  const std::vector<Tensor> first = inputs(0);
  // Warm, as the trainer's first eager step leaves it: the device's context is made outside a
  // capture.
  CHECK(work(first[0], first[1], upload_without_waiting(first[2], kGpu)).to_vector<float>() ==
        std::vector<float>(B * K, 0.0f));
  REQUIRE(step.capture(first[0], first[1], first[2], comm).empty());
  REQUIRE(step.captured());
  void* loss_storage = nullptr;
  for (int r = 1; r <= 3; ++r) {
    INFO("step " << r);
    const std::vector<Tensor> in = inputs(r);
    const Tensor loss = step.run(in[0], in[1], in[2], [&] { Tensor(bias).fill_(100.0 * r); });
    if (r == 1) loss_storage = loss.raw_data();
    CHECK(loss.raw_data() == loss_storage);  // rewritten in place by every replay
    CHECK(loss.to_vector<float>() == std::vector<float>(B * K, 111.0f * r * (r + 0.5f)));
  }

  const std::vector<Tensor> in = inputs(1);
  const Tensor wide = Tensor::full({B, 3, 2, 3}, 1.0, DType::f32, kGpu);
  CHECK_THROWS_WITH(step.run(wide, in[1], in[2], [] {}),
                    Catch::Contains("images f32 (2, 3, 2, 3)") &&
                        Catch::Contains("the graph was captured for f32 (2, 3, 2, 2)"));
  CHECK_THROWS_WITH(step.run(in[0], in[1].to(DType::bf16), in[2], [] {}),
                    Catch::Contains("targets bf16") && Catch::Contains("captured for f32"));
  CHECK_THROWS_WITH(step.run(in[0], in[1], Tensor::full({2}, 1.0, DType::f32), [] {}),
                    Catch::Contains("keep scales"));
  // A second capture would hand the first graph's blocks back while its replays may run.
  CHECK_THROWS_AS(step.capture(in[0], in[1], in[2], comm), std::logic_error);
  sync_device();
}

TEST_CASE("a graph step whose capture fails says why, keeps no graph and clears the tape",
          "[gpu][step]") {
  REQUIRE(tape_size() == 0);
  const Tensor weight = Tensor::zeros({2, 12}, DType::f32, kGpu).set_requires_grad(true);
  train::GraphStep step(kGpu, [&](const Tensor& images, const Tensor&, const Tensor&) {
    const Tensor y = ops::add(images.view({2, 12}), weight);  // recorded on the tape
    (void)y.to_vector<float>();  // a host wait, which a capture refuses
    return y;
  });
  SingleProcessCommunicator comm(kGpu, 0);
  const Tensor images = Tensor::zeros({2, 3, 2, 2}, DType::f32, kGpu);
  const Tensor targets = Tensor::zeros({2, 12}, DType::f32, kGpu);
  const Tensor keep_scales = Tensor::full({1}, 1.0, DType::f32);
  const std::string failure = step.capture(images, targets, keep_scales, comm);
  // This rank's own error, not the one for a failure elsewhere.
  CHECK_FALSE(failure.empty());
  CHECK(failure != "on another rank");
  CHECK_FALSE(step.captured());
  CHECK(tape_size() == 0);
  CHECK_THROWS_WITH(step.run(images, targets, keep_scales, [] {}),
                    Catch::Contains("before a successful capture"));
  CHECK(cudaPeekAtLastError() == cudaSuccess);
  CHECK_THROWS_AS(train::GraphStep(Device::cpu(), nullptr), std::invalid_argument);
}
