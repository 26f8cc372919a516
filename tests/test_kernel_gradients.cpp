// Every backward kernel of the CPU reference against central finite differences of its forward,
// in double precision. Each gradient is checked for every input that has one. Outputs start as
// NaN, so a gradient that is left unwritten or accumulated into fails.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/rng.h"
#include "kernels/attention.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/layerscale.h"
#include "kernels/linear.h"
#include "kernels/losses.h"
#include "kernels/tokens.h"
#include "tests/gradcheck.h"

using namespace deit::kernels;
using deit::Rng;
using deit::test::dot;
using deit::test::gradient_error;
using deit::test::kGradTolerance;
using deit::test::nan_vector;
using deit::test::random_vector;
using Vec = std::vector<double>;

TEST_CASE("linear backward matches finite differences", "[gradcheck]") {
  const int64_t M = 4, K = 5, N = 3;
  Rng rng(101);
  Vec x = random_vector(rng, M * K), w = random_vector(rng, N * K), b = random_vector(rng, N);
  const Vec g = random_vector(rng, M * N);
  Vec y(M * N);
  auto loss = [&] {
    linear_forward_cpu(x.data(), w.data(), b.data(), y.data(), M, K, N);
    return dot(y, g);
  };
  Vec dx = nan_vector(M * K), dw = nan_vector(N * K), db = nan_vector(N);
  linear_backward_cpu(g.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), M, K, N);
  CHECK(gradient_error(x, dx, loss) < kGradTolerance);
  CHECK(gradient_error(w, dw, loss) < kGradTolerance);
  CHECK(gradient_error(b, db, loss) < kGradTolerance);
}

TEST_CASE("gelu backward matches finite differences", "[gradcheck]") {
  const int64_t n = 40;
  Rng rng(102);
  Vec x = random_vector(rng, n, -4.0, 4.0);
  const Vec g = random_vector(rng, n);
  Vec y(n);
  auto loss = [&] {
    gelu_forward_cpu(x.data(), y.data(), n);
    return dot(y, g);
  };
  Vec dx = nan_vector(n);
  gelu_backward_cpu(g.data(), x.data(), dx.data(), n);
  CHECK(gradient_error(x, dx, loss) < kGradTolerance);
}

TEST_CASE("layernorm backward matches finite differences", "[gradcheck]") {
  const int64_t rows = 3, C = 7;
  const double eps = 1e-6;
  Rng rng(103);
  Vec x = random_vector(rng, rows * C, -2.0, 3.0), w = random_vector(rng, C, 0.5, 1.5),
      b = random_vector(rng, C);
  const Vec g = random_vector(rng, rows * C);
  Vec y(rows * C), mean(rows), rstd(rows);
  auto loss = [&] {
    layernorm_forward_cpu(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), rows, C,
                          eps);
    return dot(y, g);
  };
  loss();  // mean and rstd of the unperturbed x, as backward expects
  Vec dx = nan_vector(rows * C), dw = nan_vector(C), db = nan_vector(C);
  layernorm_backward_cpu(g.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(),
                         dw.data(), db.data(), rows, C);
  CHECK(gradient_error(x, dx, loss) < kGradTolerance);
  CHECK(gradient_error(w, dw, loss) < kGradTolerance);
  CHECK(gradient_error(b, db, loss) < kGradTolerance);
}

