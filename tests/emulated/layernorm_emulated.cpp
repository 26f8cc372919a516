// layernorm_emulated: the LayerNorm kernels (kernels/cuda/layernorm_kernels.cuh) and the residual
// update with LayerScale and drop-path, alone and fused with the LayerNorm after it
// (kernels/cuda/layerscale_kernels.cuh), forward and backward, from the very source nvcc compiles,
// run on the host by the emulator of cuda_emulator.h and checked against the CPU twins
// (kernels/cpu/layernorm.cpp, kernels/cpu/layerscale.cpp) the way the [gpu] tests
// (tests/test_kernels_cuda.cpp) check them on a GPU: the same input ranges, fresh random inputs
// (fp32 for the residual stream x, out and its gradient dout, dx; bf16 for the rest), every output
// poisoned with NaN before the launch, every element compared; relative error
// ||got - ref|| / ||ref|| <= 1e-2 for bf16 outputs and <= 1e-4 for the fp32 ones (the residual
// stream and its gradient, the statistics, the parameter gradients), nothing non-finite; and the
// same bits again where they must be the same
// (a second run under other schedules, runs without the optional outputs, a smaller grid, in
// place). CI machines have no GPU: this is what checks an edit to these kernels there,
// including out-of-bounds accesses, missing barriers and misused shuffles, which the emulator
// turns into failures (see cuda_emulator.h).
//
// What runs here and what does not: the row kernels and the elementwise kernel run as the
// launchers in kernels/cuda/layernorm.cu and layerscale.cu launch them (mirrored below: change
// them together). The partial sums of the parameter gradients they write are added up on the
// host: ops_emulated checks the kernel that adds them on the GPU (common.cu's sum_partials).
//
// Usage: layernorm_emulated [--full] [--seed N]
//   (default)  11 shapes: C = 384, 768, 1024 and 1280 (ViT-S, B, L, H), 8192 (the widest
//              row: 1024 threads), 200 (a warp with idle lanes), 196 and 5 (C % 8 != 0: the scalar
//              path) and 384 misaligned (the scalar path at a vector width); 1 row, a few rows, and
//              row counts that end in a short chunk of the backward's 8-row chunks; each with a
//              nearly constant row in the forwards (eps). Then the fused pair on selected samples
//              (slot maps) at C = 384, 1280 and 196. About 2.5 s on one core of the development
//              machine: the CTest entry layernorm_emulated.
//   --full     adds the [gpu] tests' shapes as they are (up to 788 rows of 384, 290 of 1280)
//              and C = 8191. About 20 s.
//   --seed N   repeats a run: the inputs and every schedule come from N; each run prints its
//              seed first.
// Exit status: 0 when every shape passes; 1 on a mismatch (after all shapes; each FAIL line names
// the shape, the kernel and the tensor) or at the first emulation failure (its message names the
// shape, kernel, block and thread); 2 on bad arguments.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cuda/launch_shape.h"
#include "kernels/layernorm.h"
#include "kernels/layerscale.h"
#include "tests/column_sums.h"
#include "tests/emulated/cuda_emulator.h"
#include "tests/emulated/shared_launches.h"
#include "tests/emulated/test_support.h"
// The kernels, after the emulator's stand-ins for what they use.
#include "kernels/cuda/layernorm_kernels.cuh"
#include "kernels/cuda/layerscale_kernels.cuh"

