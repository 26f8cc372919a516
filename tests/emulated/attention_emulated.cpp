// attention_emulated: the fused attention kernels, from the very source nvcc compiles
// (kernels/cuda/attention_kernels.cuh), run on the host by the emulator of cuda_emulator.h and
// checked against the CPU twin (kernels/cpu/attention.cpp) the way the [gpu] test
// (tests/test_attention_cuda.cpp) checks them on a GPU: fresh random bf16 inputs, every output
// poisoned with NaN before the launch, every element compared; relative error
// ||got - ref|| / ||ref|| <= 1e-2 for out and for dq, dk, dv each on its own, every lse within
// 1e-3 of the twin's, nothing non-finite. CI machines have no GPU: this is what checks an edit to
// the kernels there, including out-of-bounds accesses, missing barriers and misused warp-wide
// instructions, which the emulator turns into failures (see cuda_emulator.h).
//
// Usage: attention_emulated [--full] [--seed N]
//   (default)  20 shapes: every head dim (32, 64, 80, 128) at T = 1, at a small odd T (warps
//              full, partial and empty in one tile), at T = 65 (a last tile of one row) and at
//              three or more inner tiles (T = 129 to 197), T = 125 (a last tile of 61 rows),
//              T = 63 and 9 (a key tile one key short, a last key in a row group's upper half),
//              and one shape with scores of several hundred; batch and heads above 1 in several.
//              About 7 s on one core of the development machine: the CTest entry
//              attention_emulated.
//   --full     adds the review's sweep: every head dim at T = 2, 3, 5, 16, 17, 31, 32, 33, 63,
//              64, 97, 101, 128, 129, and the [gpu] test's shapes with fewer batches and heads
//              (T up to 577). About 45 s.
//   --seed N   repeats a run: the inputs and every schedule come from N; each run prints its
//              seed first.
// Exit status: 0 when every shape passes; 1 on a mismatch (after all shapes; each FAIL line names
// the shape and the tensor) or at the first emulation failure (its message names the shape,
// kernel, block and thread); 2 on bad arguments.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/bf16.h"
#include "tests/emulated/cuda_emulator.h"
#include "tests/emulated/test_support.h"
// The kernels, after the emulator's stand-ins for what they use.
#include "kernels/cuda/attention_kernels.cuh"

