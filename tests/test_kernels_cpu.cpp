// Forward checks of the CPU reference kernels against independent naive formulas and hand-computed
// values, plus the properties every kernel shares: float and double agree, and the same inputs give
// the same bits whatever the number of OpenMP threads.
#include <catch2/catch.hpp>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "engine/rng.h"
#include "kernels/attention.h"
#include "kernels/cast.h"
#include "kernels/cpu/gemm.h"
#include "kernels/gelu.h"
#include "kernels/layernorm.h"
#include "kernels/layerscale.h"
#include "kernels/linear.h"
#include "kernels/losses.h"
#include "kernels/samples.h"
#include "kernels/tokens.h"
#include "tests/gradcheck.h"

using namespace deit::kernels;
using deit::Rng;
using deit::test::nan_vector;
using deit::test::random_vector;
using deit::test::relative_error;
using Vec = std::vector<double>;

TEST_CASE("gemm_cpu matches a naive product for every transpose, stride and beta", "[kernels]") {
  const int64_t M = 5, N = 7, pad = 3;  // every matrix is a strided view (pad extra columns)
  Rng rng(201);
  for (int64_t K : {6, 0})  // K = 0: an empty sum, C = beta * C
    for (bool trans_a : {false, true})
      for (bool trans_b : {false, true})
        for (double beta : {0.0, 0.5}) {
          const int64_t lda = (trans_a ? M : K) + pad, ldb = (trans_b ? K : N) + pad;
          const int64_t ldc = N + pad;
          const Vec A = random_vector(rng, (trans_a ? K : M) * lda);
          const Vec B = random_vector(rng, (trans_b ? N : K) * ldb);
          // beta 0 must ignore C's old contents, NaN included.
          Vec C = beta == 0 ? nan_vector(M * ldc) : random_vector(rng, M * ldc);
          Vec expected = C;
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double s = 0;
              for (int64_t k = 0; k < K; ++k)
                s += (trans_a ? A[k * lda + i] : A[i * lda + k]) *
                     (trans_b ? B[j * ldb + k] : B[k * ldb + j]);
              expected[i * ldc + j] = 1.5 * s + (beta == 0 ? 0.0 : beta * C[i * ldc + j]);
            }
          gemm_cpu<double>(trans_a, trans_b, M, N, K, 1.5, A.data(), lda, B.data(), ldb, beta,
                           C.data(), ldc);
          INFO("K " << K << " trans_a " << trans_a << " trans_b " << trans_b << " beta " << beta);
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < ldc; ++j) {
              if (j < N)
                REQUIRE(C[i * ldc + j] == Approx(expected[i * ldc + j]).epsilon(1e-12));
              else if (beta != 0)  // padding columns are not part of C and stay untouched
                REQUIRE(C[i * ldc + j] == expected[i * ldc + j]);
            }
        }
}

TEST_CASE("gemm_cpu refuses a size past CBLAS's int instead of cutting it", "[kernels]") {
  // (2^32 + 1) x 1 x 1: cut to 32 bits it would be a 1 x 1 x 1 product, computed without a word.
  // The check comes before any element is touched, so one-element buffers do.
  Vec A(1, 1.0), B(1, 2.0), C(1, 0.0);
  const int64_t huge = (int64_t{1} << 32) + 1;
  CHECK_THROWS_AS(
      gemm_cpu<double>(false, true, huge, 1, 1, 1.0, A.data(), 1, B.data(), 1, 0.0, C.data(), 1),
      std::invalid_argument);
  CHECK_THROWS_AS(
      gemm_cpu<double>(false, false, 1, 1, 1, 1.0, A.data(), 1, B.data(), 1, 0.0, C.data(), huge),
      std::invalid_argument);
  CHECK(C[0] == 0.0);
}

TEST_CASE("linear forward matches a naive matrix product", "[kernels]") {
  const int64_t M = 6, K = 9, N = 4;
  Rng rng(202);
  const Vec x = random_vector(rng, M * K), w = random_vector(rng, N * K), b = random_vector(rng, N);
  for (bool with_bias : {true, false}) {
    Vec y = nan_vector(M * N);
    linear_forward_cpu(x.data(), w.data(), with_bias ? b.data() : nullptr, y.data(), M, K, N);
    Vec expected(M * N);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double s = with_bias ? b[n] : 0.0;
        for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * w[n * K + k];
        expected[m * N + n] = s;
      }
    INFO("with bias: " << with_bias);
    CHECK(relative_error(y, expected) < 1e-14);
  }
}

TEST_CASE("float column sums add in double and round once", "[kernels]") {
  // kernels/cpu/reduce.h promises double accumulators, so a float reference is as accurate as its
  // inputs allow. 1 followed by 4096 terms of 2^-24 sums to 1 + 2^-12, a float; added in float,
  // 1 + 2^-24 is a tie that rounds back to 1 at every step and the sum stays 1. The comparisons
  // are exact: the right sum is representable.
  const int64_t M = 4097;
  const float tiny = std::ldexp(1.0f, -24);
  const float expected = 1.0f + std::ldexp(1.0f, -12);
  // Column sums (linear_bias_grad behind every bias gradient; column 0 as above, column 1 its
  // negative) of M = 4097 rows, K = 0 inputs: only dbias is asked for.
  std::vector<float> dy(2 * M);
  for (int64_t m = 0; m < M; ++m) {
    dy[2 * m] = m == 0 ? 1.0f : tiny;
    dy[2 * m + 1] = -dy[2 * m];
  }
  std::vector<float> dbias(2, NAN);
  linear_backward_cpu<float>(dy.data(), nullptr, nullptr, nullptr, nullptr, dbias.data(), M, 0, 2);
  CHECK(dbias[0] == expected);
  CHECK(dbias[1] == -expected);
}

