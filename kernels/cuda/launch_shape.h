// Private to kernels/cuda/: the host arithmetic that sizes the row and elementwise launches (grid
// sizes, the elementwise loops' split, the row layout's block size, the fixed chunking of rows
// behind every deterministic column sum). Plain C++, so that the emulated tests (tests/emulated/)
// launch the kernels with the very shapes the .cu launchers use; common_device.cuh and common.cuh
// include it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace deit::kernels::gpu {

constexpr int kVec = 8;                  // elements per vector unit (16 bytes of bf16)
constexpr int64_t kMaxBlocks = 1 << 16;  // grid-stride loops cover the rest

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for `work` items at `threads` per block, at least 1, at most kMaxBlocks.
inline unsigned grid_for(int64_t work, int threads) {
  const int64_t blocks = ceil_div(work, threads);
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// True when every pointer is 16-byte aligned (nullptr counts as aligned: it is never accessed).
template <typename... P>
inline bool aligned16(const P*... p) {
  return ((reinterpret_cast<uintptr_t>(p) % 16 == 0) && ...);
}

// ---------------------------------------------------------------------------------------------
// The elementwise launch (common.cuh's launch_elementwise, common_device.cuh's elementwise_kernel):
// nvec 8-element vectors when vectorised, then the n - nvec * kVec elements left one by one; one
// thread per vector and per element left, grid-strided over grid_for(work, threads) blocks.

struct ElementwiseWork {
  int64_t nvec;  // 8-element vectors, 0 when not vectorised
  int64_t work;  // vectors + elements left
};

inline ElementwiseWork elementwise_work(int64_t n, bool vectorize) {
  const int64_t nvec = vectorize ? n / kVec : 0;
  return {nvec, nvec + (n - nvec * kVec)};
}

// ---------------------------------------------------------------------------------------------
// Row layout (common_device.cuh describes it): the block size and the widest row.

constexpr int64_t kMaxRowWidth = int64_t{kVec} * 1024;

// Threads of a row block for width C (1 <= C <= kMaxRowWidth): ceil(C / 8) rounded up to a warp.
inline int row_threads(int64_t C) { return static_cast<int>(ceil_div(ceil_div(C, kVec), 32) * 32); }

// A row kernel's variant for blocks of at most this many threads (rows up to 4096 wide, every ViT
// width) may take up to 128 registers a thread (__launch_bounds__(512)) where the one for any
// width has 64: enough to load a row's operands ahead of its reductions (all of them, or the
// next row's while this one reduces: the backward kernels).
constexpr int kEarlyLoadThreads = 512;

// Calls f(width, early) with the variant of a row kernel to launch, each a std::integral_constant:
// width kVec on the vector path (`vector`), 1 otherwise; early for blocks of at most
// kEarlyLoadThreads threads.
template <typename F>
void with_row_variant(bool vector, int threads, F&& f) {
  using Early = std::true_type;
  using Late = std::false_type;
  using Vector = std::integral_constant<int, kVec>;
  using Scalar = std::integral_constant<int, 1>;
  const bool early = threads <= kEarlyLoadThreads;
  if (vector && early)
    f(Vector{}, Early{});
  else if (vector)
    f(Vector{}, Late{});
  else if (early)
    f(Scalar{}, Early{});
  else
    f(Scalar{}, Late{});
}

// Warp row layout (common_device.cuh's WarpRow): a warp holds a whole row, lane l the slot groups
// k < G = warp_row_groups(C), each the 8 columns [(l + 32 k) * 8, +8), in blocks of
// kWarpRowThreads threads (a row per warp, the warps independent: no barrier per row). Taken on
// the vector path for rows up to kWarpRowMaxGroups * 256 columns (every ViT width but ViT-H's
// 1280), where a block per row would give each thread 8 columns to keep in flight: holding up to
// 32, a thread keeps the memory system busier at the same occupancy.
constexpr int kWarpRowThreads = 128;
constexpr int kWarpRowMaxGroups = 4;
constexpr int64_t kWarpRowColumns = int64_t{kVec} * 32;  // columns of one slot group of a warp

inline int warp_row_groups(int64_t C) { return static_cast<int>(ceil_div(C, kWarpRowColumns)); }

// Whether a row kernel of width C takes the warp row layout: on the vector path (`vector`), for
// 1 <= C <= kWarpRowMaxGroups * 256.
inline bool takes_warp_rows(bool vector, int64_t C) {
  return vector && C >= 1 && warp_row_groups(C) <= kWarpRowMaxGroups;
}

// Calls f(groups) with warp_row_groups(C) as a std::integral_constant (takes_warp_rows holds).
template <int G = 1, typename F>
void with_warp_row_groups(int64_t C, F&& f) {
  if constexpr (G < kWarpRowMaxGroups) {
    if (warp_row_groups(C) > G) return with_warp_row_groups<G + 1>(C, f);
  }
  f(std::integral_constant<int, G>{});
}

// Blocks of a warp-row kernel that grid-strides over `rows` rows, a row per warp.
inline unsigned warp_row_grid(int64_t rows) { return grid_for(rows, kWarpRowThreads / 32); }

// ---------------------------------------------------------------------------------------------
// Column sums over rows, deterministic. A fixed partition of the rows into chunks, a function of
// (rows, C) only: block `chunk` of a row kernel walks rows [chunk * rows_per_chunk, ...) and writes
// the sums of its rows to partials[chunk * C + c]; sum_partials (common.cuh) then adds the chunks
// in a fixed tree. The same shapes give the same bits on every run and every GPU.

struct RowChunks {
  int64_t chunks;          // blocks of the row kernel; 0 when rows == 0
  int64_t rows_per_chunk;  // the last chunk may be shorter, never empty
};

inline RowChunks row_chunks(int64_t rows, int64_t C) {
  constexpr int64_t kTargetThreads = 128 * 1024;  // threads a row kernel aims to keep busy
  constexpr int64_t kMinRowsPerChunk = 8;
  if (rows <= 0) return {0, 1};
  const int64_t max_chunks =
      std::max<int64_t>(1, kTargetThreads / row_threads(std::max<int64_t>(C, 1)));
  const int64_t rows_per_chunk = std::max(kMinRowsPerChunk, ceil_div(rows, max_chunks));
  return {ceil_div(rows, rows_per_chunk), rows_per_chunk};
}

}  // namespace deit::kernels::gpu
