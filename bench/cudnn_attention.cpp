#include "bench/cudnn_attention.h"

#if DEIT_HAVE_CUDNN
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench/cuda_timing.h"
#include "kernels/check.h"

namespace deit::bench {

namespace {

// "9.13.1" from cuDNN's encoding, major * 10000 + minor * 100 + patch (since cuDNN 9).
std::string version_string(size_t encoded) {
  return std::to_string(encoded / 10000) + "." + std::to_string(encoded / 100 % 100) + "." +
         std::to_string(encoded % 100);
}

}  // namespace

// The SDPA operation and its attributes exist in the headers from cuDNN 9.13 on, and the rival
// needs 9.13.1 (cudnn_attention.h). PyTorch's wheels (where bench/gpu-check.sh finds cuDNN when the
// toolkit has none) often carry an older one: then the rival is compiled out and reported
// unavailable, and everything else still builds.
#if CUDNN_VERSION >= DEIT_CUDNN_SDPA_MIN_VERSION

namespace {

[[noreturn]] void throw_cudnn_error(cudnnStatus_t status, const char* call, const char* file,
                                    int line) {
  std::string what = cudnnGetErrorString(status);
  char detail[1024] = {};
  cudnnGetLastErrorString(detail, sizeof(detail));
  if (detail[0]) what += std::string(" (") + detail + ")";
  detail::throw_call_error(what.c_str(), call, file, line);
}

#define DEIT_CUDNN_CHECK(call)                                                   \
  do {                                                                           \
    cudnnStatus_t deit_cudnn_status_ = (call);                                   \
    if (deit_cudnn_status_ != CUDNN_STATUS_SUCCESS)                              \
      throw_cudnn_error(deit_cudnn_status_, #call, __FILE__, __LINE__);          \
  } while (0)

// One backend descriptor, destroyed with the object.
class Descriptor {
 public:
  explicit Descriptor(cudnnBackendDescriptorType_t type) {
    DEIT_CUDNN_CHECK(cudnnBackendCreateDescriptor(type, &d_));
  }
  ~Descriptor() {
    if (d_) cudnnBackendDestroyDescriptor(d_);
  }
  Descriptor(Descriptor&& o) noexcept : d_(std::exchange(o.d_, nullptr)) {}
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  Descriptor& operator=(Descriptor&&) = delete;
  cudnnBackendDescriptor_t get() const { return d_; }
  // For attributes that take descriptors: the address of the handle.
  const cudnnBackendDescriptor_t* ptr() const { return &d_; }

 private:
  cudnnBackendDescriptor_t d_ = nullptr;
};

// The tensors of the operation, by the unique ids the variant pack binds pointers to.
enum TensorId : int64_t { kQ = 1, kK, kV, kO, kStats, kScale };

Descriptor make_tensor(int64_t uid, cudnnDataType_t type, const std::array<int64_t, 4>& dims,
                       const std::array<int64_t, 4>& strides, bool by_value = false) {
  Descriptor t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  const int64_t alignment = by_value ? 4 : 16;
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(t.get(), CUDNN_ATTR_TENSOR_DATA_TYPE,
                                            CUDNN_TYPE_DATA_TYPE, 1, &type));
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(t.get(), CUDNN_ATTR_TENSOR_DIMENSIONS,
                                            CUDNN_TYPE_INT64, 4, dims.data()));
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(t.get(), CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64,
                                            4, strides.data()));
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(t.get(), CUDNN_ATTR_TENSOR_UNIQUE_ID,
                                            CUDNN_TYPE_INT64, 1, &uid));
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(t.get(), CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT,
                                            CUDNN_TYPE_INT64, 1, &alignment));
  if (by_value) {
    const bool yes = true;
    DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(t.get(), CUDNN_ATTR_TENSOR_IS_BY_VALUE,
                                              CUDNN_TYPE_BOOLEAN, 1, &yes));
  }
  DEIT_CUDNN_CHECK(cudnnBackendFinalize(t.get()));
  return t;
}

}  // namespace

struct CudnnAttentionForward::Plan {
  cudnnHandle_t handle = nullptr;
  std::vector<Descriptor> keep;  // tensors, operation, graph, heuristics: alive as long as the plan
  std::vector<Descriptor> configs;
  std::unique_ptr<Descriptor> plan;
  std::unique_ptr<DeviceMemory> workspace;
  int64_t workspace_bytes = 0;
  std::string engine;
  float scale = 1;
  int64_t q_to_k = 0;  // elements from Q's start to K's (and K's to V's) in the packed buffer

  // The variant pack of the last run's pointers, kept so that repeated runs on the same buffers
  // (a benchmark's) do not build and finalize one each time; and the stream the handle is on.
  std::unique_ptr<Descriptor> variant_pack;
  std::array<void*, 6> bound_pointers{};
  cudaStream_t bound_stream = nullptr;  // cudnnCreate leaves the handle on the default stream

