// [gpu] checks of the multi-tensor CUDA optimizer (kernels/cuda/optimizer.cu) against the CPU
// twins in kernels/optimizer.h, driven the way engine/lamb.cpp and engine/adamw.cpp drive them:
// global gradient norm and clipping factor, LAMB with per-tensor trust ratios, AdamW, EMA. Twenty
// tensors of 1 to 300000 elements in one table (one of them misaligned, so the scalar path runs;
// several with sizes that end in a partial vector and span several chunks), mixed weight decay, a
// zero parameter tensor (LAMB's zero-norm case) and a zero gradient tensor. Three steps from fresh
// state, compared after each; the bf16 copy is poisoned before every step.
//
// Tolerance: the CPU twin computes each element in double and rounds each stored value (moment,
// update, parameter) once; the kernels use fp32 operations, each correctly rounded, so each stored
// value differs by a few fp32 ulps (~3e-7 relative). The reductions (gradient norm, ||p||,
// ||update||) are fp32 sums of fp32 partials, ~1e-6 relative; the gradient factor they produce
// scales m and sqrt(v) alike, and the trust ratio moves the parameters by lr * trust * update, a
// fraction lr (~1e-3) of their size. Three steps of that stay well under 1e-5 per tensor.
//
// The step's scalars (learning rate, bias corrections) reach the kernels through set_step_cuda's
// device memory: one case captures the norm and LAMB launches in a CUDA graph once and replays it
// with a new step number and learning rate set before each replay, as engine/optimizer.h does.
// The gradients are either in the table from its start or, as the engine gives them, new buffers
// every step that set_grads_cuda points the table at (one of them 16-byte aligned on some steps
// and not on others, so the vector path is chosen anew).
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "engine/rng.h"
#include "kernels/optimizer.h"
#include "tests/cuda_test_util.h"
#include "tests/optimizer_reference.h"

using namespace deit::kernels;
using deit::Rng;
using namespace deit::test;

namespace {

constexpr double kF32Tol = 1e-5;
constexpr double kLr = 4e-3;  // DeiT III's LAMB rate for ViT-S
constexpr double kWeightDecay = 0.05;
constexpr int kSteps = 3;

enum class Fill { kRandom, kZeroParam, kZeroGrad };

struct TensorSpec {
  int64_t n;
  bool decay;
  size_t offset;  // elements past an aligned allocation: 1 puts the tensor on the scalar path
  Fill fill;
  bool ema;
};

const std::vector<TensorSpec>& tensor_specs() {
  static const std::vector<TensorSpec> specs = {
      {1, false, 0, Fill::kRandom, true},        {2, true, 0, Fill::kRandom, false},
      {7, false, 0, Fill::kRandom, true},        {64, true, 0, Fill::kRandom, false},
      {384, true, 0, Fill::kZeroParam, true},    {384, false, 0, Fill::kRandom, false},
      {1000, true, 0, Fill::kRandom, true},      {1152, true, 1, Fill::kRandom, true},
      {1536, false, 0, Fill::kRandom, false},    {4099, true, 0, Fill::kRandom, true},
      {16384, true, 0, Fill::kRandom, false},    {16385, false, 0, Fill::kRandom, true},
      {32781, true, 0, Fill::kRandom, true},     {65536, true, 0, Fill::kRandom, false},
      {147456, true, 0, Fill::kRandom, true},    {200003, false, 0, Fill::kRandom, false},
      {300000, true, 0, Fill::kRandom, true},    {5, true, 0, Fill::kZeroGrad, false},
      {777, true, 0, Fill::kRandom, true},       {12345, false, 0, Fill::kRandom, false},
  };
  return specs;
}

// The optimizer state of every tensor, on the host.
struct HostState {
  std::vector<std::vector<float>> param, exp_avg, exp_avg_sq, ema;
};

HostState initial_state(Rng& rng) {
  HostState h;
  for (const TensorSpec& s : tensor_specs()) {
    std::vector<float> p = random_f32(rng, s.n, -0.1, 0.1);
    if (s.fill == Fill::kZeroParam) p.assign(s.n, 0.f);
    h.param.push_back(p);
    h.exp_avg.emplace_back(s.n, 0.f);
    h.exp_avg_sq.emplace_back(s.n, 0.f);
    h.ema.push_back(random_f32(rng, s.n, -0.1, 0.1));
  }
  return h;
}

// One step's gradients; tensor i's are scaled by 1 + i % 4 so the trust ratios differ.
std::vector<std::vector<float>> random_grads(Rng& rng) {
  std::vector<std::vector<float>> grads;
  const auto& specs = tensor_specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    const double scale = 1 + i % 4;
    std::vector<float> g = random_f32(rng, specs[i].n, -scale, scale);
    if (specs[i].fill == Fill::kZeroGrad) g.assign(specs[i].n, 0.f);
    grads.push_back(g);
  }
  return grads;
}

