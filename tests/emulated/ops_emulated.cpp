// ops_emulated: the small kernels, from the very source nvcc compiles, run on the host by the
// emulator of cuda_emulator.h and checked against the CPU twins (kernels/cpu/) the way the [gpu]
// tests (tests/test_kernels_cuda.cpp, tests/test_linear_cuda.cpp) check them on a GPU: fresh random
// inputs, every output poisoned with NaN before the launch, every element compared, nothing
// non-finite. The kernels:
//  - the casts (kernels/cuda/cast_kernels.cuh) and the elementwise add, scale by a device scalar
//    and fill (elementwise_kernels.cuh), fp32 and bf16: bit for bit, as the twins compute the same
//    fp32 arithmetic and round it the same way;
//  - exact GELU forward and backward (gelu_kernels.cuh): relative error <= 1e-2, and at every
//    bf16 x in [-13, 13] each value within 1e-2 of the twin's (the tails included);
//  - BCE with logits and the soft-target softmax cross-entropy (losses_kernels.cuh), their row
//    kernels then common_kernels.cuh's sum_to_scalar: loss <= 1e-4, dlogits <= 1e-2;
//  - patch unfold and fold, position embedding + class token forward and backward, class-token
//    select and its backward (tokens_kernels.cuh): the gathers and the fp32 x + pos bit for bit,
//    the batch sums dpos and dcls <= 1e-4;
//  - GELU's backward with the bias gradient of the layer before it (gelu_kernels.cuh's column
//    partials): dx <= 1e-2, dbias <= 1e-4 of the sums of dx as stored, and the bits the linear
//    layer's own sums give;
//  - the linear layer's bias gradient (common_kernels.cuh's column partials, then sum_partials of
//    common_kernels.cuh, on its 2-D block): <= 1e-4; and its bias add where the GEMM takes no
//    bias epilogue (linear_kernels.cuh): bit for bit;
// and the same bits again where they must be the same: every deterministic reduction on a second
// run under other schedules, in place, without the optional outputs, on fewer blocks (so that the
// grid-stride loops run). CI machines have no GPU: this is what checks an edit to these kernels
// there, including out-of-bounds accesses, missing barriers and misused shuffles, which the
// emulator turns into failures (see cuda_emulator.h).
//
// Every launch mirrors its launcher in kernels/cuda/<name>.cu (grid, block, which path: the vector
// path where the launcher takes it, the scalar one otherwise): change them together.
//
// Usage: ops_emulated [--full] [--seed N]
//   (default)  elementwise sizes 1, 13, 4096 and 8003 (aligned: the vector path with and without a
//              tail; misaligned: the scalar path), rows of 1000 classes and odd ones at batch 1
//              and above, ViT-S token shapes at 112 px and odd ones, ViT's patch sizes on small
//              images, bias gradients of ViT-Ti's width and odd ones over up to 1100 rows (more
//              than 128 chunks). About 3 s on one core of the development machine: the CTest
//              entry ops_emulated.
//   --full     adds the [gpu] tests' shapes as they are (ViT-S at 224 px, ViT-H at 160 px, the
//              ViT-S GEMMs at batch 64, 21841 classes). About 50 s.
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
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/cast.h"
#include "kernels/cuda/launch_shape.h"
#include "kernels/elementwise.h"
#include "kernels/gelu.h"
#include "kernels/linear.h"
#include "kernels/losses.h"
#include "kernels/tokens.h"
#include "tests/column_sums.h"
#include "tests/emulated/cuda_emulator.h"
#include "tests/emulated/shared_launches.h"
#include "tests/emulated/test_support.h"
// The kernels, after the emulator's stand-ins for what they use.
#include "kernels/cuda/cast_kernels.cuh"
#include "kernels/cuda/common_kernels.cuh"
#include "kernels/cuda/elementwise_kernels.cuh"
#include "kernels/cuda/gelu_kernels.cuh"
#include "kernels/cuda/linear_kernels.cuh"
#include "kernels/cuda/losses_kernels.cuh"
#include "kernels/cuda/tokens_kernels.cuh"

namespace deit::kernels {
namespace {

using emu::Bf16Data;
using emu::kernel_name;
using emu::launch_elementwise;
using emu::random_f32;
using emu::random_bf16;
using emu::round_to_bf16;
using emu::RowShape;
using emu::sum_partials;
using emu::sum_to_scalar;
using emu::tight;
using emu::to_float;
using emu::with_width;

// The [gpu] tests' tolerances (tests/test_kernels_cuda.cpp says why these values); 0 where the
// kernel and the twin compute the same fp32 operations (the [gpu] tests allow 1e-6 or 1e-2 there).
constexpr double kBf16Tol = 1e-2;
constexpr double kF32SumTol = 1e-4;
constexpr double kExact = 0;
constexpr unsigned kFewBlocks = 3;  // a grid small enough that every thread strides

// ---------------------------------------------------------------------------------------------
// Buffers.

// n elements of T in global memory, `offset` elements into a buffer that starts 16-byte aligned,
// as cudaMalloc's do: offset 0 lets the launchers take their vector paths (and a size that is a
// multiple of 16 bytes ends right at the guard page, so that a read past the end faults), offset 1
// sends them down the scalar ones.
template <typename T>
class Placed {
 public:
  Placed(const std::string& name, size_t n, size_t offset)
      : buffer_(name, n + offset), n_(n), offset_(offset) {}
  Placed(const std::string& name, const std::vector<T>& host, size_t offset)
      : Placed(name, host.size(), offset) {
    std::memcpy(get(), host.data(), host.size() * sizeof(T));
  }
  T* get() const { return buffer_.get() + offset_; }
  std::vector<T> download() const { return std::vector<T>(get(), get() + n_); }

