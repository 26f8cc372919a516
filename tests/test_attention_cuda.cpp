// [gpu] checks of the fused attention kernels (kernels/cuda/attention.cu) against the CPU twin
// (kernels/cpu/attention.cpp, run in float on the same bf16-rounded inputs), as DESIGN.md says:
// fresh random inputs, device outputs poisoned with NaN before every call, every element compared,
// no NaN or infinity allowed. Shapes: the ViT head dims 32, 64, 80, 128 at the token counts of
// 224, 192, 128 and 384 px inputs with 16-px patches (197, 145, 65, 577) and ViT-H's 257 (224 px,
// 14-px patches), and awkward ones (T = 1, T = 5, odd T,
// batch 1, one head), so every partial tile and every tile-count path runs.
#include <cuda_runtime.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/rng.h"
#include "kernels/attention.h"
#include "kernels/bf16.h"
#include "tests/cuda_test_util.h"

using namespace deit::kernels;
using deit::Rng;
using namespace deit::test;

namespace {

// DESIGN.md: outputs that are bf16 or computed from bf16 inputs. The kernels round the
// probabilities (and dS) to bf16 before the tensor cores multiply them, a relative error of at
// most 2^-9 per term that mostly averages out: ~1e-3 expected.
constexpr double kBf16Tol = 1e-2;
// lse is fp32 computed from the exact bf16 inputs: the fp32 dot products (exact products, fp32
// sums over at most 128 terms), exp2/log2 within a few ulp and one ln 2 <-> log2 e change of base
// put it within ~1e-6 of the twin's value, relative to |lse| = O(1). 1e-3 leaves a wide margin for
// GPU math while a wrong row, head or mask (errors of O(0.1) and more) still fails.
constexpr double kLseTol = 1e-3;

struct AttnShape {
  int64_t B, T, H, D;
  size_t qkv() const { return static_cast<size_t>(B * T * 3 * H * D); }
  size_t out() const { return static_cast<size_t>(B * T * H * D); }
  size_t lse() const { return static_cast<size_t>(B * H * T); }
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(D)); }
  std::string str() const {
    std::ostringstream s;
    s << "B=" << B << " T=" << T << " H=" << H << " D=" << D;
    return s.str();
  }
};

const std::vector<AttnShape>& attn_shapes() {
  static const std::vector<AttnShape> shapes = {
      {2, 197, 6, 64},   // ViT-S at 224
      {1, 65, 16, 80},   // ViT-H at 128 (head dim 80), batch 1
      {3, 145, 12, 64},  // ViT-B at 192 (patch 16)
      {1, 257, 16, 80},  // ViT-H at 224 (patch 14)
      {2, 257, 4, 128},  // head dim 128 (its 32-row inner tiles), T = 256 + 1
      {1, 577, 2, 32},   // ViT at 384, head dim 32, many tiles
      {4, 5, 3, 64},     // one partial tile
      {1, 1, 1, 64},     // one token: softmax of one score
      {2, 101, 16, 80},  // odd T, head dim 80
      // The last tiles of these hold three live 16-row groups (T mod 64 = 37: one warp only
      // loads), two (17: two warps a group, each taking half of every inner tile) and, at head
      // dim 128, a 32-row inner tile cut at 5 rows, for the head dims above that only see a last
      // tile of one row (all four warps sharing its group); and ViT-B at 384 px.
      {1, 101, 2, 128},
      {2, 145, 3, 32},
      {1, 577, 2, 64},
  };
  return shapes;
}

// One of dq, dk, dv (part 0, 1, 2) of a packed (B, T, 3, H, D) buffer, as a contiguous vector.
std::vector<float> qkv_part(const std::vector<float>& packed, const AttnShape& s, int part) {
  const size_t C = static_cast<size_t>(s.H * s.D), rows = static_cast<size_t>(s.B * s.T);
  std::vector<float> v(rows * C);
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < C; ++c) v[r * C + c] = packed[(r * 3 + part) * C + c];
  return v;
}