void upload(const F32Buffer& dst, const std::vector<float>& src) {
  REQUIRE(dst.size() == src.size());
  DEIT_CUDA_CHECK(
      cudaMemcpy(dst.get(), src.data(), src.size() * sizeof(float), cudaMemcpyHostToDevice));
}

// The same state on the device, and the table over it.
struct DeviceState {
  std::vector<F32Buffer> param, grad, exp_avg, exp_avg_sq, ema;
  std::vector<Bf16Buffer> param_bf16;
  std::unique_ptr<CudaParamTable> table;

  // grads_in_table false: the table is built without gradients (set_grads_cuda gives them).
  explicit DeviceState(const HostState& h, bool grads_in_table = true) {
    const auto& specs = tensor_specs();
    std::vector<CudaParam> params;
    for (size_t i = 0; i < specs.size(); ++i) {
      const TensorSpec& s = specs[i];
      param.emplace_back(h.param[i], s.offset);
      grad.emplace_back(s.n, s.offset);
      exp_avg.emplace_back(h.exp_avg[i], s.offset);
      exp_avg_sq.emplace_back(h.exp_avg_sq[i], s.offset);
      ema.emplace_back(h.ema[i], s.offset);
      param_bf16.emplace_back(s.n, s.offset);
      CudaParam p;
      p.param = param[i].get();
      p.param_bf16 = param_bf16[i].get();
      p.grad = grads_in_table ? grad[i].get() : nullptr;
      p.exp_avg = exp_avg[i].get();
      p.exp_avg_sq = exp_avg_sq[i].get();
      p.ema = s.ema ? ema[i].get() : nullptr;
      p.n = s.n;
      p.weight_decay = s.decay;
      params.push_back(p);
    }
    table = std::make_unique<CudaParamTable>(params);
  }

  void set_grads(const std::vector<std::vector<float>>& g) {
    for (size_t i = 0; i < g.size(); ++i) upload(grad[i], g[i]);
  }
  void poison_bf16() {
    for (auto& b : param_bf16) b.poison();
  }
  static float read_scalar(const float* p) {
    float v;
    DEIT_CUDA_CHECK(cudaMemcpy(&v, p, sizeof v, cudaMemcpyDeviceToHost));
    return v;
  }
};

// Every tensor of the device state against the host state, and the bf16 copy against the device's
// own fp32 weights rounded to nearest even (exactly).
void check_state(const DeviceState& d, const HostState& h) {
  for (size_t i = 0; i < tensor_specs().size(); ++i) {
    INFO("tensor " << i << " of " << tensor_specs()[i].n << " elements");
    const std::vector<float> p = d.param[i].download();
    check_close("param", p, h.param[i], kF32Tol);
    check_close("exp_avg", d.exp_avg[i], h.exp_avg[i], kF32Tol);
    check_close("exp_avg_sq", d.exp_avg_sq[i], h.exp_avg_sq[i], kF32Tol);
    std::vector<bf16_bits> rounded(p.size());
    for (size_t j = 0; j < p.size(); ++j) rounded[j] = float_to_bf16(p[j]);
    check_same_bits("bf16 copy", d.param_bf16[i].download(), rounded);
  }
}

// Step t of LAMB / AdamW at the learning rate kLr, as engine/optimizer.cpp enqueues it.
void lamb_step(CudaParamTable& table, int t, cudaStream_t stream) {
  set_step_cuda(table, adam_step(t, 1.0), kLr, kWeightDecay, stream);
  lamb_step_cuda(table, stream);
}
void adamw_step(CudaParamTable& table, int t, cudaStream_t stream) {
  set_step_cuda(table, adam_step(t, 1.0), kLr, kWeightDecay, stream);
  adamw_step_cuda(table, stream);
}