TEST_CASE("layernorm forward normalises every row, then applies the affine", "[kernels]") {
  const int64_t rows = 5, C = 96;
  const double eps = 1e-6;
  Rng rng(203);
  // A large common offset: a one-pass E[x^2] - E[x]^2 variance would lose digits here.
  Vec x = random_vector(rng, rows * C, 1000.0, 1004.0);
  const Vec ones(C, 1.0), zeros(C, 0.0);
  Vec y = nan_vector(rows * C), mean = nan_vector(rows), rstd = nan_vector(rows);
  layernorm_forward_cpu(x.data(), ones.data(), zeros.data(), y.data(), mean.data(), rstd.data(),
                        rows, C, eps);
  for (int64_t r = 0; r < rows; ++r) {
    double mu = 0, var = 0, x_mu = 0;
    for (int64_t c = 0; c < C; ++c) {
      mu += y[r * C + c] / C;
      x_mu += x[r * C + c] / C;
    }
    for (int64_t c = 0; c < C; ++c) var += (y[r * C + c] - mu) * (y[r * C + c] - mu) / C;
    CHECK(std::abs(mu) < 1e-12);
    CHECK(var == Approx(1.0).epsilon(1e-5));  // var / (var + eps) with var ~ 4/3
    CHECK(mean[r] == Approx(x_mu).epsilon(1e-14));
  }
  const Vec w = random_vector(rng, C), b = random_vector(rng, C);
  Vec z = nan_vector(rows * C);
  layernorm_forward_cpu(x.data(), w.data(), b.data(), z.data(), mean.data(), rstd.data(), rows, C,
                        eps);
  Vec expected(rows * C);
  for (int64_t i = 0; i < rows * C; ++i) expected[i] = y[i] * w[i % C] + b[i % C];
  CHECK(relative_error(z, expected) < 1e-12);
}

TEST_CASE("layernorm's eps sits inside the square root, as torch.nn.LayerNorm's", "[kernels]") {
  // y = (x - mean) / sqrt(var + eps): the test above has var ~ 4/3, where eps moves y by ~4e-7,
  // within its tolerance. Here eps is of the variance's size or larger, so where it goes shows.
  const int64_t C = 8;
  const double eps = 1e-6;
  // Row 0: 0.5 +- sqrt(eps), var = eps, so y = +-sqrt(eps) / sqrt(2 eps) = +-1/sqrt(2) (without eps
  // +-1). Row 1: constant, var = 0, so y is the bias and rstd = 1/sqrt(eps) (without eps 0/0).
  Vec x(2 * C);
  for (int64_t c = 0; c < C; ++c) {
    x[c] = 0.5 + (c % 2 ? 1.0 : -1.0) * std::sqrt(eps);
    x[C + c] = -3.0;
  }
  const Vec ones(C, 1.0), bias(C, 0.25);
  Vec y = nan_vector(2 * C), mean = nan_vector(2), rstd = nan_vector(2);
  layernorm_forward_cpu(x.data(), ones.data(), bias.data(), y.data(), mean.data(), rstd.data(), 2,
                        C, eps);
  CHECK(rstd[0] == Approx(1 / std::sqrt(2 * eps)).epsilon(1e-9));
  CHECK(rstd[1] == Approx(1 / std::sqrt(eps)).epsilon(1e-12));
  for (int64_t c = 0; c < C; ++c) {
    INFO("column " << c);
    CHECK(y[c] == Approx(0.25 + (c % 2 ? 1.0 : -1.0) / std::sqrt(2.0)).epsilon(1e-9));
    CHECK(y[C + c] == 0.25);
  }
}

TEST_CASE("layernorm's two-pass variance is exact where mean of squares minus squared mean is not",
          "[kernels]") {
  // Rows of 1e8 +- 1 (alternating, C even): mean 1e8 and deviations +-1 are exact in double, so
  // the two-pass variance is exactly 1, rstd = 1/sqrt(1 + eps) and y = +-rstd. One pass would need
  // (1e8 +- 1)^2 = 1e16 +- 2e8 + 1, past 2^53 where doubles are 2 apart: each square loses the
  // +1, and E[x^2] - mean^2 comes out as 0 instead of 1. The test above (offset 1000, spread 4)
  // is too mild to tell the two apart in double.
  const int64_t rows = 2, C = 16;
  const double eps = 1e-6;
  Vec x(rows * C);
  for (int64_t i = 0; i < rows * C; ++i) x[i] = (i % 2 ? 1e8 + 1 : 1e8 - 1) * (i < C ? 1 : -1);
  const Vec ones(C, 1.0), zeros(C, 0.0);
  Vec y = nan_vector(rows * C), mean = nan_vector(rows), rstd = nan_vector(rows);
  layernorm_forward_cpu(x.data(), ones.data(), zeros.data(), y.data(), mean.data(), rstd.data(),
                        rows, C, eps);
  const double expected_rstd = 1 / std::sqrt(1 + eps);
  CHECK(mean[0] == 1e8);
  CHECK(mean[1] == -1e8);
  for (int64_t r = 0; r < rows; ++r) CHECK(rstd[r] == Approx(expected_rstd).epsilon(1e-14));
  for (int64_t i = 0; i < rows * C; ++i) {
    INFO("element " << i);
    const double deviation = (i % 2 ? 1.0 : -1.0) * (i < C ? 1 : -1);
    CHECK(y[i] == Approx(deviation * expected_rstd).epsilon(1e-14));
  }
}