 private:
  emu::DeviceBuffer<T> buffer_;
  size_t n_, offset_;
};

bf16* dev(const Placed<bf16_bits>& b) { return reinterpret_cast<bf16*>(b.get()); }
bf16* dev(const emu::DeviceBuffer<bf16_bits>& b) { return reinterpret_cast<bf16*>(b.get()); }

std::vector<float> values(const Placed<bf16_bits>& b) { return to_float(b.download()); }

// The twin's fp32 results as the kernel stores them in bf16 (round to nearest even).
std::vector<float> rounded(const std::vector<float>& v) { return round_to_bf16(v).values; }

// ---------------------------------------------------------------------------------------------
// The launches of the .cu launchers (change them together).

// tokens.cu's pos_embed_cls_backward_cuda (C > 0; dx, dpos and dcls may be nullptr); a grid
// capped at max_grid makes every thread walk several columns.
void pos_embed_cls_backward(const float* dout, bf16* dx, float* dpos, float* dcls, int64_t B,
                            int64_t N, int64_t C, unsigned max_grid = UINT_MAX) {
  const int64_t cols = (N + 1) * C;
  with_width(C % gpu::kVec == 0 && gpu::aligned16(dout, dx, dpos, dcls), [&](auto width) {
    constexpr int V = decltype(width)::value;
    const unsigned grid = std::min(gpu::grid_for(cols / V, kPosVectors), max_grid);
    emu::launch(
        {kernel_name("pos_embed_cls_backward_kernel", V), grid, dim3(kPosVectors, kPosLanes), 0},
        [=] { pos_embed_cls_backward_kernel<V>(dout, dx, dpos, dcls, B, N, C); });
  });
}

// linear.cu's bias add after a GEMM without the bias epilogue: y (M, N) += bias in place.
void add_bias_rows(bf16* y, const bf16* bias, int64_t M, int64_t N) {
  launch_elementwise("AddBiasRowsOp", AddBiasRowsOp{y, bias, N}, M * N,
                     N % gpu::kVec == 0 && gpu::aligned16(y, bias));
}

// linear.cu's column_sums: per tile of at most max_width columns (the launcher's is
// gpu::kMaxRowWidth; a test passes less to reach the tiling at widths the emulator runs fast), the
// per-chunk partials of dy (M, N), then sum_partials into dbias.
void bias_gradient(const bf16* dy, float* partials, float* dbias, int64_t M, int64_t N,
                   int64_t max_width = gpu::kMaxRowWidth) {
  for (int64_t c0 = 0; c0 < N; c0 += max_width) {
    const int64_t C = std::min(max_width, N - c0);
    const gpu::RowChunks part = gpu::row_chunks(M, C);
    emu::column_partials(dy + c0, M, C, N, partials, part);
    sum_partials(partials, part.chunks, C, dbias + c0);
  }
}

// gelu.cu's gelu_backward_bias_grad_cuda, per tile of at most max_width columns as bias_gradient
// above: dx of dy and x (M, N), its per-chunk partials, then sum_partials into dbias.
void gelu_bias_gradient(const bf16* dy, const bf16* x, bf16* dx, float* partials, float* dbias,
                        int64_t M, int64_t N, int64_t max_width) {
  const bool vectors = N % gpu::kVec == 0 && gpu::aligned16(dy, x, dx, partials);
  for (int64_t c0 = 0; c0 < N; c0 += max_width) {
    const int64_t C = std::min(max_width, N - c0);
    const gpu::RowChunks part = gpu::row_chunks(M, C);
    const auto threads = static_cast<unsigned>(gpu::row_threads(C));
    with_width(vectors, [&](auto width) {
      constexpr int V = decltype(width)::value;
      emu::launch({kernel_name("gelu_backward_column_partials_kernel", V),
                   static_cast<unsigned>(part.chunks), threads, 0},
                  [=] {
                    gelu_backward_column_partials_kernel<V>(dy + c0, x + c0, dx + c0, partials, M,
                                                            C, N, part.rows_per_chunk);
                  });
    });
    sum_partials(partials, part.chunks, C, dbias + c0);
  }
}

// losses.cu's run_loss: the row kernel on min(B, 65536) blocks (fewer when asked: the rows are
// grid-strided), then the mean of the row losses.
using RowLossKernel = void (*)(const bf16*, const float*, bf16*, float*, int64_t, int64_t, float);
void run_loss(const char* kernel, RowLossKernel rows, const bf16* logits, const float* targets,
              bf16* dlogits, float* row_loss, float* loss, int64_t B, int64_t K, float scale,
              unsigned max_grid) {
  const auto grid = static_cast<unsigned>(std::min<int64_t>({B, gpu::kMaxBlocks, max_grid}));
  emu::launch({kernel, grid, gpu::kThreads, 0},
              [=] { rows(logits, targets, dlogits, row_loss, B, K, scale); });
  sum_to_scalar(row_loss, B, scale, loss);
}

// ---------------------------------------------------------------------------------------------
// Elementwise kernels: casts, GELU, add, scale, fill over n elements, offset 0 or 1.

struct Elementwise {
  size_t n, offset;
  std::string str() const {
    return "n=" + std::to_string(n) + (offset != 0 ? " offset=" + std::to_string(offset) : "");
  }
};

// NaN bf16 bits as one value: the kernel and the twin each keep NaN a NaN, not the same one.
std::vector<bf16_bits> one_nan(std::vector<bf16_bits> bits) {
  for (bf16_bits& b : bits)
    if (std::isnan(bf16_to_float(b))) b = 0x7FC0;
  return bits;
}

void check_casts(const Elementwise& s, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  checks.part("casts");
  emu::set_context(s.str() + ", cast fp32 -> bf16");
  const auto n = static_cast<int64_t>(s.n);
  std::vector<float> x = random_f32(rng, s.n, -3, 3);
  if (s.n >= 8) {  // specials: rounding to infinity, an infinity, NaN, a denormal
    x[0] = std::numeric_limits<float>::max();
    x[1] = -std::numeric_limits<float>::infinity();
    x[2] = std::numeric_limits<float>::quiet_NaN();
    x[3] = 1e-40f;
  }
  std::vector<bf16_bits> to_bf16_ref(s.n);
  cast_f32_to_bf16_cpu(x.data(), to_bf16_ref.data(), n);
  const Placed<float> dev_x("x", x, s.offset);
  const Placed<bf16_bits> dev_y("y", s.n, s.offset);
  launch_elementwise("CastOp<float, bf16>", CastOp<float, bf16>{dev_x.get(), dev(dev_y)}, n,
                     gpu::aligned16(dev_x.get(), dev_y.get()));
  checks.same_bits("fp32 -> bf16", one_nan(dev_y.download()), one_nan(to_bf16_ref));

  emu::set_context(s.str() + ", cast bf16 -> fp32");
  const Bf16Data b = random_bf16(rng, s.n, -3, 3);
  std::vector<float> to_f32_ref(s.n);
  cast_bf16_to_f32_cpu(b.bits.data(), to_f32_ref.data(), n);
  const Placed<bf16_bits> dev_b("x", b.bits, s.offset);
  const Placed<float> dev_f("y", s.n, s.offset);
  launch_elementwise("CastOp<bf16, float>", CastOp<bf16, float>{dev(dev_b), dev_f.get()}, n,
                     gpu::aligned16(dev_b.get(), dev_f.get()));
  checks.absolute("bf16 -> fp32", dev_f.download(), to_f32_ref, kExact);
}

void check_gelu(const Elementwise& s, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  checks.part("gelu");
  emu::set_context(s.str() + ", gelu forward and backward");
  const auto n = static_cast<int64_t>(s.n);
  const Bf16Data x = random_bf16(rng, s.n, -4, 4), dy = random_bf16(rng, s.n, -1, 1);
  std::vector<float> y_ref(s.n), dx_ref(s.n);
  gelu_forward_cpu(x.values.data(), y_ref.data(), n);
  gelu_backward_cpu(dy.values.data(), x.values.data(), dx_ref.data(), n);

  const Placed<bf16_bits> dev_x("x", x.bits, s.offset), dev_dy("dy", dy.bits, s.offset);
  const Placed<bf16_bits> dev_y("y", s.n, s.offset), dev_dx("dx", s.n, s.offset);
  launch_elementwise("GeluForwardOp", GeluForwardOp{dev(dev_x), dev(dev_y)}, n,
                     gpu::aligned16(dev_x.get(), dev_y.get()));
  launch_elementwise("GeluBackwardOp", GeluBackwardOp{dev(dev_dy), dev(dev_x), dev(dev_dx)}, n,
                     gpu::aligned16(dev_dy.get(), dev_x.get(), dev_dx.get()));
  checks.relative("y", values(dev_y), y_ref, kBf16Tol);
  checks.relative("dx", values(dev_dx), dx_ref, kBf16Tol);

  emu::set_context(s.str() + ", gelu forward and backward in place");
  const Placed<bf16_bits> dev_x_in_place("x (y in place)", x.bits, s.offset);
  const Placed<bf16_bits> dev_dy_in_place("dy (dx in place)", dy.bits, s.offset);
  launch_elementwise(
      "GeluBackwardOp",
      GeluBackwardOp{dev(dev_dy_in_place), dev(dev_x_in_place), dev(dev_dy_in_place)}, n,
      gpu::aligned16(dev_dy_in_place.get(), dev_x_in_place.get()));
  launch_elementwise("GeluForwardOp", GeluForwardOp{dev(dev_x_in_place), dev(dev_x_in_place)}, n,
                     gpu::aligned16(dev_x_in_place.get()));
  checks.same_bits("y in place", dev_x_in_place.download(), dev_y.download());
  checks.same_bits("dx in place", dev_dy_in_place.download(), dev_dx.download());
}

// add, scale by a device scalar and fill for T = float or bf16: a, b uniform in [-2, 2].
template <typename T>
void check_add_scale_fill(const Elementwise& s, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  constexpr bool kF32 = std::is_same_v<T, float>;
  using Bits = std::conditional_t<kF32, float, bf16_bits>;
  const std::string type = kF32 ? "f32" : "bf16";
  checks.part("add, scale, fill " + type);
  const auto n = static_cast<int64_t>(s.n);
  const auto as_t = [](const Placed<Bits>& p) { return reinterpret_cast<T*>(p.get()); };
  const auto got = [](const Placed<Bits>& p) {
    if constexpr (kF32)
      return p.download();
    else
      return to_float(p.download());
  };
  // The twin's results as stored in T.
  const auto stored = [](const std::vector<float>& v) { return kF32 ? v : rounded(v); };
  std::vector<Bits> a_bits, b_bits;
  std::vector<float> a, b;
  if constexpr (kF32) {
    a = a_bits = random_f32(rng, s.n, -2, 2);
    b = b_bits = random_f32(rng, s.n, -2, 2);
  } else {
    Bf16Data da = random_bf16(rng, s.n, -2, 2), db = random_bf16(rng, s.n, -2, 2);
    a_bits = da.bits, a = da.values, b_bits = db.bits, b = db.values;
  }
  const float factor = random_f32(rng, 1, -2, 2)[0];
  std::vector<float> sum_ref(s.n), scaled_ref(s.n);
  add_cpu(a.data(), b.data(), sum_ref.data(), n);
  scale_cpu(a.data(), factor, scaled_ref.data(), n);

  const Placed<Bits> dev_a("a", a_bits, s.offset), dev_b("b", b_bits, s.offset);
  const auto dev_factor = tight("s", std::vector<float>{factor});
  const auto add = [&](const Placed<Bits>& out, unsigned max_grid) {
    launch_elementwise(kF32 ? "AddOp<float>" : "AddOp<bf16>",
                       AddOp<T>{as_t(dev_a), as_t(dev_b), as_t(out)}, n,
                       gpu::aligned16(dev_a.get(), dev_b.get(), out.get()), max_grid);
  };
  const auto scale = [&](const Placed<Bits>& x, const Placed<Bits>& out) {
    launch_elementwise(kF32 ? "ScaleByScalarOp<float>" : "ScaleByScalarOp<bf16>",
                       ScaleByScalarOp<T>{as_t(x), dev_factor.get(), as_t(out)}, n,
                       gpu::aligned16(x.get(), out.get()));
  };
  emu::set_context(s.str() + ", " + type + " add");
  const Placed<Bits> dev_sum("a + b", s.n, s.offset);
  add(dev_sum, UINT_MAX);
  checks.absolute("add", got(dev_sum), stored(sum_ref), kExact);
  emu::set_context(s.str() + ", " + type + " add on " + std::to_string(kFewBlocks) + " blocks");
  const Placed<Bits> dev_sum_few_blocks("a + b (few blocks)", s.n, s.offset);
  add(dev_sum_few_blocks, kFewBlocks);
  checks.same_bits("add on few blocks", dev_sum_few_blocks.download(), dev_sum.download());

  emu::set_context(s.str() + ", " + type + " scale");
  const Placed<Bits> dev_scaled("a * s", s.n, s.offset);
  scale(dev_a, dev_scaled);
  checks.absolute("scale", got(dev_scaled), stored(scaled_ref), kExact);
  emu::set_context(s.str() + ", " + type + " scale in place");
  const Placed<Bits> dev_a_in_place("a (a * s in place)", a_bits, s.offset);
  scale(dev_a_in_place, dev_a_in_place);
  checks.same_bits("scale in place", dev_a_in_place.download(), dev_scaled.download());

  emu::set_context(s.str() + ", " + type + " fill");
  const Placed<Bits> dev_filled("filled", s.n, s.offset);
  launch_elementwise(kF32 ? "FillOp<float>" : "FillOp<bf16>", FillOp<T>{as_t(dev_filled), factor},
                     n, gpu::aligned16(dev_filled.get()));
  checks.absolute("fill", got(dev_filled), stored(std::vector<float>(s.n, factor)), kExact);
}

// GELU at every bf16 value of x in [-13, 13], dy = 1: each output within bf16 rounding of the CPU
// twin's, relative to it (the backward also within 1e-5 absolute, as it crosses 0 near x = -0.75),
// the negative tail included, where GELU is tiny but no zero where it is a bf16 normal (down to
// x = -13, where it is about -8e-38).
// v in the fewest digits that name it ("-8.1e-38", not "-0.000000").
std::string shortest(float v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", v);
  return text;
}

bool check_gelu_every_bf16() {
  emu::ShapeChecks checks("every bf16 x in [-13, 13]");
  checks.part("gelu");
  emu::set_context("gelu forward and backward at every bf16 x in [-13, 13]");
  std::vector<bf16_bits> x_bits;
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float x = bf16_to_float(static_cast<bf16_bits>(bits));
    if (std::fabs(x) <= 13.f) x_bits.push_back(static_cast<bf16_bits>(bits));
  }
  const auto n = static_cast<int64_t>(x_bits.size());
  const std::vector<float> x = to_float(x_bits), ones(x_bits.size(), 1.f);
  std::vector<float> y_ref(x.size()), dx_ref(x.size());
  gelu_forward_cpu(x.data(), y_ref.data(), n);
  gelu_backward_cpu(ones.data(), x.data(), dx_ref.data(), n);

