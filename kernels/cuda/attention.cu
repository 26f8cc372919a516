// Flash-style fused multi-head self-attention (non-causal) over the packed qkv buffer, forward and
// backward, bf16 in and out, fp32 accumulation and softmax statistics. The CPU twin,
// kernels/cpu/attention.cpp, says what is computed; this file computes the same without ever
// storing the (T, T) score matrix.
//
// What it fuses
//   forward:  S = scale Q K^T, the online softmax (running row max and row sum, FlashAttention-2),
//             O = P V and the normalisation 1 / rowsum, and the log-sum-exp of every score row
//             (fp32, natural log), in one kernel per (query tile, batch, head).
//   backward: three launches, no atomics, so the same inputs give the same bits:
//             1. delta_i = sum_d dO_id O_id (8 lanes per row at D = 64) into the fp32
//                workspace;
//             2. per (key tile, batch, head): rebuild P^T = exp(scale K Q^T - lse) from the saved
//                lse, dV = P^T dO, dP^T = V dO^T, dS^T = P^T (dP^T - delta), dK = scale dS^T Q,
//                looping over every query tile, and write dS^T in bf16 to the workspace;
//             3. per (query tile, batch, head): dQ = scale dS K, reading dS^T back, looping over
//                every key tile.
//             Asked for the qkv linear layer's bias gradient (ops::linear_attention), passes 2 and
//             3 each end with the column sums of the rows they computed (fp32, before the bf16
//             rounding: a warp's rows by shuffles, then the block's four warps in order) into the
//             workspace, one row per (batch, tile), and sum_partials adds those rows: no pass of
//             its own over dqkv (116 MB a layer for deit3_small's batch of 256).
//             Five matrix products, as many as a single pass with fp32 atomics into dQ, and
//             deterministic: the price is dS in bf16 in the workspace (B H T^2 2 bytes: 119 MB
//             for deit3_small's batch of 256, written once and read once per layer). Until
//             2026-12-04 pass 3 rebuilt P and dS itself (7 products, twice the exponentials).
//             Passes 2 and 3 run a slice of the batch at a time when its dS would take more than
//             kAttentionScoresBudgetBytes (256 MiB; ViT-B at T = 577 takes 8 MiB an image), each
//             slice's dS in the same space: the same bits, and each slice still fills the GPU
//             (ViT-B at T = 577: 32 images, 3840 blocks a pass).
//
// Launch shape (all three main kernels): 128 threads = 4 warps; a block owns kRows = 64 rows of its
// outer operand (queries in the forward and dQ pass, keys in the dK/dV pass), 16 per warp, so each
// warp's softmax rows and accumulators are its own. The inner loop walks the other operand in
// tiles of kCols rows: 64 for head dims 32, 64, 80 and 32 for head dim 128 (whose fp32
// accumulators take twice the registers); the dQ pass, with only dQ to accumulate, in tiles of 64
// keys at every head dim. Inner tiles are double-buffered in shared memory with cp.async (the next
// tile loads while the tensor cores work on this one). Products use mma.sync m16n8k16 (bf16 x
// bf16 -> fp32) with operands fetched by ldmatrix (transposed for dS, which pass 3 reads as pass 2
// wrote it, keys as rows); shared rows are padded by 16 bytes so the 8 row addresses of every
// ldmatrix fall in distinct banks.
// A sequence's last tile: where its rows past T leave one or two 16-row groups live (T = 65, 197,
// 257, 577: one; 145: two), each group takes 4 or 2 warps that split every inner tile's rows
// between them (2 at most in the forward and dK/dV pass at head dim 128, whose inner tiles have
// 32 rows: there two warps of such a block still only load), and the group's first warp merges
// their results through shared memory at the end (warp_share in attention_kernels.cuh; the
// forward rescales the shares' o and l to their largest running max as the online softmax does
// between tiles). One warp per group, as this was until 2026-12-05, left three of the four warps
// of that tile's block only loading at T = 197 while the block held an SM slot about as long as a
// full block: 16 warp slots a head for 13 warps of work.
// Grid: one block per (tile, batch * head), flattened into gridDim.x. Dynamic shared memory per
// block (bytes), head dim 32 / 64 / 80 / 128:
//   forward  25600 / 46080 / 56320 / 52224     dK/dV  31744 / 56320 / 68608 / 70144
//   dQ       28672 / 36864 / 40960 / 53248
// Registers (ptxas, sm_90, head dim 32 / 64 / 80 / 128): forward 108 / 127 / 128 / 128 (held to
// 128, 4 blocks; 12 bytes spilled at 128), dK/dV 165 / 168 / 240 / 248 (held to 168 at 32 and 64,
// 3 blocks, which its shared memory allows per SM; 4 bytes spilled at 64; unbounded, ptxas takes
// 195 at 64 and an SM fits 2), dQ 72 / 94 / 103 / 128 (held to 128, 4 blocks; unbounded, ptxas
// spilled 8 bytes at head dim 80). sm_80: no spills (forward 107 / 136 / 149 / 168: an A100's
// shared memory holds 3 forward blocks at head dim 64 and 2 at 80 anyway).
// Any sequence length: rows past T load as zeros (cp.async zero-fill), keys past T get probability
// 0, and only rows < T are stored. Only a sequence's last inner tile (when T is not a multiple of
// its rows) and, in a last outer tile whose warps split its work, every share of every inner tile
// pay for that (forward_tile and dkdv_tile, <Partial = true>); every other tile takes a path with
// no test per score (<Partial = false>). The exponentials are bare MUFU.EX2 (ex2.approx.ftz), the
// scale folded into one fused multiply-add per score, and each thread's tile loads advance a fixed
// pointer: sm_90 SASS of the forward at head dim 64 is about 430 instructions per full key tile
// of a warp (64 of them mma.sync), against about 900 before (static counts along the path;
// the kernels measured 22 to 30 executed per mma.sync). The padding costs little arithmetic: a
// group of 16 outer rows all past T mostly gets no warp of its own (its warps split a live group's
// work; in a last tile with three live groups, or past head dim 128's split in two, they only help
// load), and the products
// and exponentials over an inner tile stop at its last group of 16 rows holding one < T. At T = 197
// a head's 64-row tiles span 256 rows, and the products cover 208 of them on each side: about two
// thirds of the tile products the padding made before, and four fifths of the exponentials (which
// on Hopper cost about as much time as the products: 16 per cycle per SM against 4096 FLOP).
//
// Measured speed (one H200, 2026-12-04, `deit bench kernels`, commit 69df758;
// bench/results/2026-12-04-nvidia-h200-compare-small-base-3.md): B=256 T=197 H=12 D=64 forward
// 0.207 ms (147 TFLOP/s) and backward 0.712 ms (107 TFLOP/s; 0.745 with the qkv bias gradient),
// against cuDNN's 0.173 and 0.585 ms: 0.83x and 0.82x (0.323 and 0.910 ms before the instruction
// diet above). Over all the ViT shapes, 0.57x to 1.39x of the fastest rival: ahead or level at
// T = 65 and 145, behind from 197 on, most at 577. Neither obvious bound is reached: per key tile
// a warp reads 18 KiB of shared memory (ldmatrix) for 64 mma.sync of 4096 FLOP each, so shared
// memory would allow about 490 TFLOP/s on an H200 and mma.sync about 660; the forward reaches 210
// at T=577. Nsight Compute in deit3_small's step (bench/results/2026-12-04-h200-ncu-3/, H=6):
// forward 0.109 ms, dK/dV 0.239, dQ 0.084, each executing about half the instructions of the
// kernels before the diet (0.166, 0.326, 0.093 ms), with the time falling less: latency-bound at
// a quarter occupancy or less (forward 4 blocks of 4 warps per SM, dQ 5, dK/dV 3: registers and
// shared memory both at their limit), issue slots 31% (dK/dV) to 42% (forward) busy, dK/dV's warps
// waiting on shared-memory and MUFU results, barriers and fixed latencies. dQ reads back the dS
// that dK/dV writes at 2.7 TB/s: that round trip, not arithmetic, bounds it.
// The delta pass's lane groups (pass 1 above), the split warps of the last tile, dK/dV's lse and
// delta by cp.async and the 16-byte bf16 loads came after that run: not measured yet
// (bench/PREDICTIONS.md).
//
// Files: the device code is kernels/cuda/attention_kernels.cuh and its PTX wrappers
// kernels/cuda/mma.cuh; this file is the host side (argument checks, launches). The kernels also
// run, lane by lane on the host, in the CTest entry attention_emulated
// (tests/emulated/attention_emulated.cpp), which checks them against the CPU twin without a GPU;
// its launch shapes mirror forward<D> and backward<D> below, so change them together.
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"
// The device code, after what it uses.
#include "kernels/cuda/attention_kernels.cuh"

