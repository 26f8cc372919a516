// [gpu] checks of the CUDA kernels of the cast, elementwise, gelu, layernorm, layerscale (alone
// and fused with the LayerNorm after it), losses and tokens families against their CPU twins, as
// DESIGN.md's tolerances say: fresh random inputs (bf16 operands rounded once, so both sides see
// the same numbers; the fp32 residual stream's operands unrounded), device outputs poisoned with
// NaN before every call, every element compared, no NaN or infinity allowed. Shapes: ViT-S
// (C = 384), ViT-H's width at 145 tokens (C = 1280), and awkward ones: odd token counts, batch 1,
// C % 8 != 0 and misaligned pointers (the scalar paths), tiny and empty sizes. The samples
// family's gather and scatter (copies of any element type) are compared bit for bit.
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/rng.h"
#include "kernels/bf16.h"
#include "kernels/cast.h"
#include "kernels/check.h"
#include "kernels/cuda/cublaslt.h"
#include "kernels/elementwise.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/layerscale.h"
#include "kernels/linear.h"
#include "kernels/losses.h"
#include "kernels/samples.h"
#include "kernels/tokens.h"
#include "tests/column_sums.h"
#include "tests/cuda_test_util.h"

using namespace deit::kernels;
using deit::Rng;
using namespace deit::test;

namespace {

// DESIGN.md: outputs that are bf16 or computed from bf16 inputs.
constexpr double kBf16Tol = 1e-2;
// fp32 outputs (statistics, parameter gradients, losses, the residual stream) of bf16 or fp32
// inputs: the CPU twin sums the same numbers in double, so only the kernel's fp32 accumulation
// separates them (~1e-6 expected).
constexpr double kF32SumTol = 1e-4;
// Copies and gathers move values unchanged.
constexpr double kExact = 0.0;

// (B, T, C) activations; offset != 0 misaligns the main buffers.
struct RowShape {
  int64_t B, T, C;
  size_t offset;
  int64_t rows() const { return B * T; }
  size_t n() const { return static_cast<size_t>(B * T * C); }
  std::string str() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " C=" << C << " offset=" << offset;
    return s.str();
  }
};

const std::vector<RowShape>& row_shapes() {
  static const std::vector<RowShape> shapes = {
      {4, 197, 384, 0},   // ViT-S at 224
      {2, 33, 1024, 0},   // ViT-L's width: the LayerNorm kernels' widest warp rows (4 groups)
      {2, 145, 1280, 0},  // ViT-H's width (at 160 px it has 122 tokens)
      {3, 101, 768, 0},   // odd token count
      {1, 65, 200, 0},    // batch 1
      {2, 257, 196, 0},   // C % 8 != 0: scalar path
      {1, 33, 384, 1},    // misaligned pointers: scalar path
      {3, 7, 5, 0},       // tiny
  };
  return shapes;
}

}  // namespace

TEST_CASE("cuda cast matches the CPU conversion bit for bit", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5001);
  for (size_t n : {size_t{1}, size_t{7}, size_t{8}, size_t{4099}, size_t{4 * 197 * 384}})
    for (size_t offset : {size_t{0}, size_t{1}}) {
      INFO("n=" << n << " offset=" << offset);
      std::vector<float> x = random_f32(rng, n, -3, 3);
      if (n >= 8) {  // specials: rounding to infinity, infinities, NaN, a denormal
        x[0] = std::numeric_limits<float>::max();
        x[1] = -std::numeric_limits<float>::infinity();
        x[2] = std::numeric_limits<float>::quiet_NaN();
        x[3] = 1e-40f;
      }
      std::vector<bf16_bits> ref_bits(n);
      cast_f32_to_bf16_cpu(x.data(), ref_bits.data(), static_cast<int64_t>(n));

      F32Buffer dx(x, offset);
      Bf16Buffer dy(n, offset);
      cast_f32_to_bf16_cuda(dx.get(), dy.get(), static_cast<int64_t>(n), stream);
      stream.sync();
      const std::vector<bf16_bits> got = dy.download();
      size_t mismatches = 0;
      for (size_t i = 0; i < n; ++i) {
        const bool both_nan = std::isnan(bf16_to_float(got[i])) && std::isnan(x[i]);
        if (got[i] != ref_bits[i] && !both_nan) ++mismatches;
      }
      CHECK(mismatches == 0);

      std::vector<bf16_bits> finite_bits = random_bf16(rng, n, -3, 3).bits;
      std::vector<float> ref(n);
      cast_bf16_to_f32_cpu(finite_bits.data(), ref.data(), static_cast<int64_t>(n));
      Bf16Buffer db(finite_bits, offset);
      F32Buffer df(n, offset);
      cast_bf16_to_f32_cuda(db.get(), df.get(), static_cast<int64_t>(n), stream);
      stream.sync();
      check_close("bf16 -> f32", df, ref, kExact);
    }
}

TEST_CASE("cuda gelu forward and backward match the CPU twin", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5002);
  for (size_t n : {size_t{1}, size_t{13}, size_t{8003}, size_t{4 * 197 * 1536}})
    for (size_t offset : {size_t{0}, size_t{1}}) {
      INFO("n=" << n << " offset=" << offset);
      const Bf16Host x = random_bf16(rng, n, -4, 4);
      const Bf16Host dy = random_bf16(rng, n, -1, 1);
      std::vector<float> y_ref(n), dx_ref(n);
      gelu_forward_cpu(x.values.data(), y_ref.data(), static_cast<int64_t>(n));
      gelu_backward_cpu(dy.values.data(), x.values.data(), dx_ref.data(), static_cast<int64_t>(n));

      Bf16Buffer dev_x(x.bits, offset), dev_dy(dy.bits, offset);
      Bf16Buffer dev_y(n, offset), dev_dx(n, offset);
      gelu_forward_cuda(dev_x.get(), dev_y.get(), static_cast<int64_t>(n), stream);
      gelu_backward_cuda(dev_dy.get(), dev_x.get(), dev_dx.get(), static_cast<int64_t>(n), stream);
      stream.sync();
      check_close("gelu forward", dev_y, y_ref, kBf16Tol);
      check_close("gelu backward", dev_dx, dx_ref, kBf16Tol);

      gelu_forward_cuda(dev_x.get(), dev_x.get(), static_cast<int64_t>(n), stream);  // in place
      stream.sync();
      check_close("gelu forward in place", dev_x, y_ref, kBf16Tol);
    }
}

TEST_CASE("cuda gelu backward with the bias gradient matches the CPU twin and the ops apart",
          "[gpu][kernels]") {
  Stream stream;
  CublasLt lt;
  Rng rng(5003);
  // fc1 of ViT-S at batch 4 (vector path); a width not a multiple of 8 (scalar path), wider than
  // a column tile (8192); one row.
  for (const auto& [M, N] : {std::pair<int64_t, int64_t>{4 * 197, 1536}, {37, 8203}, {1, 40}}) {
    INFO("M=" << M << " N=" << N);
    const auto n = static_cast<size_t>(M * N);
    const Bf16Host x = random_bf16(rng, n, -4, 4), dy = random_bf16(rng, n, -1, 1);
    std::vector<float> dx_ref(n);
    gelu_backward_cpu(dy.values.data(), x.values.data(), dx_ref.data(), static_cast<int64_t>(n));
    Bf16Buffer dev_x(x.bits), dev_dy(dy.bits), dev_dx(n);
    F32Buffer db(static_cast<size_t>(N)),
        workspace(static_cast<size_t>(gelu_backward_bias_grad_cuda_workspace_floats(M, N)));
    gelu_backward_bias_grad_cuda(dev_dy.get(), dev_x.get(), dev_dx.get(), db.get(), M, N,
                                 workspace.get(), stream);
    stream.sync();
    check_close("dx", dev_dx, dx_ref, kBf16Tol);
    // dbias sums dx as stored in bf16 (tests/column_sums.h says why not the twin's sums).
    check_close("dbias", db, column_sums(download_float(dev_dx), M, N), kF32SumTol);

    // The ops apart, GELU's backward then the linear layer's bias gradient from its dx: the
    // same bits.
    Bf16Buffer apart_dx(n);
    F32Buffer apart_db(static_cast<size_t>(N));
    gelu_backward_cuda(dev_dy.get(), dev_x.get(), apart_dx.get(), static_cast<int64_t>(n), stream);
    linear_backward_cuda(apart_dx.get(), nullptr, nullptr, nullptr, nullptr, apart_db.get(), M, 1,
                         N, lt, stream);
    stream.sync();
    check_same_bits("dx, the ops apart", dev_dx.download(), apart_dx.download());
    check_same_bits("dbias, the ops apart", db.download(), apart_db.download());
  }
}