namespace deit::kernels {
namespace {

// The [gpu] test's tolerances (tests/test_attention_cuda.cpp says why these values).
constexpr double kBf16Tol = 1e-2;
constexpr double kLseTol = 1e-3;
constexpr float kQkvRange = 2.0f;  // q, k, v uniform in [-2, 2]: scores with std ~1.3

using emu::Bf16Data;
using emu::kernel_name;
using emu::random_bf16;
using emu::round_to_bf16;
using emu::to_float;

// The launches of attention.cu's forward<D> and backward<D>: change them together.
template <int D>
void forward(const bf16* qkv, bf16* out, float* lse, int B, int T, int H, float scale) {
  const auto blocks = static_cast<unsigned>(B * H * gpu::ceil_div(T, kRows));
  emu::launch({kernel_name("attention_forward_kernel", D), blocks, kThreads,
               Tiles<D>::kForwardSmem},
              [=] { attention_forward_kernel<D>(qkv, out, lse, T, H, scale * kLog2e); });
}

template <int D>
void backward(const bf16* qkv, const bf16* out, const float* lse, const bf16* dout, bf16* dqkv,
              bool bias_grad, int B, int T, int H, float scale, const BackwardWorkspace& layout,
              float* workspace) {
  float* delta = layout.delta(workspace);
  bf16* scores_t = layout.scores(workspace);
  float* bias_partials = bias_grad ? layout.bias_partials(workspace) : nullptr;
  const int64_t rows = static_cast<int64_t>(B) * T * H;
  emu::launch({kernel_name("attention_delta_kernel", D),
               static_cast<unsigned>(delta_blocks(rows, D)), kThreads, 0},
              [=] { attention_delta_kernel<D>(out, dout, delta, rows, T, H); });
  const BackwardImages batch{qkv, lse, dout, delta, dqkv, bias_partials, B};
  for (int64_t b0 = 0; b0 < B; b0 += layout.slice) {
    const BackwardImages s = layout.slice_at(batch, b0);
    emu::launch(
        {kernel_name("attention_dkdv_kernel", D), layout.blocks(s), kThreads, Tiles<D>::kDkvSmem},
        [=] {
          attention_dkdv_kernel<D>(s.qkv, s.lse, s.dout, s.delta, s.dqkv, scores_t, s.bias_partials,
                                   T, H, scale, scale * kLog2e);
        });
    emu::launch(
        {kernel_name("attention_dq_kernel", D), layout.blocks(s), kThreads, Tiles<D>::kDqSmem},
        [=] { attention_dq_kernel<D>(s.qkv, scores_t, s.dqkv, s.bias_partials, T, H, scale); });
  }
}

// What sum_partials (common.cu) then makes of the blocks' column sums that backward<D> left in
// the workspace: dbias (3 H D), the chunks added in order.
std::vector<float> summed_bias_partials(const std::vector<float>& workspace,
                                        const BackwardWorkspace& layout) {
  const int64_t begin = layout.delta_floats() + layout.scores_floats();
  const int64_t cols = 3 * layout.H * layout.D;
  std::vector<float> dbias(static_cast<size_t>(cols), 0.f);
  for (int64_t chunk = 0; chunk < layout.partial_chunks(); ++chunk)
    for (int64_t c = 0; c < cols; ++c) dbias[c] += workspace[begin + chunk * cols + c];
  return dbias;
}

struct Shape {
  int B, T, H, D;
  float range = kQkvRange;  // q, k, v uniform in [-range, range]
  size_t qkv() const { return static_cast<size_t>(B) * T * 3 * H * D; }
  size_t out() const { return static_cast<size_t>(B) * T * H * D; }
  size_t lse() const { return static_cast<size_t>(B) * H * T; }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(D)); }
  std::string str() const {
    return "D=" + std::to_string(D) + " B=" + std::to_string(B) + " T=" + std::to_string(T) +
           " H=" + std::to_string(H) +
           (range != kQkvRange ? " range=" + std::to_string(static_cast<int>(range)) : "");
  }
};

// B, T, H, D: every head dim at T = 1; at a small odd T (warps full, partial and empty in one
// tile); at T = 65 (a last tile of one row); at three inner tiles or more, the least that
// reuses a shared-memory stage while other warps may still read it (T = 197 is ViT-S at 224 px);
// and T = 125, whose last 64-row tile is partial yet has all four of its 16-row groups live: the
// kernels' partial-tile paths must tell it from a full tile by more than its live groups. The last
// tiles with one live 16-row group (T = 1, 5, 65, 197) split their inner tiles among the four warps
// (the forward and dK/dV pass split in two at head dim 128, whose inner tiles have 32 rows), with
// shares that see no row < T at T = 1 and 5; those with two (T = 17, 145) among two warps a group;
// T = 37 and 33 leave a warp idle. T = 63 at head dim 128 ends its last key tile one key short on
// warps that take whole tiles: a bound that sent such a tile down the unmasked path would show at
// no other T here. T = 9 puts the last key in a row group's upper half (rows g + 8, T % 16 >= 8):
// a key-validity test off by one there lets the zero key row T into the qkv bias gradient by
// about 1 / T, under the tolerance at T = 125 but not at 9. Range 6 makes scores of several
// hundred before the scale: an online softmax whose running max is not of the scaled scores
// underflows every exponential there, while at range 2 any bound on the max gives the same
// result.
const std::vector<Shape> kDefaultShapes = {
    {2, 1, 3, 32},    {1, 1, 1, 64},   {1, 1, 2, 80},   {2, 1, 1, 128},  {1, 37, 2, 32},
    {2, 5, 3, 64},    {1, 17, 1, 80},  {1, 33, 2, 128}, {1, 65, 1, 32},  {1, 65, 1, 64},
    {1, 65, 2, 80},   {1, 65, 1, 128}, {1, 197, 1, 32}, {1, 197, 2, 64}, {1, 145, 1, 80},
    {1, 129, 1, 128}, {1, 125, 1, 64}, {1, 63, 1, 128}, {2, 9, 2, 64},   {1, 65, 1, 64, 6.f},
};

