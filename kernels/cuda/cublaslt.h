// The cuBLASLt handle, its workspace and the plans of the GEMMs run so far, created once and passed
// to every GEMM entry point (kernels/linear.h). A plan (matmul descriptor, matrix layouts and the
// algorithms cuBLASLt's heuristic offers, best first) is made the first time a GEMM of that shape,
// those types and those pointer alignments runs, and reused after that: a training step's GEMMs do
// no heuristic search once the first step is done, and no allocation. The first run of a plan
// settles its algorithm: an offered algorithm that cuBLASLt then refuses for the actual call
// (CUBLAS_STATUS_NOT_SUPPORTED, which PyTorch has met with bias epilogues) gives way to the next.
// Planning needs the heuristic, which must not run while a stream is being captured into a CUDA
// graph: every GEMM of a captured step has to run once before the capture.
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
  // Plans that have run an algorithm other than the heuristic's first choice: one the autotuner
  // timed faster, or the next after one cuBLASLt refused.
  size_t plans_off_first_choice() const;

  // Enqueues D = op(A) op(B) (+ bias) on `stream`, planning `spec` on first use. bias: bf16 of
  // length spec.m, 16-byte aligned, or nullptr exactly when !spec.bias. Throws
  // std::invalid_argument naming the shape when cuBLASLt has no algorithm for it, and
  // std::logic_error when it would plan while `stream` is being captured.
  void matmul(const GemmSpec& spec, const void* A, const void* B, void* D, const void* bias,
              cudaStream_t stream);
  // As matmul(), but returns false, having enqueued nothing, where matmul() would throw
  // std::invalid_argument: for a caller with another way to the same result (linear.cu adds a
  // bias that no algorithm fuses with a kernel of its own).
  bool try_matmul(const GemmSpec& spec, const void* A, const void* B, void* D, const void* bias,
                  cudaStream_t stream);

  // Whether GEMMs with a bias may fuse it (CUBLASLT_EPILOGUE_BIAS); on by default. Off, linear.cu
  // always adds it with its own kernel: what a test of that path, and a measurement of what the
  // epilogue saves, need.
  bool bias_epilogue() const { return bias_epilogue_; }
  void set_bias_epilogue(bool on) { bias_epilogue_ = on; }

  // Whether a plan's first run times every algorithm the heuristic offered, on that call's own
  // operands (D is written several times over, then by the call itself), and keeps the fastest;
  // off by default. It costs a few GEMMs and one host synchronisation per plan, in the first step
  // only, and the choice may differ from run to run where two algorithms take about as long
  // (their sums then differ in the last bits). Applies to plans that have not run yet.
  bool autotune() const { return autotune_; }
  void set_autotune(bool on) { autotune_ = on; }

 private:
  struct Plan;
  Plan& plan(const GemmSpec& spec, cudaStream_t stream);
  void tune(Plan& plan, const void* A, const void* B, void* D, cudaStream_t stream);

  bool bias_epilogue_ = true;
  bool autotune_ = false;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<GemmSpec, std::unique_ptr<Plan>> plans_;
};

// The alignment GemmSpec wants for an operand at `p` with leading dimension `ld` elements of
// `elem_bytes` bytes each.
unsigned gemm_alignment(const void* p, int64_t ld, size_t elem_bytes);

}  // namespace deit::kernels