TEST_CASE("cuda gelu is within bf16 rounding of the CPU twin at every bf16 x from -13 to 13",
          "[gpu][kernels]") {
  // The tails included: deep in the negative one, where 1 + erf would cancel to 0, GELU is tiny
  // but a bf16 normal, and must not come out 0. dy = 1, so dx is GELU's derivative, which crosses
  // 0 near x = -0.75 (hence its absolute slack).
  Stream stream;
  std::vector<bf16_bits> bits;
  for (uint32_t b = 0; b < 0x10000; ++b)
    if (std::abs(bf16_to_float(static_cast<bf16_bits>(b))) <= 13.f)
      bits.push_back(static_cast<bf16_bits>(b));
  const int64_t n = static_cast<int64_t>(bits.size());
  std::vector<float> values(bits.size()), ones(bits.size(), 1.f), y_ref(bits.size()),
      dx_ref(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) values[i] = bf16_to_float(bits[i]);
  gelu_forward_cpu(values.data(), y_ref.data(), n);
  gelu_backward_cpu(ones.data(), values.data(), dx_ref.data(), n);
  Bf16Buffer x(bits), dy(std::vector<bf16_bits>(bits.size(), float_to_bf16(1.f)));
  Bf16Buffer y(bits.size()), dx(bits.size());
  gelu_forward_cuda(x.get(), y.get(), n, stream);
  gelu_backward_cuda(dy.get(), x.get(), dx.get(), n, stream);
  stream.sync();
  const std::vector<float> got_y = download_float(y), got_dx = download_float(dx);
  int misses = 0;
  for (size_t i = 0; i < bits.size() && misses < 10; ++i) {
    // Under the smallest normal, bf16's subnormals hold too few digits to judge y.
    const bool y_ok =
        std::abs(y_ref[i]) < std::numeric_limits<float>::min() ||
        (std::abs(got_y[i] - y_ref[i]) <= 1e-2f * std::abs(y_ref[i]) && got_y[i] != 0.f);
    const bool dx_ok = std::abs(got_dx[i] - dx_ref[i]) <= 1e-2f * std::abs(dx_ref[i]) + 1e-5f;
    if (y_ok && dx_ok) continue;
    ++misses;
    INFO("x=" << values[i] << " gelu=" << y_ref[i] << " got " << got_y[i] << "; derivative "
              << dx_ref[i] << " got " << got_dx[i]);
    CHECK(y_ok);
    CHECK(dx_ok);
  }
  CHECK(misses == 0);
}

TEST_CASE("cuda elementwise add, scale by a device scalar and fill match the CPU twins",
          "[gpu][kernels]") {
  Stream stream;
  Rng rng(5010);
  for (size_t n : {size_t{1}, size_t{13}, size_t{8003}, size_t{4 * 197 * 384}})
    for (size_t offset : {size_t{0}, size_t{1}}) {
      INFO("n=" << n << " offset=" << offset);
      const auto count = static_cast<int64_t>(n);
      const float s = static_cast<float>(rng.uniform(-2, 2));
      F32Buffer dev_s(std::vector<float>{s});
      std::vector<float> sum_ref(n), scaled_ref(n);
      {  // fp32: parameter gradients
        const std::vector<float> a = random_f32(rng, n, -2, 2), b = random_f32(rng, n, -2, 2);
        add_cpu(a.data(), b.data(), sum_ref.data(), count);
        scale_cpu(a.data(), s, scaled_ref.data(), count);
        F32Buffer dev_a(a, offset), dev_b(b, offset), dev_out(n, offset);
        add_cuda(dev_a.get(), dev_b.get(), dev_out.get(), count, stream);
        stream.sync();
        check_close("f32 add", dev_out, sum_ref, 1e-6);
        dev_out.poison();
        scale_by_device_scalar_cuda(dev_a.get(), dev_s.get(), dev_out.get(), count, stream);
        stream.sync();
        check_close("f32 scale", dev_out, scaled_ref, 1e-6);
        fill_cuda(dev_out.get(), s, count, stream);
        stream.sync();
        check_close("f32 fill", dev_out, std::vector<float>(n, s), kExact);
        add_cuda(dev_a.get(), dev_b.get(), dev_a.get(), count, stream);  // out aliases a
        stream.sync();
        check_close("f32 add in place", dev_a, sum_ref, 1e-6);
      }
      {  // bf16: activation gradients
        const Bf16Host a = random_bf16(rng, n, -2, 2), b = random_bf16(rng, n, -2, 2);
        add_cpu(a.values.data(), b.values.data(), sum_ref.data(), count);
        scale_cpu(a.values.data(), s, scaled_ref.data(), count);
        Bf16Buffer dev_a(a.bits, offset), dev_b(b.bits, offset), dev_out(n, offset);
        add_cuda(dev_a.get(), dev_b.get(), dev_out.get(), count, stream);
        stream.sync();
        check_close("bf16 add", dev_out, sum_ref, kBf16Tol);
        dev_out.poison();
        scale_by_device_scalar_cuda(dev_a.get(), dev_s.get(), dev_out.get(), count, stream);
        stream.sync();
        check_close("bf16 scale", dev_out, scaled_ref, kBf16Tol);
        fill_cuda(dev_out.get(), s, count, stream);
        stream.sync();
        check_close("bf16 fill", dev_out, std::vector<float>(n, bf16_to_float(float_to_bf16(s))),
                    kExact);
        scale_by_device_scalar_cuda(dev_a.get(), dev_s.get(), dev_a.get(), count, stream);
        stream.sync();
        check_close("bf16 scale in place", dev_a, scaled_ref, kBf16Tol);
      }
    }
}

TEST_CASE("cuda layernorm forward matches the CPU twin", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5003);
  for (const RowShape& s : row_shapes()) {
    INFO(s.str());
    const size_t C = static_cast<size_t>(s.C), rows = static_cast<size_t>(s.rows());
    // x: the fp32 residual stream, its mean far from 0 (tests the centring).
    const std::vector<float> x = random_f32(rng, s.n(), 1.5, 4.5);
    const Bf16Host w = random_bf16(rng, C, 0.5, 1.5);
    const Bf16Host b = random_bf16(rng, C, -0.5, 0.5);
    std::vector<float> y_ref(s.n()), mean_ref(rows), rstd_ref(rows);
    layernorm_forward_cpu(x.data(), w.values.data(), b.values.data(), y_ref.data(),
                          mean_ref.data(), rstd_ref.data(), s.rows(), s.C, 1e-6);

    F32Buffer dev_x(x, s.offset);
    Bf16Buffer dev_w(w.bits), dev_b(b.bits), dev_y(s.n(), s.offset);
    F32Buffer dev_mean(rows), dev_rstd(rows);
    layernorm_forward_cuda(dev_x.get(), dev_w.get(), dev_b.get(), dev_y.get(), dev_mean.get(),
                           dev_rstd.get(), s.rows(), s.C, 1e-6, stream);
    stream.sync();
    check_close("y", dev_y, y_ref, kBf16Tol);
    check_close("mean", dev_mean, mean_ref, kF32SumTol);
    check_close("rstd", dev_rstd, rstd_ref, kF32SumTol);

    dev_y.poison();  // inference: no statistics saved
    layernorm_forward_cuda(dev_x.get(), dev_w.get(), dev_b.get(), dev_y.get(), nullptr, nullptr,
                           s.rows(), s.C, 1e-6, stream);
    stream.sync();
    check_close("y without statistics", dev_y, y_ref, kBf16Tol);
  }
}