TEST_CASE("attention forward matches an explicit softmax matrix for every (b, h)",
          "[kernels][attention]") {
  const int64_t B = 2, Tn = 7, H = 3, D = 4, C = H * D;
  const double scale = 0.5;
  Rng rng(204);
  const Vec qkv = random_vector(rng, B * Tn * 3 * C, -2.0, 2.0);
  Vec out = nan_vector(B * Tn * C), lse = nan_vector(B * H * Tn);
  attention_forward_cpu(qkv.data(), out.data(), lse.data(), B, Tn, H, D, scale);
  // qkv viewed as (B, T, 3, H, D): element (b, t, which, h, d).
  const auto at = [&](int64_t b, int64_t t, int64_t which, int64_t h, int64_t d) {
    return qkv[(((b * Tn + t) * 3 + which) * H + h) * D + d];
  };
  Vec expected_out(out.size()), expected_lse(lse.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Tn; ++i) {
        Vec s(Tn);
        double z = 0;
        for (int64_t j = 0; j < Tn; ++j) {
          for (int64_t d = 0; d < D; ++d) s[j] += scale * at(b, i, 0, h, d) * at(b, j, 1, h, d);
          z += std::exp(s[j]);  // small scores: the textbook softmax is safe here
        }
        expected_lse[(b * H + h) * Tn + i] = std::log(z);
        for (int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (int64_t j = 0; j < Tn; ++j) o += std::exp(s[j]) / z * at(b, j, 2, h, d);
          expected_out[(b * Tn + i) * C + h * D + d] = o;
        }
      }
  CHECK(relative_error(out, expected_out) < 1e-13);
  CHECK(relative_error(lse, expected_lse) < 1e-13);
}

TEST_CASE("class-token attention is the class token's row of the whole attention",
          "[kernels][attention]") {
  const int64_t B = 2, Tn = 7, H = 3, D = 4, C = H * D;
  const double scale = 0.5;
  Rng rng(205);
  const Vec qkv = random_vector(rng, B * Tn * 3 * C, -2.0, 2.0);
  Vec out(B * Tn * C), lse(B * H * Tn);
  attention_forward_cpu(qkv.data(), out.data(), lse.data(), B, Tn, H, D, scale);
  Vec class_out = nan_vector(B * C), class_lse = nan_vector(B * H);
  class_attention_forward_cpu(qkv.data(), class_out.data(), class_lse.data(), B, Tn, H, D, scale);
  Vec row0_out, row0_lse;  // token 0 of out (B, T, C) and of lse (B, H, T)
  for (int64_t b = 0; b < B; ++b) {
    row0_out.insert(row0_out.end(), out.begin() + b * Tn * C, out.begin() + b * Tn * C + C);
    for (int64_t h = 0; h < H; ++h) row0_lse.push_back(lse[(b * H + h) * Tn]);
  }
  CHECK(relative_error(class_out, row0_out) < 1e-13);
  CHECK(relative_error(class_lse, row0_lse) < 1e-13);

  // Backward: the whole attention's with dout zero in every token but the class token.
  const Vec class_dout = random_vector(rng, B * C);
  Vec dout(B * Tn * C, 0.0);
  for (int64_t b = 0; b < B; ++b)
    std::copy(class_dout.begin() + b * C, class_dout.begin() + (b + 1) * C,
              dout.begin() + b * Tn * C);
  Vec dqkv(B * Tn * 3 * C), dbias(3 * C);
  attention_backward_cpu(qkv.data(), out.data(), lse.data(), dout.data(), dqkv.data(), dbias.data(),
                         B, Tn, H, D, scale);
  Vec class_dqkv = nan_vector(dqkv.size()), class_dbias = nan_vector(dbias.size());
  class_attention_backward_cpu(qkv.data(), class_out.data(), class_lse.data(), class_dout.data(),
                               class_dqkv.data(), class_dbias.data(), B, Tn, H, D, scale);
  CHECK(relative_error(class_dqkv, dqkv) < 1e-13);
  CHECK(relative_error(class_dbias, dbias) < 1e-13);
  for (int64_t b = 0; b < B; ++b)  // dq past the class token: zeros, not merely small
    for (int64_t t = 1; t < Tn; ++t)
      for (int64_t c = 0; c < C; ++c) CHECK(class_dqkv[(b * Tn + t) * 3 * C + c] == 0.0);
}