// Like check_close, with the error measured against max(||ref||, floor): with T = 1 the exact dq
// and dk are 0 (the softmax of one score has no gradient) and both sides only hold rounding noise,
// so they are compared against a scale taken from the whole gradient instead of their own.
void check_close_floor(const std::string& what, const std::vector<float>& got,
                       const std::vector<float>& ref, double tol, double floor) {
  REQUIRE(got.size() == ref.size());
  size_t bad = 0;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) ++bad;
    diff += (static_cast<double>(got[i]) - ref[i]) * (static_cast<double>(got[i]) - ref[i]);
    norm += static_cast<double>(ref[i]) * ref[i];
  }
  const double rel = std::sqrt(diff) / std::max(std::sqrt(norm), floor);
  INFO(what << ": " << bad << " non-finite of " << got.size() << ", relative error " << rel
            << " (tolerance " << tol << ", floor " << floor << ")");
  CHECK(bad == 0);
  CHECK(rel <= tol);
}

double norm(const std::vector<float>& v) {
  double n = 0;
  for (float x : v) n += static_cast<double>(x) * x;
  return std::sqrt(n);
}

// Rounds fp32 values to bf16: the bits for the device, the rounded values for the CPU twin.
Bf16Host round_to_bf16(const std::vector<float>& v) {
  Bf16Host h{std::vector<bf16_bits>(v.size()), std::vector<float>(v.size())};
  for (size_t i = 0; i < v.size(); ++i) {
    h.bits[i] = float_to_bf16(v[i]);
    h.values[i] = bf16_to_float(h.bits[i]);
  }
  return h;
}

// Scores q.k * scale have a standard deviation of ~1.3 with q, k uniform in [-2, 2] (variance
// 16/9 per product, times D, times scale^2 = 1/D): peaked enough that the online softmax rescales
// across tiles, flat enough that every key matters.
constexpr double kQkvRange = 2.0;

// ---------------------------------------------------------------------------------------------
// The two attentions: every token's queries (kernels/cuda/attention.cu), and the class token's
// alone (kernels/cuda/class_attention.cu, the last block's: token 0's query against every key and
// value, out (B, H, D) and lse (B, H)), each against its CPU twins. The class token's kernel takes
// 4, 8 or 16 lanes a key (head dim 32, 64, 80 / 128) and a block 32, 16 or 8 keys a round: the
// shapes give every head dim one round or less (T = 1, 5), several with a partial last one, and
// blocks whose warps see no key at all (T = 5: three of the four warps at head dim 64).

const std::vector<AttnShape>& class_attn_shapes() {
  static const std::vector<AttnShape> shapes = [] {
    std::vector<AttnShape> s = attn_shapes();
    // One token at every head dim: a softmax of one score, every warp but the first idle.
    for (const AttnShape& one :
         {AttnShape{3, 1, 2, 32}, AttnShape{2, 1, 3, 80}, AttnShape{1, 1, 2, 128}})
      s.push_back(one);
    return s;
  }();
  return shapes;
}

struct Attention {
  const char* name;
  bool class_token;

  size_t out(const AttnShape& s) const {
    return class_token ? static_cast<size_t>(s.B * s.H * s.D) : s.out();
  }
  size_t lse(const AttnShape& s) const {
    return class_token ? static_cast<size_t>(s.B * s.H) : s.lse();
  }
  const std::vector<AttnShape>& shapes() const {
    return class_token ? class_attn_shapes() : attn_shapes();
  }
  void forward_cpu(const AttnShape& s, const float* qkv, float* out, float* lse) const {
    (class_token ? class_attention_forward_cpu<float>
                 : attention_forward_cpu<float>)(qkv, out, lse, s.B, s.T, s.H, s.D, s.scale());
  }
  void backward_cpu(const AttnShape& s, const float* qkv, const float* out, const float* lse,
                    const float* dout, float* dqkv, float* dbias) const {
    (class_token ? class_attention_backward_cpu<float>
                 : attention_backward_cpu<float>)(qkv, out, lse, dout, dqkv, dbias, s.B, s.T, s.H,
                                                  s.D, s.scale());
  }
  void forward_cuda(const AttnShape& s, const bf16_bits* qkv, bf16_bits* out, float* lse,
                    cudaStream_t stream) const {
    (class_token ? class_attention_forward_cuda : attention_forward_cuda)(
        qkv, out, lse, s.B, s.T, s.H, s.D, s.scale(), stream);
  }
  int64_t workspace_floats(const AttnShape& s) const {
    return class_token ? class_attention_backward_cuda_workspace_floats(s.B, s.H, s.D)
                       : attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D);
  }
  void backward_cuda(const AttnShape& s, const bf16_bits* qkv, const bf16_bits* out,
                     const float* lse, const bf16_bits* dout, bf16_bits* dqkv, float* dbias,
                     float* workspace, cudaStream_t stream) const {
    if (class_token)
      class_attention_backward_cuda(qkv, out, lse, dout, dqkv, dbias, s.B, s.T, s.H, s.D, s.scale(),
                                    workspace, stream);
    else
      attention_backward_cuda(qkv, out, lse, dout, dqkv, dbias, s.B, s.T, s.H, s.D, s.scale(),
                              workspace, stream);
  }
};