TEST_CASE("cuda layernorm backward matches the CPU twin and is deterministic", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5004);
  for (const RowShape& s : row_shapes()) {
    INFO(s.str());
    const size_t C = static_cast<size_t>(s.C), rows = static_cast<size_t>(s.rows());
    const std::vector<float> x = random_f32(rng, s.n(), -2.0, 3.0);  // the fp32 residual stream
    const Bf16Host w = random_bf16(rng, C, 0.5, 1.5);
    const Bf16Host b = random_bf16(rng, C, -0.5, 0.5);
    const Bf16Host dy = random_bf16(rng, s.n(), -1, 1);
    std::vector<float> y(s.n()), mean(rows), rstd(rows);
    layernorm_forward_cpu(x.data(), w.values.data(), b.values.data(), y.data(), mean.data(),
                          rstd.data(), s.rows(), s.C, 1e-6);
    std::vector<float> dx_ref(s.n()), dw_ref(C), db_ref(C);
    layernorm_backward_cpu(dy.values.data(), x.data(), w.values.data(), mean.data(), rstd.data(),
                           dx_ref.data(), dw_ref.data(), db_ref.data(), s.rows(), s.C);

    Bf16Buffer dev_dy(dy.bits, s.offset), dev_w(w.bits);
    F32Buffer dev_x(x, s.offset), dev_mean(mean), dev_rstd(rstd);
    F32Buffer dev_dx(s.n(), s.offset);  // fp32: it joins the residual stream's gradient
    F32Buffer dev_dw(C), dev_db(C);
    F32Buffer workspace(
        static_cast<size_t>(layernorm_backward_cuda_workspace_floats(s.rows(), s.C)));
    const auto run = [&](float* dw, float* db) {
      layernorm_backward_cuda(dev_dy.get(), dev_x.get(), dev_w.get(), dev_mean.get(),
                              dev_rstd.get(), dev_dx.get(), dw, db, s.rows(), s.C, workspace.get(),
                              stream);
      stream.sync();
    };
    run(dev_dw.get(), dev_db.get());
    check_close("dx", dev_dx, dx_ref, kF32SumTol);
    check_close("dweight", dev_dw, dw_ref, kF32SumTol);
    check_close("dbias", dev_db, db_ref, kF32SumTol);

    const std::vector<float> dw_first = dev_dw.download(), db_first = dev_db.download();
    dev_dw.poison();
    dev_db.poison();
    workspace.poison();
    run(dev_dw.get(), dev_db.get());
    check_same_bits("dweight, second run", dev_dw.download(), dw_first);
    check_same_bits("dbias, second run", dev_db.download(), db_first);

    dev_dx.poison();
    run(nullptr, nullptr);
    check_close("dx without parameter gradients", dev_dx, dx_ref, kF32SumTol);
    dev_db.poison();
    run(nullptr, dev_db.get());
    check_close("dbias alone", dev_db, db_ref, kF32SumTol);
  }
}

TEST_CASE("cuda layerscale residual forward and backward match the CPU twin", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5005);
  for (const RowShape& s : row_shapes()) {
    INFO(s.str());
    const size_t C = static_cast<size_t>(s.C), B = static_cast<size_t>(s.B);
    // x, out and dout: the fp32 residual stream and its gradient.
    const std::vector<float> x = random_f32(rng, s.n(), -2, 2);
    const Bf16Host branch = random_bf16(rng, s.n(), -2, 2);
    const Bf16Host gamma = random_bf16(rng, C, -1, 1);
    const std::vector<float> dout = random_f32(rng, s.n(), -1, 1);
    // Drop-path at rate 0.25: 0 or 1 / 0.75 per sample; the last sample kept, the first dropped
    // when there are two or more.
    std::vector<float> keep(B);
    for (size_t b = 0; b < B; ++b) keep[b] = rng.uniform() < 0.75 ? 1.f / 0.75f : 0.f;
    if (B > 1) keep[0] = 0.f;
    keep[B - 1] = 1.f / 0.75f;

    std::vector<float> out_ref(s.n()), dbranch_ref(s.n()), dgamma_ref(C);
    layerscale_residual_forward_cpu(x.data(), branch.values.data(), gamma.values.data(),
                                    keep.data(), out_ref.data(), s.B, s.T, s.C);
    layerscale_residual_backward_cpu(dout.data(), branch.values.data(), gamma.values.data(),
                                     keep.data(), dbranch_ref.data(), dgamma_ref.data(), s.B, s.T,
                                     s.C);

    Bf16Buffer dev_branch(branch.bits, s.offset), dev_gamma(gamma.bits);
    Bf16Buffer dev_dbranch(s.n(), s.offset);
    F32Buffer dev_x(x, s.offset), dev_dout(dout, s.offset), dev_out(s.n(), s.offset);
    F32Buffer dev_keep(keep), dev_dgamma(C);
    layerscale_residual_forward_cuda(dev_x.get(), dev_branch.get(), dev_gamma.get(), dev_keep.get(),
                                     dev_out.get(), s.B, s.T, s.C, stream);
    stream.sync();
    check_close("out", dev_out, out_ref, kF32SumTol);

    F32Buffer workspace(
        static_cast<size_t>(layerscale_residual_backward_cuda_workspace_floats(s.B, s.T, s.C)));
    layerscale_residual_backward_cuda(dev_dout.get(), dev_branch.get(), dev_gamma.get(),
                                      dev_keep.get(), dev_dbranch.get(), dev_dgamma.get(), s.B, s.T,
                                      s.C, workspace.get(), stream);
    stream.sync();
    check_close("dbranch", dev_dbranch, dbranch_ref, kBf16Tol);
    check_close("dgamma", dev_dgamma, dgamma_ref, kF32SumTol);

    const std::vector<float> dgamma_first = dev_dgamma.download();
    dev_dgamma.poison();
    layerscale_residual_backward_cuda(dev_dout.get(), dev_branch.get(), dev_gamma.get(),
                                      dev_keep.get(), nullptr, dev_dgamma.get(), s.B, s.T, s.C,
                                      workspace.get(), stream);
    stream.sync();
    check_same_bits("dgamma, second run without dbranch", dev_dgamma.download(), dgamma_first);
    dev_dbranch.poison();
    layerscale_residual_backward_cuda(dev_dout.get(), dev_branch.get(), dev_gamma.get(),
                                      dev_keep.get(), dev_dbranch.get(), nullptr, s.B, s.T, s.C,
                                      nullptr, stream);
    stream.sync();
    check_close("dbranch without dgamma", dev_dbranch, dbranch_ref, kBf16Tol);

    layerscale_residual_forward_cuda(dev_x.get(), dev_branch.get(), dev_gamma.get(), dev_keep.get(),
                                     dev_x.get(), s.B, s.T, s.C, stream);
    stream.sync();
    check_close("out in place", dev_x, out_ref, kF32SumTol);
  }
}