TEST_CASE("bce with logits matches hand-computed values, large logits included", "[kernels]") {
  // Per element, the loss -t log s(z) - (1 - t) log(1 - s(z)) and the residual s(z) - t, evaluated
  // by hand at 30 digits (z = 100 and z = -100 each cost 100 + log(1 + e^-100) = 100).
  const Vec logits = {0.0, 2.0, -3.0, 100.0, -100.0, 30.0};
  const Vec targets = {0.5, 1.0, 0.25, 0.0, 1.0, 1.0};
  const Vec terms = {
      0.6931471805599453, 0.1269280110429725, 0.7985873515737421,     // row 0
      100.0,              100.0,              9.357622968839737e-14,  // row 1
  };
  const Vec residuals = {
      0.0, -0.11920292202211755, -0.20257412682243322,   // row 0
      1.0, -1.0,                 -9.357622968839299e-14,  // row 1
  };
  double loss;
  Vec grad = nan_vector(6);
  bce_with_logits_cpu(logits.data(), targets.data(), &loss, grad.data(), 2, 3);
  double expected_loss = 0;
  for (double term : terms) expected_loss += term / 6;  // the mean over B x K = 2 x 3
  CHECK(loss == Approx(expected_loss).epsilon(1e-14));
  for (size_t i = 0; i < grad.size(); ++i) CHECK(grad[i] == Approx(residuals[i] / 6).margin(1e-15));

  // float, where a naive exp(-z) or log(sigmoid) overflows or hits log(0).
  const std::vector<float> zf = {1000.f, -1000.f, 88.f, -104.f}, tf = {0.f, 0.f, 1.f, 1.f};
  float lossf;
  std::vector<float> gradf(4, NAN);
  bce_with_logits_cpu(zf.data(), tf.data(), &lossf, gradf.data(), 1, 4);
  CHECK(lossf == Approx((1000.0 + 104.0) / 4).epsilon(1e-6));
  const std::vector<float> expected_gradf = {0.25f, 0.f, 0.f, -0.25f};
  for (size_t i = 0; i < 4; ++i) CHECK(gradf[i] == Approx(expected_gradf[i]).margin(1e-7));
}

TEST_CASE("softmax cross-entropy matches hand-computed values, large logits included",
          "[kernels]") {
  // Row 0: one-hot on the largest logit: log(e + e^2 + e^3) - 3 = 0.40760596444437994.
  // Row 1: logits (1000, -1000, 0), targets (0.9, 0.1, 0): lse = 1000, loss = 0.1 * 2000 = 200.
  const Vec logits = {1.0, 2.0, 3.0, 1000.0, -1000.0, 0.0};
  const Vec targets = {0.0, 0.0, 1.0, 0.9, 0.1, 0.0};
  // dz = (softmax(z) - t) / 2; softmax(1, 2, 3) = (0.0900305731703804, 0.2447284710547976,
  // 0.6652409557748219), softmax(1000, -1000, 0) = (1, 0, 0) to double precision.
  const Vec expected_grad = {
      0.0900305731703804 / 2, 0.2447284710547976 / 2, (0.6652409557748219 - 1) / 2,  // row 0
      (1 - 0.9) / 2,          (0 - 0.1) / 2,          0.0,                           // row 1
  };
  double loss;
  Vec grad = nan_vector(6);
  softmax_cross_entropy_cpu(logits.data(), targets.data(), &loss, grad.data(), 2, 3);
  CHECK(loss == Approx((0.40760596444437994 + 200.0) / 2).epsilon(1e-14));
  for (size_t i = 0; i < grad.size(); ++i) CHECK(grad[i] == Approx(expected_grad[i]).margin(1e-15));

  const std::vector<float> zf = {1e4f, -1e4f, 0.f}, tf = {0.f, 1.f, 0.f};
  float lossf;
  std::vector<float> gradf(3, NAN);
  softmax_cross_entropy_cpu(zf.data(), tf.data(), &lossf, gradf.data(), 1, 3);
  CHECK(lossf == Approx(2e4).epsilon(1e-6));
  CHECK(gradf[0] == 1.f);
  CHECK(gradf[1] == -1.f);
  CHECK(gradf[2] == 0.f);
}

TEST_CASE("bce with logits keeps the tiny loss of confident right answers", "[kernels]") {
  // z = 40 with t = 1 and z = -40 with t = 0 each cost log(1 + e^-40). With x = e^-40 =
  // 4.248354255291589e-18, log(1 + x) = x - x^2 / 2 + ... = x to double precision (x^2 / 2 is
  // 1e-35), so the mean loss is e^-40. Written as log(1 + x), 1 + x rounds to 1 and the loss to 0:
  // the kernel must take log1p.
  const Vec logits = {40.0, -40.0}, targets = {1.0, 0.0};
  double loss = NAN;
  bce_with_logits_cpu<double>(logits.data(), targets.data(), &loss, nullptr, 1, 2);
  CHECK(loss == Approx(std::exp(-40.0)).epsilon(1e-15).margin(0));
}

TEST_CASE("softmax cross-entropy shifts by the row's maximum wherever it lies", "[kernels]") {
  // The test above puts the large logit first; here it comes last, then in the middle, so a
  // log-sum-exp whose maximum missed an element would overflow exp(1000). Row 0: logits
  // (-1000, 0, 1000), targets (0.5, 0, 0.5): lse = 1000 + log(1 + e^-1000 + e^-2000) = 1000 in
  // double, loss 0.5 * 2000 + 0.5 * 0 = 1000, softmax (0, 0, 1). Row 1: logits (0, 1000, -1000),
  // target one-hot on 1000: loss 0, softmax (0, 1, 0). dz = (softmax * sum(t) - t) / B, B = 2.
  const Vec logits = {-1000.0, 0.0, 1000.0, 0.0, 1000.0, -1000.0};
  const Vec targets = {0.5, 0.0, 0.5, 0.0, 1.0, 0.0};
  const Vec expected_grad = {-0.25, 0.0, 0.25, 0.0, 0.0, 0.0};
  double loss = NAN;
  Vec grad = nan_vector(6);
  softmax_cross_entropy_cpu(logits.data(), targets.data(), &loss, grad.data(), 2, 3);
  CHECK(loss == Approx((1000.0 + 0.0) / 2).epsilon(1e-14));
  for (size_t i = 0; i < grad.size(); ++i) CHECK(grad[i] == Approx(expected_grad[i]).margin(1e-15));
}