const Attention kAttentions[] = {{"every token's attention", false},
                                 {"the class token's attention", true}};

// What a forward + backward chain wrote on the device, downloaded: a later run must give the same
// bits.
struct ChainedRun {
  std::vector<bf16_bits> out, dqkv;
  std::vector<float> lse, dbias;
  ChainedRun(const Bf16Buffer& out_, const F32Buffer& lse_, const Bf16Buffer& dqkv_,
             const F32Buffer& dbias_)
      : out(out_.download()),
        dqkv(dqkv_.download()),
        lse(lse_.download()),
        dbias(dbias_.download()) {}
  void check_same_bits_as(const ChainedRun& first, const std::string& run) const {
    check_same_bits("out, " + run, out, first.out);
    check_same_bits("lse, " + run, lse, first.lse);
    check_same_bits("dqkv, " + run, dqkv, first.dqkv);
    check_same_bits("dbias, " + run, dbias, first.dbias);
  }
};

}  // namespace

TEST_CASE("cuda attention forward matches the CPU twin", "[gpu][kernels][attention]") {
  Stream stream;
  Rng rng(6001);
  for (const Attention& a : kAttentions)
    for (const AttnShape& s : a.shapes()) {
      INFO(a.name << " " << s.str());
      const Bf16Host qkv = random_bf16(rng, s.qkv(), -kQkvRange, kQkvRange);
      std::vector<float> out_ref(a.out(s)), lse_ref(a.lse(s));
      a.forward_cpu(s, qkv.values.data(), out_ref.data(), lse_ref.data());

      Bf16Buffer dev_qkv(qkv.bits), dev_out(a.out(s));
      F32Buffer dev_lse(a.lse(s));
      a.forward_cuda(s, dev_qkv.get(), dev_out.get(), dev_lse.get(), stream);
      stream.sync();
      check_close("out", dev_out, out_ref, kBf16Tol);
      check_close("lse", dev_lse, lse_ref, kLseTol);

      // Inference (no lse): the same output, bit for bit.
      const std::vector<bf16_bits> out_first = dev_out.download();
      dev_out.poison();
      a.forward_cuda(s, dev_qkv.get(), dev_out.get(), nullptr, stream);
      stream.sync();
      check_same_bits("out without lse", dev_out.download(), out_first);
    }
}