TEST_CASE("cuda layerscale residual + layernorm forward and backward match the CPU twin",
          "[gpu][kernels]") {
  Stream stream;
  Rng rng(5010);
  for (const RowShape& s : row_shapes()) {
    INFO(s.str());
    const size_t C = static_cast<size_t>(s.C), B = static_cast<size_t>(s.B);
    const size_t rows = static_cast<size_t>(s.rows());
    const Bf16Host branch = random_bf16(rng, s.n(), -2, 2);
    const Bf16Host gamma = random_bf16(rng, C, -1, 1);
    const Bf16Host ln_w = random_bf16(rng, C, 0.5, 1.5);
    const Bf16Host ln_b = random_bf16(rng, C, -0.5, 0.5);
    std::vector<float> keep(B);  // drop-path at rate 0.25, the first sample dropped, the last kept
    for (size_t b = 0; b < B; ++b) keep[b] = rng.uniform() < 0.75 ? 1.f / 0.75f : 0.f;
    if (B > 1) keep[0] = 0.f;
    keep[B - 1] = 1.f / 0.75f;
    F32Buffer dev_keep(keep);
    Bf16Buffer dev_gamma(gamma.bits), dev_ln_w(ln_w.bits), dev_ln_b(ln_b.bits);

    {
      INFO("forward");
      // x: the fp32 residual stream, away from 0 so that the LayerNorm's centring matters.
      const std::vector<float> x = random_f32(rng, s.n(), 1.0, 3.0);
      std::vector<float> out_ref(s.n()), y_ref(s.n()), mean_ref(rows), rstd_ref(rows);
      layerscale_residual_layernorm_forward_cpu(x.data(), branch.values.data(),
                                                gamma.values.data(), keep.data(),
                                                ln_w.values.data(), ln_b.values.data(),
                                                out_ref.data(), y_ref.data(), mean_ref.data(),
                                                rstd_ref.data(), s.B, s.T, s.C, 1e-6);

      Bf16Buffer dev_branch(branch.bits, s.offset), dev_y(s.n(), s.offset);
      F32Buffer dev_x(x, s.offset), dev_out(s.n(), s.offset);
      F32Buffer dev_mean(rows), dev_rstd(rows);
      layerscale_residual_layernorm_forward_cuda(
          dev_x.get(), dev_branch.get(), dev_gamma.get(), dev_keep.get(), dev_ln_w.get(),
          dev_ln_b.get(), dev_out.get(), dev_y.get(), dev_mean.get(), dev_rstd.get(), s.B, s.T,
          s.C, 1e-6, stream);
      stream.sync();
      // out is stored in fp32 and normalised as stored: only fp32 rounding (an FMA on the
      // device) separates it and the statistics from the twin.
      check_close("out", dev_out, out_ref, kF32SumTol);
      check_close("y", dev_y, y_ref, kBf16Tol);
      check_close("mean", dev_mean, mean_ref, kF32SumTol);
      check_close("rstd", dev_rstd, rstd_ref, kF32SumTol);
      const std::vector<float> out_stored = dev_out.download();

      dev_y.poison();  // in place (out = x), without statistics
      layerscale_residual_layernorm_forward_cuda(
          dev_x.get(), dev_branch.get(), dev_gamma.get(), dev_keep.get(), dev_ln_w.get(),
          dev_ln_b.get(), dev_x.get(), dev_y.get(), nullptr, nullptr, s.B, s.T, s.C, 1e-6, stream);
      stream.sync();
      check_same_bits("out in place", download_float(dev_x), out_stored);
      check_close("y in place", dev_y, y_ref, kBf16Tol);
    }

    {
      INFO("backward");
      // `out` as an fp32 input of its own, with the statistics its forward would have saved.
      const std::vector<float> out = random_f32(rng, s.n(), -2, 3);
      const std::vector<float> dout = random_f32(rng, s.n(), -1, 1);
      const Bf16Host dy = random_bf16(rng, s.n(), -1, 1);
      std::vector<float> y(s.n()), mean(rows), rstd(rows);
      layernorm_forward_cpu(out.data(), ln_w.values.data(), ln_b.values.data(), y.data(),
                            mean.data(), rstd.data(), s.rows(), s.C, 1e-6);
      struct Reference {
        std::vector<float> dx, dbranch, dgamma, dw, db;
      };
      const auto reference = [&](const float* dout_values) {
        Reference r{std::vector<float>(s.n()), std::vector<float>(s.n()), std::vector<float>(C),
                    std::vector<float>(C), std::vector<float>(C)};
        layerscale_residual_layernorm_backward_cpu(
            dout_values, dy.values.data(), out.data(), branch.values.data(), gamma.values.data(),
            keep.data(), ln_w.values.data(), mean.data(), rstd.data(), r.dx.data(),
            r.dbranch.data(), r.dgamma.data(), r.dw.data(), r.db.data(),
            static_cast<float*>(nullptr), s.B, s.T, s.C);
        return r;
      };
      const Reference with_dout = reference(dout.data());
      const Reference without_dout = reference(nullptr);

      Bf16Buffer dev_dy(dy.bits, s.offset), dev_branch(branch.bits, s.offset);
      Bf16Buffer dev_dbranch(s.n(), s.offset);
      F32Buffer dev_dout(dout, s.offset), dev_out(out, s.offset), dev_dx(s.n(), s.offset);
      F32Buffer dev_mean(mean), dev_rstd(rstd), dev_dgamma(C), dev_dw(C), dev_db(C), dev_dbias(C);
      F32Buffer workspace(static_cast<size_t>(
          layerscale_residual_layernorm_backward_cuda_workspace_floats(s.B, s.T, s.C)));
      const auto run = [&](const float* dout_device, bf16_bits* dbranch, float* dgamma, float* dw,
                           float* db, float* work, float* dbias = nullptr) {
        layerscale_residual_layernorm_backward_cuda(
            dout_device, dev_dy.get(), dev_out.get(), dev_branch.get(), dev_gamma.get(),
            dev_keep.get(), dev_ln_w.get(), dev_mean.get(), dev_rstd.get(), dev_dx.get(), dbranch,
            dgamma, dw, db, dbias, s.B, s.T, s.C, work, stream);
        stream.sync();
      };
      run(dev_dout.get(), dev_dbranch.get(), dev_dgamma.get(), dev_dw.get(), dev_db.get(),
          workspace.get(), dev_dbias.get());
      check_close("dx", dev_dx, with_dout.dx, kF32SumTol);
      check_close("dbranch", dev_dbranch, with_dout.dbranch, kBf16Tol);
      check_close("dgamma", dev_dgamma, with_dout.dgamma, kF32SumTol);
      check_close("dln_weight", dev_dw, with_dout.dw, kF32SumTol);
      check_close("dln_bias", dev_db, with_dout.db, kF32SumTol);
      // The branch's linear layer's bias gradient: dbranch's column sums as stored
      // (tests/column_sums.h), the very bits that the linear layer's own pass over it sums.
      check_close("dbias", dev_dbias, column_sums(download_float(dev_dbranch), s.rows(), C),
                  kF32SumTol);
      {
        CublasLt lt;  // its workspace holds the linear layer's partial sums
        F32Buffer linear_dbias(C);
        linear_backward_cuda(dev_dbranch.get(), nullptr, nullptr, nullptr, nullptr,
                             linear_dbias.get(), s.rows(), C, C, lt, stream);
        stream.sync();
        check_same_bits("dbias against the linear layer's", dev_dbias.download(),
                        linear_dbias.download());
      }
      CHECK_THROWS_AS(
          run(dev_dout.get(), nullptr, nullptr, nullptr, nullptr, workspace.get(), dev_dbias.get()),
          std::invalid_argument);

      const std::vector<float> dgamma_first = dev_dgamma.download();
      const std::vector<float> dw_first = dev_dw.download(), db_first = dev_db.download();
      for (F32Buffer* b : {&dev_dgamma, &dev_dw, &dev_db, &workspace}) b->poison();
      dev_dx.poison();
      run(dev_dout.get(), nullptr, dev_dgamma.get(), dev_dw.get(), dev_db.get(), workspace.get());
      check_close("dx without dbranch", dev_dx, with_dout.dx, kF32SumTol);
      check_same_bits("dgamma, second run", dev_dgamma.download(), dgamma_first);
      check_same_bits("dln_weight, second run", dev_dw.download(), dw_first);
      check_same_bits("dln_bias, second run", dev_db.download(), db_first);

      dev_dx.poison();
      dev_dbranch.poison();
      run(nullptr, dev_dbranch.get(), nullptr, nullptr, nullptr, nullptr);
      check_close("dx without dout", dev_dx, without_dout.dx, kF32SumTol);
      check_close("dbranch without dout", dev_dbranch, without_dout.dbranch, kBf16Tol);
      dev_dgamma.poison();
      run(nullptr, nullptr, dev_dgamma.get(), nullptr, nullptr, workspace.get());
      check_close("dgamma alone, without dout", dev_dgamma, without_dout.dgamma, kF32SumTol);
    }
  }
}

