// The one matrix product the CPU kernels share (internal to kernels/cpu/).
#pragma once
#include <cstdint>

namespace deit::kernels {

// Row-major C = alpha * op(A) op(B) + beta * C, with op(A): (M, K), op(B): (K, N), C: (M, N).
// trans_a: A is stored as (K, M); trans_b: B is stored as (N, K). lda, ldb, ldc are row strides in
// elements, so a matrix may be a strided view into a larger buffer (attention reads one head's
// rows out of the packed qkv this way). beta == 0 overwrites C without reading it, as BLAS does.
// Sizes and leading dimensions are in [0, 2^31), as CBLAS's int arguments hold them
// (std::invalid_argument otherwise, in either build).
// Calls CBLAS when the build found it (DEIT_HAVE_CBLAS), plain loops otherwise. Called from serial
// code it parallelises itself; called inside an OpenMP parallel region it runs on the calling
// thread alone (the loops' nested region, and the OpenMP build of OpenBLAS that
// cmake/DeitDependencies.cmake picks), which the attention kernels use to run one head per thread.
template <typename T>
void gemm_cpu(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
              int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace deit::kernels