TEST_CASE("both losses of an empty batch are 0, as their CUDA twins write", "[kernels]") {
  // A mean over no terms: kernels/losses.h promises 0 for B == 0 or K == 0 (and
  // tests/test_kernels_cuda.cpp checks the CUDA twins for it), not the 0 / 0 = NaN of a plain mean.
  const Vec none;
  for (const auto& [B, K] : {std::pair<int64_t, int64_t>{0, 5}, {3, 0}, {0, 0}}) {
    INFO("B = " << B << ", K = " << K);
    double bce = NAN, ce = NAN;
    bce_with_logits_cpu<double>(none.data(), none.data(), &bce, nullptr, B, K);
    softmax_cross_entropy_cpu<double>(none.data(), none.data(), &ce, nullptr, B, K);
    CHECK(bce == 0.0);
    CHECK(ce == 0.0);
  }
}

TEST_CASE("gelu is exact (erf) GELU at known points", "[kernels]") {
  // x Phi(x) and Phi(x) + x phi(x), with Phi(1) = 0.8413447460685429, phi(1) = 0.2419707245191434,
  // Phi(3) = 0.9986501019683699.
  const Vec x = {0.0, 1.0, -1.0, 3.0, -10.0};
  const Vec expected_y = {0.0, 0.8413447460685429, -0.15865525393145705, 2.9959503059051097,
                          -7.619853024160526e-23};
  const Vec expected_dy = {0.5, 1.0833154705876863, -0.0833154705876863, 1.0119456472041839,
                           -7.618400096464814e-22};
  Vec y = nan_vector(5), dx = nan_vector(5);
  const Vec ones(5, 1.0);
  gelu_forward_cpu(x.data(), y.data(), 5);
  gelu_backward_cpu(ones.data(), x.data(), dx.data(), 5);
  CHECK(y[0] == 0.0);
  for (size_t i = 1; i < x.size(); ++i) CHECK(y[i] == Approx(expected_y[i]).epsilon(1e-13));
  for (size_t i = 0; i < x.size(); ++i) CHECK(dx[i] == Approx(expected_dy[i]).epsilon(1e-13));
}

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace

TEST_CASE("cast f32 to bf16 rounds to nearest even and keeps NaN a NaN", "[kernels]") {
  // (f32 bits, expected bf16 bits). A tie sits exactly halfway, low half 0x8000.
  const std::vector<std::pair<uint32_t, uint16_t>> cases = {
      {0x3F800000u, 0x3F80u},  // 1.0: exact
      {0x3F808000u, 0x3F80u},  // tie, 0x3F80 is even: down
      {0x3F818000u, 0x3F82u},  // tie, 0x3F81 is odd: up to the even 0x3F82
      {0x3F808001u, 0x3F81u},  // just above the tie: up
      {0x3F817FFFu, 0x3F81u},  // just below the tie: down
      {0xBF818000u, 0xBF82u},  // negative tie: by magnitude, to even
      {0x7F7FFFFFu, 0x7F80u},  // FLT_MAX rounds to +inf
      {0x7F800000u, 0x7F80u},  // +inf
      {0xFF800000u, 0xFF80u},  // -inf
      {0x00000001u, 0x0000u},  // smallest denormal rounds to +0
  };
  std::vector<float> x;
  for (auto [f, b] : cases) x.push_back(float_of(f));
  // NaNs whose payload sits only in the dropped bits (truncation would make them inf), and the
  // all-ones NaN (rounding would carry out of the word).
  for (uint32_t nan : {0x7F800001u, 0xFF800001u, 0x7FC00000u, 0xFFFFFFFFu})
    x.push_back(float_of(nan));
  std::vector<bf16_bits> y(x.size());
  cast_f32_to_bf16_cpu(x.data(), y.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("f32 bits 0x" << std::hex << cases[i].first);
    CHECK(y[i] == cases[i].second);
  }
  std::vector<float> back(x.size());
  cast_bf16_to_f32_cpu(y.data(), back.data(), static_cast<int64_t>(y.size()));
  for (size_t i = cases.size(); i < x.size(); ++i) CHECK(std::isnan(back[i]));

  // bf16 -> f32 is exact, so every non-NaN bf16 value survives the round trip bit for bit.
  std::vector<bf16_bits> all(1 << 16);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<bf16_bits>(i);
  std::vector<float> widened(all.size());
  std::vector<bf16_bits> narrowed(all.size());
  cast_bf16_to_f32_cpu(all.data(), widened.data(), static_cast<int64_t>(all.size()));
  cast_f32_to_bf16_cpu(widened.data(), narrowed.data(), static_cast<int64_t>(all.size()));
  for (size_t i = 0; i < all.size(); ++i) {
    REQUIRE(bits_of(widened[i]) == static_cast<uint32_t>(all[i]) << 16);
    if (!std::isnan(widened[i])) REQUIRE(narrowed[i] == all[i]);
  }
}