TEST_CASE("cuda losses match the CPU twins", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5006);
  struct LossShape {
    int64_t B, K;
  };
  for (const LossShape s : {LossShape{4, 1000}, LossShape{1, 1000}, LossShape{3, 21},
                            LossShape{5, 1}, LossShape{2, 21841}}) {
    INFO("B=" << s.B << " K=" << s.K);
    const size_t n = static_cast<size_t>(s.B * s.K);
    const Bf16Host logits = random_bf16(rng, n, -8, 8);
    std::vector<float> targets = random_f32(rng, n, 0, 1);
    for (size_t i = 0; i < n; i += 3) targets[i] = targets[i] < 0.5f ? 0.f : 1.f;  // some binary

    Bf16Buffer dev_logits(logits.bits), dev_dlogits(n);
    F32Buffer dev_targets(targets), dev_loss(1);
    F32Buffer workspace(static_cast<size_t>(loss_cuda_workspace_floats(s.B, s.K)));
    using CpuLoss = void (*)(const float*, const float*, float*, float*, int64_t, int64_t);
    using CudaLoss = void (*)(const bf16_bits*, const float*, float*, bf16_bits*, int64_t, int64_t,
                              float*, cudaStream_t);
    const auto check_loss = [&](const std::string& name, CpuLoss cpu, CudaLoss cuda) {
      INFO(name);
      float loss_ref = 0;
      std::vector<float> dlogits_ref(n);
      cpu(logits.values.data(), targets.data(), &loss_ref, dlogits_ref.data(), s.B, s.K);
      dev_loss.poison();
      dev_dlogits.poison();
      cuda(dev_logits.get(), dev_targets.get(), dev_loss.get(), dev_dlogits.get(), s.B, s.K,
           workspace.get(), stream);
      stream.sync();
      check_close("loss", dev_loss, {loss_ref}, kF32SumTol);
      check_close("dlogits", dev_dlogits, dlogits_ref, kBf16Tol);
      dev_loss.poison();
      cuda(dev_logits.get(), dev_targets.get(), dev_loss.get(), nullptr, s.B, s.K, workspace.get(),
           stream);
      stream.sync();
      check_close("loss without gradient", dev_loss, {loss_ref}, kF32SumTol);
    };
    check_loss("bce", bce_with_logits_cpu<float>, bce_with_logits_cuda);
    check_loss("softmax cross-entropy", softmax_cross_entropy_cpu<float>,
               softmax_cross_entropy_cuda);
  }
}

TEST_CASE("cuda patch unfold and fold match the CPU twins", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5007);
  struct ImageShape {
    int64_t B, Cin, H, W, P;
  };
  for (const ImageShape s :
       {ImageShape{2, 3, 224, 224, 16}, ImageShape{1, 3, 160, 160, 14}, ImageShape{1, 3, 35, 33, 8},
        ImageShape{3, 1, 17, 19, 4}, ImageShape{1, 2, 5, 5, 1}}) {
    INFO("B=" << s.B << " Cin=" << s.Cin << " H=" << s.H << " W=" << s.W << " P=" << s.P);
    const size_t n_image = static_cast<size_t>(s.B * s.Cin * s.H * s.W);
    const size_t n_patches =
        static_cast<size_t>(s.B * (s.H / s.P) * (s.W / s.P) * s.Cin * s.P * s.P);
    const std::vector<float> image = random_f32(rng, n_image, -2, 2);
    const Bf16Host dpatches = random_bf16(rng, n_patches, -1, 1);
    std::vector<float> patches_ref(n_patches), dimage_ref(n_image);
    patch_unfold_cpu(image.data(), patches_ref.data(), s.B, s.Cin, s.H, s.W, s.P);
    patch_fold_cpu(dpatches.values.data(), dimage_ref.data(), s.B, s.Cin, s.H, s.W, s.P);

    F32Buffer dev_image(image), dev_dimage(n_image);
    Bf16Buffer dev_patches(n_patches), dev_dpatches(dpatches.bits);
    patch_unfold_cuda(dev_image.get(), dev_patches.get(), s.B, s.Cin, s.H, s.W, s.P, stream);
    patch_fold_cuda(dev_dpatches.get(), dev_dimage.get(), s.B, s.Cin, s.H, s.W, s.P, stream);
    stream.sync();
    check_close("patches", dev_patches, patches_ref, kBf16Tol);
    check_close("dimage", dev_dimage, dimage_ref, kExact);
  }
}

TEST_CASE("cuda position embedding + class token match the CPU twins", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5008);
  // And a batch of 37: the backward sums the batch in 16 sample lanes.
  std::vector<RowShape> shapes = row_shapes();
  shapes.push_back({37, 9, 64, 0});
  for (const RowShape& s : shapes) {
    // Here T is the number of patch tokens N; the output has N + 1 tokens.
    INFO(s.str());
    const int64_t N = s.T;
    const size_t C = static_cast<size_t>(s.C), n_out = static_cast<size_t>(s.B * (N + 1) * s.C);
    // x is the bf16 patch embedding; pos, cls (fp32 master weights), out and dout (the residual
    // stream and its gradient) are fp32, not bf16-rounded, so a kernel reading them as bf16 fails.
    const Bf16Host x = random_bf16(rng, s.n(), -2, 2);
    const std::vector<float> pos = random_f32(rng, static_cast<size_t>(N) * C, -0.1, 0.1);
    const std::vector<float> cls = random_f32(rng, C, -0.1, 0.1);
    const std::vector<float> dout = random_f32(rng, n_out, -1, 1);
    std::vector<float> out_ref(n_out), dx_ref(s.n()), dpos_ref(static_cast<size_t>(N) * C),
        dcls_ref(C);
    pos_embed_cls_forward_cpu(x.values.data(), pos.data(), cls.data(), out_ref.data(), s.B, N,
                              s.C);
    pos_embed_cls_backward_cpu(dout.data(), dx_ref.data(), dpos_ref.data(), dcls_ref.data(), s.B,
                               N, s.C);
    for (float& v : dx_ref) v = bf16_to_float(float_to_bf16(v));  // dx is stored in bf16

    Bf16Buffer dev_x(x.bits, s.offset), dev_dx(s.n(), s.offset);
    F32Buffer dev_pos(pos), dev_cls(cls), dev_out(n_out, s.offset), dev_dout(dout, s.offset);
    F32Buffer dev_dpos(static_cast<size_t>(N) * C), dev_dcls(C);
    pos_embed_cls_forward_cuda(dev_x.get(), dev_pos.get(), dev_cls.get(), dev_out.get(), s.B, N,
                               s.C, stream);
    pos_embed_cls_backward_cuda(dev_dout.get(), dev_dx.get(), dev_dpos.get(), dev_dcls.get(), s.B,
                                N, s.C, stream);
    stream.sync();
    check_close("out", dev_out, out_ref, kExact);  // x + pos in fp32, as the twin adds them
    check_close("dx", dev_dx, dx_ref, kExact);
    check_close("dpos", dev_dpos, dpos_ref, kF32SumTol);
    check_close("dcls", dev_dcls, dcls_ref, kF32SumTol);

    dev_dpos.poison();
    pos_embed_cls_backward_cuda(dev_dout.get(), nullptr, dev_dpos.get(), nullptr, s.B, N, s.C,
                                stream);
    stream.sync();
    check_close("dpos alone", dev_dpos, dpos_ref, kF32SumTol);
  }
}

TEST_CASE("cuda class-token select matches the CPU twins", "[gpu][kernels]") {
  Stream stream;
  Rng rng(5009);
  for (const RowShape& s : row_shapes()) {
    INFO(s.str());
    const size_t n_cls = static_cast<size_t>(s.B * s.C);
    // fp32 both ways (the residual stream and its gradient), not bf16-rounded.
    const std::vector<float> x = random_f32(rng, s.n(), -2, 2);
    const std::vector<float> dout = random_f32(rng, n_cls, -1, 1);
    std::vector<float> out_ref(n_cls), dx_ref(s.n());
    cls_select_forward_cpu(x.data(), out_ref.data(), s.B, s.T, s.C);
    cls_select_backward_cpu(dout.data(), dx_ref.data(), s.B, s.T, s.C);

    F32Buffer dev_x(x, s.offset), dev_out(n_cls, s.offset);
    F32Buffer dev_dout(dout, s.offset), dev_dx(s.n(), s.offset);
    cls_select_forward_cuda(dev_x.get(), dev_out.get(), s.B, s.T, s.C, stream);
    cls_select_backward_cuda(dev_dout.get(), dev_dx.get(), s.B, s.T, s.C, stream);
    stream.sync();
    check_close("out", dev_out, out_ref, kExact);
    check_close("dx", dev_dx, dx_ref, kExact);
  }
}

