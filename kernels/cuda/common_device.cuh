// Private to kernels/cuda/: the device code the CUDA kernels share (common.cuh, which includes
// this, has the host side: launchers, grid sizes, argument checks, the column-sum entry points).
//  - bf16 / fp32 loads and stores of one element or of one 8-element vector (one 16-byte word of
//    bf16, two of fp32), converting to fp32 registers;
//  - the elementwise kernel behind common.cuh's launch_elementwise;
//  - deterministic block reductions (fixed shuffle tree + warps summed in index order);
//  - the row layout of the kernels that give one block a whole row of width C: each thread owns at
//    most 8 columns of every row, so per-column accumulators stay in registers across rows;
//  - BlockRow and WarpRow: that layout and the one with a warp per row, as the LayerNorm
//    arithmetic (layernorm_row.cuh) sees them.
//
// Why a header of its own: a host compiler can read it (nothing here launches a kernel), so the
// emulated tests (tests/emulated/) compile these helpers, unchanged, after the CUDA built-ins of
// tests/emulated/cuda_emulator.h and run them lane by lane on machines without a GPU. Keep it
// free of host launches and of CUDA built-ins the emulator lacks (its header lists what it has).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#include <cstring>

#include "kernels/cuda/launch_shape.h"

namespace deit::kernels::gpu {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;            // block size of the elementwise and per-row loss kernels

// ---------------------------------------------------------------------------------------------
// Loads and stores of N consecutive elements (N = 1 or kVec) to / from fp32 registers v[0..N).
// For N = kVec the address must be 16-byte aligned.
//
// Eight bf16 move as one uint4, one 16-byte instruction (LDG.E.128 / STG.E.128). Until
// 2026-12-05 they moved as a struct of four __nv_bfloat162, whose copy constructor made nvcc
// split every such load and store into four 4-byte ones (sm_80 and sm_90 SASS): the same bytes
// from DRAM, but four times the instructions and L1 wavefronts in every bf16 row the memory-bound
// kernels read or write. A bf16 is the high half of the fp32 with the same bits, so a load
// widens each 32-bit word (element 2j in its low half, 2j + 1 in its high half) by shifts alone.

// A 16-byte access at an address that is not 16-byte aligned is an error on the GPU, while the
// host the kernels are emulated on (tests/emulated/cuda_emulator.h) reads most such addresses
// without a fault: the emulator defines this to check every vector load and store. Nothing here.
#ifndef DEIT_CHECK_ALIGNED16
#define DEIT_CHECK_ALIGNED16(p, what)
#endif

__device__ __forceinline__ float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// Two floats rounded to bf16 (nearest even; NaN stays NaN), lo in the low half.
__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &h, sizeof bits);
  return bits;
}

template <int N>
__device__ __forceinline__ void load(const bf16* p, float* v) {
  static_assert(N == 1 || N == kVec, "N is 1 or kVec");
  if constexpr (N == kVec) {
    DEIT_CHECK_ALIGNED16(p, "gpu::load<kVec> of bf16");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const uint32_t words[kVec / 2] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < kVec / 2; ++j) {
      v[2 * j] = bits_to_float(words[j] << 16);
      v[2 * j + 1] = bits_to_float(words[j] & 0xffff0000u);
    }
  } else {
    v[0] = __bfloat162float(*p);
  }
}

template <int N>
__device__ __forceinline__ void load(const float* p, float* v) {
  static_assert(N == 1 || N == kVec, "N is 1 or kVec");
  if constexpr (N == kVec) {
    DEIT_CHECK_ALIGNED16(p, "gpu::load<kVec> of fp32");
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
    v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    v[0] = *p;
  }
}

// Rounds to nearest even; NaN stays NaN.
template <int N>
__device__ __forceinline__ void store(bf16* p, const float* v) {
  static_assert(N == 1 || N == kVec, "N is 1 or kVec");
  if constexpr (N == kVec) {
    DEIT_CHECK_ALIGNED16(p, "gpu::store<kVec> of bf16");
    *reinterpret_cast<uint4*>(p) = make_uint4(bf16x2_bits(v[0], v[1]), bf16x2_bits(v[2], v[3]),
                                              bf16x2_bits(v[4], v[5]), bf16x2_bits(v[6], v[7]));
  } else {
    *p = __float2bfloat16_rn(v[0]);
  }
}

