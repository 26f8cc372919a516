// LAMB, AdamW, the global gradient norm and the weight EMA over every parameter tensor of a model
// per launch ("multi-tensor apply"), on fp32 master weights and moments.
// Fuses: the gradient-clipping factor into the moment update (read from the device, so no host
// round trip); the bf16 weight copy into the parameter update; LAMB's ||p||^2 and ||update||^2
// partial sums into the moment pass. LAMB's update vector is never stored: the parameter pass
// recomputes it from the stored moments with the same fp32 operations (explicit fmaf, so the
// compiler cannot contract one pass differently from the other), which costs less memory traffic
// than writing it and reading it back.
// Launch: every tensor is cut into chunks of kCudaOptimizerChunk elements; the chunk kernels run
// one block of 256 threads per chunk, 8-element (16-byte bf16, 2 x 16-byte fp32) vectors where
// all of a tensor's pointers are 16-byte aligned, scalar otherwise. Reductions: a fixed shuffle
// tree per block (chunk partials), then one block of 1024 threads for the global norm and one
// thread per tensor adding its chunks in order for LAMB's trust ratio. Deterministic throughout.
// The step's scalars (learning rate, bias corrections, weight decay) and the gradient factor are
// read from device memory once per block, so a captured graph of these launches applies the values
// set_step_cuda wrote before each replay. The step's gradient pointers go the other way: by value,
// 256 per launch of set_grads_kernel (one block, a thread per slot), which a captured graph
// replays as captured; they spare the engine a copy of every gradient into fixed buffers (a launch
// per tensor, and the buffers' memory).
// Measured speed (one H200, 2026-12-04, `deit bench step --opt adamw`): the whole update 0.21 ms
// for deit3_small (22M parameters), 0.76 ms for base (86M), 2.60 for large, 5.40 for huge (632M),
// within 6% of PyTorch's fused AdamW; LAMB 0.28 ms for deit3_small.
//
// Files: the device code, and the host side of the table layout it reads, is
// kernels/cuda/optimizer_kernels.cuh; this file is the host side (the table's device memory,
// argument checks, launches). The kernels also run, lane by lane on the host, in the CTest entry
// optimizer_emulated (tests/emulated/optimizer_emulated.cpp), which checks them against the CPU
// twins without a GPU; its launches mirror the ones below, so change them together.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/optimizer.h"
// The device code, after what it uses.
#include "kernels/cuda/optimizer_kernels.cuh"

namespace deit::kernels {

// The table's device arrays, typed, for the launches below.
struct CudaParamTableAccess {
  static const Slot* slots(const CudaParamTable& t) { return static_cast<const Slot*>(t.slots_); }
  static Slot* slots(CudaParamTable& t) { return static_cast<Slot*>(t.slots_); }
  static const Chunk* chunks(const CudaParamTable& t) {
    return static_cast<const Chunk*>(t.chunk_list_);
  }
  static float* partials(const CudaParamTable& t) { return t.partials_; }
  static float* trust(const CudaParamTable& t) { return t.trust_; }
  static float* scalars(const CudaParamTable& t) { return t.scalars_; }
  static StepScalars* step(const CudaParamTable& t) { return static_cast<StepScalars*>(t.step_); }
  static void mark_step_set(CudaParamTable& t) { t.step_set_ = true; }
  static void mark_grads_set(CudaParamTable& t) { t.has_grads_ = true; }
  static bool step_set(const CudaParamTable& t) { return t.step_set_; }

  static void free_all(CudaParamTable& t) {
    for (void* p : {t.slots_, t.chunk_list_, static_cast<void*>(t.partials_),
                    static_cast<void*>(t.trust_), static_cast<void*>(t.scalars_), t.step_})
      if (p) cudaFree(p);
    t.slots_ = t.chunk_list_ = t.step_ = nullptr;
    t.partials_ = t.trust_ = t.scalars_ = nullptr;
  }

