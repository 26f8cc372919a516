// The one matrix product the CPU kernels share (internal to kernels/cpu/).
#pragma once
#include <cstdint>

namespace deit::kernels {

// Row-major C = alpha * op(A) op(B) + beta * C, with op(A): (M, K), op(B): (K, N), C: (M, N).
// trans_a: A is stored as (K, M); trans_b: B is stored as (N, K). lda, ldb, ldc are row strides in
// elements, so a matrix may be a strided view into a larger buffer (attention reads one head's
// rows out of the packed qkv this way). beta == 0 overwrites C without reading it, as BLAS does.
// Calls CBLAS when the build found it (DEIT_HAVE_CBLAS), plain loops otherwise. It parallelises
// itself, so call it from serial code: called from many OpenMP threads at once it stays correct,
// but OpenBLAS's pthread pool then serialises the calls and oversubscribes the cores.
template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace deit::kernels