template <int N>
__device__ __forceinline__ void store(float* p, const float* v) {
  static_assert(N == 1 || N == kVec, "N is 1 or kVec");
  if constexpr (N == kVec) {
    DEIT_CHECK_ALIGNED16(p, "gpu::store<kVec> of fp32");
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  } else {
    *p = v[0];
  }
}

// ---------------------------------------------------------------------------------------------
// The elementwise kernel (common.cuh's launch_elementwise launches it): a grid-stride loop over
// nvec 8-element vectors, then over the elements [nvec * kVec, n) one by one. Op is a trivially
// copyable struct (passed by value as the kernel argument) with
// `template <int N> __device__ void apply(int64_t i) const` that handles elements [i, i + N):
// N = kVec with i a multiple of kVec, or N = 1.

template <typename Op>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(const Op op, int64_t n, int64_t nvec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t v = first; v < nvec; v += stride) op.template apply<kVec>(v * kVec);
  for (int64_t i = nvec * kVec + first; i < n; i += stride) op.template apply<1>(i);
}

// ---------------------------------------------------------------------------------------------
// Deterministic reductions. Every lane of a warp ends with the same bits (the butterfly combines
// the same pairs on every lane), and warps are combined in index order, so the result depends only
// on the data and blockDim.x.

struct SumOp {
  __device__ static float apply(float a, float b) { return a + b; }
};
struct MaxOp {
  __device__ static float apply(float a, float b) { return fmaxf(a, b); }
};

template <typename Op>
__device__ __forceinline__ float warp_allreduce(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2)
    v = Op::apply(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduces K values over the block; every thread receives the results. Every thread of the block
// must call it (blockDim.x a multiple of 32, at most 1024); scratch: 32 * K floats of shared
// memory, reusable by the next call without a barrier.
template <typename Op, int K>
__device__ __forceinline__ void block_allreduce(float (&v)[K], float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_allreduce<Op>(v[k]);
  __syncthreads();  // the previous call's readers of scratch are done
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[k * 32 + warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float r = scratch[k * 32];
    for (int w = 1; w < warps; ++w) r = Op::apply(r, scratch[k * 32 + w]);
    v[k] = r;
  }
}

__device__ __forceinline__ float block_sum(float v, float* scratch) {
  float a[1] = {v};
  block_allreduce<SumOp, 1>(a, scratch);
  return a[0];
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  float a[1] = {v};
  block_allreduce<MaxOp, 1>(a, scratch);
  return a[0];
}

// ---------------------------------------------------------------------------------------------
// The second stage of up to kMaxPartialSets column sums of the same shape (chunks, C), in one
// launch (common.cuh's sum_partial_sets): a kernel argument, so plain pointers.

constexpr int kMaxPartialSets = 4;

struct PartialSets {
  const float* partials[kMaxPartialSets] = {};
  float* out[kMaxPartialSets] = {};
  int count = 0;
  // Adds a set when `out` is given (a gradient not asked for is skipped); at most
  // kMaxPartialSets of them.
  void add(const float* set_partials, float* set_out) {
    if (set_out == nullptr) return;
    partials[count] = set_partials;
    out[count] = set_out;
    ++count;
  }
};

// ---------------------------------------------------------------------------------------------
// Row layout: one block walks whole rows of width C with row_threads(C) threads (common.cuh);
// thread t holds kVec register slots per row. V = kVec (C % 8 == 0, every row pointer 16-byte
// aligned): the slots are columns [8t, 8t + 8). V = 1: slot k is column t + k * blockDim.x. Either
// way the block covers 8 * blockDim.x >= C columns. Slots past C load as 0 and are never stored.

// First column of this thread's slot group k (k < kVec / V).
template <int V>
__device__ __forceinline__ int64_t slot_column(int k) {
  return (threadIdx.x + static_cast<int64_t>(k) * blockDim.x) * V;
}

// Whether register slot e (< kVec) of this thread is a column of the row.
template <int V>
__device__ __forceinline__ bool owns_slot(int e, int64_t C) {
  return slot_column<V>(e / V) < C;
}

template <int V, typename P>
__device__ __forceinline__ void load_row(const P* row, int64_t C, float (&v)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec / V; ++k) {
    const int64_t c = slot_column<V>(k);
    if (c < C) {
      load<V>(row + c, v + k * V);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v[k * V + j] = 0.f;
    }
  }
}