  ~Plan() {
    variant_pack.reset();
    plan.reset();
    configs.clear();
    keep.clear();
    if (handle) cudnnDestroy(handle);
  }
};

CudnnAttentionForward::CudnnAttentionForward(int64_t B, int64_t Tn, int64_t H, int64_t D,
                                             double scale)
    : plan_(std::make_unique<Plan>()) {
  if (const std::string why = cudnn_sdpa_unavailable_reason(); !why.empty())
    throw std::runtime_error(why);
  Plan& p = *plan_;
  p.scale = static_cast<float>(scale);
  p.q_to_k = H * D;
  DEIT_CUDNN_CHECK(cudnnCreate(&p.handle));

  // qkv: (B, T, 3, H, D) seen as Q, K, V of (B, H, T, D) each; out: (B, T, H, D) seen as
  // (B, H, T, D); stats: (B, H, T, 1), our lse's layout.
  const std::array<int64_t, 4> bhtd{B, H, Tn, D};
  const std::array<int64_t, 4> qkv_strides{Tn * 3 * H * D, D, 3 * H * D, 1};
  const std::array<int64_t, 4> out_strides{Tn * H * D, D, H * D, 1};
  const std::array<int64_t, 4> one{1, 1, 1, 1};
  p.keep.push_back(make_tensor(kQ, CUDNN_DATA_BFLOAT16, bhtd, qkv_strides));
  p.keep.push_back(make_tensor(kK, CUDNN_DATA_BFLOAT16, bhtd, qkv_strides));
  p.keep.push_back(make_tensor(kV, CUDNN_DATA_BFLOAT16, bhtd, qkv_strides));
  p.keep.push_back(make_tensor(kO, CUDNN_DATA_BFLOAT16, bhtd, out_strides));
  p.keep.push_back(make_tensor(kStats, CUDNN_DATA_FLOAT, {B, H, Tn, 1}, {H * Tn, Tn, 1, 1}));
  p.keep.push_back(make_tensor(kScale, CUDNN_DATA_FLOAT, one, one, /*by_value=*/true));
  const Descriptor *q = &p.keep[0], *k = &p.keep[1], *v = &p.keep[2], *o = &p.keep[3],
                   *stats = &p.keep[4], *scale_t = &p.keep[5];

  Descriptor op(CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR);
  const cudnnBackendAttributeType_t desc = CUDNN_TYPE_BACKEND_DESCRIPTOR;
  DEIT_CUDNN_CHECK(
      cudnnBackendSetAttribute(op.get(), CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, desc, 1, q->ptr()));
  DEIT_CUDNN_CHECK(
      cudnnBackendSetAttribute(op.get(), CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, desc, 1, k->ptr()));
  DEIT_CUDNN_CHECK(
      cudnnBackendSetAttribute(op.get(), CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, desc, 1, v->ptr()));
  DEIT_CUDNN_CHECK(
      cudnnBackendSetAttribute(op.get(), CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, desc, 1, o->ptr()));
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(op.get(), CUDNN_ATTR_OPERATION_SDPA_FWD_STATSDESC,
                                            desc, 1, stats->ptr()));
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(op.get(), CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC,
                                            desc, 1, scale_t->ptr()));
  DEIT_CUDNN_CHECK(cudnnBackendFinalize(op.get()));

  Descriptor graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(graph.get(), CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
                                            CUDNN_TYPE_HANDLE, 1, &p.handle));
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(graph.get(), CUDNN_ATTR_OPERATIONGRAPH_OPS, desc, 1,
                                            op.ptr()));
  DEIT_CUDNN_CHECK(cudnnBackendFinalize(graph.get()));

  Descriptor heuristics(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(
      heuristics.get(), CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, desc, 1, graph.ptr()));
  DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_MODE,
                                            CUDNN_TYPE_HEUR_MODE, 1, &mode));
  DEIT_CUDNN_CHECK(cudnnBackendFinalize(heuristics.get()));
  int64_t candidates = 0;
  DEIT_CUDNN_CHECK(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS, desc,
                                            0, &candidates, nullptr));
  std::vector<cudnnBackendDescriptor_t> raw_configs;
  for (int64_t i = 0; i < candidates; ++i) {
    p.configs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    raw_configs.push_back(p.configs.back().get());
  }
  if (candidates > 0)
    DEIT_CUDNN_CHECK(cudnnBackendGetAttribute(heuristics.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                              desc, candidates, &candidates, raw_configs.data()));

  // The heuristic's ranking, best first: the first configuration that plans is what a library
  // user gets by default.
  cudnnStatus_t last = CUDNN_STATUS_NOT_SUPPORTED;
  for (int64_t i = 0; i < candidates && !p.plan; ++i) {
    auto plan = std::make_unique<Descriptor>(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
    DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(plan->get(), CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                                              CUDNN_TYPE_HANDLE, 1, &p.handle));
    DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(
        plan->get(), CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, desc, 1, p.configs[i].ptr()));
    last = cudnnBackendFinalize(plan->get());
    if (last != CUDNN_STATUS_SUCCESS) continue;
    DEIT_CUDNN_CHECK(cudnnBackendGetAttribute(plan->get(),
                                              CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                              CUDNN_TYPE_INT64, 1, nullptr, &p.workspace_bytes));
    Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
    cudnnBackendDescriptor_t engine_raw = engine.get();
    int64_t got = 0, global_index = -1;
    DEIT_CUDNN_CHECK(cudnnBackendGetAttribute(p.configs[i].get(), CUDNN_ATTR_ENGINECFG_ENGINE,
                                              desc, 1, &got, &engine_raw));
    DEIT_CUDNN_CHECK(cudnnBackendGetAttribute(engine.get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX,
                                              CUDNN_TYPE_INT64, 1, &got, &global_index));
    p.engine = "engine " + std::to_string(global_index) + " (heuristic rank " +
               std::to_string(i + 1) + " of " + std::to_string(candidates) + ")";
    p.plan = std::move(plan);
  }
  if (!p.plan)
    throw_cudnn_error(last, "cudnnBackendFinalize(execution plan) for every heuristic candidate",
                      __FILE__, __LINE__);
  p.workspace = std::make_unique<DeviceMemory>(static_cast<size_t>(p.workspace_bytes));
  p.keep.push_back(std::move(op));
  p.keep.push_back(std::move(graph));
  p.keep.push_back(std::move(heuristics));
}

