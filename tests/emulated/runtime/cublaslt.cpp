// The cuBLASLt calls of kernels/cuda/cublaslt.cu, on the emulated device (emulated_device.h): a
// plain host GEMM, queued on the stream like any device work. It supports what deit asks for and
// refuses the rest with CUBLAS_STATUS_NOT_SUPPORTED: bf16 A and B, bf16 or fp32 D with C = D,
// fp32 compute and scale, alpha 1 and beta 0, the default or the bias epilogue (bf16 bias).
//
// What it checks as the library would (the failure is a message and CUBLAS_STATUS_INVALID_VALUE):
// every operand lies in one device allocation; each pointer has the alignment the preference
// promised when the algorithm was chosen (the heuristic writes it into the algorithm, as the real
// algorithms are specialised for it); the workspace is the one the preference allowed for, at
// most its size.
//
// The heuristic offers two algorithms when asked for more than one, computing the same but the
// first taking one piece of emulated time more (an idle piece of work queued before the GEMM;
// cudaEventElapsedTime counts pieces), so that CublasLt's autotuner has a choice to make, and a
// test can see it made.
//
// A real cuBLASLt may have no algorithm for the bias epilogue, or refuse an algorithm its own
// heuristic offered once it sees the actual call; CublasLt and the linear layer fall back on
// something else then. DEIT_EMULATED_CUBLASLT_REFUSE, read at every call so that a test can set it
// around the calls it means, makes this one do the same: "bias", the heuristic offers nothing for
// the bias epilogue; "first", every GEMM refuses the heuristic's first algorithm.
#include <cublasLt.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/bf16.h"
#include "kernels/linear.h"
#include "tests/emulated/runtime/emulated_device.h"

namespace {

struct Desc {
  cublasOperation_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  cudaDataType_t bias_type = CUDA_R_16BF;
  const void* bias = nullptr;
  bool supported = true;
};

struct Layout {
  cudaDataType_t type;
  uint64_t rows, cols;
  int64_t ld;
};

struct Preference {
  uint64_t workspace_bytes = 0;
  uint32_t align_a = 256, align_b = 256, align_c = 256, align_d = 256;
};

// What the heuristic promises an algorithm can rely on, kept in cublasLtMatmulAlgo_t's data.
struct AlgoPromise {
  uint32_t align_a, align_b, align_d;
  uint64_t workspace_bytes;
  bool slower;  // queues an idle piece of work before the GEMM
  bool first;   // the heuristic's first offer
};
static_assert(sizeof(AlgoPromise) <= sizeof(cublasLtMatmulAlgo_t::data));

Desc* as_desc(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc*>(d); }
Layout* as_layout(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l); }
Preference* as_pref(cublasLtMatmulPreference_t p) { return reinterpret_cast<Preference*>(p); }

template <typename V>
bool read_value(V& out, const void* buf, size_t bytes) {
  if (bytes != sizeof(V)) return false;
  std::memcpy(&out, buf, sizeof(V));
  return true;
}

cublasStatus_t refuse(const char* what) {
  std::fprintf(stderr, "emulated cuBLASLt: %s\n", what);
  return CUBLAS_STATUS_INVALID_VALUE;
}

float load(const void* base, cudaDataType_t type, size_t i) {
  if (type == CUDA_R_32F) return static_cast<const float*>(base)[i];
  return deit::kernels::bf16_to_float(static_cast<const deit::kernels::bf16_bits*>(base)[i]);
}

// Bytes a column-major matrix of this layout spans: ld * (cols - 1) + rows elements.
size_t span_bytes(const Layout& l) {
  const size_t elem = l.type == CUDA_R_32F ? 4 : 2;
  return l.cols == 0 ? 0 : (static_cast<size_t>(l.ld) * (l.cols - 1) + l.rows) * elem;
}

bool aligned(const void* p, uint32_t align) { return reinterpret_cast<uintptr_t>(p) % align == 0; }

// Whether DEIT_EMULATED_CUBLASLT_REFUSE names `what` (see the top of this file).
bool told_to_refuse(const char* what) {
  const char* refuse = std::getenv("DEIT_EMULATED_CUBLASLT_REFUSE");
  return refuse != nullptr && std::strcmp(refuse, what) == 0;
}

}  // namespace