TEST_CASE("attention backward matches finite differences", "[gradcheck][attention]") {
  // T = 5 and D = 3 divide nothing, so no tiling assumption can hide here.
  const int64_t B = 2, Tn = 5, H = 2, D = 3;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  Rng rng(104);
  Vec qkv = random_vector(rng, B * Tn * 3 * H * D, -2.0, 2.0);  // peaked enough to matter
  const Vec g = random_vector(rng, B * Tn * H * D);
  Vec out(B * Tn * H * D), lse(B * H * Tn);
  auto loss = [&] {
    attention_forward_cpu(qkv.data(), out.data(), lse.data(), B, Tn, H, D, scale);
    return dot(out, g);
  };
  loss();
  Vec dqkv = nan_vector(qkv.size()), dbias = nan_vector(3 * H * D);
  attention_backward_cpu(qkv.data(), out.data(), lse.data(), g.data(), dqkv.data(), dbias.data(), B,
                         Tn, H, D, scale);
  CHECK(gradient_error(qkv, dqkv, loss) < kGradTolerance);

  // dbias: the gradient of a bias added to every row of qkv (the qkv linear layer's).
  Vec bias = random_vector(rng, 3 * H * D);
  auto biased = [&] {
    Vec v = qkv;
    for (size_t i = 0; i < v.size(); ++i) v[i] += bias[i % bias.size()];
    return v;
  };
  auto loss_of_bias = [&] {
    attention_forward_cpu(biased().data(), out.data(), lse.data(), B, Tn, H, D, scale);
    return dot(out, g);
  };
  loss_of_bias();  // out and lse at the unperturbed bias
  attention_backward_cpu(biased().data(), out.data(), lse.data(), g.data(), dqkv.data(),
                         dbias.data(), B, Tn, H, D, scale);
  CHECK(gradient_error(bias, dbias, loss_of_bias) < kGradTolerance);
}

TEST_CASE("class-token attention backward matches finite differences", "[gradcheck][attention]") {
  const int64_t B = 2, Tn = 5, H = 2, D = 3;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  Rng rng(106);
  Vec qkv = random_vector(rng, B * Tn * 3 * H * D, -2.0, 2.0);
  const Vec g = random_vector(rng, B * H * D);
  Vec out(B * H * D), lse(B * H);
  auto loss = [&] {
    class_attention_forward_cpu(qkv.data(), out.data(), lse.data(), B, Tn, H, D, scale);
    return dot(out, g);
  };
  loss();
  Vec dqkv = nan_vector(qkv.size());
  class_attention_backward_cpu<double>(qkv.data(), out.data(), lse.data(), g.data(), dqkv.data(),
                                       nullptr, B, Tn, H, D, scale);
  CHECK(gradient_error(qkv, dqkv, loss) < kGradTolerance);
}

TEST_CASE("layerscale residual backward matches finite differences", "[gradcheck]") {
  const int64_t B = 4, Tn = 3, C = 5;
  const double rate = 0.25;
  Rng rng(105);
  Vec x = random_vector(rng, B * Tn * C), branch = random_vector(rng, B * Tn * C),
      gamma = random_vector(rng, C);
  const Vec keep_scale = {1 / (1 - rate), 0.0, 1 / (1 - rate), 0.0};  // samples 1 and 3 dropped
  const Vec g = random_vector(rng, B * Tn * C);
  Vec out(B * Tn * C);
  auto loss = [&] {
    layerscale_residual_forward_cpu(x.data(), branch.data(), gamma.data(), keep_scale.data(),
                                    out.data(), B, Tn, C);
    return dot(out, g);
  };
  Vec dbranch = nan_vector(B * Tn * C), dgamma = nan_vector(C);
  layerscale_residual_backward_cpu(g.data(), branch.data(), gamma.data(), keep_scale.data(),
                                   dbranch.data(), dgamma.data(), B, Tn, C);
  CHECK(gradient_error(x, g, loss) < kGradTolerance);  // the header's promise: dx = dout
  CHECK(gradient_error(branch, dbranch, loss) < kGradTolerance);
  CHECK(gradient_error(gamma, dgamma, loss) < kGradTolerance);
}

TEST_CASE("bce with logits gradient matches finite differences", "[gradcheck]") {
  const int64_t B = 3, K = 4;
  Rng rng(106);
  Vec logits = random_vector(rng, B * K, -5.0, 5.0);
  const Vec targets = random_vector(rng, B * K, 0.0, 1.0);  // soft, as after mixup
  auto loss = [&] {
    double l;
    bce_with_logits_cpu(logits.data(), targets.data(), &l, static_cast<double*>(nullptr), B, K);
    return l;
  };
  double l;
  Vec dlogits = nan_vector(B * K);
  bce_with_logits_cpu(logits.data(), targets.data(), &l, dlogits.data(), B, K);
  CHECK(gradient_error(logits, dlogits, loss) < kGradTolerance);
}