// A step's gradients in new device buffers, as autograd makes them, at the specs' offsets but for
// tensor 3, which is misaligned on odd steps.
struct FreshGrads {
  std::vector<F32Buffer> buffers;
  std::vector<const float*> pointers;
  FreshGrads(const std::vector<std::vector<float>>& grads, int step) {
    const auto& specs = tensor_specs();
    for (size_t i = 0; i < specs.size(); ++i) {
      const size_t offset = i == 3 ? static_cast<size_t>(step % 2) : specs[i].offset;
      buffers.emplace_back(grads[i], offset);
      pointers.push_back(buffers.back().get());
    }
  }
};

void check_norm(const DeviceState& d, const HostNorm& ref) {
  const double norm = d.read_scalar(d.table->grad_norm());
  const double scale = d.read_scalar(d.table->grad_scale());
  INFO("grad norm " << norm << " vs " << ref.norm << ", factor " << scale << " vs " << ref.scale);
  CHECK(std::abs(norm - ref.norm) <= kF32Tol * ref.norm);
  CHECK(std::abs(scale - ref.scale) <= kF32Tol * ref.scale);
}

// engine/lamb.cpp's update on the host state.
void host_lamb(HostState& h, const std::vector<std::vector<float>>& grads, const AdamStep& step,
               double lr = kLr) {
  const auto& specs = tensor_specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    const int64_t n = specs[i].n;
    const double wd = specs[i].decay ? kWeightDecay : 0.0;
    std::vector<float> update(n);
    lamb_update_cpu<float>(h.param[i].data(), grads[i].data(), h.exp_avg[i].data(),
                           h.exp_avg_sq[i].data(), update.data(), n, step, wd);
    double trust = 1;
    if (wd != 0) {
      const double pn = std::sqrt(sum_squares_cpu<float>(h.param[i].data(), n));
      const double un = std::sqrt(sum_squares_cpu<float>(update.data(), n));
      if (pn > 0 && un > 0) trust = pn / un;
    }
    add_scaled_cpu<float>(h.param[i].data(), update.data(), -lr * trust, n);
  }
}

void host_adamw(HostState& h, const std::vector<std::vector<float>>& grads, const AdamStep& step) {
  const auto& specs = tensor_specs();
  for (size_t i = 0; i < specs.size(); ++i)
    adamw_update_cpu<float>(h.param[i].data(), grads[i].data(), h.exp_avg[i].data(),
                            h.exp_avg_sq[i].data(), specs[i].n, step, kLr,
                            specs[i].decay ? kWeightDecay : 0.0);
}

}  // namespace

TEST_CASE("cuda LAMB over a multi-tensor table matches the CPU twin", "[gpu][optimizer]") {
  Stream stream;
  Rng rng(2101);
  HostState host = initial_state(rng);
  const bool grads_in_table = GENERATE(true, false);
  INFO((grads_in_table ? "gradients in the table" : "new gradients each step (set_grads_cuda)"));
  DeviceState dev(host, grads_in_table);
  REQUIRE(dev.table->tensors() == 20);
  // --clip-grad 1 and LAMB's max_grad_norm 1 both engage: the gradients' norm is in the hundreds.
  const double clip_grad = 1.0, max_grad_norm = 1.0;
  for (int t = 1; t <= kSteps; ++t) {
    INFO("step " << t);
    const auto grads = random_grads(rng);
    // Kept until the step has run (stream.sync below), as the engine keeps autograd's.
    std::unique_ptr<FreshGrads> fresh;
    if (grads_in_table) {
      dev.set_grads(grads);
    } else {
      fresh = std::make_unique<FreshGrads>(grads, t);
      set_grads_cuda(*dev.table, fresh->pointers, stream);
    }
    dev.poison_bf16();
    const HostNorm ref = host_grad_norm(grads, clip_grad, max_grad_norm);
    grad_norm_cuda(*dev.table, clip_grad, max_grad_norm, stream);
    lamb_step(*dev.table, t, stream);
    stream.sync();
    host_lamb(host, grads, adam_step(t, ref.scale));
    check_norm(dev, ref);
    check_state(dev, host);
  }
}