// The [gpu] test's shapes with fewer batches and heads.
const std::vector<Shape> kGpuTestShapes = {
    {2, 197, 2, 64}, {1, 65, 3, 80},  {1, 145, 2, 64},  {2, 257, 1, 128}, {1, 577, 1, 32},
    {4, 5, 3, 64},   {2, 101, 2, 80}, {1, 101, 2, 128}, {2, 145, 3, 32},  {1, 577, 1, 64},
};

// --full: the default shapes, every head dim at the review's other T, the [gpu] test's shapes.
std::vector<Shape> full_shapes() {
  std::vector<Shape> shapes = kDefaultShapes;
  for (int T : {2, 3, 5, 16, 17, 31, 32, 33, 63, 64, 97, 101, 128, 129})
    for (int D : {32, 64, 80, 128}) shapes.push_back({1, T, 1, D});
  shapes.insert(shapes.end(), kGpuTestShapes.begin(), kGpuTestShapes.end());
  return shapes;
}

// One of dq, dk, dv (part 0, 1, 2) of a packed (B, T, 3, H, D) buffer, as a contiguous vector.
std::vector<float> qkv_part(const std::vector<float>& packed, const Shape& s, int part) {
  const size_t C = static_cast<size_t>(s.H) * s.D, rows = static_cast<size_t>(s.B) * s.T;
  std::vector<float> v(rows * C);
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < C; ++c) v[r * C + c] = packed[(r * 3 + part) * C + c];
  return v;
}