TEST_CASE("bf16 casts write every element, the first and the last included", "[kernels]") {
  // The outputs start as values no input maps to (NaN, and bf16 0xFFFF, a NaN), so an element a
  // cast skips shows. The inputs: 1.0 = 0x3F80 first, -2.0 = 0xC000 last, and 0.5 = 0x3F00 between.
  const std::vector<float> x = {1.0f, 0.5f, -2.0f};
  const std::vector<bf16_bits> expected = {0x3F80, 0x3F00, 0xC000};
  std::vector<bf16_bits> y(x.size(), 0xFFFF);
  cast_f32_to_bf16_cpu(x.data(), y.data(), static_cast<int64_t>(x.size()));
  CHECK(y == expected);
  std::vector<float> back(x.size(), NAN);
  cast_bf16_to_f32_cpu(expected.data(), back.data(), static_cast<int64_t>(expected.size()));
  CHECK(back == x);  // exact: each value is a bf16
}

namespace {

template <typename T>
using NamedOutputs = std::vector<std::pair<std::string, std::vector<T>>>;

// Runs every kernel family forward and backward in precision T on inputs drawn from seed (float
// values, so float and double runs see identical inputs) and returns every output by name. The
// sizes give the column reductions more than one 64-wide block and the GEMMs ragged edges.
template <typename T>
NamedOutputs<T> run_every_kernel(uint64_t seed) {
  const int64_t B = 3, Tn = 9, H = 2, D = 40, C = H * D, rows = B * Tn, classes = 10, P = 4;
  Rng rng(seed);
  const auto random = [&](int64_t n, double lo = -1.0, double hi = 1.0) {
    std::vector<T> v(static_cast<size_t>(n));
    for (T& x : v) x = static_cast<T>(static_cast<float>(rng.uniform(lo, hi)));
    return v;
  };
  const auto sized = [](int64_t n) { return std::vector<T>(static_cast<size_t>(n)); };
  NamedOutputs<T> outputs;
  const auto keep = [&](const char* name, std::vector<T> v) {
    outputs.emplace_back(name, std::move(v));
  };

  const auto x = random(rows * C), dy = random(rows * C);
  {
    const auto w = random(C * C), b = random(C);
    auto y = sized(rows * C), dx = sized(rows * C), dw = sized(C * C), db = sized(C);
    linear_forward_cpu(x.data(), w.data(), b.data(), y.data(), rows, C, C);
    linear_backward_cpu(dy.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), rows, C, C);
    keep("linear y", y), keep("linear dx", dx), keep("linear dweight", dw),
        keep("linear dbias", db);
  }
  {
    auto y = sized(rows * C), dx = sized(rows * C);
    gelu_forward_cpu(x.data(), y.data(), rows * C);
    gelu_backward_cpu(dy.data(), x.data(), dx.data(), rows * C);
    keep("gelu y", y), keep("gelu dx", dx);
  }
  {
    const auto w = random(C), b = random(C);
    auto y = sized(rows * C), mean = sized(rows), rstd = sized(rows), dx = sized(rows * C),
         dw = sized(C), db = sized(C);
    layernorm_forward_cpu(x.data(), w.data(), b.data(), y.data(), mean.data(), rstd.data(), rows, C,
                          1e-6);
    layernorm_backward_cpu(dy.data(), x.data(), w.data(), mean.data(), rstd.data(), dx.data(),
                           dw.data(), db.data(), rows, C);
    keep("layernorm y", y), keep("layernorm dx", dx), keep("layernorm dweight", dw),
        keep("layernorm dbias", db);
  }
  {
    const auto qkv = random(rows * 3 * C, -2.0, 2.0);
    auto out = sized(rows * C), lse = sized(B * H * Tn), dqkv = sized(rows * 3 * C),
         dbias = sized(3 * C);
    const double scale = 1.0 / std::sqrt(static_cast<double>(D));
    attention_forward_cpu(qkv.data(), out.data(), lse.data(), B, Tn, H, D, scale);
    attention_backward_cpu(qkv.data(), out.data(), lse.data(), dy.data(), dqkv.data(), dbias.data(),
                           B, Tn, H, D, scale);
    keep("attention out", out), keep("attention lse", lse), keep("attention dqkv", dqkv),
        keep("attention dbias", dbias);
    auto class_out = sized(B * C), class_lse = sized(B * H);
    class_attention_forward_cpu(qkv.data(), class_out.data(), class_lse.data(), B, Tn, H, D, scale);
    class_attention_backward_cpu(qkv.data(), class_out.data(), class_lse.data(), dy.data(),
                                 dqkv.data(), dbias.data(), B, Tn, H, D, scale);
    keep("class attention out", class_out), keep("class attention lse", class_lse),
        keep("class attention dqkv", dqkv), keep("class attention dbias", dbias);
  }
  {
    const auto branch = random(rows * C), gamma = random(C);
    const std::vector<T> keep_scale = {T(0), T(2), T(2)};
    auto out = sized(rows * C), dbranch = sized(rows * C), dgamma = sized(C);
    layerscale_residual_forward_cpu(x.data(), branch.data(), gamma.data(), keep_scale.data(),
                                    out.data(), B, Tn, C);
    layerscale_residual_backward_cpu(dy.data(), branch.data(), gamma.data(), keep_scale.data(),
                                     dbranch.data(), dgamma.data(), B, Tn, C);
    keep("layerscale out", out), keep("layerscale dbranch", dbranch),
        keep("layerscale dgamma", dgamma);
  }
  {
    const auto logits = random(B * classes, -6.0, 6.0), targets = random(B * classes, 0.0, 1.0);
    auto bce = sized(1), dbce = sized(B * classes), ce = sized(1), dce = sized(B * classes);
    bce_with_logits_cpu(logits.data(), targets.data(), bce.data(), dbce.data(), B, classes);
    softmax_cross_entropy_cpu(logits.data(), targets.data(), ce.data(), dce.data(), B, classes);
    keep("bce loss", bce), keep("bce dlogits", dbce), keep("ce loss", ce), keep("ce dlogits", dce);
  }
  {
    const int64_t Hi = 13, Wi = 10, N = (Hi / P) * (Wi / P);  // ragged image
    const auto image = random(B * 3 * Hi * Wi);
    auto patches = sized(B * N * 3 * P * P), dimage = sized(image.size());
    patch_unfold_cpu(image.data(), patches.data(), B, 3, Hi, Wi, P);
    patch_fold_cpu(patches.data(), dimage.data(), B, 3, Hi, Wi, P);
    keep("patch unfold", patches), keep("patch fold", dimage);
  }
  {
    const int64_t N = Tn - 1;
    const auto pos = random(N * C), cls = random(C);
    auto out = sized(rows * C), dx = sized(B * N * C), dpos = sized(N * C), dcls = sized(C);
    pos_embed_cls_forward_cpu(x.data(), pos.data(), cls.data(), out.data(), B, N, C);
    pos_embed_cls_backward_cpu(dy.data(), dx.data(), dpos.data(), dcls.data(), B, N, C);
    keep("pos_embed_cls out", out), keep("pos_embed_cls dx", dx), keep("pos_embed_cls dpos", dpos),
        keep("pos_embed_cls dcls", dcls);
  }
  {
    auto out = sized(B * C), dx = sized(rows * C);
    cls_select_forward_cpu(x.data(), out.data(), B, Tn, C);
    cls_select_backward_cpu(dy.data(), dx.data(), B, Tn, C);
    keep("cls_select out", out), keep("cls_select dx", dx);
  }
  return outputs;
}

