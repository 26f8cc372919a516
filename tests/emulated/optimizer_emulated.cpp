// optimizer_emulated: the multi-tensor optimizer kernels (kernels/cuda/optimizer_kernels.cuh), from
// the very source nvcc compiles, run on the host by the emulator of cuda_emulator.h: the chunk
// kernel with each of its ops (the gradients' sums of squares, LAMB's moment pass and parameter
// pass, AdamW, the EMA), the global norm's finish and its two halves (grad_sum_kernel, then
// grad_factor_kernel), set_step_kernel, set_grads_kernel and lamb_trust_kernel, over tables built
// by the launchers' own table_layout. They are checked against the CPU twins
// (kernels/cpu/optimizer.cpp) driven as engine/lamb.cpp and engine/adamw.cpp drive them, the way
// the [gpu] test (tests/test_optimizer_cuda.cpp) checks them on a GPU: several steps in a row from
// fresh state, with the bias corrections, the learning rate, the weight decay and the clipping
// changing from step to step; after each step every tensor's fp32 weights and moments, the global
// norm, the gradient factor and every trust ratio within relative error 1e-5 of the twin's, nothing
// non-finite, and the bf16 copy (poisoned before every step) exactly the device's own fp32 weights
// rounded to nearest even. Bit-exact where the kernels must agree: grad_norm_cuda's two halves, a
// second table under other schedules (built without gradients, which set_grads_kernel points it
// at), the step's scalars, and everything a non-finite gradient must leave untouched. CI machines
// have no GPU: this is what checks an edit to the kernels there, including out-of-bounds accesses,
// missing barriers and misused shuffles, which the emulator turns into failures (see
// cuda_emulator.h).
//
// What runs here and what does not: every kernel of optimizer.cu runs as its launchers launch it
// (mirrored below: change them together). The table's device memory is the emulator's: its
// scratch (partials, trust ratios, norm and factor) starts poisoned, where CudaParamTable's
// starts at zero, so that reading what no kernel wrote shows.
//
// Usage: optimizer_emulated [--full] [--seed N]
//   (default)  an awkward table of 19 tensors, 22 chunks: sizes 0, 1, 2, 5, 7, 8, 13, 384, 512,
//              1000, 1003, 2048, 4096, 4099, one whole chunk (16384), a chunk and one element
//              (16385), three chunks ending in a vector and a scalar tail (32781), two chunks on
//              the scalar path (20001); 16-byte aligned (the vector path, with a scalar tail where
//              n % 8 != 0), ending at a guard page, one element off alignment, or aligned but for
//              the bf16 copy, the gradient or the EMA; weight decay on some; a zero parameter
//              tensor (LAMB's zero-norm case) and a zero gradient tensor. Five LAMB steps and
//              three AdamW steps, a NaN and an infinite gradient, the EMA over the table and over
//              an EMA-only table; lamb_trust_kernel alone over 300 tensors (three blocks); an
//              empty table, and the arguments table_layout and step_scalars refuse. About 1 s on
//              one core of the development machine: the CTest entry optimizer_emulated.
//   --full     adds the [gpu] test's table as it is: 20 tensors of 1 to 300000 elements, 64
//              chunks. About 4 s.
//   --seed N   repeats a run: the inputs and every schedule come from N; each run prints its
//              seed first.
// Exit status: 0 when every check passes; 1 on a mismatch (after all tables; each FAIL line names
// the table, the step and the tensor) or at the first emulation failure (its message names the
// step, kernel, block and thread); 2 on bad arguments.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/optimizer.h"
#include "tests/emulated/cuda_emulator.h"
#include "tests/emulated/test_support.h"
#include "tests/optimizer_reference.h"
// The kernels, after the emulator's stand-ins for what they use.
#include "kernels/cuda/optimizer_kernels.cuh"

