// The cuBLASLt handle, workspace and plan cache of kernels/cuda/cublaslt.h. Host code only: no
// kernel of its own, cuBLASLt picks and launches the GEMM kernels.
// Measured speed (one H200, 2026-12-04, commit b67bc05, `deit bench kernels`,
// bench/results/2026-12-04-nvidia-h200-compare-huge.md): a bf16 GEMM of 8192^3, 805 TFLOP/s.
#include "kernels/cuda/cublaslt.h"

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "kernels/check.h"
#include "kernels/cuda/event.h"

namespace deit::kernels {

// What a GEMM of one GemmSpec needs besides its pointers. Every handle starts null and the
// destructor releases those that were created, so a plan that fails halfway leaks nothing.
struct CublasLt::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  // The heuristic's algorithms, best first; none: cuBLASLt has no algorithm for the spec (the plan
  // is kept all the same, so that the shape is not searched again).
  std::vector<cublasLtMatmulAlgo_t> algos;
  size_t chosen = 0;     // the algorithm in use; algos.size(): every one was refused
  bool settled = false;  // `chosen` has run once

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    // Destroy calls on valid handles do not fail; a destructor must not throw anyway.
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

namespace {

std::string describe(const GemmSpec& s) {
  std::ostringstream o;
  o << "GEMM m=" << s.m << " n=" << s.n << " k=" << s.k << " op(A)=" << (s.trans_a ? "T" : "N")
    << " op(B)=" << (s.trans_b ? "T" : "N") << " lda=" << s.lda << " ldb=" << s.ldb
    << " ldd=" << s.ldd << " D=" << (s.d_type == CUDA_R_32F ? "fp32" : "bf16")
    << (s.bias ? " +bias" : "") << " alignments A/B/D=" << s.align_a << "/" << s.align_b << "/"
    << s.align_d << " bytes";
  return o.str();
}

template <typename V>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  DEIT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof value));
}

template <typename V>
void set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
              const V& value) {
  DEIT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof value));
}

// Releases the preference however plan() leaves.
struct Preference {
  cublasLtMatmulPreference_t p = nullptr;
  Preference() { DEIT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&p)); }
  ~Preference() { cublasLtMatmulPreferenceDestroy(p); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
};

}  // namespace

unsigned gemm_alignment(const void* p, int64_t ld, size_t elem_bytes) {
  const uint64_t bits = reinterpret_cast<uintptr_t>(p) | static_cast<uint64_t>(ld) * elem_bytes;
  unsigned align = 16;
  while (align > 1 && bits % align != 0) align /= 2;
  return align;
}

CublasLt::CublasLt(size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  DEIT_CUBLAS_CHECK(cublasLtCreate(&handle_));
  if (workspace_bytes_ > 0) {
    const cudaError_t err = cudaMalloc(&workspace_, workspace_bytes_);
    if (err != cudaSuccess) {
      cublasLtDestroy(handle_);
      DEIT_CUDA_CHECK(err);
    }
  }
}

CublasLt::~CublasLt() {
  plans_.clear();  // descriptors before the handle
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

CublasLt::Plan& CublasLt::plan(const GemmSpec& s, cudaStream_t stream) {
  if (auto it = plans_.find(s); it != plans_.end()) return *it->second;
  // The heuristic is host work that a capture cannot record, and some CUDA versions fail it
  // outright while a stream captures (CUBLAS_STATUS_INTERNAL_ERROR): a step is captured only
  // after it has run once, so a new plan here means a GEMM the warm-up step did not run.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  DEIT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone)
    throw std::logic_error("CublasLt: " + describe(s) +
                           " is planned for the first time during CUDA graph capture: run it "
                           "once before the capture");

  auto plan = std::make_unique<Plan>();
  DEIT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_desc(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  set_desc(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  if (s.bias) {
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_16BF);
    // The heuristic takes the bias pointer's alignment into account, and a null one looks
    // perfectly aligned. The plan serves every bias of this shape, of which matmul() promises
    // 16-byte alignment only, so plan for an address aligned to exactly that: a real device
    // address (16 bytes into the 256-byte aligned workspace, never read), in case the library
    // inspects it.
    const void* bias_aligned_to_16 =
        workspace_ != nullptr ? static_cast<const void*>(static_cast<const char*>(workspace_) + 16)
                              : reinterpret_cast<const void*>(uintptr_t{16});
    set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_aligned_to_16);
  }
  // Stored shapes: a transposed operand is stored (k, m) (or (n, k)) and read transposed.
  DEIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, s.trans_a ? s.k : s.m,
                                               s.trans_a ? s.m : s.k, s.lda));
  DEIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, s.trans_b ? s.n : s.k,
                                               s.trans_b ? s.k : s.n, s.ldb));
  DEIT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->d, s.d_type, s.m, s.n, s.ldd));

  Preference pref;
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
           static_cast<uint64_t>(workspace_bytes_));
  // cuBLASLt assumes 256-byte aligned operands unless told otherwise; C is D (beta = 0).
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, static_cast<uint32_t>(s.align_a));
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, static_cast<uint32_t>(s.align_b));
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, static_cast<uint32_t>(s.align_d));
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, static_cast<uint32_t>(s.align_d));
  // Split-K partial sums in fp32 only: summed in the output type, a bf16 GEMM's partials would each
  // be rounded to bf16 first (TransformerEngine turned that scheme off after losing precision).
  set_pref(pref.p, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
           static_cast<uint32_t>(CUBLASLT_REDUCTION_SCHEME_INPLACE |
                                 CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));

  // Up to 16, best first: the first run falls back on the next when cuBLASLt refuses one, and the
  // autotuner times them all (a few seconds in all for deit3_huge's plans, once).
  constexpr int kAlgorithms = 16;
  cublasLtMatmulHeuristicResult_t results[kAlgorithms] = {};
  int found = 0;
  const cublasStatus_t heuristic =
      cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->a, plan->b, plan->d, plan->d,
                                     pref.p, kAlgorithms, results, &found);
  if (heuristic != CUBLAS_STATUS_NOT_SUPPORTED) DEIT_CUBLAS_CHECK(heuristic);
  for (int i = 0; i < found; ++i)  // a result's other fields mean something only on success
    if (results[i].state == CUBLAS_STATUS_SUCCESS) plan->algos.push_back(results[i].algo);
  return *plans_.emplace(s, std::move(plan)).first->second;
}