// Runs fn with OpenMP limited to n threads, restoring the previous limit afterwards.
template <typename Fn>
auto with_threads(int n, Fn fn) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  auto result = fn();
  omp_set_num_threads(saved);
  return result;
}

}  // namespace

TEST_CASE("float and double instantiations agree", "[kernels]") {
  const auto f = run_every_kernel<float>(301);
  const auto d = run_every_kernel<double>(301);
  REQUIRE(f.size() == d.size());
  for (size_t i = 0; i < f.size(); ++i) {
    INFO(f[i].first);
    const Vec widened(f[i].second.begin(), f[i].second.end());
    CHECK(relative_error(widened, d[i].second) < 1e-5);
  }
}

TEST_CASE("kernels are deterministic whatever the thread count", "[kernels]") {
  const auto first = run_every_kernel<float>(302);
  const auto again = run_every_kernel<float>(302);
  const auto serial = with_threads(1, [] { return run_every_kernel<float>(302); });
  const auto three = with_threads(3, [] { return run_every_kernel<float>(302); });
  for (const auto* other : {&again, &serial, &three}) {
    REQUIRE(other->size() == first.size());
    for (size_t i = 0; i < first.size(); ++i) {
      INFO(first[i].first);
      const auto& a = first[i].second;
      const auto& b = (*other)[i].second;
      REQUIRE(a.size() == b.size());
      CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    }
  }
}

namespace {

// Gather and scatter of whole samples in precision T (a copy: T only changes the element size).
template <typename T>
void check_sample_gather_scatter() {
  INFO("element size " << sizeof(T));
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const auto values = [](std::vector<double> v) { return std::vector<T>(v.begin(), v.end()); };
  const auto same = [](const std::vector<T>& got, const std::vector<T>& want) {
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("element " << i);
      CHECK(got[i] == want[i]);  // zeros included: NaN != 0
    }
  };
  // x: (B = 5, S = 3), x[b, s] = 10 (b + 1) + s, so every value names its sample and element.
  const int64_t B = 5, S = 3;
  const std::vector<T> x = values({10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42, 50, 51, 52});

  // Samples 1, 3 and 4 kept (not contiguous, the last one included).
  const std::vector<int32_t> index = {1, 3, 4}, slot = {-1, 0, -1, 1, 2};
  // One row more than gather writes: it must stay NaN.
  std::vector<T> gathered(4 * S, nan);
  gather_samples_cpu(x.data(), index.data(), gathered.data(), 3, S);
  same(std::vector<T>(gathered.begin(), gathered.begin() + 3 * S),
       values({20, 21, 22, 40, 41, 42, 50, 51, 52}));
  for (int64_t i = 3 * S; i < 4 * S; ++i) CHECK(std::isnan(gathered[i]));
  const std::vector<T> y = values({1, 2, 3, 4, 5, 6, 7, 8, 9});  // (n = 3, S)
  std::vector<T> scattered(B * S, nan);
  scatter_samples_cpu(y.data(), slot.data(), scattered.data(), B, S);
  same(scattered, values({0, 0, 0, 1, 2, 3, 0, 0, 0, 4, 5, 6, 7, 8, 9}));