namespace deit::kernels {
namespace {

using emu::DeviceBuffer;
using test::adam_step;
using test::host_grad_norm;
using test::HostNorm;

// The [gpu] test's tolerances (tests/test_optimizer_cuda.cpp says why these values).
constexpr double kF32Tol = 1e-5;
constexpr double kSumSquaresTol = 1e-6;  // grad_sum_squares_cuda's sum against the norm squared
constexpr double kLr = 4e-3;             // DeiT III's LAMB rate for ViT-S
constexpr double kWeightDecay = 0.05;

// ---------------------------------------------------------------------------------------------
// Tables.

enum class Fill { kRandom, kZeroParam, kZeroGrad };

// Where a tensor's six buffers lie. kAligned: 16-byte aligned, as cudaMalloc's (the vector path,
// with a scalar tail when n % 8 != 0). kTight: ending right at a guard page, so that a read one
// element past the end faults (the vector path when n % 8 == 0, else the scalar path). kOffset:
// one element into 16-byte aligned buffers, as the [gpu] test's misaligned tensor (the scalar
// path). kBf16Offset: aligned but for the bf16 copy, kGradOffset but for the gradient, kEmaOffset
// but for the EMA (the scalar path: every pointer counts; set_grads_kernel derives it anew from
// the gradient's).
enum class Placement { kAligned, kTight, kOffset, kBf16Offset, kGradOffset, kEmaOffset };

// Which of a tensor's buffers is placed: the three that a placement may put apart, or another.
enum class Buffer { kBf16Copy, kGrad, kEma, kOther };

struct TensorSpec {
  int64_t n;
  bool decay;
  Placement placement;
  Fill fill;
  bool ema;
};

struct Table {
  const char* name;
  std::vector<TensorSpec> tensors;
};

Table awkward_table() {
  using P = Placement;
  const Fill r = Fill::kRandom;
  return {"awkward table",
          {
              {0, true, P::kAligned, r, true},
              {1, false, P::kTight, r, true},
              {2, true, P::kTight, r, false},
              {7, false, P::kAligned, r, true},
              {8, true, P::kTight, r, false},
              {13, true, P::kOffset, r, true},
              {384, true, P::kAligned, Fill::kZeroParam, true},
              {384, false, P::kTight, r, false},
              {1003, true, P::kAligned, r, true},
              {2048, true, P::kBf16Offset, r, false},
              {4099, false, P::kOffset, r, true},
              {5, true, P::kTight, Fill::kZeroGrad, false},
              {16384, true, P::kTight, r, true},
              {16385, false, P::kAligned, r, true},
              {32781, true, P::kAligned, r, false},
              {20001, true, P::kOffset, r, true},
              {1000, true, P::kTight, r, false},
              {4096, true, P::kGradOffset, r, true},
              {512, false, P::kEmaOffset, r, true},
          }};
}

// tests/test_optimizer_cuda.cpp's table, as it is.
Table gpu_test_table() {
  using P = Placement;
  const Fill r = Fill::kRandom;
  return {"[gpu] test table",
          {
              {1, false, P::kAligned, r, true},        {2, true, P::kAligned, r, false},
              {7, false, P::kAligned, r, true},        {64, true, P::kAligned, r, false},
              {384, true, P::kAligned, Fill::kZeroParam, true},
              {384, false, P::kAligned, r, false},     {1000, true, P::kAligned, r, true},
              {1152, true, P::kOffset, r, true},       {1536, false, P::kAligned, r, false},
              {4099, true, P::kAligned, r, true},      {16384, true, P::kAligned, r, false},
              {16385, false, P::kAligned, r, true},    {32781, true, P::kAligned, r, true},
              {65536, true, P::kAligned, r, false},    {147456, true, P::kAligned, r, true},
              {200003, false, P::kAligned, r, false},  {300000, true, P::kAligned, r, true},
              {5, true, P::kAligned, Fill::kZeroGrad, false},
              {777, true, P::kAligned, r, true},       {12345, false, P::kAligned, r, false},
          }};
}

// The scalars of one step: the clipping grad_norm_cuda applies, the learning rate and the weight
// decay set_step_cuda writes.
struct StepPlan {
  double clip_grad, max_grad_norm, lr, weight_decay;
};

// LAMB: --clip-grad, then max_grad_norm on the clipped norm, both engaged (the gradients' norm is
// in the hundreds); no clipping at all; a clip too loose to engage, without weight decay (every
// trust ratio 1, no decay in the update); --clip-grad engaged and max_grad_norm not, as the
// clipped norm is below it; LAMB's max_grad_norm alone.
const std::vector<StepPlan> kLambSteps = {
    {2, 1, kLr, kWeightDecay},
    {0, 0, 0.25 * kLr, kWeightDecay},
    {1e4, 1e4, 3 * kLr, 0},
    {1, 2, kLr, kWeightDecay},
    {0, 1, 2 * kLr, kWeightDecay},
};
// AdamW (no max_grad_norm of its own): --clip-grad engaged, none, too loose to engage.
const std::vector<StepPlan> kAdamWSteps = {
    {0.5, 0, kLr, kWeightDecay},
    {0, 0, 0.25 * kLr, kWeightDecay},
    {1e4, 0, 3 * kLr, 0},
};

// ---------------------------------------------------------------------------------------------
// Device memory.

// n elements of T in global memory, poisoned, `offset` elements into a buffer that starts 16-byte
// aligned, or that ends at its guard page (`tight`).
template <typename T>
class Placed {
 public:
  Placed(const std::string& name, size_t n, bool tight, size_t offset)
      : buffer_(name, n + offset, tight ? alignof(T) : 16), n_(n), offset_(offset) {}
  T* get() const { return buffer_.get() + offset_; }
  std::vector<T> download() const { return std::vector<T>(get(), get() + n_); }
  void upload(const std::vector<T>& v) const {
    if (n_ > 0) std::memcpy(get(), v.data(), n_ * sizeof(T));
  }
  void poison() const { std::memset(get(), 0xFF, n_ * sizeof(T)); }