TEST_CASE("softmax cross-entropy gradient matches finite differences", "[gradcheck]") {
  const int64_t B = 3, K = 5;
  Rng rng(107);
  Vec logits = random_vector(rng, B * K, -3.0, 3.0);
  // Soft targets whose rows do not sum to 1, so the sum_k t_k factor of the gradient is tested.
  const Vec targets = random_vector(rng, B * K, 0.0, 1.0);
  auto loss = [&] {
    double l;
    softmax_cross_entropy_cpu(logits.data(), targets.data(), &l, static_cast<double*>(nullptr), B,
                              K);
    return l;
  };
  double l;
  Vec dlogits = nan_vector(B * K);
  softmax_cross_entropy_cpu(logits.data(), targets.data(), &l, dlogits.data(), B, K);
  CHECK(gradient_error(logits, dlogits, loss) < kGradTolerance);
}

TEST_CASE("patch fold is the adjoint of patch unfold", "[gradcheck]") {
  // unfold is linear, so its backward must satisfy <unfold(x), g> = <x, fold(g)> for all x, g.
  // H = 8 and W = 7 are not multiples of P = 3: the last 2 rows and the last column are unread.
  const int64_t B = 2, Cin = 3, H = 8, W = 7, P = 3, gh = H / P, gw = W / P;
  Rng rng(108);
  const Vec image = random_vector(rng, B * Cin * H * W);
  const Vec g = random_vector(rng, B * gh * gw * Cin * P * P);
  Vec patches = nan_vector(g.size()), dimage = nan_vector(image.size());
  patch_unfold_cpu(image.data(), patches.data(), B, Cin, H, W, P);
  patch_fold_cpu(g.data(), dimage.data(), B, Cin, H, W, P);
  CHECK(dot(patches, g) == Approx(dot(image, dimage)).epsilon(1e-13));
  for (int64_t bc = 0; bc < B * Cin; ++bc)
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x)
        if (y >= gh * P || x >= gw * P) REQUIRE(dimage[(bc * H + y) * W + x] == 0.0);
}

TEST_CASE("pos embed + class token backward matches finite differences", "[gradcheck]") {
  const int64_t B = 3, N = 4, C = 5;
  Rng rng(109);
  Vec x = random_vector(rng, B * N * C), pos = random_vector(rng, N * C),
      cls = random_vector(rng, C);
  const Vec g = random_vector(rng, B * (1 + N) * C);
  Vec out(g.size());
  auto loss = [&] {
    pos_embed_cls_forward_cpu(x.data(), pos.data(), cls.data(), out.data(), B, N, C);
    return dot(out, g);
  };
  Vec dx = nan_vector(x.size()), dpos = nan_vector(pos.size()), dcls = nan_vector(C);
  pos_embed_cls_backward_cpu(g.data(), dx.data(), dpos.data(), dcls.data(), B, N, C);
  CHECK(gradient_error(x, dx, loss) < kGradTolerance);
  CHECK(gradient_error(pos, dpos, loss) < kGradTolerance);
  CHECK(gradient_error(cls, dcls, loss) < kGradTolerance);
}

TEST_CASE("class token select backward matches finite differences", "[gradcheck]") {
  const int64_t B = 2, Tn = 4, C = 3;
  Rng rng(110);
  Vec x = random_vector(rng, B * Tn * C);
  const Vec g = random_vector(rng, B * C);
  Vec out(B * C);
  auto loss = [&] {
    cls_select_forward_cpu(x.data(), out.data(), B, Tn, C);
    return dot(out, g);
  };
  Vec dx = nan_vector(x.size());
  cls_select_backward_cpu(g.data(), dx.data(), B, Tn, C);
  CHECK(gradient_error(x, dx, loss) < kGradTolerance);
}