namespace deit::kernels {
namespace {

using deit::test::column_sums;
using emu::Bf16Data;
using emu::kernel_name;
using emu::random_bf16;
using emu::random_f32;
using emu::RowShape;
using emu::tight;
using emu::to_float;
using emu::with_width;

// The [gpu] tests' tolerances (tests/test_kernels_cuda.cpp says why these values).
constexpr double kBf16Tol = 1e-2;
constexpr double kF32SumTol = 1e-4;
constexpr double kEps = 1e-6;  // DeiT III's; the launchers pass it on as a float
constexpr float kDropRate = 0.25f;

// ---------------------------------------------------------------------------------------------
// The launches of layernorm.cu and layerscale.cu, with the same grids, blocks and variant
// choices (a caller may cap the forward grid: the rows are grid-strided).

constexpr unsigned kLauncherGrid = UINT_MAX;  // no cap: the launcher's own grid

// The forward grid of layernorm.cu and layerscale.cu (a block per row), capped at `cap` blocks.
unsigned forward_grid(int64_t rows, unsigned cap) {
  return static_cast<unsigned>(std::min<int64_t>({rows, gpu::kMaxBlocks, cap}));
}

void layernorm_forward(const float* x, const bf16* w, const bf16* b, bf16* y, float* mean,
                       float* rstd, int64_t rows, int64_t C, unsigned max_grid) {
  const auto threads = static_cast<unsigned>(gpu::row_threads(C));
  const auto eps = static_cast<float>(kEps);
  const bool vector = C % gpu::kVec == 0 && gpu::aligned16(x, w, b, y);
  if (gpu::takes_warp_rows(vector, C)) {
    gpu::with_warp_row_groups(C, [&](auto groups) {
      constexpr int G = decltype(groups)::value;
      emu::launch({kernel_name("layernorm_forward_warp_kernel", G),
                   std::min(gpu::warp_row_grid(rows), max_grid), gpu::kWarpRowThreads, 0},
                  [=] { layernorm_forward_warp_kernel<G>(x, w, b, y, mean, rstd, rows, C, eps); });
    });
    return;
  }
  with_width(vector, [&](auto width) {
    constexpr int V = decltype(width)::value;
    emu::launch(
        {kernel_name("layernorm_forward_kernel", V), forward_grid(rows, max_grid), threads, 0},
        [=] { layernorm_forward_kernel<V>(x, w, b, y, mean, rstd, rows, C, eps); });
  });
}

// workspace: 2 * chunks * C floats, dweight's partials first (layernorm_backward_cuda's layout).
void layernorm_backward(const bf16* dy, const float* x, const bf16* w, const float* mean,
                        const float* rstd, float* dx, float* workspace, bool dweight, bool dbias,
                        int64_t rows, int64_t C) {
  const gpu::RowChunks part = gpu::row_chunks(rows, C);
  float* dw_partials = dweight ? workspace : nullptr;
  float* db_partials = dbias ? workspace + part.chunks * C : nullptr;
  const int threads = gpu::row_threads(C);
  const bool vector = C % gpu::kVec == 0 && gpu::aligned16(dy, x, w, dx, dw_partials, db_partials);
  if (gpu::takes_warp_rows(vector, C)) {
    gpu::with_warp_row_groups(C, [&](auto groups) {
      constexpr int G = decltype(groups)::value;
      emu::launch({kernel_name("layernorm_backward_warp_kernel", G),
                   static_cast<unsigned>(part.chunks), gpu::kWarpRowThreads, 0},
                  [=] {
                    layernorm_backward_warp_kernel<G>(dy, x, w, mean, rstd, dx, dw_partials,
                                                      db_partials, rows, C, part.rows_per_chunk);
                  });
    });
    return;
  }
  gpu::with_row_variant(
      vector, threads, [&](auto width, auto early) {
        constexpr int V = decltype(width)::value;
        constexpr bool kEarly = decltype(early)::value;
        emu::launch({kernel_name("layernorm_backward_kernel", V),
                     static_cast<unsigned>(part.chunks), static_cast<unsigned>(threads), 0},
                    [=] {
                      layernorm_backward_kernel<V, kEarly>(dy, x, w, mean, rstd, dx, dw_partials,
                                                           db_partials, rows, C,
                                                           part.rows_per_chunk);
                    });
      });
}

void layerscale_forward(const float* x, const bf16* branch, const bf16* gamma, const float* keep,
                        float* out, int64_t B, int64_t T, int64_t C) {
  emu::launch_elementwise("LayerscaleForwardOp",
                          LayerscaleForwardOp{x, branch, gamma, keep, out, T, C}, B * T * C,
                          C % gpu::kVec == 0 && gpu::aligned16(x, branch, gamma, out));
}

// partials: chunks * C floats, or nullptr without dgamma.
void layerscale_backward(const float* dout, const bf16* branch, const bf16* gamma,
                         const float* keep, bf16* dbranch, float* partials, int64_t B, int64_t T,
                         int64_t C) {
  const int64_t rows = B * T;
  const gpu::RowChunks part = gpu::row_chunks(rows, C);
  const auto threads = static_cast<unsigned>(gpu::row_threads(C));
  with_width(C % gpu::kVec == 0 && gpu::aligned16(dout, branch, gamma, dbranch, partials),
             [&](auto width) {
               constexpr int V = decltype(width)::value;
               emu::launch({kernel_name("layerscale_backward_kernel", V),
                            static_cast<unsigned>(part.chunks), threads, 0},
                           [=] {
                             layerscale_backward_kernel<V>(dout, branch, gamma, keep, dbranch,
                                                           partials, rows, T, C,
                                                           part.rows_per_chunk);
                           });
             });
}

struct FusedForwardArgs {
  const float* x;
  const bf16 *branch, *gamma;
  const float* keep;
  const bf16 *ln_w, *ln_b;
  float* out;
  bf16* y;
  float *mean, *rstd;
  // kernels/layerscale.h's SampleSlots on the device: nullptr, the whole batch in order.
  const int32_t* branch_slot = nullptr;
  const int32_t* normed_slot = nullptr;
};

void fused_forward(const FusedForwardArgs& a, int64_t B, int64_t T, int64_t C, unsigned max_grid) {
  const auto threads = static_cast<unsigned>(gpu::row_threads(C));
  const bool vector =
      C % gpu::kVec == 0 && gpu::aligned16(a.x, a.branch, a.gamma, a.ln_w, a.ln_b, a.out, a.y);
  if (gpu::takes_warp_rows(vector, C)) {
    gpu::with_warp_row_groups(C, [&](auto groups) {
      constexpr int G = decltype(groups)::value;
      emu::launch({kernel_name("layerscale_layernorm_forward_warp_kernel", G),
                   std::min(gpu::warp_row_grid(B * T), max_grid), gpu::kWarpRowThreads, 0},
                  [=] {
                    layerscale_layernorm_forward_warp_kernel<G>(
                        a.x, a.branch, a.gamma, a.keep, a.ln_w, a.ln_b, a.out, a.y, a.mean, a.rstd,
                        B * T, T, C, static_cast<float>(kEps), a.branch_slot, a.normed_slot);
                  });
    });
    return;
  }
  with_width(
      vector, [&](auto width) {
        constexpr int V = decltype(width)::value;
        emu::launch({kernel_name("layerscale_layernorm_forward_kernel", V),
                     forward_grid(B * T, max_grid), threads, 0},
                    [=] {
                      layerscale_layernorm_forward_kernel<V>(a.x, a.branch, a.gamma, a.keep, a.ln_w,
                                                             a.ln_b, a.out, a.y, a.mean, a.rstd,
                                                             B * T, T, C, static_cast<float>(kEps),
                                                             a.branch_slot, a.normed_slot);
                    });
      });
}

struct FusedBackwardArgs {
  const float* dout;
  const bf16* dy;
  const float* out;
  const bf16 *branch, *gamma;
  const float* keep;
  const bf16* ln_w;
  const float *mean, *rstd;
  float* dx;
  bf16* dbranch;
  float* workspace;  // 4 * chunks * C floats: dgamma's, dln_weight's, dln_bias's, dbias's partials
  bool dgamma, dln_weight, dln_bias, dbias;
  // As FusedForwardArgs'. With a branch slot map, dbias is not mirrored (the launcher sums it over
  // dbranch's rows in chunks of their own): the checks ask none then.
  const int32_t* branch_slot = nullptr;
  const int32_t* normed_slot = nullptr;
};

void fused_backward(const FusedBackwardArgs& a, int64_t B, int64_t T, int64_t C) {
  const int64_t rows = B * T;
  const gpu::RowChunks part = gpu::row_chunks(rows, C);
  const int64_t stride = part.chunks * C;
  float* dgamma_partials = a.dgamma ? a.workspace : nullptr;
  float* dw_partials = a.dln_weight ? a.workspace + stride : nullptr;
  float* db_partials = a.dln_bias ? a.workspace + 2 * stride : nullptr;
  float* dbias_partials = a.dbias ? a.workspace + 3 * stride : nullptr;
  const int threads = gpu::row_threads(C);
  const bool vector_path =
      C % gpu::kVec == 0 &&
      gpu::aligned16(a.dout, a.dy, a.out, a.branch, a.gamma, a.ln_w, a.dx, a.dbranch,
                     dgamma_partials, dw_partials, db_partials, dbias_partials);
  if (gpu::takes_warp_rows(vector_path, C)) {
    gpu::with_warp_row_groups(C, [&](auto groups) {
      constexpr int G = decltype(groups)::value;
      emu::launch({kernel_name("layerscale_layernorm_backward_warp_kernel", G),
                   static_cast<unsigned>(part.chunks), gpu::kWarpRowThreads, 0},
                  [=] {
                    layerscale_layernorm_backward_warp_kernel<G>(
                        a.dout, a.dy, a.out, a.branch, a.gamma, a.keep, a.ln_w, a.mean, a.rstd,
                        a.dx, a.dbranch, dgamma_partials, dw_partials, db_partials, rows, T, C,
                        part.rows_per_chunk, a.branch_slot, a.normed_slot);
                  });
    });
    if (dbias_partials) emu::column_partials(a.dbranch, rows, C, C, dbias_partials, part);
    return;
  }
  gpu::with_row_variant(vector_path, threads, [&](auto width, auto early) {
    constexpr int V = decltype(width)::value;
    constexpr bool kEarly = decltype(early)::value;
    emu::launch({kernel_name("layerscale_layernorm_backward_kernel", V),
                 static_cast<unsigned>(part.chunks), static_cast<unsigned>(threads), 0},
                [=] {
                  layerscale_layernorm_backward_kernel<V, kEarly>(
                      a.dout, a.dy, a.out, a.branch, a.gamma, a.keep, a.ln_w, a.mean, a.rstd, a.dx,
                      a.dbranch, dgamma_partials, dw_partials, db_partials, dbias_partials, rows, T,
                      C, part.rows_per_chunk, a.branch_slot, a.normed_slot);
                });
  });
}

// ---------------------------------------------------------------------------------------------
// Shapes, buffers and checks.

// 1 row; a few rows in one chunk; 10, 6 and 5 chunks with a short last one (74 = 9 * 8 + 2,
// 46 = 5 * 8 + 6, 33 = 4 * 8 + 1); 5 warps (C = 1280) over two chunks; the widest row (32 warps);
// a warp with idle lanes (C = 200: 25 of 32 threads own columns); the scalar path three ways.
// The LayerNorm alone takes the warp row layout at C = 200, 384, 768 and 1024 (1 to 4 slot
// groups; at 200 and 384 the last group has idle lanes) and the block row layout at the others.
const std::vector<RowShape> kDefaultShapes = {
    {1, 1, 384, 0},   {2, 37, 384, 0}, {1, 5, 768, 0},  {3, 11, 768, 0},
    {2, 23, 1024, 0}, {1, 9, 1280, 0}, {1, 2, 8192, 0}, {1, 65, 200, 0},
    {2, 19, 196, 0},  {3, 7, 5, 0},    {1, 33, 384, 1},
};

// --full: the [gpu] tests' row shapes as they are, and the widest row on the scalar path.
const std::vector<RowShape> kGpuTestShapes = {
    {4, 197, 384, 0}, {2, 145, 1280, 0}, {3, 101, 768, 0}, {1, 65, 200, 0},
    {2, 257, 196, 0}, {1, 33, 384, 1},   {3, 7, 5, 0},     {1, 3, 8191, 0},
};

// Drop-path at kDropRate, as the [gpu] tests draw it: 0 or 1 / (1 - rate) per sample, the first
// sample dropped when there are two or more, the last kept.
std::vector<float> random_keep(std::mt19937_64& rng, int64_t B) {
  std::uniform_real_distribution<float> u(0, 1);
  const float kept = 1.f / (1.f - kDropRate);
  std::vector<float> keep(static_cast<size_t>(B));
  for (float& k : keep) k = u(rng) < 1.f - kDropRate ? kept : 0.f;
  if (B > 1) keep.front() = 0.f;
  keep.back() = kept;
  return keep;
}

// Row `row` of x (C columns) made nearly constant: 3 plus noise uniform in [-2e-3, 2e-3], a
// variance (1.3e-6) near eps (1e-6), where eps moves rstd by a quarter. On the random rows
// (variance 0.3 and up) eps moves rstd by 1e-6 at most, under every tolerance: a LayerNorm that
// dropped eps would pass them all, and give inf on a constant row.
void nearly_constant_row(std::vector<float>& x, size_t C, size_t row, std::mt19937_64& rng) {
  const std::vector<float> noise = random_f32(rng, C, -2e-3f, 2e-3f);
  for (size_t c = 0; c < C; ++c) x[row * C + c] = 3.f + noise[c];
}

// The partials the linear layer's bias gradient (column_partials_kernel, common_kernels.cuh)
// makes of a stored (rows, C) bf16 matrix: for each of row_chunks' chunks, every column's fp32
// sum over the chunk's rows in order.
std::vector<float> linear_bias_partials(const std::vector<bf16_bits>& m, int64_t rows, int64_t C) {
  const gpu::RowChunks part = gpu::row_chunks(rows, C);
  std::vector<float> partials(static_cast<size_t>(part.chunks * C), 0.f);
  for (int64_t k = 0; k < part.chunks; ++k)
    for (int64_t r = k * part.rows_per_chunk; r < std::min(rows, (k + 1) * part.rows_per_chunk);
         ++r)
      for (int64_t c = 0; c < C; ++c)
        partials[static_cast<size_t>(k * C + c)] +=
            bf16_to_float(m[static_cast<size_t>(r * C + c)]);
  return partials;
}

// A (B, T, C) activation of E = bf16_bits (the branch side) or float (the residual stream),
// `offset` elements into its buffer. Tight when offset == 0; with an offset, the buffer starts
// 16-byte aligned as cudaMalloc's do, so that the activation does not.
template <typename E>
class Activation {
 public:
  // What the kernels take: bf16 for bf16_bits elements, float for float.
  using Device = std::conditional_t<std::is_same_v<E, float>, float, bf16>;