TEST_CASE("cuda kernels accept empty sizes and reject what they cannot do", "[gpu][kernels]") {
  Stream stream;
  // Nothing to do: no launch, no error, no pointer touched.
  REQUIRE_NOTHROW(cast_f32_to_bf16_cuda(nullptr, nullptr, 0, stream));
  REQUIRE_NOTHROW(gelu_forward_cuda(nullptr, nullptr, 0, stream));
  REQUIRE_NOTHROW(layernorm_forward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0,
                                         384, 1e-6, stream));
  REQUIRE_NOTHROW(layerscale_residual_forward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, 0,
                                                   197, 384, stream));
  REQUIRE_NOTHROW(layerscale_residual_layernorm_forward_cuda(nullptr, nullptr, nullptr, nullptr,
                                                             nullptr, nullptr, nullptr, nullptr,
                                                             nullptr, nullptr, 0, 197, 384, 1e-6,
                                                             stream));
  REQUIRE_NOTHROW(cls_select_backward_cuda(nullptr, nullptr, 0, 197, 384, stream));
  REQUIRE_NOTHROW(patch_unfold_cuda(nullptr, nullptr, 0, 3, 224, 224, 16, stream));
  stream.sync();

  // Sums over no rows are zero.
  F32Buffer dw(384), db(384), dgamma(384), dpos(4 * 8), dcls(8), loss(1);
  F32Buffer fused_dgamma(384), fused_dw(384), fused_db(384), fused_dbias(384);
  layernorm_backward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, dw.get(), db.get(),
                          0, 384, nullptr, stream);
  layerscale_residual_backward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, dgamma.get(), 0,
                                    197, 384, nullptr, stream);
  layerscale_residual_layernorm_backward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                              nullptr, nullptr, nullptr, nullptr, nullptr,
                                              fused_dgamma.get(), fused_dw.get(), fused_db.get(),
                                              fused_dbias.get(), 0, 197, 384, nullptr, stream);
  pos_embed_cls_backward_cuda(nullptr, nullptr, dpos.get(), dcls.get(), 0, 4, 8, stream);
  bce_with_logits_cuda(nullptr, nullptr, loss.get(), nullptr, 0, 1000, nullptr, stream);
  stream.sync();
  const std::vector<float> zeros384(384, 0.f);
  check_close("layernorm dweight", dw, zeros384, kExact);
  check_close("layernorm dbias", db, zeros384, kExact);
  check_close("layerscale dgamma", dgamma, zeros384, kExact);
  check_close("fused dgamma", fused_dgamma, zeros384, kExact);
  check_close("fused LayerNorm dweight", fused_dw, zeros384, kExact);
  check_close("fused LayerNorm dbias", fused_db, zeros384, kExact);
  check_close("fused branch bias gradient", fused_dbias, zeros384, kExact);
  check_close("dpos", dpos, std::vector<float>(4 * 8, 0.f), kExact);
  check_close("dcls", dcls, std::vector<float>(8, 0.f), kExact);
  check_close("loss", loss, {0.f}, kExact);

  // Rows wider than the row kernels hold, negative sizes, a missing workspace.
  CHECK_THROWS_AS(layernorm_forward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 1,
                                         8193, 1e-6, stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(gelu_forward_cuda(nullptr, nullptr, -1, stream), std::invalid_argument);
  CHECK_THROWS_AS(layerscale_residual_layernorm_forward_cuda(nullptr, nullptr, nullptr, nullptr,
                                                             nullptr, nullptr, nullptr, nullptr,
                                                             nullptr, nullptr, 1, 1, 8193, 1e-6,
                                                             stream),
                  std::invalid_argument);
  // A branch selection of more samples than the batch has.
  DeviceBuffer<int32_t> slot(std::vector<int32_t>{0, 1});
  const SampleSlots three_of_two{slot.get(), 3, nullptr};
  CHECK_THROWS_AS(layerscale_residual_layernorm_forward_cuda(
                      nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                      nullptr, nullptr, 2, 1, 384, 1e-6, stream, three_of_two),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      layerscale_residual_layernorm_backward_cuda(
          nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
          nullptr, nullptr, nullptr, nullptr, nullptr, 2, 1, 384, nullptr, stream, three_of_two),
      std::invalid_argument);
  CHECK_THROWS_AS(layernorm_backward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                          dw.get(), nullptr, 4, 384, nullptr, stream),
                  std::invalid_argument);
  stream.sync();
}

namespace {

// A selection of the samples of a batch, in kernels/samples.h's two forms.
struct Selection {
  int64_t B;
  std::vector<int32_t> index;  // the kept samples, ascending
  std::vector<int32_t> slot;   // each sample's place in index, or -1
  int64_t n() const { return static_cast<int64_t>(index.size()); }
};

Selection select_samples(int64_t B, std::vector<int32_t> index) {
  std::vector<int32_t> slot(static_cast<size_t>(B), -1);
  for (size_t j = 0; j < index.size(); ++j)
    slot[static_cast<size_t>(index[j])] = static_cast<int32_t>(j);
  return {B, std::move(index), std::move(slot)};
}

const std::vector<Selection>& sample_selections() {
  static const std::vector<Selection> selections = {
      select_samples(1, {0}),                    // batch 1
      select_samples(1, {}),                     // batch 1, dropped
      select_samples(7, {1, 4, 6}),              // a few, not contiguous, the last included
      select_samples(7, {0, 1, 2, 3, 4, 5, 6}),  // all kept
      select_samples(7, {}),                     // none kept
  };
  return selections;
}

// Random elements of type E, never 0 (a dropped sample's zeros stand out), and their values for
// the CPU twin: bf16 as its bits (exact in fp32), fp32, and plain bytes.
float sample_value(bf16_bits v) { return bf16_to_float(v); }
float sample_value(float v) { return v; }
float sample_value(uint8_t v) { return v; }
void from_value(float v, bf16_bits& out) { out = float_to_bf16(v); }
void from_value(float v, float& out) { out = v; }
void from_value(float v, uint8_t& out) { out = static_cast<uint8_t>(v); }

template <typename E>
std::vector<E> random_samples(Rng& rng, size_t n) {
  std::vector<E> v(n);
  for (E& e : v) {
    if constexpr (std::is_same_v<E, uint8_t>)
      e = static_cast<uint8_t>(rng.uniform(1.0, 256.0));
    else
      from_value(static_cast<float>(rng.uniform(0.25, 2.0) * (rng.uniform() < 0.5 ? -1 : 1)), e);
  }
  return v;
}

// The CPU twin (fp32) on elements of type E: run converts E to fp32 and back, exactly.
template <typename E, typename Twin>
std::vector<E> twin_on(const std::vector<E>& in, size_t n_out, Twin twin) {
  std::vector<float> values(in.size()), out(n_out);
  for (size_t i = 0; i < in.size(); ++i) values[i] = sample_value(in[i]);
  twin(values.data(), out.data());
  std::vector<E> result(n_out);
  for (size_t i = 0; i < n_out; ++i) from_value(out[i], result[i]);
  return result;
}

// got's first want.size() elements are want's bits; the rest (one sample past the output) are
// still the 0xFF poison.
template <typename E>
void check_copied(const std::string& what, const std::vector<E>& got, const std::vector<E>& want) {
  INFO(what);
  REQUIRE(got.size() >= want.size());
  size_t wrong = 0, first_wrong = want.size();
  for (size_t i = 0; i < want.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(E)) != 0) {
      ++wrong;
      first_wrong = std::min(first_wrong, i);
    }
  INFO(wrong << " of " << want.size() << " elements differ, the first at " << first_wrong);
  CHECK(wrong == 0);
  const auto* tail = reinterpret_cast<const unsigned char*>(got.data() + want.size());
  const size_t tail_bytes = (got.size() - want.size()) * sizeof(E);
  CHECK(std::count(tail, tail + tail_bytes, 0xFF) == static_cast<std::ptrdiff_t>(tail_bytes));
}