TEST_CASE("cuda AdamW over a multi-tensor table matches the CPU twin", "[gpu][optimizer]") {
  Stream stream;
  Rng rng(2102);
  HostState host = initial_state(rng);
  DeviceState dev(host);
  const double clip_grad = 0.5;  // AdamW has no max_grad_norm of its own
  for (int t = 1; t <= kSteps; ++t) {
    INFO("step " << t);
    const auto grads = random_grads(rng);
    dev.set_grads(grads);
    dev.poison_bf16();
    const HostNorm ref = host_grad_norm(grads, clip_grad, 0.0);
    grad_norm_cuda(*dev.table, clip_grad, 0.0, stream);
    adamw_step(*dev.table, t, stream);
    stream.sync();
    host_adamw(host, grads, adam_step(t, ref.scale));
    check_norm(dev, ref);
    check_state(dev, host);
  }
}

TEST_CASE("cuda EMA updates the tracked tensors only", "[gpu][optimizer]") {
  Stream stream;
  Rng rng(2103);
  const HostState host = initial_state(rng);
  DeviceState dev(host);
  const double decay = 0.99996;  // DeiT's --model-ema-decay
  ema_update_cuda(*dev.table, decay, stream);
  stream.sync();
  const auto& specs = tensor_specs();
  for (size_t i = 0; i < specs.size(); ++i) {
    INFO("tensor " << i);
    std::vector<float> ref = host.ema[i];
    if (specs[i].ema) ema_update_cpu<float>(ref.data(), host.param[i].data(), decay, specs[i].n);
    const std::vector<float> got = dev.ema[i].download();
    check_close("ema", got, ref, kF32Tol);
    if (!specs[i].ema) check_same_bits("untracked ema", got, host.ema[i]);
  }
}

TEST_CASE("cuda optimizer steps are deterministic", "[gpu][optimizer]") {
  Stream stream;
  Rng rng(2104);
  const HostState host = initial_state(rng);
  const auto grads = random_grads(rng);
  DeviceState a(host), b(host);
  for (DeviceState* d : {&a, &b}) {
    d->set_grads(grads);
    grad_norm_cuda(*d->table, 1.0, 1.0, stream);
    lamb_step(*d->table, 1, stream);
  }
  stream.sync();
  CHECK(a.read_scalar(a.table->grad_norm()) == b.read_scalar(b.table->grad_norm()));
  for (size_t i = 0; i < tensor_specs().size(); ++i) {
    INFO("tensor " << i);
    check_same_bits("param", a.param[i].download(), b.param[i].download());
  }
}

TEST_CASE("cuda optimizer steps leave everything unchanged on a non-finite gradient",
          "[gpu][optimizer]") {
  Stream stream;
  Rng rng(2105);
  const HostState host = initial_state(rng);
  auto grads = random_grads(rng);
  grads[13][4242] = std::numeric_limits<float>::quiet_NaN();
  DeviceState dev(host);
  dev.set_grads(grads);
  const auto& specs = tensor_specs();
  for (const bool lamb : {true, false}) {
    INFO((lamb ? "LAMB" : "AdamW"));
    dev.poison_bf16();
    grad_norm_cuda(*dev.table, 1.0, lamb ? 1.0 : 0.0, stream);
    if (lamb)
      lamb_step(*dev.table, 1, stream);
    else
      adamw_step(*dev.table, 1, stream);
    stream.sync();
    CHECK_FALSE(std::isfinite(dev.read_scalar(dev.table->grad_norm())));
    for (size_t i = 0; i < specs.size(); ++i) {
      INFO("tensor " << i);
      check_same_bits("param", dev.param[i].download(), host.param[i]);
      check_same_bits("exp_avg", dev.exp_avg[i].download(), host.exp_avg[i]);
      check_same_bits("exp_avg_sq", dev.exp_avg_sq[i].download(), host.exp_avg_sq[i]);
      check_same_bits("bf16 copy still poisoned", dev.param_bf16[i].download(),
                      std::vector<bf16_bits>(specs[i].n, 0xFFFF));
    }
  }
}