 private:
  DeviceBuffer<T> buffer_;
  size_t n_, offset_;
};

// Whether table_layout puts a tensor so placed on the vector path: every pointer 16-byte aligned.
// A tight buffer ends at a page boundary, so it starts aligned when its size is a multiple of 16
// bytes: n % 4 == 0 in fp32, n % 8 == 0 in bf16.
bool takes_vector_path(const TensorSpec& s) {
  switch (s.placement) {
    case Placement::kAligned: return true;
    case Placement::kTight: return s.n % 8 == 0;
    default: return false;
  }
}

template <typename T>
std::unique_ptr<Placed<T>> place(const std::string& name, const TensorSpec& s,
                                 Buffer buffer = Buffer::kOther) {
  const bool offset = s.placement == Placement::kOffset ||
                      (s.placement == Placement::kBf16Offset && buffer == Buffer::kBf16Copy) ||
                      (s.placement == Placement::kGradOffset && buffer == Buffer::kGrad) ||
                      (s.placement == Placement::kEmaOffset && buffer == Buffer::kEma);
  return std::make_unique<Placed<T>>(name, static_cast<size_t>(s.n),
                                     s.placement == Placement::kTight, offset ? 1 : 0);
}

// The optimizer state of every tensor, on the host.
struct HostState {
  std::vector<std::vector<float>> param, exp_avg, exp_avg_sq, ema;
};

HostState initial_state(const Table& table, std::mt19937_64& rng) {
  HostState h;
  for (const TensorSpec& s : table.tensors) {
    const auto n = static_cast<size_t>(s.n);
    std::vector<float> p = emu::random_f32(rng, n, -0.1f, 0.1f);
    if (s.fill == Fill::kZeroParam) p.assign(n, 0.f);
    h.param.push_back(p);
    h.exp_avg.emplace_back(n, 0.f);
    h.exp_avg_sq.emplace_back(n, 0.f);
    h.ema.push_back(emu::random_f32(rng, n, -0.1f, 0.1f));
  }
  return h;
}

// One step's gradients; tensor i's are scaled by 1 + i % 4 so the trust ratios differ.
std::vector<std::vector<float>> random_grads(const Table& table, std::mt19937_64& rng) {
  std::vector<std::vector<float>> grads;
  for (size_t i = 0; i < table.tensors.size(); ++i) {
    const TensorSpec& s = table.tensors[i];
    const auto scale = static_cast<float>(1 + i % 4);
    std::vector<float> g = emu::random_f32(rng, static_cast<size_t>(s.n), -scale, scale);
    if (s.fill == Fill::kZeroGrad) g.assign(g.size(), 0.f);
    grads.push_back(g);
  }
  return grads;
}

// CudaParamTable's device memory over `params` (its constructor): table_layout's slots and
// chunks, and the scratch of the reductions, here poisoned. Each array ends at its guard page.
struct DeviceTable {
  explicit DeviceTable(const std::vector<CudaParam>& params)
      : layout(table_layout(params)),
        slots("slots", layout.slots, alignof(Slot)),
        chunks("chunks", layout.chunks, alignof(Chunk)),
        partials("partials", 2 * layout.chunks.size(), alignof(float)),
        trust("trust ratios", layout.slots.size(), alignof(float)),
        scalars("grad norm and factor", 2, alignof(float)),
        step("step scalars", 1, alignof(StepScalars)) {}
  int64_t tensors() const { return static_cast<int64_t>(layout.slots.size()); }
  unsigned chunk_count() const { return static_cast<unsigned>(layout.chunks.size()); }
  float* grad_norm() const { return scalars.get(); }
  float* grad_scale() const { return scalars.get() + 1; }

  TableLayout layout;
  DeviceBuffer<Slot> slots;
  DeviceBuffer<Chunk> chunks;
  DeviceBuffer<float> partials, trust, scalars;
  DeviceBuffer<StepScalars> step;
};

// The tensors of a table on the device, and the table over them.
class DeviceState {
 public:
  // grads_in_table false: the table is built without gradients, and set_grads() points it at them
  // as set_grads_cuda does.
  DeviceState(const Table& table, const HostState& h, bool grads_in_table = true)
      : grads_in_table_(grads_in_table) {
    std::vector<CudaParam> params;
    for (size_t i = 0; i < table.tensors.size(); ++i) {
      const TensorSpec& s = table.tensors[i];
      const std::string name = "tensor " + std::to_string(i) + " ";
      param.push_back(place<float>(name + "param", s));
      param_bf16.push_back(place<bf16_bits>(name + "param_bf16", s, Buffer::kBf16Copy));
      grad.push_back(place<float>(name + "grad", s, Buffer::kGrad));
      exp_avg.push_back(place<float>(name + "exp_avg", s));
      exp_avg_sq.push_back(place<float>(name + "exp_avg_sq", s));
      ema.push_back(place<float>(name + "ema", s, Buffer::kEma));
      param[i]->upload(h.param[i]);
      exp_avg[i]->upload(h.exp_avg[i]);
      exp_avg_sq[i]->upload(h.exp_avg_sq[i]);
      ema[i]->upload(h.ema[i]);
      CudaParam p;
      p.param = param[i]->get();
      p.param_bf16 = param_bf16[i]->get();
      p.grad = grads_in_table ? grad[i]->get() : nullptr;
      p.exp_avg = exp_avg[i]->get();
      p.exp_avg_sq = exp_avg_sq[i]->get();
      p.ema = s.ema ? ema[i]->get() : nullptr;
      p.n = s.n;
      p.weight_decay = s.decay;
      params.push_back(p);
    }
    device = std::make_unique<DeviceTable>(params);
  }