TEST_CASE("cuda attention backward matches the CPU twin", "[gpu][kernels][attention]") {
  Stream stream;
  Rng rng(6002);
  for (const Attention& a : kAttentions)
    for (const AttnShape& s : a.shapes()) {
      INFO(a.name << " " << s.str());
      // Backward alone: both sides get the same qkv, the same out (the twin's, rounded to bf16 as
      // the device stores it), the same fp32 lse and the same dout.
      const Bf16Host qkv = random_bf16(rng, s.qkv(), -kQkvRange, kQkvRange);
      std::vector<float> out_f(a.out(s)), lse(a.lse(s));
      a.forward_cpu(s, qkv.values.data(), out_f.data(), lse.data());
      const Bf16Host out = round_to_bf16(out_f);
      const Bf16Host dout = random_bf16(rng, a.out(s), -1, 1);
      std::vector<float> dqkv_ref(s.qkv()), dbias_ref(3 * s.H * s.D);
      a.backward_cpu(s, qkv.values.data(), out.values.data(), lse.data(), dout.values.data(),
                     dqkv_ref.data(), dbias_ref.data());

      Bf16Buffer dev_qkv(qkv.bits), dev_out(out.bits), dev_dout(dout.bits), dev_dqkv(s.qkv());
      F32Buffer dev_lse(lse), dev_dbias(dbias_ref.size());
      F32Buffer workspace(static_cast<size_t>(a.workspace_floats(s)));
      a.backward_cuda(s, dev_qkv.get(), dev_out.get(), dev_lse.get(), dev_dout.get(),
                      dev_dqkv.get(), dev_dbias.get(), workspace.get(), stream);
      stream.sync();
      // The qkv bias gradient: the column sums of dqkv, each block's of its rows before rounding.
      check_close("dbias", dev_dbias, dbias_ref, kBf16Tol);
      const std::vector<float> dqkv = download_float(dev_dqkv);
      check_close("dqkv", dqkv, dqkv_ref, kBf16Tol);
      // Each part on its own, so an error confined to dq, dk or dv cannot hide in the others'
      // norm.
      const double floor = 1e-3 * norm(dqkv_ref);
      const char* names[3] = {"dq", "dk", "dv"};
      for (int part = 0; part < 3; ++part)
        check_close_floor(names[part], qkv_part(dqkv, s, part), qkv_part(dqkv_ref, s, part),
                          kBf16Tol, floor);
      if (a.class_token) {
        // dq past the class token: exactly zero (the buffer started as NaN), not merely small.
        const std::vector<float> dq = qkv_part(dqkv, s, 0);
        const size_t C = static_cast<size_t>(s.H * s.D);
        size_t nonzero = 0;
        for (size_t b = 0; b < static_cast<size_t>(s.B); ++b)
          for (size_t t = 1; t < static_cast<size_t>(s.T); ++t)
            for (size_t c = 0; c < C; ++c)
              if (dq[(b * s.T + t) * C + c] != 0.f) ++nonzero;
        INFO(nonzero << " elements of dq past token 0 are not 0");
        CHECK(nonzero == 0);
      }

      // Without the bias gradient: the same dqkv, bit for bit.
      const std::vector<bf16_bits> dqkv_first = dev_dqkv.download();
      dev_dqkv.poison();
      a.backward_cuda(s, dev_qkv.get(), dev_out.get(), dev_lse.get(), dev_dout.get(),
                      dev_dqkv.get(), nullptr, workspace.get(), stream);
      stream.sync();
      check_same_bits("dqkv without dbias", dev_dqkv.download(), dqkv_first);
    }
}

