#include "kernels/cpu/gemm.h"

#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#if DEIT_HAVE_CBLAS
#include <cblas.h>
#endif

namespace deit::kernels {
namespace {

// c: (N) = beta * c, with beta == 0 clearing c (it may hold NaN: BLAS never reads C then).
template <typename T>
void scale_row(T* c, int64_t N, T beta) {
  for (int64_t j = 0; j < N; ++j) c[j] = beta == T(0) ? T(0) : beta * c[j];
}

#if DEIT_HAVE_CBLAS

template <typename T>
void gemm_blas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const auto i = [](int64_t v) { return static_cast<int>(v); };  // in range: gemm_cpu checks
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, i(M), i(N), i(K), alpha, A, i(lda), B, i(ldb), beta, C,
                i(ldc));
  else
    cblas_dgemm(CblasRowMajor, ta, tb, i(M), i(N), i(K), alpha, A, i(lda), B, i(ldb), beta, C,
                i(ldc));
}

#else

// Plain loops, parallel over the rows of C. Without trans_b each row of C is built as a sum of
// rows of B (i-k-j order: the inner loop streams through B and C contiguously); with trans_b the
// rows of B are the columns we need, so each C element is a contiguous dot product instead.
template <typename T>
void gemm_loops(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  const auto a = [=](int64_t i, int64_t k) { return trans_a ? A[k * lda + i] : A[i * lda + k]; };
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    scale_row(c, N, beta);
    if (trans_b) {
      for (int64_t j = 0; j < N; ++j) {
        const T* b = B + j * ldb;
        T dot = 0;
        for (int64_t k = 0; k < K; ++k) dot += a(i, k) * b[k];
        c[j] += alpha * dot;
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        const T aik = alpha * a(i, k);
        const T* b = B + k * ldb;
        for (int64_t j = 0; j < N; ++j) c[j] += aik * b[j];
      }
    }
  }
}

#endif

}  // namespace

template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  // CBLAS takes int sizes: a larger one would be cut to its low 32 bits, a wrong product without
  // a word. Both builds refuse them, so that a shape works or fails the same with and without BLAS.
  constexpr int64_t kMaxSize = std::numeric_limits<int>::max();
  for (const int64_t v : {M, N, K, lda, ldb, ldc})
    if (v < 0 || v > kMaxSize)
      throw std::invalid_argument("gemm_cpu: M " + std::to_string(M) + ", N " + std::to_string(N) +
                                  ", K " + std::to_string(K) + ", lda " + std::to_string(lda) +
                                  ", ldb " + std::to_string(ldb) + ", ldc " + std::to_string(ldc) +
                                  ": every size and leading dimension must be in [0, 2^31)");
#if DEIT_HAVE_CBLAS
  if (M == 0 || N == 0) return;
  // BLAS rejects K == 0 (a leading dimension of 0 is illegal); the product is then beta * C.
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i) scale_row(C + i * ldc, N, beta);
    return;
  }
  gemm_blas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#else
  gemm_loops(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

template void gemm_cpu<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                              const float*, int64_t, float, float*, int64_t);
template void gemm_cpu<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                               int64_t, const double*, int64_t, double, double*, int64_t);

}  // namespace deit::kernels