// load_row for a thread that already knows it owns a column (c = slot_column<V>(0) < C, tested
// once outside the row loop): the vector path loads its 8 columns unconditionally, the scalar path
// as load_row. The column-sum kernels load several rows ahead through it: with load_row's test
// per row between them, each row's load waited for the previous row's use (sm_90 SASS).
template <int V, typename P>
__device__ __forceinline__ void load_owned_row(const P* row, int64_t C, float (&v)[kVec]) {
  if constexpr (V == kVec)
    load<kVec>(row + slot_column<kVec>(0), v);
  else
    load_row<V>(row, C, v);
}

template <int V, typename P>
__device__ __forceinline__ void store_row(P* row, int64_t C, const float (&v)[kVec]) {
#pragma unroll
  for (int k = 0; k < kVec / V; ++k) {
    const int64_t c = slot_column<V>(k);
    if (c < C) store<V>(row + c, v + k * V);
  }
}

// ---------------------------------------------------------------------------------------------
// The two layouts of a row over threads, for arithmetic written once for both (layernorm_row.cuh):
// kSlots register slots a thread, owns(e) whether slot e is a column of the row, sum(v) the sums
// over the row's threads of K values (every one of them gets the same bits), first() true on
// one thread of the row.

// A block per row, in the row layout above; scratch: 32 * K floats of shared memory for a sum of
// K values.
template <int V>
struct BlockRow {
  static constexpr int kSlots = kVec;
  int64_t C;
  float* scratch;
  __device__ bool owns(int e) const { return owns_slot<V>(e, C); }
  template <int K>
  __device__ void sum(float (&v)[K]) const {
    block_allreduce<SumOp, K>(v, scratch);
  }
  __device__ bool first() const { return threadIdx.x == 0; }
};

// A warp per row (launch_shape.h's warp row layout; vector path only): lane l holds G groups of
// kVec slots, group k being the columns [(l + 32 k) * kVec, +kVec). Every lane of the warp calls
// sum; no barrier, so the warps of a block walk their rows independently.
template <int G>
struct WarpRow {
  static constexpr int kSlots = G * kVec;
  int64_t C;
  __device__ int64_t group_column(int k) const {
    return (threadIdx.x % 32 + int64_t{32} * k) * kVec;
  }
  __device__ bool owns(int e) const { return group_column(e / kVec) < C; }
  template <int K>
  __device__ void sum(float (&v)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = warp_allreduce<SumOp>(v[k]);
  }
  __device__ bool first() const { return threadIdx.x % 32 == 0; }
  template <typename P>
  __device__ void load(const P* row, float (&v)[kSlots]) const {
#pragma unroll
    for (int k = 0; k < G; ++k) load_group(row, k, v + k * kVec);
  }
  template <typename P>
  __device__ void store(P* row, const float (&v)[kSlots]) const {
#pragma unroll
    for (int k = 0; k < G; ++k) {
      const int64_t c = group_column(k);
      if (c < C) gpu::store<kVec>(row + c, v + k * kVec);
    }
  }
  // This layout for a row that may be missing (one a selection leaves out): the same, or with no
  // columns, so that every load through it gives zeros and no store writes. Its loads test each
  // slot group as they test the columns past C rather than branching around them, which kept
  // ptxas from spilling the fused LayerScale + LayerNorm kernels' rows (up to 196 bytes at G = 4).
  __device__ WarpRow or_none(bool present) const { return {present ? C : 0}; }
  // v[0, kVec): the values of `p` (a row, or a vector the width of the row) at slot group k's
  // columns, 0 past C.
  template <typename P>
  __device__ void load_group(const P* p, int k, float* v) const {
    const int64_t c = group_column(k);
    if (c < C) {
      gpu::load<kVec>(p + c, v);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) v[j] = 0.f;
    }
  }
};