  Activation(const std::string& name, size_t n, size_t offset)
      : buffer_(name, n + offset, offset == 0 ? alignof(E) : 16), n_(n), offset_(offset) {}
  Activation(const std::string& name, const std::vector<E>& host, size_t offset)
      : Activation(name, host.size(), offset) {
    std::memcpy(buffer_.get() + offset_, host.data(), host.size() * sizeof(E));
  }
  Device* get() const { return reinterpret_cast<Device*>(buffer_.get() + offset_); }
  std::vector<E> bits() const {
    return std::vector<E>(buffer_.get() + offset_, buffer_.get() + offset_ + n_);
  }
  std::vector<float> values() const {
    if constexpr (std::is_same_v<E, float>)
      return bits();
    else
      return to_float(bits());
  }

 private:
  emu::DeviceBuffer<E> buffer_;
  size_t n_, offset_;
};
using Bf16Activation = Activation<bf16_bits>;
using F32Activation = Activation<float>;

const bf16* as_bf16(const emu::DeviceBuffer<bf16_bits>& b) {
  return reinterpret_cast<const bf16*>(b.get());
}

// ---------------------------------------------------------------------------------------------
// The checks, kernel pair by kernel pair, after the [gpu] test of each.

void check_layernorm_forward(const RowShape& s, std::mt19937_64& rng,
                             emu::ShapeChecks& checks) {
  checks.part("layernorm forward");
  emu::set_context(s.str() + ", layernorm forward");
  const size_t C = static_cast<size_t>(s.C), rows = static_cast<size_t>(s.rows());
  // x: the fp32 residual stream, its mean far from 0 (tests the centring); its last row nearly
  // constant (tests eps).
  std::vector<float> x = random_f32(rng, s.n(), 1.5f, 4.5f);
  nearly_constant_row(x, C, rows - 1, rng);
  const Bf16Data w = random_bf16(rng, C, 0.5f, 1.5f);
  const Bf16Data b = random_bf16(rng, C, -0.5f, 0.5f);
  std::vector<float> y_ref(s.n()), mean_ref(rows), rstd_ref(rows);
  layernorm_forward_cpu(x.data(), w.values.data(), b.values.data(), y_ref.data(), mean_ref.data(),
                        rstd_ref.data(), s.rows(), s.C, kEps);

  const F32Activation dev_x("x", x, s.offset);
  const Bf16Activation dev_y("y", s.n(), s.offset);
  const auto dev_w = tight("weight", w.bits), dev_b = tight("bias", b.bits);
  const auto dev_mean = tight<float>("mean", rows), dev_rstd = tight<float>("rstd", rows);
  layernorm_forward(dev_x.get(), as_bf16(dev_w), as_bf16(dev_b), dev_y.get(), dev_mean.get(),
                    dev_rstd.get(), s.rows(), s.C, kLauncherGrid);
  checks.relative("y", dev_y.values(), y_ref, kBf16Tol);
  checks.relative("mean", dev_mean.download(), mean_ref, kF32SumTol);
  checks.relative("rstd", dev_rstd.download(), rstd_ref, kF32SumTol);

  // Inference (no statistics) on at most 3 blocks, so that blocks walk several rows.
  emu::set_context(s.str() + ", layernorm forward without statistics, 3 blocks");
  const Bf16Activation dev_y_inference("y (no statistics)", s.n(), s.offset);
  layernorm_forward(dev_x.get(), as_bf16(dev_w), as_bf16(dev_b), dev_y_inference.get(), nullptr,
                    nullptr, s.rows(), s.C, 3);
  checks.same_bits("y without statistics on 3 blocks", dev_y_inference.bits(), dev_y.bits());
}

void check_layernorm_backward(const RowShape& s, std::mt19937_64& rng,
                              emu::ShapeChecks& checks) {
  checks.part("layernorm backward");
  emu::set_context(s.str() + ", layernorm backward");
  const size_t C = static_cast<size_t>(s.C), rows = static_cast<size_t>(s.rows());
  const std::vector<float> x = random_f32(rng, s.n(), -2.f, 3.f);  // the fp32 residual stream
  const Bf16Data w = random_bf16(rng, C, 0.5f, 1.5f);
  const Bf16Data b = random_bf16(rng, C, -0.5f, 0.5f);
  const Bf16Data dy = random_bf16(rng, s.n(), -1.f, 1.f);
  std::vector<float> y(s.n()), mean(rows), rstd(rows);
  layernorm_forward_cpu(x.data(), w.values.data(), b.values.data(), y.data(), mean.data(),
                        rstd.data(), s.rows(), s.C, kEps);
  std::vector<float> dx_ref(s.n()), dw_ref(C), db_ref(C);
  layernorm_backward_cpu(dy.values.data(), x.data(), w.values.data(), mean.data(), rstd.data(),
                         dx_ref.data(), dw_ref.data(), db_ref.data(), s.rows(), s.C);

  const gpu::RowChunks part = gpu::row_chunks(s.rows(), s.C);
  const size_t stride = static_cast<size_t>(part.chunks) * C;
  const Bf16Activation dev_dy("dy", dy.bits, s.offset);
  const F32Activation dev_x("x", x, s.offset);
  const auto dev_w = tight("weight", w.bits);
  const auto dev_mean = tight("mean", mean), dev_rstd = tight("rstd", rstd);
  struct Result {
    std::vector<float> dx, dw, db;  // dw, db: the partials of each
  };
  // Every run gets fresh, poisoned outputs.
  const auto run = [&](const char* what, bool dweight, bool dbias) {
    emu::set_context(s.str() + ", layernorm backward, " + what);
    const F32Activation dev_dx("dx", s.n(), s.offset);
    const auto workspace = tight<float>("workspace", 2 * stride);
    layernorm_backward(dev_dy.get(), dev_x.get(), as_bf16(dev_w), dev_mean.get(), dev_rstd.get(),
                       dev_dx.get(), workspace.get(), dweight, dbias, s.rows(), s.C);
    const std::vector<float> partials = workspace.download();
    return Result{dev_dx.bits(), std::vector<float>(partials.begin(), partials.begin() + stride),
                  std::vector<float>(partials.begin() + stride, partials.end())};
  };
  const Result first = run("first run", true, true);
  checks.relative("dx", first.dx, dx_ref, kF32SumTol);
  checks.relative("dweight", column_sums(first.dw, part.chunks, s.C), dw_ref, kF32SumTol);
  checks.relative("dbias", column_sums(first.db, part.chunks, s.C), db_ref, kF32SumTol);

  const Result second = run("second run", true, true);
  checks.same_bits("dweight partials, second run", second.dw, first.dw);
  checks.same_bits("dbias partials, second run", second.db, first.db);
  checks.same_bits("dx without parameter gradients",
                   run("without parameter gradients", false, false).dx, first.dx);
  checks.same_bits("dbias partials alone", run("dbias alone", false, true).db, first.db);
}

void check_layerscale(const RowShape& s, std::mt19937_64& rng,
                      emu::ShapeChecks& checks) {
  checks.part("layerscale");
  emu::set_context(s.str() + ", layerscale forward");
  const size_t C = static_cast<size_t>(s.C);
  // x, out and dout: the fp32 residual stream and its gradient.
  const std::vector<float> x = random_f32(rng, s.n(), -2.f, 2.f);
  const Bf16Data branch = random_bf16(rng, s.n(), -2.f, 2.f);
  const Bf16Data gamma = random_bf16(rng, C, -1.f, 1.f);
  const std::vector<float> dout = random_f32(rng, s.n(), -1.f, 1.f);
  const std::vector<float> keep = random_keep(rng, s.B);
  std::vector<float> out_ref(s.n()), dbranch_ref(s.n()), dgamma_ref(C);
  layerscale_residual_forward_cpu(x.data(), branch.values.data(), gamma.values.data(),
                                  keep.data(), out_ref.data(), s.B, s.T, s.C);
  layerscale_residual_backward_cpu(dout.data(), branch.values.data(), gamma.values.data(),
                                   keep.data(), dbranch_ref.data(), dgamma_ref.data(), s.B, s.T,
                                   s.C);

  const F32Activation dev_x("x", x, s.offset), dev_dout("dout", dout, s.offset),
      dev_out("out", s.n(), s.offset);
  const Bf16Activation dev_branch("branch", branch.bits, s.offset);
  const auto dev_gamma = tight("gamma", gamma.bits);
  const auto dev_keep = tight("keep_scale", keep);
  layerscale_forward(dev_x.get(), dev_branch.get(), as_bf16(dev_gamma), dev_keep.get(),
                     dev_out.get(), s.B, s.T, s.C);
  checks.relative("out", dev_out.values(), out_ref, kF32SumTol);
  emu::set_context(s.str() + ", layerscale forward in place");
  const F32Activation dev_x_in_place("x (out in place)", x, s.offset);
  layerscale_forward(dev_x_in_place.get(), dev_branch.get(), as_bf16(dev_gamma), dev_keep.get(),
                     dev_x_in_place.get(), s.B, s.T, s.C);
  checks.same_bits("out in place", dev_x_in_place.bits(), dev_out.bits());

  const gpu::RowChunks part = gpu::row_chunks(s.rows(), s.C);
  struct Result {
    std::vector<bf16_bits> dbranch;
    std::vector<float> dgamma;  // its partials
  };
  const auto run = [&](const char* what, bool dbranch, bool dgamma) {
    emu::set_context(s.str() + ", layerscale backward, " + what);
    const Bf16Activation dev_dbranch("dbranch", s.n(), s.offset);
    const auto workspace = tight<float>("workspace", static_cast<size_t>(part.chunks) * C);
    layerscale_backward(dev_dout.get(), dev_branch.get(), as_bf16(dev_gamma), dev_keep.get(),
                        dbranch ? dev_dbranch.get() : nullptr, dgamma ? workspace.get() : nullptr,
                        s.B, s.T, s.C);
    return Result{dev_dbranch.bits(), workspace.download()};
  };
  const Result first = run("first run", true, true);
  checks.relative("dbranch", to_float(first.dbranch), dbranch_ref, kBf16Tol);
  checks.relative("dgamma", column_sums(first.dgamma, part.chunks, s.C), dgamma_ref, kF32SumTol);
  checks.same_bits("dgamma partials alone", run("dgamma alone", false, true).dgamma, first.dgamma);
  checks.same_bits("dbranch alone", run("dbranch alone", true, false).dbranch, first.dbranch);
}

void check_fused(const RowShape& s, std::mt19937_64& rng,
                 emu::ShapeChecks& checks) {
  checks.part("layerscale + layernorm forward");
  emu::set_context(s.str() + ", layerscale + layernorm forward");
  const size_t C = static_cast<size_t>(s.C), rows = static_cast<size_t>(s.rows());
  const Bf16Data branch = random_bf16(rng, s.n(), -2.f, 2.f);
  const Bf16Data gamma = random_bf16(rng, C, -1.f, 1.f);
  const Bf16Data ln_w = random_bf16(rng, C, 0.5f, 1.5f);
  const Bf16Data ln_b = random_bf16(rng, C, -0.5f, 0.5f);
  const std::vector<float> keep = random_keep(rng, s.B);
  const Bf16Activation dev_branch("branch", branch.bits, s.offset);
  const auto dev_gamma = tight("gamma", gamma.bits), dev_ln_w = tight("ln_weight", ln_w.bits),
             dev_ln_b = tight("ln_bias", ln_b.bits);
  const auto dev_keep = tight("keep_scale", keep);

  {
    // x: the fp32 residual stream, away from 0 so that the LayerNorm's centring matters. Its last
    // row less what the update adds to it is nearly constant, so that out's is (tests eps).
    std::vector<float> x = random_f32(rng, s.n(), 1.f, 3.f);
    nearly_constant_row(x, C, rows - 1, rng);
    const float last_keep = keep.back();  // the kernels' fp32 update: out = x + keep * g * b
    for (size_t c = 0; c < C; ++c)
      x[(rows - 1) * C + c] -= last_keep * gamma.values[c] * branch.values[(rows - 1) * C + c];
    std::vector<float> out_ref(s.n()), y_ref(s.n()), mean_ref(rows), rstd_ref(rows);
    layerscale_residual_layernorm_forward_cpu(x.data(), branch.values.data(), gamma.values.data(),
                                              keep.data(), ln_w.values.data(), ln_b.values.data(),
                                              out_ref.data(), y_ref.data(), mean_ref.data(),
                                              rstd_ref.data(), s.B, s.T, s.C, kEps);
    const F32Activation dev_x("x", x, s.offset), dev_out("out", s.n(), s.offset);
    const Bf16Activation dev_y("y", s.n(), s.offset);
    const auto dev_mean = tight<float>("mean", rows), dev_rstd = tight<float>("rstd", rows);
    FusedForwardArgs a{dev_x.get(),       dev_branch.get(),  as_bf16(dev_gamma), dev_keep.get(),
                       as_bf16(dev_ln_w), as_bf16(dev_ln_b), dev_out.get(),      dev_y.get(),
                       dev_mean.get(),    dev_rstd.get()};
    fused_forward(a, s.B, s.T, s.C, kLauncherGrid);
    // out is stored in fp32 and normalised as stored: only fp32 rounding separates it and the
    // statistics from the twin, as in the [gpu] test.
    checks.relative("out", dev_out.values(), out_ref, kF32SumTol);
    checks.relative("y", dev_y.values(), y_ref, kBf16Tol);
    checks.relative("mean", dev_mean.download(), mean_ref, kF32SumTol);
    checks.relative("rstd", dev_rstd.download(), rstd_ref, kF32SumTol);

    // In place (out = x), without statistics, on at most 3 blocks.
    emu::set_context(s.str() + ", layerscale + layernorm forward in place, 3 blocks");
    const F32Activation dev_x_in_place("x (out in place)", x, s.offset);
    const Bf16Activation dev_y_in_place("y (in place)", s.n(), s.offset);
    a.x = a.out = dev_x_in_place.get();
    a.y = dev_y_in_place.get();
    a.mean = a.rstd = nullptr;
    fused_forward(a, s.B, s.T, s.C, 3);
    checks.same_bits("out in place on 3 blocks", dev_x_in_place.bits(), dev_out.bits());
    checks.same_bits("y in place on 3 blocks", dev_y_in_place.bits(), dev_y.bits());
  }

  // Backward: `out` as an fp32 input of its own, with the statistics its forward would have saved.
  checks.part("layerscale + layernorm backward");
  emu::set_context(s.str() + ", layerscale + layernorm backward");
  const std::vector<float> out = random_f32(rng, s.n(), -2.f, 3.f);
  const std::vector<float> dout = random_f32(rng, s.n(), -1.f, 1.f);
  const Bf16Data dy = random_bf16(rng, s.n(), -1.f, 1.f);
  std::vector<float> y(s.n()), mean(rows), rstd(rows);
  layernorm_forward_cpu(out.data(), ln_w.values.data(), ln_b.values.data(), y.data(), mean.data(),
                        rstd.data(), s.rows(), s.C, kEps);
  struct Reference {
    std::vector<float> dx, dbranch, dgamma, dw, db;
  };
  const auto reference = [&](const float* dout_values) {
    Reference r{std::vector<float>(s.n()), std::vector<float>(s.n()), std::vector<float>(C),
                std::vector<float>(C), std::vector<float>(C)};
    layerscale_residual_layernorm_backward_cpu(
        dout_values, dy.values.data(), out.data(), branch.values.data(), gamma.values.data(),
        keep.data(), ln_w.values.data(), mean.data(), rstd.data(), r.dx.data(), r.dbranch.data(),
        r.dgamma.data(), r.dw.data(), r.db.data(), static_cast<float*>(nullptr), s.B, s.T, s.C);
    return r;
  };
  const Reference with_dout = reference(dout.data());
  const Reference without_dout = reference(nullptr);

  const gpu::RowChunks part = gpu::row_chunks(s.rows(), s.C);
  const size_t stride = static_cast<size_t>(part.chunks) * C;
  const F32Activation dev_dout("dout", dout, s.offset), dev_out("out", out, s.offset);
  const Bf16Activation dev_dy("dy", dy.bits, s.offset);
  const auto dev_mean = tight("mean", mean), dev_rstd = tight("rstd", rstd);
  struct Result {
    std::vector<float> dx;
    std::vector<bf16_bits> dbranch;
    std::vector<float> dgamma, dw, db, dbias;  // the partials of each
  };
  const auto run = [&](const char* what, bool with_dout_input, bool dbranch, bool dgamma, bool dw,
                       bool db, bool dbias) {
    emu::set_context(s.str() + ", layerscale + layernorm backward, " + what);
    const F32Activation dev_dx("dx", s.n(), s.offset);
    const Bf16Activation dev_dbranch("dbranch", s.n(), s.offset);
    const auto workspace = tight<float>("workspace", 4 * stride);
    const FusedBackwardArgs a{with_dout_input ? dev_dout.get() : nullptr,
                              dev_dy.get(),
                              dev_out.get(),
                              dev_branch.get(),
                              as_bf16(dev_gamma),
                              dev_keep.get(),
                              as_bf16(dev_ln_w),
                              dev_mean.get(),
                              dev_rstd.get(),
                              dev_dx.get(),
                              dbranch ? dev_dbranch.get() : nullptr,
                              workspace.get(),
                              dgamma,
                              dw,
                              db,
                              dbias};
    fused_backward(a, s.B, s.T, s.C);
    const std::vector<float> partials = workspace.download();
    const auto slice = [&](size_t i) {
      return std::vector<float>(partials.begin() + i * stride, partials.begin() + (i + 1) * stride);
    };
    return Result{dev_dx.bits(), dev_dbranch.bits(), slice(0), slice(1), slice(2), slice(3)};
  };
  // The partials' column sums: on the GPU common.cu's sum_partials kernel adds them; ops_emulated
  // checks that kernel (here it would cost a 1024-thread block per 8 columns, a minute at C =
  // 8192).
  const auto sum = [&](const std::vector<float>& partials) {
    return column_sums(partials, part.chunks, s.C);
  };
  const Result first = run("first run", true, true, true, true, true, true);
  checks.relative("dx", first.dx, with_dout.dx, kF32SumTol);
  checks.relative("dbranch", to_float(first.dbranch), with_dout.dbranch, kBf16Tol);
  checks.relative("dgamma", sum(first.dgamma), with_dout.dgamma, kF32SumTol);
  checks.relative("dln_weight", sum(first.dw), with_dout.dw, kF32SumTol);
  checks.relative("dln_bias", sum(first.db), with_dout.db, kF32SumTol);
  // dbias: the sums of dbranch as stored (tests/column_sums.h says why not the twin's).
  checks.relative("dbias", sum(first.dbias), column_sums(to_float(first.dbranch), s.rows(), s.C),
                  kF32SumTol);
  checks.same_bits("dbias partials against the linear layer's", first.dbias,
                   linear_bias_partials(first.dbranch, s.rows(), s.C));

  const Result second = run("second run without dbranch", true, false, true, true, true, false);
  checks.same_bits("dx without dbranch", second.dx, first.dx);
  checks.same_bits("dgamma partials, second run", second.dgamma, first.dgamma);
  checks.same_bits("dln_weight partials, second run", second.dw, first.dw);
  checks.same_bits("dln_bias partials, second run", second.db, first.db);

  const Result no_dout = run("without dout", false, true, false, false, false, false);
  checks.relative("dx without dout", no_dout.dx, without_dout.dx, kF32SumTol);
  checks.relative("dbranch without dout", to_float(no_dout.dbranch), without_dout.dbranch,
                  kBf16Tol);
  const Result with_dbias = run("dbias, without dout", false, true, false, false, false, true);
  checks.same_bits("dbranch with dbias", with_dbias.dbranch, no_dout.dbranch);
  checks.relative("dbias without dout", sum(with_dbias.dbias),
                  column_sums(to_float(with_dbias.dbranch), s.rows(), s.C), kF32SumTol);
  const Result dgamma_alone =
      run("dgamma alone, without dout", false, false, true, false, false, false);
  checks.relative("dgamma alone, without dout", sum(dgamma_alone.dgamma), without_dout.dgamma,
                  kF32SumTol);
}

// The fused pair on selected samples (kernels/layerscale.h's SampleSlots), as the [gpu] test
// (tests/test_kernels_cuda.cpp) draws them: of 5 samples, branch and dbranch hold the rows of
// samples 0, 2 and 3 (3 dropped but selected), y and dy those of 1, 2 and 4. The whole-batch
// checks pass no slot maps, where every selected row is the row itself: a kernel reading or
// writing the branch, y or dy at a row's own index would pass them.
const std::vector<RowShape> kSelectedShapes = {
    {5, 9, 384, 0},   // a warp per row, 2 slot groups
    {5, 5, 1280, 0},  // a block per row
    {5, 7, 196, 0},   // the scalar path
};

// Slot maps (B) of the samples `index` selects, in order: each sample's place there or -1.
std::vector<int32_t> slot_map(int64_t B, const std::vector<int32_t>& index) {
  std::vector<int32_t> slot(static_cast<size_t>(B), -1);
  for (size_t i = 0; i < index.size(); ++i)
    slot[static_cast<size_t>(index[i])] = static_cast<int32_t>(i);
  return slot;
}

bool check_selected(const RowShape& s, std::mt19937_64& rng) {
  emu::ShapeChecks checks(s.str() + " selected samples");
  const size_t C = static_cast<size_t>(s.C), rows = static_cast<size_t>(s.rows());
  const size_t selected = 3 * static_cast<size_t>(s.T) * C;  // 3 samples' rows
  const float kept = 1.f / (1.f - kDropRate);
  const std::vector<float> keep = {kept, 0.f, kept, 0.f, kept};
  const std::vector<int32_t> branch_slot = slot_map(s.B, {0, 2, 3});
  const std::vector<int32_t> normed_slot = slot_map(s.B, {1, 2, 4});
  const SampleSlots host_slots{branch_slot.data(), 3, normed_slot.data()};
  const auto dev_branch_slot = tight("branch slot map", branch_slot);
  const auto dev_normed_slot = tight("normed slot map", normed_slot);
  const Bf16Data branch = random_bf16(rng, selected, -2.f, 2.f);
  const Bf16Data gamma = random_bf16(rng, C, -1.f, 1.f);
  const Bf16Data ln_w = random_bf16(rng, C, 0.5f, 1.5f);
  const Bf16Data ln_b = random_bf16(rng, C, -0.5f, 0.5f);
  const Bf16Activation dev_branch("branch", branch.bits, s.offset);
  const auto dev_gamma = tight("gamma", gamma.bits), dev_ln_w = tight("ln_weight", ln_w.bits),
             dev_ln_b = tight("ln_bias", ln_b.bits);
  const auto dev_keep = tight("keep_scale", keep);

  checks.part("layerscale + layernorm forward");
  emu::set_context(s.str() + ", layerscale + layernorm forward on selected samples");
  {
    const std::vector<float> x = random_f32(rng, s.n(), 1.f, 3.f);
    std::vector<float> out_ref(s.n()), y_ref(selected), mean_ref(rows), rstd_ref(rows);
    layerscale_residual_layernorm_forward_cpu(x.data(), branch.values.data(), gamma.values.data(),
                                              keep.data(), ln_w.values.data(), ln_b.values.data(),
                                              out_ref.data(), y_ref.data(), mean_ref.data(),
                                              rstd_ref.data(), s.B, s.T, s.C, kEps, host_slots);
    const F32Activation dev_x("x", x, s.offset), dev_out("out", s.n(), s.offset);
    const Bf16Activation dev_y("y", selected, s.offset);
    const auto dev_mean = tight<float>("mean", rows), dev_rstd = tight<float>("rstd", rows);
    FusedForwardArgs a{dev_x.get(),       dev_branch.get(),  as_bf16(dev_gamma), dev_keep.get(),
                       as_bf16(dev_ln_w), as_bf16(dev_ln_b), dev_out.get(),      dev_y.get(),
                       dev_mean.get(),    dev_rstd.get()};
    a.branch_slot = dev_branch_slot.get();
    a.normed_slot = dev_normed_slot.get();
    fused_forward(a, s.B, s.T, s.C, kLauncherGrid);
    checks.relative("out", dev_out.values(), out_ref, kF32SumTol);
    checks.relative("y", dev_y.values(), y_ref, kBf16Tol);
    checks.relative("mean", dev_mean.download(), mean_ref, kF32SumTol);
    checks.relative("rstd", dev_rstd.download(), rstd_ref, kF32SumTol);
  }

  checks.part("layerscale + layernorm backward");
  emu::set_context(s.str() + ", layerscale + layernorm backward on selected samples");
  const std::vector<float> out = random_f32(rng, s.n(), -2.f, 3.f);
  const std::vector<float> dout = random_f32(rng, s.n(), -1.f, 1.f);
  const Bf16Data dy = random_bf16(rng, selected, -1.f, 1.f);
  std::vector<float> y(s.n()), mean(rows), rstd(rows);
  layernorm_forward_cpu(out.data(), ln_w.values.data(), ln_b.values.data(), y.data(), mean.data(),
                        rstd.data(), s.rows(), s.C, kEps);
  std::vector<float> dx_ref(s.n()), dbranch_ref(selected), dgamma_ref(C), dw_ref(C), db_ref(C);
  layerscale_residual_layernorm_backward_cpu(
      dout.data(), dy.values.data(), out.data(), branch.values.data(), gamma.values.data(),
      keep.data(), ln_w.values.data(), mean.data(), rstd.data(), dx_ref.data(), dbranch_ref.data(),
      dgamma_ref.data(), dw_ref.data(), db_ref.data(), static_cast<float*>(nullptr), s.B, s.T, s.C,
      host_slots);
  const gpu::RowChunks part = gpu::row_chunks(s.rows(), s.C);
  const size_t stride = static_cast<size_t>(part.chunks) * C;
  const F32Activation dev_dout("dout", dout, s.offset), dev_out("out", out, s.offset);
  const F32Activation dev_dx("dx", s.n(), s.offset);
  const Bf16Activation dev_dy("dy", dy.bits, s.offset), dev_dbranch("dbranch", selected, s.offset);
  const auto dev_mean = tight("mean", mean), dev_rstd = tight("rstd", rstd);
  const auto workspace = tight<float>("workspace", 4 * stride);
  FusedBackwardArgs a{dev_dout.get(),      dev_dy.get(),   dev_out.get(),     dev_branch.get(),
                      as_bf16(dev_gamma),  dev_keep.get(), as_bf16(dev_ln_w), dev_mean.get(),
                      dev_rstd.get(),      dev_dx.get(),   dev_dbranch.get(), workspace.get(),
                      /*dgamma=*/true,
                      /*dln_weight=*/true,
                      /*dln_bias=*/true,
                      /*dbias=*/false};
  a.branch_slot = dev_branch_slot.get();
  a.normed_slot = dev_normed_slot.get();
  fused_backward(a, s.B, s.T, s.C);
  const std::vector<float> partials = workspace.download();
  const auto sum = [&](size_t i) {
    return column_sums(
        std::vector<float>(partials.begin() + i * stride, partials.begin() + (i + 1) * stride),
        part.chunks, s.C);
  };
  checks.relative("dx", dev_dx.values(), dx_ref, kF32SumTol);
  checks.relative("dbranch", dev_dbranch.values(), dbranch_ref, kBf16Tol);
  checks.relative("dgamma", sum(0), dgamma_ref, kF32SumTol);
  checks.relative("dln_weight", sum(1), dw_ref, kF32SumTol);
  checks.relative("dln_bias", sum(2), db_ref, kF32SumTol);
  return checks.print();
}

bool check_shape(const RowShape& s, std::mt19937_64& rng) {
  emu::ShapeChecks checks(s.str());
  check_layernorm_forward(s, rng, checks);
  check_layernorm_backward(s, rng, checks);
  check_layerscale(s, rng, checks);
  check_fused(s, rng, checks);
  return checks.print();
}

// The emulator's shuffles that no kernel here calls yet, on one block of two warps, against the
// CUDA Programming Guide's definitions written out lane by lane; true when they agree.
bool check_emulator_shuffles() {
  emu::set_context("the emulator's own check of its shuffles");
  constexpr int kShuffleThreads = 64, kResults = 5;
  const auto got = tight<int>("shuffle results", kShuffleThreads * kResults);
  int* results = got.get();
  emu::launch({"shuffles", 1, kShuffleThreads, 0}, [=] {
    const int lane = static_cast<int>(threadIdx.x % 32);
    int* r = results + threadIdx.x * kResults;
    r[0] = __shfl_down_sync(0xffffffffu, lane, 3);
    r[1] = __shfl_up_sync(0xffffffffu, lane, 2, 8);
    r[2] = __shfl_sync(0xffffffffu, 100 * lane, 31 - lane);
    r[3] = __shfl_xor_sync(0xffffffffu, lane, 16, 16);
    __syncwarp();
    float sum = static_cast<float>(lane);  // a tree sum down to lane 0: 0 + 1 + ... + 31
    for (int offset = 16; offset > 0; offset /= 2)
      sum += __shfl_down_sync(0xffffffffu, sum, offset);
    r[4] = __shfl_sync(0xffffffffu, static_cast<int>(sum), 0, 32);
  });
  const std::vector<int> results_host = got.download();
  for (int t = 0; t < kShuffleThreads; ++t) {
    const int l = t % 32;
    const int expected[kResults] = {
        l + 3 < 32 ? l + 3 : l,  // down 3: the last 3 lanes keep their own
        l % 8 >= 2 ? l - 2 : l,  // up 2 in groups of 8: each group's first 2 keep their own
        100 * (31 - l),          // any lane from any lane
        l >= 16 ? l - 16 : l,    // xor 16 in groups of 16: a later group reads itself
        31 * 32 / 2,
    };
    for (int k = 0; k < kResults; ++k)
      if (results_host[t * kResults + k] != expected[k]) {
        std::printf("FAIL the emulator's shuffles: thread %d, result %d is %d, not %d\n", t, k,
                    results_host[t * kResults + k], expected[k]);
        return false;
      }
  }
  return true;
}


}  // namespace
}  // namespace deit::kernels

int main(int argc, char** argv) {
  using namespace deit::kernels;
  const emu::TestOptions options = emu::parse_test_options(argc, argv, "layernorm_emulated");
  const bool full = options.full;
  std::mt19937_64 inputs(options.seed);

  int failed = check_emulator_shuffles() ? 0 : 1;
  std::vector<RowShape> shapes = kDefaultShapes;
  if (full) shapes.insert(shapes.end(), kGpuTestShapes.begin(), kGpuTestShapes.end());
  for (const RowShape& s : shapes) failed += check_shape(s, inputs) ? 0 : 1;
  for (const RowShape& s : kSelectedShapes) failed += check_selected(s, inputs) ? 0 : 1;

  const emu::Totals t = emu::totals();
  std::printf(
      "%d of %zu checks failed (the emulator's shuffles, every shape, then selected samples); "
      "emulated %lld blocks, %lld warp-wide instructions, %lld thread switches\n",
      failed, shapes.size() + kSelectedShapes.size() + 1, t.blocks, t.collectives, t.switches);
  return failed == 0 ? 0 : 1;
}