  void set_grads(const std::vector<std::vector<float>>& g);
  void poison_bf16() {
    for (auto& b : param_bf16) b->poison();
  }
  HostState download() const {
    HostState h;
    for (size_t i = 0; i < param.size(); ++i) {
      h.param.push_back(param[i]->download());
      h.exp_avg.push_back(exp_avg[i]->download());
      h.exp_avg_sq.push_back(exp_avg_sq[i]->download());
      h.ema.push_back(ema[i]->download());
    }
    return h;
  }

  std::vector<std::unique_ptr<Placed<float>>> param, grad, exp_avg, exp_avg_sq, ema;
  std::vector<std::unique_ptr<Placed<bf16_bits>>> param_bf16;
  std::unique_ptr<DeviceTable> device;

 private:
  bool grads_in_table_;
};

// ---------------------------------------------------------------------------------------------
// The launches of optimizer.cu, with its grids and blocks (change them together).

template <typename Op>
void launch_chunks(const char* kernel, const DeviceTable& t, const Op& op) {
  if (t.chunk_count() == 0) return;
  const Slot* slots = t.slots.get();
  const Chunk* chunks = t.chunks.get();
  float* partials = t.partials.get();
  emu::launch({kernel, t.chunk_count(), gpu::kThreads, 0},
              [=] { chunk_kernel<Op>(slots, chunks, op, partials); });
}

void grad_norm(const DeviceTable& t, double clip_grad, double max_grad_norm) {
  launch_chunks("chunk_kernel<GradSquaresOp>", t, GradSquaresOp{});
  const float* partials = t.partials.get();
  const int64_t chunks = t.chunk_count();
  float* scalars = t.scalars.get();
  emu::launch({"grad_norm_finish_kernel", 1, kNormThreads, 0}, [=] {
    grad_norm_finish_kernel(partials, chunks, clip_grad, max_grad_norm, scalars);
  });
}

void grad_sum_squares(const DeviceTable& t, float* sum_squares) {
  launch_chunks("chunk_kernel<GradSquaresOp>", t, GradSquaresOp{});
  const float* partials = t.partials.get();
  const int64_t chunks = t.chunk_count();
  emu::launch({"grad_sum_kernel", 1, kNormThreads, 0},
              [=] { grad_sum_kernel(partials, chunks, sum_squares); });
}

void grad_factor(const DeviceTable& t, const float* sum_squares, double clip_grad,
                 double max_grad_norm) {
  float* scalars = t.scalars.get();
  emu::launch({"grad_factor_kernel", 1, 1, 0},
              [=] { grad_factor_kernel(sum_squares, clip_grad, max_grad_norm, scalars); });
}

void set_step(const DeviceTable& t, const AdamStep& step, double lr, double weight_decay) {
  const StepScalars value = step_scalars("set_step_cuda", step, lr, weight_decay);
  StepScalars* target = t.step.get();
  emu::launch({"set_step_kernel", 1, 1, 0}, [=] { set_step_kernel(target, value); });
}

void set_grad_pointers(const DeviceTable& t, const std::vector<const float*>& grads) {
  Slot* slots = t.slots.get();
  for (size_t first = 0; first < grads.size(); first += kGradsPerLaunch) {
    GradPointers batch{};
    batch.first = static_cast<int64_t>(first);
    batch.count = static_cast<int32_t>(std::min<size_t>(kGradsPerLaunch, grads.size() - first));
    std::copy_n(grads.begin() + static_cast<std::ptrdiff_t>(first), batch.count, batch.grad);
    emu::launch({"set_grads_kernel", 1, kGradsPerLaunch, 0},
                [=] { set_grads_kernel(slots, batch); });
  }
}

void DeviceState::set_grads(const std::vector<std::vector<float>>& g) {
  std::vector<const float*> pointers;
  for (size_t i = 0; i < g.size(); ++i) {
    grad[i]->upload(g[i]);
    pointers.push_back(grad[i]->get());
  }
  if (!grads_in_table_) set_grad_pointers(*device, pointers);
}

void lamb_trust(const DeviceTable& t) {
  if (t.tensors() == 0) return;
  const auto grid = static_cast<unsigned>(gpu::ceil_div(t.tensors(), kTrustThreads));
  const Slot* slots = t.slots.get();
  const int64_t tensors = t.tensors();
  const float* partials = t.partials.get();
  const StepScalars* step = t.step.get();
  float* trust = t.trust.get();
  emu::launch({"lamb_trust_kernel", grid, kTrustThreads, 0},
              [=] { lamb_trust_kernel(slots, tensors, partials, step, trust); });
}

// The update ops' device-side sources (the scalars themselves are load()'s to fill).
UpdateScalars update_scalars(const DeviceTable& t) {
  UpdateScalars s{};
  s.grad_scale = t.grad_scale();
  s.step_source = t.step.get();
  return s;
}

void lamb_step(const DeviceTable& t) {
  const UpdateScalars scalars = update_scalars(t);
  launch_chunks("chunk_kernel<LambMomentsOp>", t, LambMomentsOp{scalars});
  lamb_trust(t);
  launch_chunks("chunk_kernel<LambApplyOp>", t, LambApplyOp{scalars, t.trust.get()});
}

void adamw_step(const DeviceTable& t) {
  launch_chunks("chunk_kernel<AdamWOp>", t, AdamWOp{update_scalars(t)});
}

void ema_update(const DeviceTable& t, double decay) {
  launch_chunks("chunk_kernel<EmaOp>", t,
                EmaOp{static_cast<float>(decay), static_cast<float>(1 - decay)});
}

// ---------------------------------------------------------------------------------------------
// The CPU twins, as engine/optimizer.cpp, engine/lamb.cpp and engine/adamw.cpp drive them.

// engine/lamb.cpp's update of the host state; returns each tensor's trust ratio.
std::vector<std::vector<float>> host_lamb(const Table& table, HostState& h,
                                          const std::vector<std::vector<float>>& grads,
                                          const AdamStep& step, const StepPlan& plan) {
  std::vector<std::vector<float>> trust_ratios;
  for (size_t i = 0; i < table.tensors.size(); ++i) {
    const int64_t n = table.tensors[i].n;
    const double wd = table.tensors[i].decay ? plan.weight_decay : 0.0;
    std::vector<float> update(static_cast<size_t>(n));
    lamb_update_cpu<float>(h.param[i].data(), grads[i].data(), h.exp_avg[i].data(),
                           h.exp_avg_sq[i].data(), update.data(), n, step, wd);
    double trust = 1;
    if (wd != 0) {
      const double pn = std::sqrt(sum_squares_cpu<float>(h.param[i].data(), n));
      const double un = std::sqrt(sum_squares_cpu<float>(update.data(), n));
      if (pn > 0 && un > 0) trust = pn / un;
    }
    add_scaled_cpu<float>(h.param[i].data(), update.data(), -plan.lr * trust, n);
    trust_ratios.push_back({static_cast<float>(trust)});
  }
  return trust_ratios;
}

void host_adamw(const Table& table, HostState& h, const std::vector<std::vector<float>>& grads,
                const AdamStep& step, const StepPlan& plan) {
  for (size_t i = 0; i < table.tensors.size(); ++i)
    adamw_update_cpu<float>(h.param[i].data(), grads[i].data(), h.exp_avg[i].data(),
                            h.exp_avg_sq[i].data(), table.tensors[i].n, step, plan.lr,
                            table.tensors[i].decay ? plan.weight_decay : 0.0);
}

// ---------------------------------------------------------------------------------------------
// The checks.

// Every tensor's weights and moments against the host state's, and the bf16 copy against the
// device's own fp32 weights rounded to nearest even (exactly).
void check_state(const DeviceState& d, const HostState& h, emu::ShapeChecks& checks) {
  const HostState got = d.download();
  // A small tensor whose values pass near 0 (a one-element weight crossing zero, w - lr * update
  // cancelling) keeps the few-ulp error of the larger values it came from: judge it against
  // those, ~0.01 and up (weights drawn in [-0.1, 0.1], gradients in [-1, 1] and wider).
  constexpr double kNearZeroNorm = 1e-2;
  checks.relative_each("param", got.param, h.param, kF32Tol, kNearZeroNorm);
  checks.relative_each("exp_avg", got.exp_avg, h.exp_avg, kF32Tol, kNearZeroNorm);
  checks.relative_each("exp_avg_sq", got.exp_avg_sq, h.exp_avg_sq, kF32Tol);
  for (size_t i = 0; i < got.param.size(); ++i) {
    std::vector<bf16_bits> rounded(got.param[i].size());
    std::transform(got.param[i].begin(), got.param[i].end(), rounded.begin(), float_to_bf16);
    const std::string what = "bf16 copy of tensor " + std::to_string(i);
    checks.same_bits(what.c_str(), d.param_bf16[i]->download(), rounded);
  }
}

// grad_norm_cuda against the twin, and its two halves (grad_sum_squares_cuda, grad_factor_cuda)
// against it, bit for bit. Leaves the norm and the factor on the table.
void check_grad_norm(const DeviceTable& t, const std::vector<std::vector<float>>& grads,
                     const StepPlan& plan, emu::ShapeChecks& checks) {
  grad_norm(t, plan.clip_grad, plan.max_grad_norm);
  const std::vector<float> whole = t.scalars.download();
  const HostNorm ref = host_grad_norm(grads, plan.clip_grad, plan.max_grad_norm);
  checks.relative("norm", {whole[0]}, {static_cast<float>(ref.norm)}, kF32Tol);
  checks.relative("factor", {whole[1]}, {static_cast<float>(ref.scale)}, kF32Tol);

  const DeviceBuffer<float> sum_squares("sum_squares", 1, alignof(float));
  grad_sum_squares(t, sum_squares.get());
  grad_factor(t, sum_squares.get(), plan.clip_grad, plan.max_grad_norm);
  checks.same_bits("norm and factor in two halves", t.scalars.download(), whole);
  const double norm = whole[0];
  checks.relative("sum of squares", sum_squares.download(), {static_cast<float>(norm * norm)},
                  kSumSquaresTol);
}

// set_step_cuda's scalars, as they land on the device.
void set_and_check_step(const DeviceTable& t, const AdamStep& step, const StepPlan& plan,
                        emu::ShapeChecks& checks) {
  set_step(t, step, plan.lr, plan.weight_decay);
  checks.same_bits("step scalars", t.step.download(),
                   {step_scalars("set_step_cuda", step, plan.lr, plan.weight_decay)});
}

std::string step_name(const char* optimizer, int t, const StepPlan& p) {
  char text[128];
  std::snprintf(text, sizeof text, "%s step %d (clip %g, max %g, lr %.1e, wd %g)", optimizer, t,
                p.clip_grad, p.max_grad_norm, p.lr, p.weight_decay);
  return text;
}

// Step t up to its update: fresh gradients on the device, its bf16 copies poisoned, the norm and
// the step scalars checked. Returns the gradients.
std::vector<std::vector<float>> start_step(const Table& table, DeviceState& dev,
                                           const std::string& name, int t, const StepPlan& plan,
                                           std::mt19937_64& rng, emu::ShapeChecks& checks) {
  checks.part(name);
  emu::set_context(std::string(table.name) + ", " + name);
  auto grads = random_grads(table, rng);
  dev.set_grads(grads);
  dev.poison_bf16();
  check_grad_norm(*dev.device, grads, plan, checks);
  set_and_check_step(*dev.device, adam_step(t, 1.0), plan, checks);
  return grads;
}

// The LAMB steps from fresh state, each checked; the first also on a second table, whose kernels
// run under other schedules, for the same bits.
void check_lamb(const Table& table, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  HostState host = initial_state(table, rng);
  DeviceState dev(table, host);
  for (const Slot& s : dev.device->layout.slots)
    checks.expect("tensor " + std::to_string(s.index) + " on the path its placement picks",
                  s.vec == takes_vector_path(table.tensors[static_cast<size_t>(s.index)]));
  auto again = std::make_unique<DeviceState>(table, host, /*grads_in_table=*/false);
  for (size_t s = 0; s < kLambSteps.size(); ++s) {
    const int t = static_cast<int>(s) + 1;
    const StepPlan& plan = kLambSteps[s];
    const std::string name = step_name("LAMB", t, plan);
    const auto grads = start_step(table, dev, name, t, plan, rng, checks);
    lamb_step(*dev.device);
    const HostNorm ref = host_grad_norm(grads, plan.clip_grad, plan.max_grad_norm);
    const auto trust = host_lamb(table, host, grads, adam_step(t, ref.scale), plan);
    std::vector<std::vector<float>> got_trust;
    for (float r : dev.device->trust.download()) got_trust.push_back({r});
    checks.relative_each("trust", got_trust, trust, kF32Tol);
    check_state(dev, host, checks);
    if (!again) continue;
    emu::set_context(std::string(table.name) + ", " + name + ", second table");
    again->set_grads(grads);
    const std::vector<Slot> pointed = again->device->slots.download();
    for (const Slot& s : pointed)
      checks.expect("tensor " + std::to_string(s.index) +
                        ", second table: set_grads_kernel's gradient and path",
                    s.grad == again->grad[static_cast<size_t>(s.index)]->get() &&
                        s.vec == takes_vector_path(table.tensors[static_cast<size_t>(s.index)]));
    grad_norm(*again->device, plan.clip_grad, plan.max_grad_norm);
    set_step(*again->device, adam_step(t, 1.0), plan.lr, plan.weight_decay);
    lamb_step(*again->device);
    checks.same_bits("norm and factor, second table", again->device->scalars.download(),
                     dev.device->scalars.download());
    checks.same_bits("trust, second table", again->device->trust.download(),
                     dev.device->trust.download());
    const HostState a = again->download(), b = dev.download();
    for (size_t i = 0; i < a.param.size(); ++i) {
      const std::string what = "param of tensor " + std::to_string(i) + ", second table";
      checks.same_bits(what.c_str(), a.param[i], b.param[i]);
    }
    again.reset();
  }
}

void check_adamw(const Table& table, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  HostState host = initial_state(table, rng);
  DeviceState dev(table, host);
  for (size_t s = 0; s < kAdamWSteps.size(); ++s) {
    const int t = static_cast<int>(s) + 1;
    const StepPlan& plan = kAdamWSteps[s];
    const auto grads = start_step(table, dev, step_name("AdamW", t, plan), t, plan, rng, checks);
    adamw_step(*dev.device);
    const HostNorm ref = host_grad_norm(grads, plan.clip_grad, plan.max_grad_norm);
    host_adamw(table, host, grads, adam_step(t, ref.scale), plan);
    check_state(dev, host, checks);
  }
}

// A gradient with a NaN (LAMB) or an infinity (AdamW) in its largest tensor: the norm is not
// finite, the factor is NaN, and the steps leave every weight, moment and bf16 copy as it was.
void check_non_finite(const Table& table, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  const HostState host = initial_state(table, rng);
  DeviceState dev(table, host);
  auto grads = random_grads(table, rng);
  const auto largest = static_cast<size_t>(
      std::max_element(table.tensors.begin(), table.tensors.end(),
                       [](const TensorSpec& a, const TensorSpec& b) { return a.n < b.n; }) -
      table.tensors.begin());
  for (const bool lamb : {true, false}) {
    const char* name = lamb ? "NaN gradient, LAMB" : "infinite gradient, AdamW";
    checks.part(name);
    emu::set_context(std::string(table.name) + ", " + name);
    grads[largest][grads[largest].size() / 2] =
        lamb ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
    dev.set_grads(grads);
    dev.poison_bf16();
    grad_norm(*dev.device, 1.0, lamb ? 1.0 : 0.0);
    set_step(*dev.device, adam_step(1, 1.0), kLr, kWeightDecay);
    if (lamb)
      lamb_step(*dev.device);
    else
      adamw_step(*dev.device);
    const std::vector<float> scalars = dev.device->scalars.download();
    checks.expect("the norm is not finite", !std::isfinite(scalars[0]));
    checks.expect("the factor is NaN", std::isnan(scalars[1]));
    const HostState got = dev.download();
    for (size_t i = 0; i < got.param.size(); ++i) {
      const std::string tensor = " of tensor " + std::to_string(i);
      checks.same_bits(("param" + tensor).c_str(), got.param[i], host.param[i]);
      checks.same_bits(("exp_avg" + tensor).c_str(), got.exp_avg[i], host.exp_avg[i]);
      checks.same_bits(("exp_avg_sq" + tensor).c_str(), got.exp_avg_sq[i], host.exp_avg_sq[i]);
      checks.same_bits(("bf16 copy still poisoned" + tensor).c_str(), dev.param_bf16[i]->download(),
                       std::vector<bf16_bits>(got.param[i].size(), 0xFFFF));
    }
  }
}

// The EMA over the table (decay 0.9, so that a wrong element shows at 1e-5) and then over a
// table of the tracked tensors alone, without optimizer state (engine/ema.h's), at DeiT's decay;
// the untracked EMAs keep their bits.
void check_ema(const Table& table, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  checks.part("EMA");
  emu::set_context(std::string(table.name) + ", EMA");
  const HostState host = initial_state(table, rng);
  DeviceState dev(table, host);
  std::vector<std::vector<float>> ref = host.ema;
  std::vector<CudaParam> ema_only;
  for (size_t i = 0; i < table.tensors.size(); ++i) {
    const TensorSpec& s = table.tensors[i];
    if (!s.ema) continue;
    ema_update_cpu<float>(ref[i].data(), host.param[i].data(), 0.9, s.n);
    ema_update_cpu<float>(ref[i].data(), host.param[i].data(), 0.99996, s.n);
    CudaParam p;
    p.param = dev.param[i]->get();
    p.ema = dev.ema[i]->get();
    p.n = s.n;
    ema_only.push_back(p);
  }
  ema_update(*dev.device, 0.9);
  const DeviceTable ema_table(ema_only);
  checks.expect("the EMA-only table has no optimizer state", !ema_table.layout.has_optimizer_state);
  emu::set_context(std::string(table.name) + ", EMA-only table");
  ema_update(ema_table, 0.99996);
  const HostState got = dev.download();
  checks.relative_each("ema", got.ema, ref, kF32Tol);
  for (size_t i = 0; i < table.tensors.size(); ++i) {
    const std::string what = "param of tensor " + std::to_string(i) + " (read only)";
    checks.same_bits(what.c_str(), got.param[i], host.param[i]);
  }
}

bool check_table(const Table& table, std::mt19937_64& rng) {
  int64_t elements = 0, chunks = 0, vector_path = 0;
  for (const TensorSpec& s : table.tensors) {
    elements += s.n;
    chunks += gpu::ceil_div(s.n, kCudaOptimizerChunk);
    vector_path += takes_vector_path(s) ? 1 : 0;
  }
  std::printf("%s: %zu tensors (%lld on the vector path), %lld elements, %lld chunks\n",
              table.name, table.tensors.size(), static_cast<long long>(vector_path),
              static_cast<long long>(elements), static_cast<long long>(chunks));
  emu::ShapeChecks checks(table.name);
  check_lamb(table, rng, checks);
  check_adamw(table, rng, checks);
  check_non_finite(table, rng, checks);
  check_ema(table, rng, checks);
  return checks.print();
}

// lamb_trust_kernel over more tensors than one block holds (ViT-B has ~150 parameter tensors):
// 300 tensors of 0 to 4 chunks, some without weight decay, some with a zero ||p|| or ||update||
// (ratio 1), on partials drawn at random; with weight decay, then without (every ratio 1).
bool check_trust_many(std::mt19937_64& rng) {
  constexpr int kTensors = 300;
  emu::ShapeChecks checks("lamb_trust_kernel alone (300 tensors, 3 blocks)");
  emu::set_context("lamb_trust_kernel alone");
  // The kernel reads the slots' chunk ranges and decay flags only: every tensor points at the
  // same unused buffers.
  const DeviceBuffer<float> unused("unused tensors", 1);
  const DeviceBuffer<bf16_bits> unused_bf16("unused bf16 copies", 1);
  std::uniform_int_distribution<int64_t> size(0, 4 * kCudaOptimizerChunk);
  std::uniform_int_distribution<int> kind(0, 5);
  std::vector<CudaParam> params(kTensors);
  std::vector<int> kinds(kTensors);
  for (int i = 0; i < kTensors; ++i) {
    CudaParam& p = params[static_cast<size_t>(i)];
    p.param = p.exp_avg = p.exp_avg_sq = unused.get();
    p.grad = unused.get();
    p.param_bf16 = unused_bf16.get();
    p.n = size(rng);
    kinds[static_cast<size_t>(i)] = kind(rng);
    p.weight_decay = kinds[static_cast<size_t>(i)] != 0;  // kind 0: no weight decay
  }
  const DeviceTable t(params);
  // kind 1: ||p|| = 0; kind 2: ||update|| = 0; else both random.
  std::vector<float> partials = emu::random_f32(rng, 2 * t.layout.chunks.size(), 0.f, 10.f);
  std::vector<std::vector<float>> ref;
  for (const Slot& s : t.layout.slots) {
    double pp = 0, uu = 0;
    for (int64_t k = s.first_chunk; k < s.first_chunk + s.num_chunks; ++k) {
      const auto c = static_cast<size_t>(k);
      if (kinds[static_cast<size_t>(s.index)] == 1) partials[2 * c] = 0.f;
      if (kinds[static_cast<size_t>(s.index)] == 2) partials[2 * c + 1] = 0.f;
      pp += partials[2 * c];
      uu += partials[2 * c + 1];
    }
    ref.push_back({s.decay && pp > 0 && uu > 0 ? static_cast<float>(std::sqrt(pp / uu)) : 1.f});
  }
  std::copy(partials.begin(), partials.end(), t.partials.get());
  for (const double weight_decay : {kWeightDecay, 0.0}) {
    checks.part(weight_decay != 0 ? "with weight decay" : "without weight decay");
    set_step(t, adam_step(1, 1.0), kLr, weight_decay);
    std::fill_n(t.trust.get(), kTensors, std::numeric_limits<float>::quiet_NaN());
    lamb_trust(t);
    std::vector<std::vector<float>> got;
    for (float r : t.trust.download()) got.push_back({r});
    if (weight_decay == 0) ref.assign(kTensors, {1.f});
    checks.relative_each("trust", got, ref, kF32Tol);
  }
  return checks.print();
}

// What the [gpu] test checks of the table's edges: an empty table's norm is 0 and its factor 1,
// and its steps launch nothing; table_layout refuses a null parameter, a negative size and a
// tensor with neither optimizer state nor an EMA; step_scalars refuses a host gradient factor.
bool check_edges() {
  emu::ShapeChecks checks("edges");
  emu::set_context("an empty table");
  const DeviceTable empty(std::vector<CudaParam>{});
  grad_norm(empty, 1.0, 1.0);
  set_step(empty, adam_step(1, 1.0), kLr, kWeightDecay);
  lamb_step(empty);
  adamw_step(empty);
  checks.same_bits("empty table's norm and factor", empty.scalars.download(), {0.f, 1.f});

  const auto throws = [](auto&& f) {
    try {
      f();
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  const DeviceBuffer<float> buffer("a tensor", 1);
  CudaParam ema_only;
  ema_only.param = ema_only.ema = buffer.get();
  ema_only.n = 1;
  CudaParam null_param = ema_only, negative = ema_only, no_state = ema_only;
  null_param.param = nullptr;
  negative.n = -1;
  no_state.ema = nullptr;
  checks.expect("an EMA-only tensor is taken", !throws([&] { table_layout({ema_only}); }));
  checks.expect("a null parameter is refused", throws([&] { table_layout({null_param}); }));
  checks.expect("a negative size is refused", throws([&] { table_layout({negative}); }));
  checks.expect("a tensor without state or EMA is refused",
                throws([&] { table_layout({no_state}); }));
  checks.expect("a host gradient factor is refused",
                throws([] { step_scalars("set_step_cuda", adam_step(1, 0.5), kLr, 0); }));
  return checks.print();
}

}  // namespace
}  // namespace deit::kernels

int main(int argc, char** argv) {
  using namespace deit::kernels;
  const emu::TestOptions options = emu::parse_test_options(argc, argv, "optimizer_emulated");
  std::mt19937_64 inputs(options.seed);

  std::vector<Table> tables = {awkward_table()};
  if (options.full) tables.push_back(gpu_test_table());
  int failed = (check_edges() ? 0 : 1) + (check_trust_many(inputs) ? 0 : 1);
  for (const Table& table : tables) failed += check_table(table, inputs) ? 0 : 1;

  const emu::Totals t = emu::totals();
  std::printf(
      "%d of %zu checks failed (the edges, lamb_trust_kernel alone, then every table); emulated "
      "%lld blocks, %lld warp-wide instructions, %lld thread switches\n",
      failed, tables.size() + 2, t.blocks, t.collectives, t.switches);
  return failed == 0 ? 0 : 1;
}
