// The cuBLASLt handle, its workspace and the plans of the GEMMs run so far, created once and passed
// to every GEMM entry point (kernels/linear.h). A plan (matmul descriptor, matrix layouts and the
// algorithm cuBLASLt's heuristic picked) is made the first time a GEMM of that shape, those types
// and those pointer alignments runs, and reused after that: a training step's GEMMs do no
// heuristic search once the first step is done, and no allocation.
//
// One CublasLt serves one stream at a time: the workspace is shared by every GEMM it runs (stream
// order keeps them apart), and a call sets the bias pointer on the cached descriptor, so two
// threads must not use the same object at once.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

namespace deit::kernels {

// D = op(A) op(B) (+ bias), in cuBLASLt's column-major terms. D: (m, n) with leading dimension
// ldd; op(A): (m, k); op(B): (k, n). A and B are bf16, accumulation is fp32, D is bf16 or fp32.
struct GemmSpec {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldd = 0;
  cudaDataType_t d_type = CUDA_R_16BF;
  bool bias = false;  // adds a bf16 bias of length m to every column (CUBLASLT_EPILOGUE_BIAS)
  // The largest power of two, at most 16, dividing every column start of the operand (its pointer
  // and its leading dimension in bytes): cuBLASLt's heuristic only offers algorithms that need no
  // more. Tensor-core kernels want 16.
  unsigned align_a = 16, align_b = 16, align_d = 16;

  auto key() const {
    return std::make_tuple(trans_a, trans_b, m, n, k, lda, ldb, ldd, static_cast<int>(d_type), bias,
                           align_a, align_b, align_d);
  }
  bool operator<(const GemmSpec& o) const { return key() < o.key(); }
};

class CublasLt {
 public:
  // 32 MiB: what NVIDIA's cuBLAS documentation recommends for Hopper (Ampere needs 4 MiB).
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

  // Creates the handle and allocates the workspace on the current device.
  explicit CublasLt(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~CublasLt();
  CublasLt(const CublasLt&) = delete;
  CublasLt& operator=(const CublasLt&) = delete;

  cublasLtHandle_t handle() const { return handle_; }
  void* workspace() const { return workspace_; }
  size_t workspace_bytes() const { return workspace_bytes_; }
  // Plans made so far (one per distinct GemmSpec).
  size_t plan_count() const { return plans_.size(); }

  // Enqueues D = op(A) op(B) (+ bias) on `stream`, planning `spec` on first use. bias: bf16 of
  // length spec.m, 16-byte aligned, or nullptr exactly when !spec.bias. Throws
  // std::invalid_argument naming the shape when cuBLASLt has no algorithm for it.
  void matmul(const GemmSpec& spec, const void* A, const void* B, void* D, const void* bias,
              cudaStream_t stream);

 private:
  struct Plan;
  const Plan& plan(const GemmSpec& spec);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<GemmSpec, std::unique_ptr<Plan>> plans_;
};

// The alignment GemmSpec wants for an operand at `p` with leading dimension `ld` elements of
// `elem_bytes` bytes each.
unsigned gemm_alignment(const void* p, int64_t ld, size_t elem_bytes);

}  // namespace deit::kernels