TEST_CASE("cuda attention forward + backward are deterministic", "[gpu][kernels][attention]") {
  Stream stream;
  Rng rng(6003);
  for (const Attention& a : kAttentions)
    for (const AttnShape& s : {AttnShape{2, 197, 6, 64}, AttnShape{2, 257, 4, 128},
                               AttnShape{1, 577, 2, 32}, AttnShape{2, 101, 16, 80}}) {
      INFO(a.name << " " << s.str());
      const Bf16Host qkv = random_bf16(rng, s.qkv(), -kQkvRange, kQkvRange);
      const Bf16Host dout = random_bf16(rng, a.out(s), -1, 1);
      Bf16Buffer dev_qkv(qkv.bits), dev_dout(dout.bits), dev_out(a.out(s)), dev_dqkv(s.qkv());
      F32Buffer dev_lse(a.lse(s)), dev_dbias(3 * s.H * s.D);
      F32Buffer workspace(static_cast<size_t>(a.workspace_floats(s)));
      // The chain as training runs it: the device forward's out and lse feed the device backward.
      const auto run = [&] {
        dev_out.poison();
        dev_lse.poison();
        dev_dqkv.poison();
        dev_dbias.poison();
        workspace.poison();
        a.forward_cuda(s, dev_qkv.get(), dev_out.get(), dev_lse.get(), stream);
        a.backward_cuda(s, dev_qkv.get(), dev_out.get(), dev_lse.get(), dev_dout.get(),
                        dev_dqkv.get(), dev_dbias.get(), workspace.get(), stream);
        stream.sync();
      };
      run();
      const ChainedRun first(dev_out, dev_lse, dev_dqkv, dev_dbias);
      run();
      ChainedRun(dev_out, dev_lse, dev_dqkv, dev_dbias).check_same_bits_as(first, "second run");

      if (!a.class_token) {
        // A batch an image at a time (its dS in a workspace of one image's): the same bits.
        const int64_t sliced_floats =
            attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D, 1);
        if (s.B > 1) CHECK(sliced_floats < static_cast<int64_t>(workspace.size()));
        attention_backward_cuda(dev_qkv.get(), dev_out.get(), dev_lse.get(), dev_dout.get(),
                                dev_dqkv.get(), dev_dbias.get(), s.B, s.T, s.H, s.D, s.scale(),
                                workspace.get(), stream, 1);
        stream.sync();
        check_same_bits("dqkv an image at a time", dev_dqkv.download(), first.dqkv);
        check_same_bits("dbias an image at a time", dev_dbias.download(), first.dbias);
      }

      // And the chain is right: against the CPU twins on the device's own out and lse.
      std::vector<float> out_ref(a.out(s)), lse_ref(a.lse(s)), dqkv_ref(s.qkv()),
          dbias_ref(3 * s.H * s.D);
      a.forward_cpu(s, qkv.values.data(), out_ref.data(), lse_ref.data());
      check_close("chained out", dev_out, out_ref, kBf16Tol);
      a.backward_cpu(s, qkv.values.data(), download_float(dev_out).data(), first.lse.data(),
                     dout.values.data(), dqkv_ref.data(), dbias_ref.data());
      check_close("chained dqkv", dev_dqkv, dqkv_ref, kBf16Tol);
      check_close("chained dbias", dev_dbias, dbias_ref, kBf16Tol);
    }
}

TEST_CASE("cuda attention backward in batch slices shortens the last slice to the batch's end",
          "[gpu][kernels][attention]") {
  // Batch 3 with room for the dS of 2 images: slices of 2 and 1 images. The last slice must run
  // over the one image left, not a whole slice's worth past the end of the batch; the result is
  // the one slice's (every image at once), bit for bit, and the CPU twin's.
  Stream stream;
  Rng rng(6004);
  const AttnShape s{3, 65, 2, 64};
  const int64_t image_scores_bytes = s.H * s.T * ((s.T + 15) / 16 * 16) * 2;  // bf16 dS^T
  const int64_t two_images = 2 * image_scores_bytes;
  // The workspace for slices of 2 is smaller than for the whole batch, larger than for 1.
  REQUIRE(attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D, two_images) <
          attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D));
  REQUIRE(attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D, two_images) >
          attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D, image_scores_bytes));
  const Bf16Host qkv = random_bf16(rng, s.qkv(), -kQkvRange, kQkvRange);
  std::vector<float> out_f(s.out()), lse(s.lse());
  attention_forward_cpu<float>(qkv.values.data(), out_f.data(), lse.data(), s.B, s.T, s.H, s.D,
                               s.scale());
  const Bf16Host out = round_to_bf16(out_f);
  const Bf16Host dout = random_bf16(rng, s.out(), -1, 1);
  std::vector<float> dqkv_ref(s.qkv()), dbias_ref(3 * s.H * s.D);
  attention_backward_cpu<float>(qkv.values.data(), out.values.data(), lse.data(),
                                dout.values.data(), dqkv_ref.data(), dbias_ref.data(), s.B, s.T,
                                s.H, s.D, s.scale());

  Bf16Buffer dev_qkv(qkv.bits), dev_out(out.bits), dev_dout(dout.bits), dev_dqkv(s.qkv());
  F32Buffer dev_lse(lse), dev_dbias(dbias_ref.size());
  F32Buffer whole_workspace(
      static_cast<size_t>(attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D)));
  attention_backward_cuda(dev_qkv.get(), dev_out.get(), dev_lse.get(), dev_dout.get(),
                          dev_dqkv.get(), dev_dbias.get(), s.B, s.T, s.H, s.D, s.scale(),
                          whole_workspace.get(), stream);
  stream.sync();
  const std::vector<bf16_bits> whole_dqkv = dev_dqkv.download();
  const std::vector<float> whole_dbias = dev_dbias.download();

  // Tight: the workspace for slices of 2 and not a float more.
  F32Buffer sliced_workspace(static_cast<size_t>(
      attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D, two_images)));
  dev_dqkv.poison();
  dev_dbias.poison();
  attention_backward_cuda(dev_qkv.get(), dev_out.get(), dev_lse.get(), dev_dout.get(),
                          dev_dqkv.get(), dev_dbias.get(), s.B, s.T, s.H, s.D, s.scale(),
                          sliced_workspace.get(), stream, two_images);
  stream.sync();
  check_same_bits("dqkv in slices of 2 and 1", dev_dqkv.download(), whole_dqkv);
  check_same_bits("dbias in slices of 2 and 1", dev_dbias.download(), whole_dbias);
  check_close("dqkv", dev_dqkv, dqkv_ref, kBf16Tol);
  check_close("dbias", dev_dbias, dbias_ref, kBf16Tol);
}

