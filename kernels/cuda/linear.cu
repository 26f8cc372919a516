// The linear layer y = x W^T + b on cuBLASLt, bf16 operands, fp32 accumulation.
// Row-major (PyTorch) to cuBLASLt's column-major: a row-major (R, C) matrix is a column-major
// (C, R) one with leading dimension C, i.e. its transpose. So
//   forward  y^T (N, M)  = W (N, K) . x^T (K, M):   A = W stored (K, N), op T; B = x, op N
//   dx^T     (K, M)      = W^T (K, N) . dy^T (N, M): A = W stored (K, N), op N; B = dy, op N
//   dW^T     (K, N)      = x^T (K, M) . dy (M, N):   A = x, op N;  B = dy stored (N, M), op T
// Fuses: the bias add into the forward GEMM (CUBLASLT_EPILOGUE_BIAS, bias along D's rows = the
// N output features) where cuBLASLt has an algorithm for it (or CublasLt::set_bias_epilogue
// allows it); otherwise the GEMM alone, then AddBiasRowsOp on the elementwise launcher, which
// rounds to bf16 twice (the GEMM's output, then its sum with the bias) where the epilogue rounds
// once: within the bf16 tolerance. dW is written in fp32 straight from the accumulators.
// Launch: cuBLASLt's choice (heuristic, cached per shape in CublasLt; with CublasLt::set_autotune,
// the fastest of its offers, timed on the first run). db, per tile of at most 8192 columns:
// row_chunks(M, width) blocks of row_threads(width) threads, each thread summing 8 columns of dy
// over a fixed chunk of rows into fp32 partials in the CublasLt workspace, then sum_partials adds
// the chunks in a fixed order.
// Measured speed (one H200, 2026-12-04, `deit bench step`, deit3_small at 224, batch 256, commit
// d925502): the forward GEMMs take 3.83 ms per step (5.94 ms with the bias added apart: the
// epilogue saves 2.1 ms) and the backward ones 6.91 ms, where PyTorch's under torch.compile take
// 3.66 ms (addmm) and 6.58 ms (mm). Only the layers with no neighbouring pass to give their bias
// gradient (the patch embedding, the head, the last block's fc2; with --recompute-gelu also fc1
// and every fc2) still sum it here: 8.49 ms a step when every layer did.
// db from the dW GEMM itself (CUBLASLT_EPILOGUE_BGRADB, fp32) was tried and measured slower on
// the H200: 9.21 ms of backward GEMMs per deit3_small step, 63.8 ms per deit3_huge step (62.4
// with the pass of our own). fc1's db comes from GELU's backward pass instead (ops::linear_gelu,
// gelu_backward_bias_grad_cuda), which writes the dy this would read.
//
// Files: the device code of the bias add is kernels/cuda/linear_kernels.cuh, that of the bias
// gradient common_kernels.cuh's column_partials_kernel (launched by common.cu's column_partials);
// this file is the host side (the GEMMs, argument checks, launches). Both kernels also run, lane
// by lane on the host, in the CTest entry ops_emulated (tests/emulated/ops_emulated.cpp), which
// checks them against the CPU twins without a GPU; its launches mirror the ones here and in
// common.cu, so change them together.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cublaslt.h"
#include "kernels/linear.h"
// The device code, after what it uses.
#include "kernels/cuda/linear_kernels.cuh"