template <int D>
bool check_shape(const Shape& s, std::mt19937_64& rng) {
  emu::ShapeChecks checks(s.str());
  const auto scale = static_cast<float>(s.scale());
  const Bf16Data qkv = random_bf16(rng, s.qkv(), -s.range, s.range);
  const emu::DeviceBuffer<bf16_bits> dev_qkv("qkv", qkv.bits);
  const auto* qkv_ptr = reinterpret_cast<const bf16*>(dev_qkv.get());

  // Forward, against the twin on the same bf16 inputs; then without lse (inference), whose
  // blocks draw other schedules: the same bits.
  std::vector<float> out_ref(s.out()), lse_ref(s.lse());
  attention_forward_cpu(qkv.values.data(), out_ref.data(), lse_ref.data(), s.B, s.T, s.H, s.D,
                        s.scale());
  {
    emu::set_context(s.str() + ", forward");
    const emu::DeviceBuffer<bf16_bits> dev_out("out", s.out());
    const emu::DeviceBuffer<bf16_bits> dev_out_inference("out (no lse)", s.out());
    const emu::DeviceBuffer<float> dev_lse("lse", s.lse());
    forward<D>(qkv_ptr, reinterpret_cast<bf16*>(dev_out.get()), dev_lse.get(), s.B, s.T, s.H,
               scale);
    checks.relative("out", to_float(dev_out.download()), out_ref, kBf16Tol);
    checks.absolute("lse", dev_lse.download(), lse_ref, kLseTol);
    emu::set_context(s.str() + ", forward without lse");
    forward<D>(qkv_ptr, reinterpret_cast<bf16*>(dev_out_inference.get()), nullptr, s.B, s.T, s.H,
               scale);
    checks.same_bits("out without lse", dev_out_inference.download(), dev_out.download());
  }

  // Backward alone: both sides get the same qkv, the same out (the twin's, rounded to bf16 as
  // the kernels store it), the same fp32 lse and the same dout.
  emu::set_context(s.str() + ", backward");
  const Bf16Data out = round_to_bf16(out_ref);
  const Bf16Data dout = random_bf16(rng, s.out(), -1, 1);
  std::vector<float> dqkv_ref(s.qkv()), dbias_ref(3 * s.H * s.D);
  attention_backward_cpu(qkv.values.data(), out.values.data(), lse_ref.data(), dout.values.data(),
                         dqkv_ref.data(), dbias_ref.data(), s.B, s.T, s.H, s.D, s.scale());
  const emu::DeviceBuffer<bf16_bits> dev_out("out", out.bits), dev_dout("dout", dout.bits),
      dev_dqkv("dqkv", s.qkv());
  // The whole batch's dS at once (the default budget holds it for every shape here), with the
  // qkv bias gradient's column sums.
  const BackwardWorkspace whole(s.B, s.T, s.H, s.D, kAttentionScoresBudgetBytes);
  const emu::DeviceBuffer<float> dev_lse("lse", lse_ref),
      workspace("workspace", static_cast<size_t>(whole.floats()));
  const auto run = [&](const emu::DeviceBuffer<bf16_bits>& dqkv_out, bool bias_grad,
                       const BackwardWorkspace& layout, const emu::DeviceBuffer<float>& space) {
    backward<D>(qkv_ptr, reinterpret_cast<const bf16*>(dev_out.get()), dev_lse.get(),
                reinterpret_cast<const bf16*>(dev_dout.get()),
                reinterpret_cast<bf16*>(dqkv_out.get()), bias_grad, s.B, s.T, s.H, scale, layout,
                space.get());
  };
  run(dev_dqkv, true, whole, workspace);
  const std::vector<float> dqkv = to_float(dev_dqkv.download());
  const double floor = 1e-3 * emu::norm(dqkv_ref);
  const char* names[3] = {"dq", "dk", "dv"};
  for (int part = 0; part < 3; ++part)
    checks.relative(names[part], qkv_part(dqkv, s, part), qkv_part(dqkv_ref, s, part), kBf16Tol,
                    floor);
  const std::vector<float> dbias = summed_bias_partials(workspace.download(), whole);
  checks.relative("dbias", dbias, dbias_ref, kBf16Tol);

  // One image's dS at a time (a budget of one byte): the same bits, bias gradient included.
  emu::set_context(s.str() + ", backward an image at a time");
  const BackwardWorkspace sliced(s.B, s.T, s.H, s.D, 1);
  const emu::DeviceBuffer<float> sliced_space("workspace (sliced)",
                                              static_cast<size_t>(sliced.floats()));
  const emu::DeviceBuffer<bf16_bits> dev_dqkv_sliced("dqkv (sliced)", s.qkv());
  run(dev_dqkv_sliced, true, sliced, sliced_space);
  checks.same_bits("dqkv an image at a time", dev_dqkv_sliced.download(), dev_dqkv.download());
  checks.same_bits("dbias an image at a time",
                   summed_bias_partials(sliced_space.download(), sliced), dbias);

  emu::set_context(s.str() + ", backward without the bias gradient");
  const emu::DeviceBuffer<bf16_bits> dev_dqkv_alone("dqkv (no bias gradient)", s.qkv());
  run(dev_dqkv_alone, false, whole, workspace);
  checks.same_bits("dqkv without the bias gradient", dev_dqkv_alone.download(),
                   dev_dqkv.download());
  return checks.print();
}

bool check(const Shape& s, std::mt19937_64& rng) {
  switch (s.D) {
    case 32: return check_shape<32>(s, rng);
    case 64: return check_shape<64>(s, rng);
    case 80: return check_shape<80>(s, rng);
    default: return check_shape<128>(s, rng);
  }
}


}  // namespace
}  // namespace deit::kernels

int main(int argc, char** argv) {
  using namespace deit::kernels;
  const emu::TestOptions options = emu::parse_test_options(argc, argv, "attention_emulated");
  const bool full = options.full;
  std::mt19937_64 inputs(options.seed);

  int failed = 0;
  const std::vector<Shape> shapes = full ? full_shapes() : kDefaultShapes;
  for (const Shape& s : shapes) failed += check(s, inputs) ? 0 : 1;

  const emu::Totals t = emu::totals();
  std::printf("%d of %zu shapes failed; emulated %lld blocks, %lld warp-wide instructions, "
              "%lld cp.async copies, %lld thread switches\n",
              failed, shapes.size(), t.blocks, t.collectives, t.copies, t.switches);
  return failed == 0 ? 0 : 1;
}