  template <typename Op>
  static void launch(const CudaParamTable& t, const Op& op, cudaStream_t stream) {
    if (t.chunks_ == 0) return;
    chunk_kernel<Op><<<static_cast<unsigned>(t.chunks_), kThreads, 0, stream>>>(
        slots(t), chunks(t), op, t.partials_);
    DEIT_CUDA_CHECK_LAUNCH();
  }
};

namespace {

template <typename T>
void upload(T** dst, const std::vector<T>& host) {
  // At least one element, so that every array exists even for an empty table.
  const size_t bytes = std::max<size_t>(host.size(), 1) * sizeof(T);
  DEIT_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(dst), bytes));
  if (host.empty()) return;
  DEIT_CUDA_CHECK(cudaMemcpy(*dst, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  // From pageable memory cudaMemcpy may return before its last DMA lands, and the kernels that
  // read the table run on the compute stream, which does not wait for the legacy stream.
  DEIT_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
}

}  // namespace

CudaParamTable::CudaParamTable(const std::vector<CudaParam>& params) {
  const TableLayout layout = table_layout(params);
  const std::vector<Slot>& slots = layout.slots;
  const std::vector<Chunk>& chunks = layout.chunks;
  has_optimizer_state_ = layout.has_optimizer_state;
  has_grads_ = layout.has_grads;
  tensors_ = static_cast<int64_t>(slots.size());
  chunks_ = static_cast<int64_t>(chunks.size());
  try {
    upload(reinterpret_cast<Slot**>(&slots_), slots);
    upload(reinterpret_cast<Chunk**>(&chunk_list_), chunks);
    upload(&partials_, std::vector<float>(2 * chunks.size()));
    upload(&trust_, std::vector<float>(slots.size()));
    upload(&scalars_, std::vector<float>{0.f, 1.f});
    upload(reinterpret_cast<StepScalars**>(&step_), std::vector<StepScalars>(1, StepScalars{}));
  } catch (...) {
    CudaParamTableAccess::free_all(*this);
    throw;
  }
}

CudaParamTable::~CudaParamTable() { CudaParamTableAccess::free_all(*this); }

namespace {

void require_optimizer_state(const char* fn, const CudaParamTable& table) {
  if (!table.has_optimizer_state())
    throw std::invalid_argument(std::string(fn) +
                                ": the table lacks moments or bf16 copies (EMA only)");
}

void require_grads(const char* fn, const CudaParamTable& table) {
  require_optimizer_state(fn, table);
  if (!table.has_grads())
    throw std::logic_error(std::string(fn) +
                           " before set_grads_cuda on a table built without gradients");
}

void require_step(const char* fn, const CudaParamTable& table) {
  require_grads(fn, table);
  if (!CudaParamTableAccess::step_set(table))
    throw std::logic_error(std::string(fn) + " before any set_step_cuda on its table");
}

}  // namespace

void grad_norm_cuda(CudaParamTable& table, double clip_grad, double max_grad_norm,
                    cudaStream_t stream) {
  using A = CudaParamTableAccess;
  require_grads("grad_norm_cuda", table);
  A::launch(table, GradSquaresOp{}, stream);
  grad_norm_finish_kernel<<<1, kNormThreads, 0, stream>>>(A::partials(table), table.chunks(),
                                                          clip_grad, max_grad_norm,
                                                          A::scalars(table));
  DEIT_CUDA_CHECK_LAUNCH();
}

void grad_sum_squares_cuda(CudaParamTable& table, float* sum_squares, cudaStream_t stream) {
  using A = CudaParamTableAccess;
  require_grads("grad_sum_squares_cuda", table);
  A::launch(table, GradSquaresOp{}, stream);
  grad_sum_kernel<<<1, kNormThreads, 0, stream>>>(A::partials(table), table.chunks(),
                                                  sum_squares);
  DEIT_CUDA_CHECK_LAUNCH();
}

void grad_factor_cuda(CudaParamTable& table, const float* sum_squares, double clip_grad,
                      double max_grad_norm, cudaStream_t stream) {
  require_grads("grad_factor_cuda", table);
  grad_factor_kernel<<<1, 1, 0, stream>>>(sum_squares, clip_grad, max_grad_norm,
                                          CudaParamTableAccess::scalars(table));
  DEIT_CUDA_CHECK_LAUNCH();
}

void set_step_cuda(CudaParamTable& table, const AdamStep& step, double lr, double weight_decay,
                   cudaStream_t stream) {
  using A = CudaParamTableAccess;
  require_optimizer_state("set_step_cuda", table);
  // Passed by value: the launch copies it, so the host may change its own right away.
  const StepScalars value = step_scalars("set_step_cuda", step, lr, weight_decay);
  set_step_kernel<<<1, 1, 0, stream>>>(A::step(table), value);
  DEIT_CUDA_CHECK_LAUNCH();
  A::mark_step_set(table);
}

void set_grads_cuda(CudaParamTable& table, const std::vector<const float*>& grads,
                    cudaStream_t stream) {
  require_optimizer_state("set_grads_cuda", table);
  if (static_cast<int64_t>(grads.size()) != table.tensors())
    throw std::invalid_argument("set_grads_cuda: " + std::to_string(grads.size()) +
                                " gradients for a table of " + std::to_string(table.tensors()) +
                                " tensors");
  for (size_t i = 0; i < grads.size(); ++i)
    if (!grads[i])
      throw std::invalid_argument("set_grads_cuda: gradient " + std::to_string(i) + " is null");
  for (size_t first = 0; first < grads.size(); first += kGradsPerLaunch) {
    GradPointers batch{};
    batch.first = static_cast<int64_t>(first);
    batch.count = static_cast<int32_t>(std::min<size_t>(kGradsPerLaunch, grads.size() - first));
    std::copy_n(grads.begin() + static_cast<std::ptrdiff_t>(first), batch.count, batch.grad);
    set_grads_kernel<<<1, kGradsPerLaunch, 0, stream>>>(CudaParamTableAccess::slots(table), batch);
    DEIT_CUDA_CHECK_LAUNCH();
  }
  CudaParamTableAccess::mark_grads_set(table);
}

void lamb_step_cuda(CudaParamTable& table, cudaStream_t stream) {
  using A = CudaParamTableAccess;
  require_step("lamb_step_cuda", table);
  const UpdateScalars scalars{table.grad_scale(), A::step(table)};
  A::launch(table, LambMomentsOp{scalars}, stream);
  if (table.tensors() > 0) {
    const unsigned grid = static_cast<unsigned>(gpu::ceil_div(table.tensors(), kTrustThreads));
    lamb_trust_kernel<<<grid, kTrustThreads, 0, stream>>>(A::slots(table), table.tensors(),
                                                          A::partials(table), A::step(table),
                                                          A::trust(table));
    DEIT_CUDA_CHECK_LAUNCH();
  }
  A::launch(table, LambApplyOp{scalars, A::trust(table)}, stream);
}

void adamw_step_cuda(CudaParamTable& table, cudaStream_t stream) {
  require_step("adamw_step_cuda", table);
  CudaParamTableAccess::launch(
      table, AdamWOp{{table.grad_scale(), CudaParamTableAccess::step(table)}}, stream);
}

void ema_update_cuda(CudaParamTable& table, double decay, cudaStream_t stream) {
  CudaParamTableAccess::launch(
      table, EmaOp{static_cast<float>(decay), static_cast<float>(1 - decay)}, stream);
}

}  // namespace deit::kernels