// Gather and scatter of samples of S elements of type E, the inputs `offset` elements and the
// outputs `out_offset` elements past an aligned allocation, on every selection of
// sample_selections(), against the CPU twins, bit for bit.
template <typename E>
void check_samples_cuda(Rng& rng, const Stream& stream, int64_t S, size_t offset,
                        size_t out_offset) {
  const int64_t sample_bytes = S * static_cast<int64_t>(sizeof(E));
  for (const Selection& sel : sample_selections()) {
    INFO("element size " << sizeof(E) << ", S=" << S << " (" << sample_bytes
                         << " bytes), offset=" << offset << ", out_offset=" << out_offset
                         << ", B=" << sel.B << ", n=" << sel.n());
    const size_t s = static_cast<size_t>(S), B = static_cast<size_t>(sel.B);
    const size_t n = static_cast<size_t>(sel.n());
    const std::vector<E> x = random_samples<E>(rng, B * s), y = random_samples<E>(rng, n * s);
    const std::vector<E> gathered = twin_on(x, n * s, [&](const float* in, float* out) {
      gather_samples_cpu(in, sel.index.data(), out, sel.n(), S);
    });
    const std::vector<E> scattered = twin_on(y, B * s, [&](const float* in, float* out) {
      scatter_samples_cpu(in, sel.slot.data(), out, sel.B, S);
    });

    // Outputs one sample longer than written, poisoned: the extra sample must stay so.
    DeviceBuffer<E> dev_x(x, offset), dev_y(y, offset);
    DeviceBuffer<E> dev_gathered(n * s + s, out_offset), dev_scattered(B * s + s, out_offset);
    DeviceBuffer<int32_t> dev_index(sel.index), dev_slot(sel.slot);
    gather_samples_cuda(dev_x.get(), dev_index.get(), dev_gathered.get(), sel.n(), sample_bytes,
                        stream);
    scatter_samples_cuda(dev_y.get(), dev_slot.get(), dev_scattered.get(), sel.B, sample_bytes,
                         stream);
    stream.sync();
    check_copied("gather", dev_gathered.download(), gathered);
    check_copied("scatter", dev_scattered.download(), scattered);
  }
}

// As above, inputs and outputs equally far past their allocations.
template <typename E>
void check_samples_cuda(Rng& rng, const Stream& stream, int64_t S, size_t offset) {
  check_samples_cuda<E>(rng, stream, S, offset, offset);
}

}  // namespace

TEST_CASE("cuda sample gather and scatter match the CPU twins bit for bit", "[gpu][kernels]") {
  // The copy unit is the widest of 16, 8, 4, 2, 1 bytes dividing the sample and both addresses;
  // each shape below names the one it takes.
  Stream stream;
  Rng rng(5010);
  // bf16, as its bits.
  check_samples_cuda<bf16_bits>(rng, stream, 24, 0);    // 48 bytes: 16-byte units
  check_samples_cuda<bf16_bits>(rng, stream, 2400, 0);  // 300 units: two blocks along a sample
  check_samples_cuda<bf16_bits>(rng, stream, 4, 0);     // 8 bytes: 8-byte units
  check_samples_cuda<bf16_bits>(rng, stream, 3, 0);     // 6 bytes: 2-byte units
  check_samples_cuda<bf16_bits>(rng, stream, 24, 1);    // 2 bytes past 16-byte alignment: 2
  // fp32.
  check_samples_cuda<float>(rng, stream, 12, 0);  // 48 bytes: 16
  check_samples_cuda<float>(rng, stream, 2, 0);   // 8 bytes: 8
  check_samples_cuda<float>(rng, stream, 3, 0);   // 12 bytes: 4
  check_samples_cuda<float>(rng, stream, 12, 1);  // 4 bytes past 16-byte alignment: 4
  // Any element type: bytes.
  check_samples_cuda<uint8_t>(rng, stream, 5, 0);   // 5 bytes: 1
  check_samples_cuda<uint8_t>(rng, stream, 48, 1);  // 1 byte past 16-byte alignment: 1
}

TEST_CASE("cuda sample gather and scatter take the unit both their input and output allow",
          "[gpu][kernels]") {
  // Input and output aligned differently: the unit must divide both addresses. A 16-byte unit
  // chosen from the aligned one alone would load or store uint4 at an address 2 (or 4) bytes
  // past 16-byte alignment, which faults on a GPU (and on the emulated device's host, whose
  // compiler moves the 16-byte units with aligned vector instructions).
  Stream stream;
  Rng rng(5011);
  check_samples_cuda<bf16_bits>(rng, stream, 24, 0, 1);  // input aligned, output 2 bytes off: 2
  check_samples_cuda<bf16_bits>(rng, stream, 24, 1, 0);  // input 2 bytes off, output aligned: 2
  check_samples_cuda<bf16_bits>(rng, stream, 24, 4, 0);  // input 8 bytes off: 8-byte units
  check_samples_cuda<float>(rng, stream, 12, 0, 1);      // output 4 bytes off: 4
}