// The rows of a warp-row kernel that grid-strides over them, a row per warp: this warp's first
// row and the stride.
__device__ __forceinline__ int64_t warp_row_first() {
  return int64_t{blockIdx.x} * (kWarpRowThreads / 32) + threadIdx.x / 32;
}
__device__ __forceinline__ int64_t warp_row_stride() {
  return int64_t{gridDim.x} * (kWarpRowThreads / 32);
}

// K sets of column sums (one per gradient) for a backward kernel in the warp row layout, in
// shared memory: each warp adds its rows' terms to its own row of each set, its lanes each to
// their own columns (so no barrier until the end), and the block then adds its warps' sums in
// warp order: the same bits on every run. Keeping them in shared memory rather than registers
// leaves a thread's registers to the row in flight.
template <int G, int K>
struct WarpColumnSums {
  static constexpr int kWarps = kWarpRowThreads / 32;
  static constexpr int kColumns = G * static_cast<int>(kWarpRowColumns);
  float (*sums)[kWarps][kColumns];  // sums[set][warp][column], in shared memory

  // Zeroes this lane's columns of its warp's row in every set.
  __device__ explicit WarpColumnSums(const WarpRow<G>& row) : sums(storage()) {
    const float zeros[kVec] = {};
#pragma unroll
    for (int s = 0; s < K; ++s)
#pragma unroll
      for (int k = 0; k < G; ++k) store<kVec>(mine(s, row, k), zeros);
  }
  // Adds v, this lane's slot group k of a row, to set s.
  __device__ void add(int s, const WarpRow<G>& row, int k, const float* v) const {
    float* p = mine(s, row, k);
    float a[kVec];
    load<kVec>(p, a);
#pragma unroll
    for (int j = 0; j < kVec; ++j) a[j] += v[j];
    store<kVec>(p, a);
  }
  // After a barrier that follows every add: partials[c] = set s's sum over the block's warps of
  // column c, for c < C (on the vector path: C % kVec == 0). Every thread of the block calls it.
  __device__ void store_sums(int s, int64_t C, float* partials) const {
    for (int64_t c = int64_t{threadIdx.x} * kVec; c < C; c += int64_t{blockDim.x} * kVec) {
      float total[kVec];
      load<kVec>(sums[s][0] + c, total);
      for (int w = 1; w < kWarps; ++w) {
        float t[kVec];
        load<kVec>(sums[s][w] + c, t);
#pragma unroll
        for (int j = 0; j < kVec; ++j) total[j] += t[j];
      }
      store<kVec>(partials + c, total);
    }
  }

 private:
  // The block's sums: K * kWarps * kColumns floats (K * G * 4 KB), float4s for their alignment.
  __device__ static float (*storage())[kWarps][kColumns] {
    __shared__ float4 words[K * kWarps * kColumns / 4];
    return reinterpret_cast<float(*)[kWarps][kColumns]>(words);
  }
  __device__ float* mine(int s, const WarpRow<G>& row, int k) const {
    return sums[s][threadIdx.x / 32] + row.group_column(k);
  }
};

// The rows of the chunk of block blockIdx.x (row_chunks' chunks of rows_per_chunk rows) that this
// warp takes in the warp row layout: first, first + kStep, ... below end.
struct WarpChunkRows {
  static constexpr int kStep = kWarpRowThreads / 32;
  int64_t first, end;
};
__device__ __forceinline__ WarpChunkRows warp_chunk_rows(int64_t rows, int64_t rows_per_chunk) {
  const int64_t r0 = blockIdx.x * rows_per_chunk;
  return {r0 + threadIdx.x / 32, min(rows, r0 + rows_per_chunk)};
}

}  // namespace deit::kernels::gpu