namespace deit::kernels {
namespace {

constexpr size_t kBf16Bytes = 2;
constexpr size_t kF32Bytes = 4;

// dbias (N) = sum over the M rows of dy (M, N), deterministic. The row kernels take rows of at
// most kMaxRowWidth columns: a wider dy (an ImageNet-21k head, 21841 classes) is summed a tile of
// columns at a time.
void column_sums(const bf16_bits* dy, float* dbias, int64_t M, int64_t N, const CublasLt& lt,
                 cudaStream_t stream) {
  // The partials borrow the GEMM workspace: stream order keeps them apart from every GEMM and
  // from the tile before.
  float* partials = static_cast<float*>(lt.workspace());
  gpu::column_sum_tiles(
      M, N, partials, dbias, stream, [&](int64_t c0, int64_t width, const gpu::RowChunks& part) {
        const size_t need = static_cast<size_t>(part.chunks * width) * kF32Bytes;
        if (need > lt.workspace_bytes())
          throw std::invalid_argument(
              "linear_backward_cuda: the bias gradient needs " + std::to_string(need) +
              " bytes of CublasLt workspace, it has " + std::to_string(lt.workspace_bytes()));
        gpu::column_partials(gpu::as_bf16(dy) + c0, M, width, N, partials, part, stream);
      });
}

void check_linear_sizes(const char* fn, int64_t M, int64_t K, int64_t N) {
  gpu::check_sizes(fn, {M, K, N});
  if (K < 1 || N < 1)
    throw std::invalid_argument(std::string(fn) + ": K = " + std::to_string(K) +
                                " and N = " + std::to_string(N) + " must be at least 1");
}

}  // namespace

void linear_forward_cuda(const bf16_bits* x, const bf16_bits* weight, const bf16_bits* bias,
                         bf16_bits* y, int64_t M, int64_t K, int64_t N, CublasLt& lt,
                         cudaStream_t stream) {
  check_linear_sizes("linear_forward_cuda", M, K, N);
  if (M == 0) return;
  GemmSpec s;
  s.trans_a = true;
  s.m = N, s.n = M, s.k = K;
  s.lda = K, s.ldb = K, s.ldd = N;
  s.d_type = CUDA_R_16BF;
  s.align_a = gemm_alignment(weight, K, kBf16Bytes);
  s.align_b = gemm_alignment(x, K, kBf16Bytes);
  s.align_d = gemm_alignment(y, N, kBf16Bytes);
  if (bias != nullptr && lt.bias_epilogue()) {
    s.bias = true;
    if (lt.try_matmul(s, weight, x, y, bias, stream)) return;
    s.bias = false;
  }
  lt.matmul(s, weight, x, y, nullptr, stream);
  if (bias == nullptr) return;
  bf16* out = gpu::as_bf16(y);
  const bf16* b = gpu::as_bf16(bias);
  gpu::launch_elementwise(AddBiasRowsOp{out, b, N}, M * N, N % kVec == 0 && gpu::aligned16(out, b),
                          stream);
}

void linear_backward_cuda(const bf16_bits* dy, const bf16_bits* x, const bf16_bits* weight,
                          bf16_bits* dx, float* dweight, float* dbias, int64_t M, int64_t K,
                          int64_t N, CublasLt& lt, cudaStream_t stream) {
  const char* fn = "linear_backward_cuda";
  check_linear_sizes(fn, M, K, N);
  if (M == 0) {  // sums over no rows
    if (dweight) DEIT_CUDA_CHECK(cudaMemsetAsync(dweight, 0, N * K * kF32Bytes, stream));
    if (dbias) DEIT_CUDA_CHECK(cudaMemsetAsync(dbias, 0, N * kF32Bytes, stream));
    return;
  }
  if (dx) {
    GemmSpec s;
    s.m = K, s.n = M, s.k = N;
    s.lda = K, s.ldb = N, s.ldd = K;
    s.d_type = CUDA_R_16BF;
    s.align_a = gemm_alignment(weight, K, kBf16Bytes);
    s.align_b = gemm_alignment(dy, N, kBf16Bytes);
    s.align_d = gemm_alignment(dx, K, kBf16Bytes);
    lt.matmul(s, weight, dy, dx, nullptr, stream);
  }
  if (dweight) {
    GemmSpec s;
    s.trans_b = true;
    s.m = K, s.n = N, s.k = M;
    s.lda = K, s.ldb = N, s.ldd = K;
    s.d_type = CUDA_R_32F;
    s.align_a = gemm_alignment(x, K, kBf16Bytes);
    s.align_b = gemm_alignment(dy, N, kBf16Bytes);
    s.align_d = gemm_alignment(dweight, K, kF32Bytes);
    lt.matmul(s, x, dy, dweight, nullptr, stream);
  }
  if (dbias) column_sums(dy, dbias, M, N, lt, stream);
}

}  // namespace deit::kernels