TEST_CASE("cuda sample gather and scatter accept empty sizes and reject bad arguments",
          "[gpu][kernels]") {
  Stream stream;
  // Nothing to do: no launch, no error, no pointer touched.
  REQUIRE_NOTHROW(gather_samples_cuda(nullptr, nullptr, nullptr, 0, 64, stream));
  REQUIRE_NOTHROW(gather_samples_cuda(nullptr, nullptr, nullptr, 5, 0, stream));
  REQUIRE_NOTHROW(scatter_samples_cuda(nullptr, nullptr, nullptr, 0, 64, stream));
  REQUIRE_NOTHROW(scatter_samples_cuda(nullptr, nullptr, nullptr, 5, 0, stream));
  stream.sync();

  Bf16Buffer x(4 * 8), out(4 * 8);
  DeviceBuffer<int32_t> index(std::vector<int32_t>{0, 2}), dropped(std::vector<int32_t>(4, -1));
  CHECK_THROWS_AS(gather_samples_cuda(x.get(), index.get(), out.get(), -1, 16, stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(gather_samples_cuda(x.get(), index.get(), out.get(), 2, -16, stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(scatter_samples_cuda(x.get(), index.get(), out.get(), -4, 16, stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(scatter_samples_cuda(x.get(), index.get(), out.get(), 4, -16, stream),
                  std::invalid_argument);
  CHECK_THROWS_WITH(gather_samples_cuda(x.get(), nullptr, out.get(), 2, 16, stream),
                    Catch::Contains("gather_samples_cuda") && Catch::Contains("index"));
  CHECK_THROWS_WITH(gather_samples_cuda(x.get(), index.get(), nullptr, 2, 16, stream),
                    Catch::Contains("gather_samples_cuda") && Catch::Contains("out"));
  CHECK_THROWS_WITH(scatter_samples_cuda(x.get(), nullptr, out.get(), 4, 16, stream),
                    Catch::Contains("scatter_samples_cuda") && Catch::Contains("slot"));
  CHECK_THROWS_WITH(scatter_samples_cuda(x.get(), dropped.get(), nullptr, 4, 16, stream),
                    Catch::Contains("scatter_samples_cuda") && Catch::Contains("out"));
  stream.sync();
  // Nothing was launched: out is still poisoned.
  for (bf16_bits v : out.download()) CHECK(v == 0xFFFF);

  // Every sample dropped: y (no kept samples) may be nullptr; out is all zeros.
  scatter_samples_cuda(nullptr, dropped.get(), out.get(), 4, 16, stream);
  stream.sync();
  for (bf16_bits v : out.download()) CHECK(v == 0);
}

TEST_CASE("cuda layerscale residual + layernorm on selected samples matches the CPU twin",
          "[gpu][kernels]") {
  // A branch computed for some samples alone (kernels/layerscale.h's SampleSlots): branch and
  // dbranch hold the rows of samples 0, 2 and 3 (3 dropped, but selected, as a count rounded up
  // selects some), y and dy those of samples 1, 2 and 4, the next branch's.
  Stream stream;
  Rng rng(5020);
  const std::vector<float> keep = {1.25f, 0.f, 1.25f, 0.f, 1.25f};
  const Selection branch_samples = select_samples(5, {0, 2, 3});
  const Selection normed_samples = select_samples(5, {1, 2, 4});
  DeviceBuffer<int32_t> dev_branch_slot(branch_samples.slot), dev_normed_slot(normed_samples.slot);
  const SampleSlots host_slots{branch_samples.slot.data(), 3, normed_samples.slot.data()};
  const SampleSlots slots{dev_branch_slot.get(), 3, dev_normed_slot.get()};
  F32Buffer dev_keep(keep);
  const std::vector<RowShape> shapes = {
      {5, 197, 384, 0},  // a warp per row, 2 slot groups (deit3_small)
      {5, 33, 768, 0},   // 3 slot groups (deit3_base)
      {5, 17, 1024, 0},  // 4 slot groups (deit3_large)
      {5, 13, 1280, 0},  // a block per row (deit3_huge)
      {5, 9, 196, 0},    // C % 8 != 0: scalar path
      {5, 9, 384, 1},    // misaligned pointers: scalar path
  };
  for (const RowShape& s : shapes) {
    INFO(s.str());
    const size_t C = static_cast<size_t>(s.C), rows = static_cast<size_t>(s.rows());
    const size_t selected = 3 * static_cast<size_t>(s.T) * C;  // elements of 3 samples' rows
    const Bf16Host branch = random_bf16(rng, selected, -2, 2);
    const Bf16Host gamma = random_bf16(rng, C, -1, 1);
    const Bf16Host ln_w = random_bf16(rng, C, 0.5, 1.5);
    const Bf16Host ln_b = random_bf16(rng, C, -0.5, 0.5);
    Bf16Buffer dev_gamma(gamma.bits), dev_ln_w(ln_w.bits), dev_ln_b(ln_b.bits);
    Bf16Buffer dev_branch(branch.bits, s.offset);
    {
      INFO("forward");
      const std::vector<float> x = random_f32(rng, s.n(), 1.0, 3.0);
      std::vector<float> out_ref(s.n()), y_ref(selected), mean_ref(rows), rstd_ref(rows);
      layerscale_residual_layernorm_forward_cpu(x.data(), branch.values.data(), gamma.values.data(),
                                                keep.data(), ln_w.values.data(), ln_b.values.data(),
                                                out_ref.data(), y_ref.data(), mean_ref.data(),
                                                rstd_ref.data(), s.B, s.T, s.C, 1e-6, host_slots);
      F32Buffer dev_x(x, s.offset), dev_out(s.n(), s.offset), dev_mean(rows), dev_rstd(rows);
      Bf16Buffer dev_y(selected, s.offset);
      layerscale_residual_layernorm_forward_cuda(
          dev_x.get(), dev_branch.get(), dev_gamma.get(), dev_keep.get(), dev_ln_w.get(),
          dev_ln_b.get(), dev_out.get(), dev_y.get(), dev_mean.get(), dev_rstd.get(), s.B, s.T, s.C,
          1e-6, stream, slots);
      stream.sync();
      check_close("out", dev_out, out_ref, kF32SumTol);
      check_close("y", dev_y, y_ref, kBf16Tol);
      check_close("mean", dev_mean, mean_ref, kF32SumTol);
      check_close("rstd", dev_rstd, rstd_ref, kF32SumTol);
    }
    {
      INFO("backward");
      const std::vector<float> out = random_f32(rng, s.n(), -2, 3);
      const std::vector<float> dout = random_f32(rng, s.n(), -1, 1);
      const Bf16Host dy = random_bf16(rng, selected, -1, 1);
      std::vector<float> y(s.n()), mean(rows), rstd(rows);
      layernorm_forward_cpu(out.data(), ln_w.values.data(), ln_b.values.data(), y.data(),
                            mean.data(), rstd.data(), s.rows(), s.C, 1e-6);
      std::vector<float> dx_ref(s.n()), dbranch_ref(selected), dgamma_ref(C), dw_ref(C), db_ref(C);
      layerscale_residual_layernorm_backward_cpu(
          dout.data(), dy.values.data(), out.data(), branch.values.data(), gamma.values.data(),
          keep.data(), ln_w.values.data(), mean.data(), rstd.data(), dx_ref.data(),
          dbranch_ref.data(), dgamma_ref.data(), dw_ref.data(), db_ref.data(),
          static_cast<float*>(nullptr), s.B, s.T, s.C, host_slots);

      Bf16Buffer dev_dy(dy.bits, s.offset), dev_dbranch(selected, s.offset);
      F32Buffer dev_dout(dout, s.offset), dev_out(out, s.offset), dev_dx(s.n(), s.offset);
      F32Buffer dev_mean(mean), dev_rstd(rstd), dev_dgamma(C), dev_dw(C), dev_db(C), dev_dbias(C);
      F32Buffer workspace(static_cast<size_t>(
          layerscale_residual_layernorm_backward_cuda_workspace_floats(s.B, s.T, s.C, slots)));
      layerscale_residual_layernorm_backward_cuda(
          dev_dout.get(), dev_dy.get(), dev_out.get(), dev_branch.get(), dev_gamma.get(),
          dev_keep.get(), dev_ln_w.get(), dev_mean.get(), dev_rstd.get(), dev_dx.get(),
          dev_dbranch.get(), dev_dgamma.get(), dev_dw.get(), dev_db.get(), dev_dbias.get(), s.B,
          s.T, s.C, workspace.get(), stream, slots);
      stream.sync();
      check_close("dx", dev_dx, dx_ref, kF32SumTol);
      check_close("dbranch", dev_dbranch, dbranch_ref, kBf16Tol);
      check_close("dgamma", dev_dgamma, dgamma_ref, kF32SumTol);
      check_close("dln_weight", dev_dw, dw_ref, kF32SumTol);
      check_close("dln_bias", dev_db, db_ref, kF32SumTol);
      // Sample 3's rows (its slot 2): dropped, so exactly 0.
      const std::vector<float> dbranch = download_float(dev_dbranch);
      CHECK(std::all_of(dbranch.begin() + 2 * s.T * s.C, dbranch.end(),
                        [](float v) { return v == 0.f; }));
      // The bias gradient: the bits the linear layer's own pass over the 3 samples' rows sums.
      CublasLt lt;
      F32Buffer linear_dbias(C);
      linear_backward_cuda(dev_dbranch.get(), nullptr, nullptr, nullptr, nullptr,
                           linear_dbias.get(), 3 * s.T, C, C, lt, stream);
      stream.sync();
      check_same_bits("dbias against the linear layer's", dev_dbias.download(),
                      linear_dbias.download());
    }
  }
}

TEST_CASE("cuda residual + layernorm backward of a branch run on no sample gives dbias 0",
          "[gpu][kernels]") {
  // A selection of no samples (SampleSlots allows 0 of B): the branch and dbranch have no rows,
  // so dbranch may be null while dbias, a sum over none of them, is asked for.
  Stream stream;
  Rng rng(5030);
  const int64_t B = 3, T = 5, C = 384;
  const size_t n = static_cast<size_t>(B * T * C), rows = static_cast<size_t>(B * T);
  const Selection none = select_samples(B, {});
  DeviceBuffer<int32_t> dev_slot(none.slot);
  const SampleSlots slots{dev_slot.get(), 0, nullptr};
  const Bf16Host dy = random_bf16(rng, n, -1, 1), gamma = random_bf16(rng, C, -1, 1);
  const Bf16Host ln_w = random_bf16(rng, C, 0.5, 1.5), ln_b = random_bf16(rng, C, -0.5, 0.5);
  const std::vector<float> out = random_f32(rng, n, -2, 3), dout = random_f32(rng, n, -1, 1);
  std::vector<float> y(n), mean(rows), rstd(rows);
  layernorm_forward_cpu(out.data(), ln_w.values.data(), ln_b.values.data(), y.data(), mean.data(),
                        rstd.data(), static_cast<int64_t>(rows), C, 1e-6);
  Bf16Buffer dev_dy(dy.bits), dev_gamma(gamma.bits), dev_ln_w(ln_w.bits);
  F32Buffer dev_out(out), dev_dout(dout), dev_mean(mean), dev_rstd(rstd), dev_dx(n);
  F32Buffer dev_keep(std::vector<float>(static_cast<size_t>(B), 0.f)), dev_dbias(C);
  F32Buffer workspace(static_cast<size_t>(
      layerscale_residual_layernorm_backward_cuda_workspace_floats(B, T, C, slots)));
  layerscale_residual_layernorm_backward_cuda(
      dev_dout.get(), dev_dy.get(), dev_out.get(), nullptr, dev_gamma.get(), dev_keep.get(),
      dev_ln_w.get(), dev_mean.get(), dev_rstd.get(), dev_dx.get(), nullptr, nullptr, nullptr,
      nullptr, dev_dbias.get(), B, T, C, workspace.get(), stream, slots);
  stream.sync();
  CHECK(dev_dbias.download() == std::vector<float>(C, 0.f));
  // dx: dout plus what flows back through the LayerNorm, as the CPU twin without a branch.
  std::vector<float> dx_ref(n);
  layernorm_backward_cpu(dy.values.data(), out.data(), ln_w.values.data(), mean.data(), rstd.data(),
                         dx_ref.data(), static_cast<float*>(nullptr), static_cast<float*>(nullptr),
                         static_cast<int64_t>(rows), C);
  for (size_t i = 0; i < n; ++i) dx_ref[i] += dout[i];
  check_close("dx", dev_dx, dx_ref, kF32SumTol);
}