const char* cublasLtGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    default:
      return "CUBLAS_STATUS (emulated cuBLASLt: unexpected status)";
  }
}

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  static int the_handle;
  *handle = reinterpret_cast<cublasLtHandle_t>(&the_handle);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t) { return CUBLAS_STATUS_SUCCESS; }

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  auto* d = new Desc;
  d->supported = compute == CUBLAS_COMPUTE_32F && scale == CUDA_R_32F;
  *desc = reinterpret_cast<cublasLtMatmulDesc_t>(d);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete as_desc(desc);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t bytes) {
  Desc& d = *as_desc(desc);
  bool ok = false;
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      ok = read_value(d.trans_a, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_TRANSB:
      ok = read_value(d.trans_b, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      ok = read_value(d.epilogue, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      ok = read_value(d.bias_type, buf, bytes);
      break;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      ok = read_value(d.bias, buf, bytes);
      break;
    default:
      d.supported = false, ok = true;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : refuse("a descriptor attribute of the wrong size");
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  if (ld < static_cast<int64_t>(std::max<uint64_t>(rows, 1)))
    return refuse("a leading dimension smaller than the rows");
  *layout = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete as_layout(layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new Preference);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete as_pref(pref);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t bytes) {
  Preference& p = *as_pref(pref);
  bool ok = true;
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      ok = read_value(p.workspace_bytes, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
      ok = read_value(p.align_a, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
      ok = read_value(p.align_b, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
      ok = read_value(p.align_c, buf, bytes);
      break;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      ok = read_value(p.align_d, buf, bytes);
      break;
    default:
      break;
  }
  return ok ? CUBLAS_STATUS_SUCCESS : refuse("a preference attribute of the wrong size");
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[],
                                              int* found) {
  *found = 0;
  const Desc& ds = *as_desc(desc);
  const bool epilogue_ok = ds.epilogue == CUBLASLT_EPILOGUE_DEFAULT ||
                           (ds.epilogue == CUBLASLT_EPILOGUE_BIAS && ds.bias_type == CUDA_R_16BF);
  const Layout &la = *as_layout(a), &lb = *as_layout(b), &lc = *as_layout(c), &ld = *as_layout(d);
  if (!ds.supported || !epilogue_ok || la.type != CUDA_R_16BF || lb.type != CUDA_R_16BF ||
      (ld.type != CUDA_R_16BF && ld.type != CUDA_R_32F) || lc.type != ld.type)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  if (requested < 1) return refuse("no algorithm requested");
  const Preference& p = *as_pref(pref);
  // The bias pointer's value stands for its alignment, as in the real heuristic.
  if (ds.epilogue == CUBLASLT_EPILOGUE_BIAS && (!aligned(ds.bias, 2) || told_to_refuse("bias")))
    return CUBLAS_STATUS_NOT_SUPPORTED;
  *found = std::min(requested, 2);
  for (int i = 0; i < *found; ++i) {
    results[i] = cublasLtMatmulHeuristicResult_t{};
    const AlgoPromise promise{p.align_a,
                              p.align_b,
                              std::min(p.align_c, p.align_d),
                              p.workspace_bytes,
                              /*slower=*/i == 0 && *found > 1,
                              /*first=*/i == 0};
    std::memcpy(results[i].algo.data, &promise, sizeof promise);
    results[i].workspaceSize = 0;
    results[i].state = CUBLAS_STATUS_SUCCESS;
    results[i].wavesCount = 1.f;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha,
                              const void* A, cublasLtMatrixLayout_t a, const void* B,
                              cublasLtMatrixLayout_t b, const void* beta, const void* C,
                              cublasLtMatrixLayout_t c, void* D, cublasLtMatrixLayout_t d,
                              const cublasLtMatmulAlgo_t* algo, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream) {
  const Desc ds = *as_desc(desc);  // the call reads the descriptor now, the bias pointer too
  const Layout la = *as_layout(a), lb = *as_layout(b), ld = *as_layout(d);
  float alpha_v, beta_v;
  std::memcpy(&alpha_v, alpha, sizeof alpha_v);
  std::memcpy(&beta_v, beta, sizeof beta_v);
  if (algo == nullptr) return refuse("no algorithm (deit always passes the heuristic's)");
  if (alpha_v != 1.f || beta_v != 0.f || C != D || as_layout(c)->ld != ld.ld)
    return CUBLAS_STATUS_NOT_SUPPORTED;
  AlgoPromise promise;
  std::memcpy(&promise, algo->data, sizeof promise);
  if (promise.first && told_to_refuse("first")) return CUBLAS_STATUS_NOT_SUPPORTED;

  const bool ta = ds.trans_a == CUBLAS_OP_T, tb = ds.trans_b == CUBLAS_OP_T;
  const uint64_t m = ld.rows, n = ld.cols, k = ta ? la.rows : la.cols;
  if ((ta ? la.cols : la.rows) != m || (tb ? lb.rows : lb.cols) != n ||
      (tb ? lb.cols : lb.rows) != k)
    return refuse("operand shapes that do not multiply");
  // What the GEMM touches, each range inside one allocation (the check of stream order needs them).
  const std::optional<deit_emu::Access> a_read = deit_emu::range_access(A, span_bytes(la), false);
  const std::optional<deit_emu::Access> b_read = deit_emu::range_access(B, span_bytes(lb), false);
  const std::optional<deit_emu::Access> d_written = deit_emu::range_access(D, span_bytes(ld), true);
  if (!a_read || !b_read || !d_written)
    return refuse("an operand outside every device allocation");
  deit_emu::Footprint footprint{"cublasLtMatmul", {*a_read, *b_read, *d_written}, {}};
  const size_t elem_a = 2, elem_b = 2, elem_d = ld.type == CUDA_R_32F ? 4 : 2;
  if (!aligned(A, promise.align_a) || !aligned(B, promise.align_b) ||
      !aligned(D, promise.align_d) || (la.ld * elem_a) % promise.align_a != 0 ||
      (lb.ld * elem_b) % promise.align_b != 0 || (ld.ld * elem_d) % promise.align_d != 0)
    return refuse("an operand less aligned than the algorithm was chosen for");
  if (workspace_bytes > promise.workspace_bytes)
    return refuse("a workspace other than the preference allowed for");
  if (workspace_bytes > 0) {
    const auto scratch = deit_emu::range_access(workspace, workspace_bytes, true);
    if (!scratch) return refuse("a workspace other than the preference allowed for");
    footprint.accesses.push_back(*scratch);
  }
  const bool bias = ds.epilogue == CUBLASLT_EPILOGUE_BIAS;
  if (bias) {
    const auto bias_read = deit_emu::range_access(ds.bias, m * 2, false);
    if (!bias_read) return refuse("a bias outside every device allocation");
    footprint.accesses.push_back(*bias_read);
  }
  const void* bias_ptr = ds.bias;
  if (promise.slower)
    if (const cudaError_t idle = deit_emu::enqueue(stream, [] {}); idle != cudaSuccess)
      return CUBLAS_STATUS_EXECUTION_FAILED;
  const cudaError_t e = deit_emu::enqueue(stream, [=] {
    // D (m, n) = op(A) (m, k) . op(B) (k, n) column-major is, row-major, D^T (n, m) =
    // op(B)^T (n, k) . op(A)^T: the CPU twin's linear layer y = x W^T + b with x = op(B)^T,
    // W = op(A), b = bias, in fp32 as the GPU accumulates.
    std::vector<float> x(n * k), w(m * k), b(bias ? m : 0), y(n * m);
    for (uint64_t j = 0; j < n; ++j)
      for (uint64_t p = 0; p < k; ++p)
        x[j * k + p] = load(B, lb.type, tb ? p * lb.ld + j : j * lb.ld + p);
    for (uint64_t i = 0; i < m; ++i)
      for (uint64_t p = 0; p < k; ++p)
        w[i * k + p] = load(A, la.type, ta ? i * la.ld + p : p * la.ld + i);
    for (uint64_t i = 0; i < b.size(); ++i) b[i] = load(bias_ptr, CUDA_R_16BF, i);
    deit::kernels::linear_forward_cpu(x.data(), w.data(), bias ? b.data() : nullptr, y.data(),
                                      static_cast<int64_t>(n), static_cast<int64_t>(k),
                                      static_cast<int64_t>(m));
    for (uint64_t j = 0; j < n; ++j)
      for (uint64_t i = 0; i < m; ++i) {
        const size_t at = j * ld.ld + i;
        if (ld.type == CUDA_R_32F)
          static_cast<float*>(D)[at] = y[j * m + i];
        else
          static_cast<deit::kernels::bf16_bits*>(D)[at] =
              deit::kernels::float_to_bf16(y[j * m + i]);
      }
  }, std::move(footprint));
  return e == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}