void CudnnAttentionForward::run(const kernels::bf16_bits* qkv, kernels::bf16_bits* out, float* lse,
                                cudaStream_t stream) {
  Plan& p = *plan_;
  if (p.bound_stream != stream) {
    DEIT_CUDNN_CHECK(cudnnSetStream(p.handle, stream));
    p.bound_stream = stream;
  }
  const std::array<void*, 6> pointers{const_cast<kernels::bf16_bits*>(qkv),
                                      const_cast<kernels::bf16_bits*>(qkv + p.q_to_k),
                                      const_cast<kernels::bf16_bits*>(qkv + 2 * p.q_to_k),
                                      out,
                                      lse,
                                      &p.scale};
  // Building and finalizing a pack is host work between the timed events: done once per set of
  // buffers (in a benchmark's warm-up), so the rival is timed on its kernels alone, as ours are.
  if (!p.variant_pack || p.bound_pointers != pointers) {
    const std::array<int64_t, 6> uids{kQ, kK, kV, kO, kStats, kScale};
    void* workspace = p.workspace->as<void>();
    auto pack = std::make_unique<Descriptor>(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(pack->get(), CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
                                              CUDNN_TYPE_INT64, uids.size(), uids.data()));
    DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(pack->get(), CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                              CUDNN_TYPE_VOID_PTR, pointers.size(),
                                              pointers.data()));
    DEIT_CUDNN_CHECK(cudnnBackendSetAttribute(pack->get(), CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                                              CUDNN_TYPE_VOID_PTR, 1, &workspace));
    DEIT_CUDNN_CHECK(cudnnBackendFinalize(pack->get()));
    p.variant_pack = std::move(pack);
    p.bound_pointers = pointers;
  }
  DEIT_CUDNN_CHECK(cudnnBackendExecute(p.handle, p.plan->get(), p.variant_pack->get()));
}

#else

struct CudnnAttentionForward::Plan {
  int64_t workspace_bytes = 0;
  std::string engine;
};

// The headers predate the rival, so the gate always says why.
CudnnAttentionForward::CudnnAttentionForward(int64_t, int64_t, int64_t, int64_t, double) {
  throw std::runtime_error(cudnn_sdpa_unavailable_reason());
}

// Never called: no object exists, the constructor always throws.
void CudnnAttentionForward::run(const kernels::bf16_bits*, kernels::bf16_bits*, float*,
                                cudaStream_t) {}

#endif

CudnnAttentionForward::~CudnnAttentionForward() = default;

const std::string& CudnnAttentionForward::engine() const { return plan_->engine; }
size_t CudnnAttentionForward::workspace_bytes() const {
  return static_cast<size_t>(plan_->workspace_bytes);
}

std::string cudnn_runtime_version() { return version_string(cudnnGetVersion()); }

size_t cudnn_effective_version() { return std::min<size_t>(CUDNN_VERSION, cudnnGetVersion()); }

std::string cudnn_sdpa_unavailable_reason() {
  if (cudnn_effective_version() >= DEIT_CUDNN_SDPA_MIN_VERSION) return "";
  return "cuDNN's SDPA operation needs cuDNN " + version_string(DEIT_CUDNN_SDPA_MIN_VERSION) +
         " in both the headers deit was built against (" + version_string(CUDNN_VERSION) +
         ") and the library loaded at run time (" + cudnn_runtime_version() + ")";
}

}  // namespace deit::bench
#endif