TEST_CASE("cuda optimizer rejects a host gradient factor, a missing step and bad tensors",
          "[gpu][optimizer]") {
  Stream stream;
  Rng rng(2106);
  DeviceState dev(initial_state(rng));
  CHECK_THROWS_AS(lamb_step_cuda(*dev.table, stream), std::logic_error);  // no set_step_cuda yet
  CHECK_THROWS_AS(adamw_step_cuda(*dev.table, stream), std::logic_error);
  CHECK_THROWS_AS(set_step_cuda(*dev.table, adam_step(1, 0.5), kLr, kWeightDecay, stream),
                  std::invalid_argument);
  CudaParam no_state;
  no_state.param = dev.param[0].get();
  no_state.n = 1;
  CHECK_THROWS_AS(CudaParamTable({no_state}), std::invalid_argument);

  // A table built without gradients: the functions that read them refuse it until set_grads_cuda
  // has pointed it at one per tensor.
  CudaParam missing_grad = no_state;
  missing_grad.param_bf16 = dev.param_bf16[0].get();
  missing_grad.exp_avg = dev.exp_avg[0].get();
  missing_grad.exp_avg_sq = dev.exp_avg_sq[0].get();
  CudaParamTable late({missing_grad});
  CHECK(late.has_optimizer_state());
  CHECK_FALSE(late.has_grads());
  CHECK_THROWS_AS(grad_norm_cuda(late, 0.0, 0.0, stream), std::logic_error);
  float* sum_squares = dev.exp_avg[1].get();
  CHECK_THROWS_AS(grad_sum_squares_cuda(late, sum_squares, stream), std::logic_error);
  set_step_cuda(late, adam_step(1, 1.0), kLr, kWeightDecay, stream);  // reads no gradient
  CHECK_THROWS_AS(lamb_step_cuda(late, stream), std::logic_error);
  CHECK_THROWS_AS(adamw_step_cuda(late, stream), std::logic_error);
  CHECK_THROWS_AS(set_grads_cuda(late, {}, stream), std::invalid_argument);
  CHECK_THROWS_AS(set_grads_cuda(late, {nullptr}, stream), std::invalid_argument);
  CHECK_FALSE(late.has_grads());
  set_grads_cuda(late, {dev.grad[0].get()}, stream);
  CHECK(late.has_grads());

  // A table for the weight EMA alone (engine/ema.h) needs param and ema only; the optimizer
  // steps refuse it.
  F32Buffer ema_buffer(1);
  CudaParam ema_only;
  ema_only.param = dev.param[0].get();
  ema_only.ema = ema_buffer.get();
  ema_only.n = 1;
  CudaParamTable ema_table({ema_only});
  CHECK_FALSE(ema_table.has_optimizer_state());
  CHECK_THROWS_AS(grad_norm_cuda(ema_table, 0.0, 0.0, stream), std::invalid_argument);
  CHECK_THROWS_AS(set_step_cuda(ema_table, adam_step(1, 1.0), kLr, kWeightDecay, stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(lamb_step_cuda(ema_table, stream), std::invalid_argument);
  CHECK_THROWS_AS(adamw_step_cuda(ema_table, stream), std::invalid_argument);
  CHECK_THROWS_AS(set_grads_cuda(ema_table, {dev.grad[0].get()}, stream), std::invalid_argument);

  // An empty table: the norm is 0, the factor 1, and the steps do nothing.
  CudaParamTable empty(std::vector<CudaParam>{});
  grad_norm_cuda(empty, 1.0, 1.0, stream);
  lamb_step(empty, 1, stream);
  stream.sync();
  CHECK(dev.read_scalar(empty.grad_norm()) == 0.f);
  CHECK(dev.read_scalar(empty.grad_scale()) == 1.f);
}

TEST_CASE("cuda set_grads_cuda points every tensor of a table that takes several launches",
          "[gpu][optimizer]") {
  // 600 tensors: three launches of set_grads_cuda (256, 256, 88). Each tensor's AdamW update reads
  // its own gradient, so a pointer written to the wrong slot, or not written, shows.
  constexpr size_t kTensors = 600;
  Stream stream;
  Rng rng(2107);
  std::vector<std::vector<float>> params, grads;
  std::vector<F32Buffer> param, grad, exp_avg, exp_avg_sq;
  std::vector<Bf16Buffer> param_bf16;
  std::vector<CudaParam> table_params;
  std::vector<const float*> grad_pointers;
  for (size_t i = 0; i < kTensors; ++i) {
    const int64_t n = 1 + static_cast<int64_t>(i % 7);
    params.push_back(random_f32(rng, n, -0.1, 0.1));
    grads.push_back(random_f32(rng, n, -1.0, 1.0));
    param.emplace_back(params.back());
    grad.emplace_back(grads.back());
    exp_avg.emplace_back(std::vector<float>(n, 0.f));
    exp_avg_sq.emplace_back(std::vector<float>(n, 0.f));
    param_bf16.emplace_back(n);
    CudaParam p;
    p.param = param.back().get();
    p.param_bf16 = param_bf16.back().get();
    p.exp_avg = exp_avg.back().get();
    p.exp_avg_sq = exp_avg_sq.back().get();
    p.n = n;
    p.weight_decay = i % 2 == 0;
    table_params.push_back(p);
    grad_pointers.push_back(grad.back().get());
  }
  CudaParamTable table(table_params);
  set_grads_cuda(table, grad_pointers, stream);
  grad_norm_cuda(table, 0.0, 0.0, stream);
  adamw_step(table, 1, stream);
  stream.sync();
  const HostNorm ref = host_grad_norm(grads, 0.0, 0.0);
  CHECK(std::abs(static_cast<double>(DeviceState::read_scalar(table.grad_norm())) - ref.norm) <=
        kF32Tol * ref.norm);
  for (size_t i = 0; i < kTensors; ++i) {
    INFO("tensor " << i);
    const int64_t n = static_cast<int64_t>(params[i].size());
    std::vector<float> m(n, 0.f), v(n, 0.f);
    adamw_update_cpu<float>(params[i].data(), grads[i].data(), m.data(), v.data(), n,
                            adam_step(1, 1.0), kLr, i % 2 == 0 ? kWeightDecay : 0.0);
    check_close("param", param[i].download(), params[i], kF32Tol);
  }
}

TEST_CASE("cuda gradient norm in two halves gives grad_norm_cuda's bits", "[gpu][optimizer]") {
  // ZeRO-1's path (engine/sharded_optimizer.h) on one rank: the sum of squares, summed over the
  // ranks (none here), then the norm and the factor.
  Stream stream;
  Rng rng(2107);
  const HostState host = initial_state(rng);
  const auto grads = random_grads(rng);
  DeviceState whole(host), halves(host);
  whole.set_grads(grads);
  halves.set_grads(grads);
  F32Buffer sum_squares(1);
  grad_norm_cuda(*whole.table, 1.0, 1.0, stream);
  grad_sum_squares_cuda(*halves.table, sum_squares.get(), stream);
  grad_factor_cuda(*halves.table, sum_squares.get(), 1.0, 1.0, stream);
  stream.sync();
  const float norm = whole.read_scalar(whole.table->grad_norm());
  CHECK(halves.read_scalar(halves.table->grad_norm()) == norm);
  CHECK(halves.read_scalar(halves.table->grad_scale()) ==
        whole.read_scalar(whole.table->grad_scale()));
  CHECK(sum_squares.download()[0] == Approx(static_cast<double>(norm) * norm).epsilon(1e-6));
  check_norm(halves, host_grad_norm(grads, 1.0, 1.0));
}

TEST_CASE("cuda LAMB captured once in a graph takes each replay's step and learning rate",
          "[gpu][optimizer]") {
  // The captured launches read the scalars set_step_cuda writes before each replay, outside the
  // graph: replay t must be step t at learning rate lr[t], not the values seen at capture.
  Stream stream;
  Rng rng(2108);
  HostState host = initial_state(rng);
  DeviceState dev(host);
  const double clip_grad = 1.0, max_grad_norm = 1.0;
  const double lrs[kSteps] = {kLr, 0.25 * kLr, 3 * kLr};
  // Capture needs a set step on the table (lamb_step_cuda checks it on the host); the replays
  // below set their own.
  set_step_cuda(*dev.table, adam_step(1, 1.0), kLr, kWeightDecay, stream);
  stream.sync();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  DEIT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  grad_norm_cuda(*dev.table, clip_grad, max_grad_norm, stream);
  lamb_step_cuda(*dev.table, stream);
  DEIT_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  DEIT_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int t = 1; t <= kSteps; ++t) {
    INFO("replay " << t << " at lr " << lrs[t - 1]);
    const auto grads = random_grads(rng);
    dev.set_grads(grads);
    dev.poison_bf16();
    set_step_cuda(*dev.table, adam_step(t, 1.0), lrs[t - 1], kWeightDecay, stream);
    DEIT_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    stream.sync();
    const HostNorm ref = host_grad_norm(grads, clip_grad, max_grad_norm);
    host_lamb(host, grads, adam_step(t, ref.scale), lrs[t - 1]);
    check_norm(dev, ref);
    check_state(dev, host);
  }
  DEIT_CUDA_CHECK(cudaGraphExecDestroy(exec));
  DEIT_CUDA_CHECK(cudaGraphDestroy(graph));
}