TEST_CASE("cuda attention accepts empty sizes and rejects what it cannot do",
          "[gpu][kernels][attention]") {
  Stream stream;
  // Nothing to do: returns without touching the (null) buffers.
  attention_forward_cuda(nullptr, nullptr, nullptr, 0, 197, 6, 64, 0.125, stream);
  attention_forward_cuda(nullptr, nullptr, nullptr, 2, 0, 6, 64, 0.125, stream);
  attention_backward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 2, 0, 6, 64, 0.125,
                          nullptr, stream);
  // The bias gradient of no rows: zeros.
  F32Buffer empty_dbias(3 * 6 * 64);
  attention_backward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, empty_dbias.get(), 0, 197, 6,
                          64, 0.125, nullptr, stream);
  stream.sync();
  CHECK(empty_dbias.download() == std::vector<float>(3 * 6 * 64, 0.f));

  const AttnShape s{1, 9, 2, 64};
  Bf16Buffer qkv(s.qkv() + 8), out(s.out() + 8), dout(s.out()), dqkv(s.qkv());
  F32Buffer lse(s.lse()),
      workspace(static_cast<size_t>(attention_backward_cuda_workspace_floats(s.B, s.T, s.H, s.D)) +
                4);
  // Head dims other than 32, 64, 80, 128.
  CHECK_THROWS_AS(attention_forward_cuda(qkv.get(), out.get(), lse.get(), 1, 9, 2, 48, 0.1,
                                         stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(attention_backward_cuda(qkv.get(), out.get(), lse.get(), dout.get(), dqkv.get(),
                                          nullptr, 1, 9, 2, 256, 0.1, workspace.get(), stream),
                  std::invalid_argument);
  // bf16 buffers off 16-byte alignment.
  CHECK_THROWS_AS(attention_forward_cuda(qkv.get() + 1, out.get(), lse.get(), s.B, s.T, s.H, s.D,
                                         s.scale(), stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(attention_forward_cuda(qkv.get(), out.get() + 4, lse.get(), s.B, s.T, s.H, s.D,
                                         s.scale(), stream),
                  std::invalid_argument);
  // A budget for dS that holds nothing.
  CHECK_THROWS_AS(
      attention_backward_cuda(qkv.get(), out.get(), lse.get(), dout.get(), dqkv.get(), nullptr, s.B,
                              s.T, s.H, s.D, s.scale(), workspace.get(), stream, 0),
      std::invalid_argument);
  // Backward without its workspace, with one off 16-byte alignment, or without lse.
  CHECK_THROWS_AS(attention_backward_cuda(qkv.get(), out.get(), lse.get(), dout.get(), dqkv.get(),
                                          nullptr, s.B, s.T, s.H, s.D, s.scale(), nullptr, stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      attention_backward_cuda(qkv.get(), out.get(), lse.get(), dout.get(), dqkv.get(), nullptr, s.B,
                              s.T, s.H, s.D, s.scale(), workspace.get() + 1, stream),
      std::invalid_argument);
  CHECK_THROWS_AS(
      attention_backward_cuda(qkv.get(), out.get(), nullptr, dout.get(), dqkv.get(), nullptr, s.B,
                              s.T, s.H, s.D, s.scale(), workspace.get(), stream),
      std::invalid_argument);
  stream.sync();
}

TEST_CASE("cuda class-token attention accepts empty sizes and rejects what it cannot do",
          "[gpu][kernels][attention]") {
  Stream stream;
  // Nothing to do: returns without touching the (null) buffers.
  class_attention_forward_cuda(nullptr, nullptr, nullptr, 0, 197, 6, 64, 0.125, stream);
  class_attention_forward_cuda(nullptr, nullptr, nullptr, 2, 0, 6, 64, 0.125, stream);
  class_attention_backward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 2, 0, 6, 64,
                                0.125, nullptr, stream);
  // The bias gradient of no rows: zeros.
  F32Buffer empty_dbias(3 * 6 * 64);
  class_attention_backward_cuda(nullptr, nullptr, nullptr, nullptr, nullptr, empty_dbias.get(), 0,
                                197, 6, 64, 0.125, nullptr, stream);
  stream.sync();
  CHECK(empty_dbias.download() == std::vector<float>(3 * 6 * 64, 0.f));

  const AttnShape s{1, 9, 2, 64};
  Bf16Buffer qkv(s.qkv() + 8), out(static_cast<size_t>(s.B * s.H * s.D) + 8),
      dout(static_cast<size_t>(s.B * s.H * s.D)), dqkv(s.qkv());
  F32Buffer lse(static_cast<size_t>(s.B * s.H)), dbias(3 * s.H * s.D),
      workspace(static_cast<size_t>(class_attention_backward_cuda_workspace_floats(s.B, s.H, s.D)) +
                4);
  CHECK(class_attention_backward_cuda_workspace_floats(s.B, s.H, s.D) >= 3 * s.B * s.H * s.D);
  // Head dims other than 32, 64, 80, 128.
  CHECK_THROWS_AS(
      class_attention_forward_cuda(qkv.get(), out.get(), lse.get(), 1, 9, 2, 48, 0.1, stream),
      std::invalid_argument);
  CHECK_THROWS_AS(
      class_attention_backward_cuda(qkv.get(), out.get(), lse.get(), dout.get(), dqkv.get(),
                                    nullptr, 1, 9, 2, 256, 0.1, workspace.get(), stream),
      std::invalid_argument);
  // Negative sizes.
  CHECK_THROWS_AS(
      class_attention_forward_cuda(qkv.get(), out.get(), lse.get(), 1, -1, 2, 64, 0.1, stream),
      std::invalid_argument);
  // bf16 buffers off 16-byte alignment.
  CHECK_THROWS_AS(class_attention_forward_cuda(qkv.get() + 1, out.get(), lse.get(), s.B, s.T, s.H,
                                               s.D, s.scale(), stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(class_attention_forward_cuda(qkv.get(), out.get() + 4, lse.get(), s.B, s.T, s.H,
                                               s.D, s.scale(), stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(class_attention_backward_cuda(qkv.get(), out.get(), lse.get(), dout.get(),
                                                dqkv.get() + 4, nullptr, s.B, s.T, s.H, s.D,
                                                s.scale(), workspace.get(), stream),
                  std::invalid_argument);
  // The bias gradient without its workspace, or with one off 16-byte alignment; backward
  // without lse.
  CHECK_THROWS_AS(
      class_attention_backward_cuda(qkv.get(), out.get(), lse.get(), dout.get(), dqkv.get(),
                                    dbias.get(), s.B, s.T, s.H, s.D, s.scale(), nullptr, stream),
      std::invalid_argument);
  CHECK_THROWS_AS(class_attention_backward_cuda(qkv.get(), out.get(), lse.get(), dout.get(),
                                                dqkv.get(), dbias.get(), s.B, s.T, s.H, s.D,
                                                s.scale(), workspace.get() + 1, stream),
                  std::invalid_argument);
  CHECK_THROWS_AS(
      class_attention_backward_cuda(qkv.get(), out.get(), nullptr, dout.get(), dqkv.get(), nullptr,
                                    s.B, s.T, s.H, s.D, s.scale(), workspace.get(), stream),
      std::invalid_argument);
  stream.sync();
}