  // None kept: gather writes nothing, scatter writes zeros over every sample.
  std::vector<T> untouched(S, nan);
  gather_samples_cpu(x.data(), index.data(), untouched.data(), 0, S);
  for (T v : untouched) CHECK(std::isnan(v));
  const std::vector<int32_t> none(B, -1);
  std::vector<T> zeros(B * S, nan);
  scatter_samples_cpu(y.data(), none.data(), zeros.data(), B, S);
  same(zeros, std::vector<T>(B * S, T(0)));

  // All kept: both are plain copies; a permutation moves whole rows.
  const std::vector<int32_t> all = {0, 1, 2, 3, 4};
  std::vector<T> copy(B * S, nan);
  gather_samples_cpu(x.data(), all.data(), copy.data(), B, S);
  same(copy, x);
  std::fill(copy.begin(), copy.end(), nan);
  scatter_samples_cpu(x.data(), all.data(), copy.data(), B, S);
  same(copy, x);
  const std::vector<int32_t> reversed = {4, 3, 2, 1, 0};
  std::fill(copy.begin(), copy.end(), nan);
  gather_samples_cpu(x.data(), reversed.data(), copy.data(), B, S);
  same(copy, values({50, 51, 52, 40, 41, 42, 30, 31, 32, 20, 21, 22, 10, 11, 12}));

  // scatter(gather(x)) keeps the kept samples and zeroes the others, for random data and
  // selections (B = 9, S = 7), the empty and the full one among them.
  Rng rng(sizeof(T) == sizeof(float) ? 311 : 312);
  const int64_t B2 = 9, S2 = 7;
  std::vector<T> x2(B2 * S2);
  for (T& v : x2) v = static_cast<T>(static_cast<float>(rng.uniform(0.5, 2.0)));  // never 0
  for (int trial = 0; trial < 8; ++trial) {
    std::vector<int32_t> keep_index, keep_slot(B2, -1);
    for (int64_t b = 0; b < B2; ++b) {
      const bool kept = trial == 0 ? false : (trial == 1 ? true : rng.uniform(0.0, 1.0) < 0.6);
      if (kept) {
        keep_slot[b] = static_cast<int32_t>(keep_index.size());
        keep_index.push_back(static_cast<int32_t>(b));
      }
    }
    const auto n = static_cast<int64_t>(keep_index.size());
    INFO("trial " << trial << ", " << n << " kept");
    std::vector<T> kept(n * S2, nan), back(B2 * S2, nan);
    gather_samples_cpu(x2.data(), keep_index.data(), kept.data(), n, S2);
    scatter_samples_cpu(kept.data(), keep_slot.data(), back.data(), B2, S2);
    std::vector<T> want(B2 * S2, T(0));
    for (int64_t b = 0; b < B2; ++b)
      if (keep_slot[b] >= 0)
        std::copy(x2.begin() + b * S2, x2.begin() + (b + 1) * S2, want.begin() + b * S2);
    same(back, want);
  }
}

}  // namespace

TEST_CASE("gather and scatter of samples move whole rows and zero the dropped ones", "[kernels]") {
  check_sample_gather_scatter<float>();
  check_sample_gather_scatter<double>();
}

TEST_CASE("the fused residual + LayerNorm backward refuses dbias without dbranch", "[kernels]") {
  // B = 1 sample of T = 2 tokens, C = 3 channels.
  const int64_t B = 1, Tn = 2, C = 3;
  Rng rng(231);
  const Vec dy = random_vector(rng, B * Tn * C), out = random_vector(rng, B * Tn * C),
            branch = random_vector(rng, B * Tn * C), gamma = random_vector(rng, C),
            ln_weight = random_vector(rng, C), mean = random_vector(rng, B * Tn);
  const Vec keep_scale(B, 1.0), rstd(B * Tn, 2.0);
  Vec dx(B * Tn * C), dbias(C, -1.0);
  // dbias is the column sums of dbranch: without dbranch there is nothing to sum (it read through
  // a null pointer).
  CHECK_THROWS_AS(layerscale_residual_layernorm_backward_cpu<double>(
                      nullptr, dy.data(), out.data(), branch.data(), gamma.data(),
                      keep_scale.data(), ln_weight.data(), mean.data(), rstd.data(), dx.data(),
                      nullptr, nullptr, nullptr, nullptr, dbias.data(), B, Tn, C),
                  std::invalid_argument);
  // A branch that ran on no sample has no rows to sum: dbias is 0, dbranch not needed (the CUDA
  // twin's rule).
  const int32_t no_slot[1] = {-1};
  SampleSlots slots;
  slots.branch = no_slot;
  slots.branch_samples = 0;
  layerscale_residual_layernorm_backward_cpu<double>(
      nullptr, dy.data(), out.data(), nullptr, gamma.data(), keep_scale.data(), ln_weight.data(),
      mean.data(), rstd.data(), dx.data(), nullptr, nullptr, nullptr, nullptr, dbias.data(), B, Tn,
      C, slots);
  CHECK(dbias == Vec(C, 0.0));
}