  const std::vector<bf16_bits> one_bits(x_bits.size(), float_to_bf16(1.f));
  const Placed<bf16_bits> dev_x("x", x_bits, 0), dev_dy("dy", one_bits, 0);
  const Placed<bf16_bits> dev_y("y", x_bits.size(), 0), dev_dx("dx", x_bits.size(), 0);
  launch_elementwise("GeluForwardOp", GeluForwardOp{dev(dev_x), dev(dev_y)}, n,
                     gpu::aligned16(dev_x.get(), dev_y.get()));
  launch_elementwise("GeluBackwardOp", GeluBackwardOp{dev(dev_dy), dev(dev_x), dev(dev_dx)}, n,
                     gpu::aligned16(dev_dy.get(), dev_x.get(), dev_dx.get()));
  const std::vector<float> y = values(dev_y), dx = values(dev_dx);
  // The first x where `close` fails for got against ref, named in the failure.
  const auto first_miss = [&](const char* what, const std::vector<float>& got,
                              const std::vector<float>& ref, auto close) {
    for (size_t i = 0; i < x.size(); ++i)
      if (!close(got[i], ref[i]))
        return checks.expect(std::string(what) + " at x = " + shortest(x[i]) + ": " +
                                 shortest(got[i]) + " for " + shortest(ref[i]),
                             false);
  };
  first_miss("y", y, y_ref, [](float got, float ref) {
    // Under the smallest normal, bf16's subnormals hold too few digits to judge.
    return std::fabs(ref) < std::numeric_limits<float>::min() ||
           (std::fabs(got - ref) <= 1e-2f * std::fabs(ref) && got != 0.f);
  });
  first_miss("dx", dx, dx_ref, [](float got, float ref) {
    return std::fabs(got - ref) <= 1e-2f * std::fabs(ref) + 1e-5f;
  });
  return checks.print();
}

// One element; a vector and a tail; 1000 vectors over 4 blocks and a tail; a size that ends at
// the guard page. --full: the [gpu] tests' sizes (ViT-S activations and fc1 outputs at batch 4).
const std::vector<size_t> kDefaultSizes = {1, 13, 8003, 4096};
const std::vector<size_t> kFullSizes = {7, 8, 4099, 4 * 197 * 384, 4 * 197 * 1536};

bool check_elementwise(const Elementwise& s, std::mt19937_64& rng) {
  emu::ShapeChecks checks(s.str());
  check_casts(s, rng, checks);
  check_gelu(s, rng, checks);
  check_add_scale_fill<float>(s, rng, checks);
  check_add_scale_fill<bf16>(s, rng, checks);
  return checks.print();
}

// ---------------------------------------------------------------------------------------------
// Losses: (B, K) logits uniform in [-8, 8], soft targets in [0, 1], every third one 0 or 1.

struct LossShape {
  int64_t B, K;
  std::string str() const { return "B=" + std::to_string(B) + " K=" + std::to_string(K); }
};

// The [gpu] test's shapes; --full adds 21841 classes (ImageNet-21k).
const std::vector<LossShape> kDefaultLossShapes = {{4, 1000}, {1, 1000}, {3, 21}, {5, 1}, {2, 997}};
const std::vector<LossShape> kFullLossShapes = {{2, 21841}, {64, 1000}};

using CpuLoss = void (*)(const float*, const float*, float*, float*, int64_t, int64_t);

struct LossKind {
  const char* name;
  const char* kernel;
  RowLossKernel rows;
  CpuLoss twin;
  bool mean_over_classes;  // BCE averages over B * K, the cross-entropy over B
};

void check_loss(const LossKind& kind, const LossShape& s, std::mt19937_64& rng,
                emu::ShapeChecks& checks) {
  checks.part(kind.name);
  emu::set_context(s.str() + ", " + kind.name);
  const auto n = static_cast<size_t>(s.B * s.K);
  const Bf16Data logits = random_bf16(rng, n, -8, 8);
  std::vector<float> targets = random_f32(rng, n, 0, 1);
  for (size_t i = 0; i < n; i += 3) targets[i] = targets[i] < 0.5f ? 0.f : 1.f;
  float loss_ref = 0;
  std::vector<float> dlogits_ref(n);
  kind.twin(logits.values.data(), targets.data(), &loss_ref, dlogits_ref.data(), s.B, s.K);
  const double count = kind.mean_over_classes ? static_cast<double>(s.B) * s.K : s.B;
  const auto scale = static_cast<float>(1.0 / count);

  const auto dev_logits = tight("logits", logits.bits);
  const auto dev_targets = tight("targets", targets);
  struct Result {
    std::vector<bf16_bits> dlogits;
    std::vector<float> row_loss, loss;
  };
  const auto run = [&](const std::string& what, bool dlogits, unsigned max_grid) {
    emu::set_context(s.str() + ", " + kind.name + ", " + what);
    const auto dev_dlogits = tight<bf16_bits>("dlogits", n);
    const auto dev_row_loss = tight<float>("row losses", static_cast<size_t>(s.B));
    const auto dev_loss = tight<float>("loss", 1);
    run_loss(kind.kernel, kind.rows, dev(dev_logits), dev_targets.get(),
             dlogits ? dev(dev_dlogits) : nullptr, dev_row_loss.get(), dev_loss.get(), s.B, s.K,
             scale, max_grid);
    return Result{dev_dlogits.download(), dev_row_loss.download(), dev_loss.download()};
  };
  const Result first = run("first run", true, UINT_MAX);
  checks.relative("loss", first.loss, {loss_ref}, kF32SumTol);
  checks.relative("dlogits", to_float(first.dlogits), dlogits_ref, kBf16Tol);
  const Result second = run("without dlogits", false, UINT_MAX);
  checks.same_bits("row losses without dlogits", second.row_loss, first.row_loss);
  checks.same_bits("loss without dlogits", second.loss, first.loss);
  const Result one_block = run("rows on one block", true, 1);
  checks.same_bits("row losses on one block", one_block.row_loss, first.row_loss);
  checks.same_bits("loss on one block", one_block.loss, first.loss);
  checks.same_bits("dlogits on one block", one_block.dlogits, first.dlogits);
}

bool check_losses(const LossShape& s, std::mt19937_64& rng) {
  emu::ShapeChecks checks(s.str());
  check_loss(
      {"bce with logits", "bce_rows_kernel", bce_rows_kernel, bce_with_logits_cpu<float>, true}, s,
      rng, checks);
  check_loss({"softmax cross-entropy", "softmax_cross_entropy_rows_kernel",
              softmax_cross_entropy_rows_kernel, softmax_cross_entropy_cpu<float>, false},
             s, rng, checks);
  return checks.print();
}

// ---------------------------------------------------------------------------------------------
// Tokens: (B, T, C) activations (emu::RowShape).

// ViT-S at 112 px (49 patches, C = 384); batch 1 with a warp of idle lanes (C = 200); C % 8 != 0
// (the scalar path); misaligned (the scalar path at a vector width); tiny; a batch of 37 (the
// position embedding's backward sums it in 16 sample lanes: 3 samples in some, 2 in others).
const std::vector<RowShape> kDefaultRowShapes = {
    {2, 49, 384, 0}, {1, 65, 200, 0}, {2, 37, 196, 0},
    {1, 33, 384, 1}, {3, 7, 5, 0},    {37, 5, 64, 0},
};
// --full: the [gpu] tests' row shapes as they are.
const std::vector<RowShape> kFullRowShapes = {
    {4, 197, 384, 0},
    {2, 145, 1280, 0},
    {3, 101, 768, 0},
    {2, 257, 196, 0},
};

// Here T is the number of patch tokens N; the output has N + 1 tokens.
void check_pos_embed_cls(const RowShape& s, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  checks.part("pos_embed_cls forward");
  emu::set_context(s.str() + ", pos_embed_cls forward");
  const int64_t N = s.T;
  const size_t C = static_cast<size_t>(s.C), n_out = static_cast<size_t>(s.B * (N + 1) * s.C);
  const size_t n_pos = static_cast<size_t>(N) * C;
  // x is the bf16 patch embedding; pos, cls (fp32 master weights), out and dout (the residual
  // stream and its gradient) are fp32, not bf16-rounded, so a kernel reading them as bf16 fails.
  const Bf16Data x = random_bf16(rng, s.n(), -2, 2);
  const std::vector<float> pos = random_f32(rng, n_pos, -0.1f, 0.1f);
  const std::vector<float> cls = random_f32(rng, C, -0.1f, 0.1f);
  const std::vector<float> dout = random_f32(rng, n_out, -1, 1);
  std::vector<float> out_ref(n_out), dx_ref(s.n()), dpos_ref(n_pos), dcls_ref(C);
  pos_embed_cls_forward_cpu(x.values.data(), pos.data(), cls.data(), out_ref.data(), s.B, N, s.C);
  pos_embed_cls_backward_cpu(dout.data(), dx_ref.data(), dpos_ref.data(), dcls_ref.data(), s.B, N,
                             s.C);

  const Placed<bf16_bits> dev_x("x", x.bits, s.offset);
  const Placed<float> dev_out("out", n_out, s.offset);
  const auto dev_pos = tight("pos", pos), dev_cls = tight("cls", cls);
  const PosEmbedClsForwardOp op{dev(dev_x), dev_pos.get(), dev_cls.get(), dev_out.get(), N, s.C};
  launch_elementwise("PosEmbedClsForwardOp", op, s.B * (N + 1) * s.C,
                     s.C % gpu::kVec == 0 &&
                         gpu::aligned16(dev_x.get(), dev_pos.get(), dev_cls.get(), dev_out.get()));
  checks.absolute("out", dev_out.download(), out_ref, kExact);  // x + pos in fp32, as the twin

  checks.part("pos_embed_cls backward");
  const Placed<float> dev_dout("dout", dout, s.offset);
  struct Result {
    std::vector<bf16_bits> dx;
    std::vector<float> dpos, dcls;
  };
  const auto run = [&](const std::string& what, bool dx, bool dpos, bool dcls,
                       unsigned max_grid = UINT_MAX) {
    emu::set_context(s.str() + ", pos_embed_cls backward, " + what);
    const Placed<bf16_bits> dev_dx("dx", s.n(), s.offset);
    const auto dev_dpos = tight<float>("dpos", n_pos), dev_dcls = tight<float>("dcls", C);
    pos_embed_cls_backward(dev_dout.get(), dx ? dev(dev_dx) : nullptr,
                           dpos ? dev_dpos.get() : nullptr, dcls ? dev_dcls.get() : nullptr, s.B, N,
                           s.C, max_grid);
    return Result{dev_dx.download(), dev_dpos.download(), dev_dcls.download()};
  };
  const Result first = run("first run", true, true, true);
  checks.absolute("dx", to_float(first.dx), rounded(dx_ref), kExact);  // dx is stored in bf16
  checks.relative("dpos", first.dpos, dpos_ref, kF32SumTol);
  checks.relative("dcls", first.dcls, dcls_ref, kF32SumTol);
  const Result second = run("second run", true, true, true);
  checks.same_bits("dpos, second run", second.dpos, first.dpos);
  checks.same_bits("dcls, second run", second.dcls, first.dcls);
  const Result few_blocks =
      run("on " + std::to_string(kFewBlocks) + " blocks", true, true, true, kFewBlocks);
  checks.same_bits("dx on few blocks", few_blocks.dx, first.dx);
  checks.same_bits("dpos on few blocks", few_blocks.dpos, first.dpos);
  checks.same_bits("dcls on few blocks", few_blocks.dcls, first.dcls);
  checks.same_bits("dpos alone", run("dpos alone", false, true, false).dpos, first.dpos);
  checks.same_bits("dcls alone", run("dcls alone", false, false, true).dcls, first.dcls);
  checks.same_bits("dx alone", run("dx alone", true, false, false).dx, first.dx);
}

void check_cls_select(const RowShape& s, std::mt19937_64& rng, emu::ShapeChecks& checks) {
  checks.part("cls_select");
  emu::set_context(s.str() + ", cls_select forward");
  const size_t n_cls = static_cast<size_t>(s.B * s.C);
  // fp32 both ways (the residual stream and its gradient), not bf16-rounded.
  const std::vector<float> x = random_f32(rng, s.n(), -2, 2);
  const std::vector<float> dout = random_f32(rng, n_cls, -1, 1);
  std::vector<float> out_ref(n_cls), dx_ref(s.n());
  cls_select_forward_cpu(x.data(), out_ref.data(), s.B, s.T, s.C);
  cls_select_backward_cpu(dout.data(), dx_ref.data(), s.B, s.T, s.C);

  const Placed<float> dev_x("x", x, s.offset), dev_out("out", n_cls, s.offset);
  launch_elementwise("ClsSelectForwardOp", ClsSelectForwardOp{dev_x.get(), dev_out.get(), s.T, s.C},
                     s.B * s.C, s.C % gpu::kVec == 0 && gpu::aligned16(dev_x.get(), dev_out.get()));
  checks.absolute("out", dev_out.download(), out_ref, kExact);

  emu::set_context(s.str() + ", cls_select backward");
  const Placed<float> dev_dout("dout", dout, s.offset), dev_dx("dx", s.n(), s.offset);
  launch_elementwise("ClsSelectBackwardOp",
                     ClsSelectBackwardOp{dev_dout.get(), dev_dx.get(), s.T, s.C}, s.B * s.T * s.C,
                     s.C % gpu::kVec == 0 && gpu::aligned16(dev_dout.get(), dev_dx.get()));
  checks.absolute("dx", dev_dx.download(), dx_ref, kExact);
}

bool check_tokens(const RowShape& s, std::mt19937_64& rng) {
  emu::ShapeChecks checks(s.str());
  check_pos_embed_cls(s, rng, checks);
  check_cls_select(s, rng, checks);
  return checks.print();
}

// Patch unfold (fp32 image -> bf16 patches) and fold (bf16 -> fp32 image gradient), the outputs
// and inputs `offset` elements into their buffers.
struct ImageShape {
  int64_t B, Cin, H, W, P;
  size_t offset;
  std::string str() const {
    return "B=" + std::to_string(B) + " Cin=" + std::to_string(Cin) + " H=" + std::to_string(H) +
           " W=" + std::to_string(W) + " P=" + std::to_string(P) +
           (offset != 0 ? " offset=" + std::to_string(offset) : "");
  }
};

// ViT's patch 16 on a small image; patches of 8 with margins; of 4 over odd sizes (a patch of two
// vectors; image vectors that span rows, planes and samples); of 1 (2-element patches: a vector
// spans 4 of them, and two samples); each aligned (the vector path) and misaligned (the scalar
// path).
const std::vector<ImageShape> kDefaultImageShapes = {
    {1, 3, 64, 48, 16, 0}, {1, 3, 35, 33, 8, 0}, {3, 1, 17, 19, 4, 0}, {2, 2, 5, 5, 1, 0},
    {1, 3, 64, 48, 16, 1}, {1, 3, 35, 33, 8, 1}, {3, 1, 17, 19, 4, 1}, {2, 2, 5, 5, 1, 1},
};
// --full: the [gpu] test's ViT shapes as they are.
const std::vector<ImageShape> kFullImageShapes = {{2, 3, 224, 224, 16, 0}, {1, 3, 160, 160, 14, 0}};

bool check_patches(const ImageShape& s, std::mt19937_64& rng) {
  emu::ShapeChecks checks(s.str());
  checks.part("patch unfold and fold");
  emu::set_context(s.str() + ", patch unfold");
  const PatchGeometry g(s.Cin, s.H, s.W, s.P);
  const int64_t n_image = s.B * s.Cin * s.H * s.W, n_patches = s.B * g.patches * g.patch_len;
  const std::vector<float> image = random_f32(rng, static_cast<size_t>(n_image), -2, 2);
  const Bf16Data dpatches = random_bf16(rng, static_cast<size_t>(n_patches), -1, 1);
  std::vector<float> patches_ref(static_cast<size_t>(n_patches));
  std::vector<float> dimage_ref(static_cast<size_t>(n_image));
  patch_unfold_cpu(image.data(), patches_ref.data(), s.B, s.Cin, s.H, s.W, s.P);
  patch_fold_cpu(dpatches.values.data(), dimage_ref.data(), s.B, s.Cin, s.H, s.W, s.P);

  const Placed<float> dev_image("image", image, s.offset);
  const Placed<bf16_bits> dev_patches("patches", static_cast<size_t>(n_patches), s.offset);
  launch_elementwise("PatchUnfoldOp", PatchUnfoldOp::make(dev_image.get(), dev(dev_patches), g),
                     n_patches, gpu::aligned16(dev_patches.get()));
  checks.absolute("patches", values(dev_patches), rounded(patches_ref), kExact);

  emu::set_context(s.str() + ", patch fold");
  const Placed<bf16_bits> dev_dpatches("dpatches", dpatches.bits, s.offset);
  const Placed<float> dev_dimage("dimage", static_cast<size_t>(n_image), s.offset);
  launch_elementwise("PatchFoldOp", PatchFoldOp{dev(dev_dpatches), dev_dimage.get(), g}, n_image,
                     gpu::aligned16(dev_dimage.get()));
  checks.absolute("dimage", dev_dimage.download(), dimage_ref, kExact);
  return checks.print();
}

// ---------------------------------------------------------------------------------------------
// The linear layer's bias gradient: dbias (N) = column sums of dy (M, N), dy uniform in [-1, 1].

struct BiasShape {
  int64_t M, N;
  size_t offset;
  int64_t max_width = gpu::kMaxRowWidth;  // of a column tile
  std::string str() const {
    return "M=" + std::to_string(M) + " N=" + std::to_string(N) +
           (offset != 0 ? " offset=" + std::to_string(offset) : "") +
           (max_width < N ? " in tiles of " + std::to_string(max_width) : "");
  }
};

// ViT-Ti's width over one image's tokens (24 of 32 threads own columns); one row; N % 8 != 0
// (the scalar path); over 128 chunks of rows (sum_partials' lanes loop twice); misaligned dy.
// Every 8 columns are a block of 1024 threads in sum_partials, the emulator's slowest launch:
// the ViT-S widths are in --full. Layers wider than 8192 (an ImageNet-21k head) are summed in
// column tiles; narrow tiles reach that loop here, on both paths and with a short last tile.
const std::vector<BiasShape> kDefaultBiasShapes = {
    {197, 192, 0}, {1, 64, 0},     {7, 5, 0},        {197, 37, 0},    {33, 91, 0},
    {1100, 40, 0}, {33, 96, 1},    {33, 200, 0, 64}, {9, 91, 0, 40},
};
// --full: ViT-S widths (384, 1152, the 1000-class head) and the [gpu] test's shapes as they are
// (the ViT-S GEMMs at batch 64).
const std::vector<BiasShape> kFullBiasShapes = {
    {197, 384, 0},       {64, 1000, 0},       {1, 1152, 0},  {7, 384, 0},  {33, 191, 0},
    {64 * 197, 1152, 0}, {64 * 197, 1536, 0}, {197, 100, 0}, {33, 385, 0}, {3, 8200, 0},
};

bool check_bias_gradient(const BiasShape& s, std::mt19937_64& rng) {
  emu::ShapeChecks checks(s.str());
  const auto N = static_cast<size_t>(s.N);
  // The forward's bias add first: the twin's fp32 sums rounded to bf16 as the kernel stores them.
  checks.part("bias add");
  emu::set_context(s.str() + ", bias add");
  const Bf16Data y = random_bf16(rng, static_cast<size_t>(s.M) * N, -2, 2);
  const Bf16Data bias = random_bf16(rng, N, -1, 1);
  std::vector<float> y_ref(y.values.size());
  for (size_t i = 0; i < y_ref.size(); ++i) y_ref[i] = y.values[i] + bias.values[i % N];
  const Placed<bf16_bits> dev_y("y", y.bits, s.offset);
  const auto dev_bias = tight("bias", bias.bits);
  add_bias_rows(dev(dev_y), dev(dev_bias), s.M, s.N);
  checks.absolute("y + bias", values(dev_y), rounded(y_ref), kExact);

  checks.part("bias gradient");
  const Bf16Data dy = random_bf16(rng, static_cast<size_t>(s.M) * N, -1, 1);
  std::vector<float> dbias_ref(N);
  linear_backward_cpu<float>(dy.values.data(), nullptr, nullptr, nullptr, nullptr, dbias_ref.data(),
                             s.M, 1, s.N);
  size_t partials_size = 0;  // the largest tile's
  for (int64_t c0 = 0; c0 < s.N; c0 += s.max_width) {
    const int64_t width = std::min(s.max_width, s.N - c0);
    partials_size = std::max(partials_size,
                             static_cast<size_t>(gpu::row_chunks(s.M, width).chunks * width));
  }
  const Placed<bf16_bits> dev_dy("dy", dy.bits, s.offset);
  struct Result {
    std::vector<float> partials, dbias;
  };
  const auto run = [&](const char* what) {
    emu::set_context(s.str() + ", bias gradient, " + what);
    const auto partials = tight<float>("partials", partials_size);
    const auto dbias = tight<float>("dbias", N);
    bias_gradient(dev(dev_dy), partials.get(), dbias.get(), s.M, s.N, s.max_width);
    return Result{partials.download(), dbias.download()};
  };
  const Result first = run("first run");
  checks.relative("dbias", first.dbias, dbias_ref, kF32SumTol);
  const Result second = run("second run");
  checks.same_bits("partials, second run", second.partials, first.partials);
  checks.same_bits("dbias, second run", second.dbias, first.dbias);

  // GELU's backward with the bias gradient of the layer before it (fc1): dx within bf16 rounding
  // of the twin's; dbias, the sums of dx as stored (tests/column_sums.h says why not the twin's),
  // the very bits of the linear layer's own sums of that dx.
  checks.part("gelu backward with the bias gradient");
  emu::set_context(s.str() + ", gelu backward with the bias gradient");
  const Bf16Data x = random_bf16(rng, static_cast<size_t>(s.M) * N, -4, 4);
  std::vector<float> dx_ref(x.values.size());
  gelu_backward_cpu(dy.values.data(), x.values.data(), dx_ref.data(),
                    static_cast<int64_t>(x.values.size()));
  const Placed<bf16_bits> dev_x("x", x.bits, s.offset), dev_dx("dx", x.values.size(), s.offset);
  const auto partials = tight<float>("partials", partials_size);
  const auto dbias = tight<float>("dbias", N);
  gelu_bias_gradient(dev(dev_dy), dev(dev_x), dev(dev_dx), partials.get(), dbias.get(), s.M, s.N,
                     s.max_width);
  checks.relative("dx", values(dev_dx), dx_ref, kBf16Tol);
  checks.relative("dbias", dbias.download(), deit::test::column_sums(values(dev_dx), s.M, s.N),
                  kF32SumTol);
  const auto apart = tight<float>("dbias of dx apart", N);
  bias_gradient(dev(dev_dx), partials.get(), apart.get(), s.M, s.N, s.max_width);
  checks.same_bits("dbias, the linear layer's sums of dx", dbias.download(), apart.download());
  return checks.print();
}

// sum_partials over no chunks (the empty batch of a row kernel) and sum_to_scalar over more
// values than its 1024 threads, alone.
bool check_reductions(std::mt19937_64& rng) {
  emu::ShapeChecks checks("reductions");
  checks.part("sum_partials of no chunks");
  emu::set_context("sum_partials of no chunks");
  constexpr int64_t kColumns = 13;
  const auto dev_none = tight<float>("no partials", 1);
  const auto dev_zeros = tight<float>("sums", kColumns);
  sum_partials(dev_none.get(), 0, kColumns, dev_zeros.get());
  checks.absolute("sums", dev_zeros.download(), std::vector<float>(kColumns, 0.f), kExact);

  // Three sets in one launch (the fused LayerNorm backwards' gradients): the bits of a launch
  // each, over more chunks than sum_partials' 128 lanes.
  checks.part("sum_partial_sets of 3 sets");
  emu::set_context("sum_partial_sets of 3 sets");
  constexpr int64_t kChunks = 130;
  constexpr int kSets = 3;
  const auto dev_partials = tight("partials", random_f32(rng, kSets * kChunks * kColumns, -1, 1));
  const auto dev_together = tight<float>("sums together", kSets * kColumns);
  const auto dev_apart = tight<float>("sums apart", kSets * kColumns);
  deit::kernels::gpu::PartialSets sets;
  for (int set = 0; set < kSets; ++set)
    sets.add(dev_partials.get() + set * kChunks * kColumns, dev_together.get() + set * kColumns);
  emu::sum_partial_sets(sets, kChunks, kColumns);
  for (int set = 0; set < kSets; ++set)
    sum_partials(dev_partials.get() + set * kChunks * kColumns, kChunks, kColumns,
                 dev_apart.get() + set * kColumns);
  checks.same_bits("3 sets together and apart", dev_together.download(), dev_apart.download());

  // Below 256 chunks, sum_partials runs the lanes that hold them two to a lane (partial_lanes): the
  // bits of all 128 lanes, at powers of 2 of chunks, either side of them, and at one chunk.
  for (const int64_t chunks : {1, 2, 3, 5, 34, 64, 65, 127, 128, 129, 200}) {
    const std::string what = "sum_partials of " + std::to_string(chunks) + " chunks";
    checks.part(what);
    emu::set_context(what);
    const auto dev_chunk_partials =
        tight(what + ", partials", random_f32(rng, chunks * kColumns, -1, 1));
    const auto dev_fewer = tight<float>(what + ", partial_lanes", kColumns);
    const auto dev_all = tight<float>(what + ", 128 lanes", kColumns);
    sum_partials(dev_chunk_partials.get(), chunks, kColumns, dev_fewer.get());
    deit::kernels::gpu::PartialSets set;
    set.add(dev_chunk_partials.get(), dev_all.get());
    emu::launch({"sum_partials_kernel", dim3(2),
                 dim3(deit::kernels::gpu::kPartialCols, deit::kernels::gpu::kPartialLanes), 0},
                [&, chunks] { deit::kernels::gpu::sum_partials_kernel(set, chunks, kColumns); });
    checks.same_bits("sums, partial_lanes and 128 lanes", dev_fewer.download(), dev_all.download());
  }

  checks.part("sum_to_scalar of 3001 values");
  constexpr size_t kValues = 3001;
  constexpr float kScale = 0.25f;
  const std::vector<float> v = random_f32(rng, kValues, -1, 1);
  double sum = 0, sum_of_squares = 0;
  for (float x : v) {
    sum += x;
    sum_of_squares += static_cast<double>(x) * x;
  }
  const auto dev_v = tight("values", v);
  const auto run = [&](const char* what) {
    emu::set_context(std::string("sum_to_scalar, ") + what);
    const auto dev_sum = tight<float>("sum", 1);
    sum_to_scalar(dev_v.get(), kValues, kScale, dev_sum.get());
    return dev_sum.download();
  };
  const std::vector<float> first = run("first run");
  // Values of either sign can cancel to a sum near zero, against which float rounding would look
  // large: the error is measured against the size a sum of random signs has, the values' norm.
  checks.relative("sum", first, {static_cast<float>(kScale * sum)}, kF32SumTol,
                  kScale * std::sqrt(sum_of_squares));
  checks.same_bits("sum, second run", run("second run"), first);
  return checks.print();
}

template <typename T>
std::vector<T> joined(const std::vector<T>& a, const std::vector<T>& b, bool with_b) {
  std::vector<T> all = a;
  if (with_b) all.insert(all.end(), b.begin(), b.end());
  return all;
}

}  // namespace
}  // namespace deit::kernels