void CublasLt::tune(Plan& p, const void* A, const void* B, void* D, cudaStream_t stream) {
  // The host waits for the timings below, which a capture cannot hold (plan() refuses to plan
  // during one, so only a plan whose first call threw gets here capturing; it runs untimed).
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  DEIT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return;
  constexpr int kTimedRuns = 3;  // after one untimed run, which also finds out a refusal
  const CudaEvent start(cudaEventDefault), stop(cudaEventDefault);
  const float alpha = 1.f, beta = 0.f;
  float best_ms = 0.f;
  size_t best = p.algos.size();
  for (size_t i = 0; i < p.algos.size(); ++i) {
    const auto run = [&] {
      return cublasLtMatmul(handle_, p.desc, &alpha, A, p.a, B, p.b, &beta, D, p.d, D, p.d,
                            &p.algos[i], workspace_, workspace_bytes_, stream);
    };
    const cublasStatus_t first = run();
    if (first == CUBLAS_STATUS_NOT_SUPPORTED) continue;  // refused: nothing was enqueued
    DEIT_CUBLAS_CHECK(first);
    DEIT_CUDA_CHECK(cudaEventRecord(start, stream));
    for (int r = 0; r < kTimedRuns; ++r) DEIT_CUBLAS_CHECK(run());
    DEIT_CUDA_CHECK(cudaEventRecord(stop, stream));
    DEIT_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    DEIT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (best == p.algos.size() || ms < best_ms) {
      best = i;
      best_ms = ms;
    }
  }
  // None accepted: try_matmul goes through them again and reports it.
  if (best < p.algos.size()) p.chosen = best;
}

size_t CublasLt::plans_off_first_choice() const {
  size_t n = 0;
  for (const auto& [spec, plan] : plans_) n += plan->settled && plan->chosen != 0 ? 1 : 0;
  return n;
}

bool CublasLt::try_matmul(const GemmSpec& spec, const void* A, const void* B, void* D,
                          const void* bias, cudaStream_t stream) {
  if (spec.bias != (bias != nullptr))
    throw std::invalid_argument("CublasLt::matmul: " + describe(spec) +
                                ": the bias pointer does not match the spec");
  // Every plan's algorithm was chosen for a 16-byte aligned bias (see plan()): 16 bytes is what
  // every allocation gives, and a less aligned bias could meet an algorithm that needs more.
  if (bias && reinterpret_cast<uintptr_t>(bias) % 16 != 0)
    throw std::invalid_argument("CublasLt::matmul: " + describe(spec) +
                                ": its bias must be 16-byte aligned");
  Plan& p = plan(spec, stream);
  if (bias) set_desc(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  if (autotune_ && !p.settled && p.algos.size() > 1) tune(p, A, B, D, stream);
  const float alpha = 1.f, beta = 0.f;
  for (; p.chosen < p.algos.size(); ++p.chosen) {
    const cublasStatus_t cublasLtMatmul_status =
        cublasLtMatmul(handle_, p.desc, &alpha, A, p.a, B, p.b, &beta, D, p.d, D, p.d,
                       &p.algos[p.chosen], workspace_, workspace_bytes_, stream);
    // Refused for the actual call (nothing enqueued) before any has run: the next one offered.
    if (cublasLtMatmul_status == CUBLAS_STATUS_NOT_SUPPORTED && !p.settled) continue;
    DEIT_CUBLAS_CHECK(cublasLtMatmul_status);
    p.settled = true;
    return true;
  }
  return false;
}

void CublasLt::matmul(const GemmSpec& spec, const void* A, const void* B, void* D, const void* bias,
                      cudaStream_t stream) {
  if (!try_matmul(spec, A, B, D, bias, stream))
    throw std::invalid_argument("cuBLASLt has no algorithm for " + describe(spec));
}

}  // namespace deit::kernels