namespace deit::kernels {
namespace {

// ---------------------------------------------------------------------------------------------
// Host side.

void check_args(const char* fn, std::initializer_list<const void*> bf16_buffers, int64_t B,
                int64_t Tn, int64_t H, int64_t D) {
  gpu::check_attention_args(fn, bf16_buffers, B, Tn, H, D);
  // Grids are 1-D with int block indices: (batch * heads) * tiles blocks for the main kernels,
  // at most (batch * tokens * heads) / 4 for delta; and row indices inside a head are int.
  if (Tn > INT_MAX / 2 || B * H * gpu::ceil_div(Tn, kRows) > INT_MAX ||
      gpu::ceil_div(B * Tn * H, kWarps) > INT_MAX)
    throw std::invalid_argument(std::string(fn) + ": too many rows for one launch");
}

// Dynamic shared memory above 48 KB needs an opt-in per kernel; set it on every call (cheap, and
// right on whichever device is current).
template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  DEIT_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <int D>
void forward(const bf16* qkv, bf16* out, float* lse, int B, int T, int H, float scale,
             cudaStream_t stream) {
  const int blocks = B * H * static_cast<int>(gpu::ceil_div(T, kRows));
  constexpr int smem = Tiles<D>::kForwardSmem;
  set_smem(attention_forward_kernel<D>, smem);
  attention_forward_kernel<D>
      <<<blocks, kThreads, smem, stream>>>(qkv, out, lse, T, H, scale * kLog2e);
  DEIT_CUDA_CHECK_LAUNCH();
}

template <int D>
void backward(const bf16* qkv, const bf16* out, const float* lse, const bf16* dout, bf16* dqkv,
              float* dbias, int B, int T, int H, float scale, const BackwardWorkspace& layout,
              float* workspace, cudaStream_t stream) {
  float* delta = layout.delta(workspace);
  bf16* scores_t = layout.scores(workspace);
  float* bias_partials = dbias ? layout.bias_partials(workspace) : nullptr;
  const int64_t rows = static_cast<int64_t>(B) * T * H;
  attention_delta_kernel<D><<<static_cast<unsigned>(delta_blocks(rows, D)), kThreads, 0, stream>>>(
      out, dout, delta, rows, T, H);
  DEIT_CUDA_CHECK_LAUNCH();

  constexpr int dkdv_smem = Tiles<D>::kDkvSmem, dq_smem = Tiles<D>::kDqSmem;
  set_smem(attention_dkdv_kernel<D>, dkdv_smem);
  set_smem(attention_dq_kernel<D>, dq_smem);
  // A slice of the batch at a time, its dS in the same space (stream order keeps a slice's dK/dV
  // pass from overwriting what the previous slice's dQ pass still reads).
  const BackwardImages batch{qkv, lse, dout, delta, dqkv, bias_partials, B};
  for (int64_t b0 = 0; b0 < B; b0 += layout.slice) {
    const BackwardImages s = layout.slice_at(batch, b0);
    attention_dkdv_kernel<D><<<layout.blocks(s), kThreads, dkdv_smem, stream>>>(
        s.qkv, s.lse, s.dout, s.delta, s.dqkv, scores_t, s.bias_partials, T, H, scale,
        scale * kLog2e);
    DEIT_CUDA_CHECK_LAUNCH();
    attention_dq_kernel<D><<<layout.blocks(s), kThreads, dq_smem, stream>>>(
        s.qkv, scores_t, s.dqkv, s.bias_partials, T, H, scale);
    DEIT_CUDA_CHECK_LAUNCH();
  }
  if (dbias)
    gpu::sum_partials(bias_partials, layout.partial_chunks(), 3 * int64_t{H} * D, dbias, stream);
}

}  // namespace

void attention_forward_cuda(const bf16_bits* qkv, bf16_bits* out, float* lse, int64_t B,
                            int64_t Tn, int64_t H, int64_t D, double scale, cudaStream_t stream) {
  check_args("attention_forward_cuda", {qkv, out}, B, Tn, H, D);
  if (B == 0 || Tn == 0 || H == 0) return;
  const auto run = [&](auto head_dim) {
    forward<decltype(head_dim)::value>(gpu::as_bf16(qkv), gpu::as_bf16(out), lse,
                                       static_cast<int>(B), static_cast<int>(Tn),
                                       static_cast<int>(H), static_cast<float>(scale), stream);
  };
  switch (D) {
    case 32: return run(std::integral_constant<int, 32>{});
    case 64: return run(std::integral_constant<int, 64>{});
    case 80: return run(std::integral_constant<int, 80>{});
    default: return run(std::integral_constant<int, 128>{});
  }
}

int64_t attention_backward_cuda_workspace_floats(int64_t B, int64_t Tn, int64_t H, int64_t D,
                                                 int64_t scores_budget_bytes) {
  return BackwardWorkspace(B, Tn, H, D, scores_budget_bytes).floats();
}

void attention_backward_cuda(const bf16_bits* qkv, const bf16_bits* out, const float* lse,
                             const bf16_bits* dout, bf16_bits* dqkv, float* dbias, int64_t B,
                             int64_t Tn, int64_t H, int64_t D, double scale, float* workspace,
                             cudaStream_t stream, int64_t scores_budget_bytes) {
  check_args("attention_backward_cuda", {qkv, out, dout, dqkv}, B, Tn, H, D);
  if (scores_budget_bytes < 1)
    throw std::invalid_argument(
        "attention_backward_cuda: the budget for dS must be positive, got " +
        std::to_string(scores_budget_bytes));
  if (B == 0 || Tn == 0 || H == 0) {  // dbias: a sum over no rows
    if (dbias) DEIT_CUDA_CHECK(cudaMemsetAsync(dbias, 0, 3 * H * D * sizeof(float), stream));
    return;
  }
  gpu::check_workspace("attention_backward_cuda", workspace, true);
  gpu::check_aligned_16("attention_backward_cuda", "workspace", workspace);  // dS: 16-byte chunks
  if (lse == nullptr)
    throw std::invalid_argument("attention_backward_cuda: lse is required");
  const auto run = [&](auto head_dim) {
    backward<decltype(head_dim)::value>(
        gpu::as_bf16(qkv), gpu::as_bf16(out), lse, gpu::as_bf16(dout), gpu::as_bf16(dqkv), dbias,
        static_cast<int>(B), static_cast<int>(Tn), static_cast<int>(H), static_cast<float>(scale),
        BackwardWorkspace(B, Tn, H, D, scores_budget_bytes), workspace, stream);
  };
  switch (D) {
    case 32: return run(std::integral_constant<int, 32>{});
    case 64: return run(std::integral_constant<int, 64>{});
    case 80: return run(std::integral_constant<int, 80>{});
    default: return run(std::integral_constant<int, 128>{});
  }
}

}  // namespace deit::kernels