int main(int argc, char** argv) {
  using namespace deit::kernels;
  const emu::TestOptions options = emu::parse_test_options(argc, argv, "ops_emulated");
  const bool full = options.full;
  std::mt19937_64 rng(options.seed);

  int checks = 0, failed = 0;
  const auto count = [&](bool passed) {
    ++checks;
    failed += passed ? 0 : 1;
  };
  for (size_t n : joined(kDefaultSizes, kFullSizes, full))
    for (size_t offset : {0, 1}) count(check_elementwise({n, offset}, rng));
  count(check_gelu_every_bf16());
  for (const LossShape& s : joined(kDefaultLossShapes, kFullLossShapes, full))
    count(check_losses(s, rng));
  for (const RowShape& s : joined(kDefaultRowShapes, kFullRowShapes, full))
    count(check_tokens(s, rng));
  for (const ImageShape& s : joined(kDefaultImageShapes, kFullImageShapes, full))
    count(check_patches(s, rng));
  for (const BiasShape& s : joined(kDefaultBiasShapes, kFullBiasShapes, full))
    count(check_bias_gradient(s, rng));
  count(check_reductions(rng));

  const emu::Totals t = emu::totals();
  std::printf(
      "%d of %d checks failed; emulated %lld blocks, %lld warp-wide instructions, %lld thread "
      "switches\n",
      failed, checks, t.blocks, t.collectives, t.switches);
  return failed == 0 ? 0 : 1;
}
