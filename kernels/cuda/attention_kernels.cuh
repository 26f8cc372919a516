// The device code of the fused attention (kernels/cuda/attention.cu says what it computes, its
// launch shapes and its measured speed): tile constants, warp-level tensor-core tile products,
// global <-> shared movement, and the four kernels (forward, delta, dK/dV, dQ).
//
// Included by attention.cu after kernels/cuda/common.cuh and kernels/cuda/mma.cuh, and by the
// emulated test (tests/emulated/attention_emulated.cpp) after its host stand-ins for both, which
// run these kernels lane by lane on machines without a GPU. So the code here uses only gpu:: of
// common.cuh, the ptx:: wrappers of mma.cuh (shared memory comes from dynamic_smem()), CUDA's
// bf16 types and conversions, the built-ins threadIdx, blockIdx, __syncthreads and
// __shfl_xor_sync, and <cmath> (and <algorithm> in host code); anything more needs a stand-in in
// tests/emulated/cuda_emulator.h.
// Each includer is the only translation unit of its program with these kernels, hence the unnamed
// namespace.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::bf16x2_bits;  // two fp32 -> one register of two bf16, lo in the low half
using namespace ptx;  // mma.cuh's wrappers, or the emulator's twins of them

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kWarpRows = 16;                 // the m of mma.m16n8k16
constexpr int kRows = kWarps * kWarpRows;     // outer rows per block
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;
constexpr int kDqKeys = 64;                   // key rows per inner tile of the dQ pass
constexpr int kScoresTileStride = kRows + 8;  // shared row stride of a dS^T tile, elements

// Tile shapes for one head dim. Shared rows hold D bf16 plus 8 of padding: a row stride of
// 2D + 16 bytes puts the 8 consecutive rows an ldmatrix reads at 16-byte offsets that differ
// modulo 128 bytes for every D here, so they hit distinct banks.
template <int D>
struct Tiles {
  static_assert(D % 16 == 0 && D <= 128, "head dim: a multiple of 16, at most 128");
  static constexpr int kCols = D <= 80 ? 64 : 32;  // inner tile rows
  static constexpr int kStride = D + 8;            // shared row stride, elements
  static constexpr int kRowBytes = kStride * 2;
  // Q tile + double-buffered K and V tiles.
  static constexpr int kForwardSmem = (kRows + 4 * kCols) * kRowBytes;
  // K and V tiles + double-buffered Q, dO tiles + double-buffered lse and delta of those queries.
  static constexpr int kDkvSmem = (2 * kRows + 4 * kCols) * kRowBytes + 4 * kCols * 4;
  // On Hopper (228 KB of shared memory per SM) three dK/dV blocks fit up to head dim 64, and the
  // registers only if the kernel keeps to 168 a thread: left alone, ptxas takes 195 at head dim 64
  // (and an SM holds 2 blocks). An A100's 164 KB holds two at head dim 64 anyway.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  static constexpr int kDkvMinBlocks = 1;
#else
  static constexpr int kDkvMinBlocks = D <= 64 ? 3 : 1;
#endif
  // Four forward blocks fit an H200's shared memory at every head dim here, and the registers
  // only if the kernel keeps to 128 a thread: left alone, ptxas takes 135 at head dim 80 and 155
  // at 128 (an SM then holds 3), and spills 8 bytes at 32. Held to 128, it spills 12 bytes at head
  // dim 128 (no ViT preset's). An A100's 164 KB holds three blocks at most.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  static constexpr int kForwardMinBlocks = 1;
#else
  static constexpr int kForwardMinBlocks = 4;
#endif
  // Double-buffered K tiles and dS^T tiles (kDqKeys keys of kRows queries each).
  static constexpr int kDqSmem = 2 * kDqKeys * (kStride + kScoresTileStride) * 2;
};

// The backward's fp32 workspace: delta of every score row, (B, H, T); then from the next 16-byte
// boundary dS^T of every head of a slice of the batch, (slice, H, T, scores_stride(T)) bf16: the
// dK/dV pass writes it and the dQ pass reads it (a row holds one key's scores against every query,
// padded to a whole number of 16-query groups: the dK/dV pass writes whole groups, those that hold
// a query < T); then, for the qkv bias gradient, every block's column sums of what it stores,
// (B, tiles, 3, H, D) fp32 with tiles = ceil(T / kRows), which sum_partials adds over (B, tiles).
// The slice is as many images as the budget for dS allows (at least one, at most B): a larger
// batch runs the two passes a slice at a time, each slice reusing the space.
__host__ __device__ inline int scores_stride(int T) { return (T + 15) / 16 * 16; }

// What the dK/dV and dQ passes read and write of some images of the batch: the whole batch, or a
// slice of it (the kernels index the images they are given from these pointers).
struct BackwardImages {
  const bf16* qkv;
  const float* lse;
  const bf16* dout;
  const float* delta;
  bf16* dqkv;
  float* bias_partials;  // nullptr: no bias gradient
  int64_t count;         // images
};

struct BackwardWorkspace {
  int64_t B, T, H, D, slice;

  BackwardWorkspace(int64_t B_, int64_t T_, int64_t H_, int64_t D_, int64_t scores_budget_bytes)
      : B(B_), T(T_), H(H_), D(D_) {
    const int64_t per_image = H * T * scores_stride(static_cast<int>(T)) * 2;
    slice = per_image > 0 ? std::max<int64_t>(1, std::min(B, scores_budget_bytes / per_image)) : B;
  }
  int64_t delta_floats() const { return (B * H * T + 3) / 4 * 4; }
  int64_t scores_floats() const {
    return (slice * H * T * scores_stride(static_cast<int>(T)) + 7) / 8 * 4;  // bf16 pairs, 16 B
  }
  int64_t tiles() const { return (T + kRows - 1) / kRows; }
  int64_t partial_chunks() const { return B * tiles(); }
  int64_t floats() const { return delta_floats() + scores_floats() + partial_chunks() * 3 * H * D; }
  // Where each part starts in a workspace of floats() floats.
  float* delta(float* w) const { return w; }
  bf16* scores(float* w) const { return reinterpret_cast<bf16*>(w + delta_floats()); }
  float* bias_partials(float* w) const { return w + delta_floats() + scores_floats(); }
  // The slice of the whole batch's images that starts at image b0.
  BackwardImages slice_at(const BackwardImages& whole, int64_t b0) const {
    const int64_t qkv = T * 3 * H * D, o = T * H * D, stat = H * T, partials = tiles() * 3 * H * D;
    return {whole.qkv + b0 * qkv,
            whole.lse + b0 * stat,
            whole.dout + b0 * o,
            whole.delta + b0 * stat,
            whole.dqkv + b0 * qkv,
            whole.bias_partials ? whole.bias_partials + b0 * partials : nullptr,
            std::min(slice, whole.count - b0)};
  }
  // Blocks of either pass over `images` images.
  unsigned blocks(const BackwardImages& images) const {
    return static_cast<unsigned>(images.count * H * tiles());
  }
};

// ---------------------------------------------------------------------------------------------
// Warp-level tile products. Accumulators are arrays of m16n8 C fragments: acc[n][0..3] holds
// columns [8n, 8n + 8) of the warp's 16 rows in the mma_bf16 layout (mma.cuh).

// The inner tiles' rows come in groups of 16 (an mma's k, or two of its n tiles). A sequence's last
// tile may end in rows past T, zeros in shared memory whose products are all discarded: only the
// first `live` groups of a tile whose first row is row0 hold a row < T, and the products below
// skip the others (at T = 197, with 64-row tiles, that is 48 of the 256 rows a head's loop
// walks).
__device__ __forceinline__ int live_groups(int T, int row0, int rows) {
  const int left = (T - row0 + 15) / 16;
  return left < rows / 16 ? left : rows / 16;
}

// A warp's place in its block: the 16 outer rows it works on, [row0, row0 + 16), and its share of
// every inner tile. A block whose outer rows run past T with one or two 16-row groups live (the
// last tile at T = 65, 197, 257 and 577: one; at T = 145: two) gives each live group 4 or 2 warps,
// each taking an equal share of every inner tile's rows (part `part` of `split`). Left as one
// warp per group, three or two of its four warps would only help load while the block held an
// SM's slot about as long as a full block: at T = 197, 16 warp slots a head for 13 warps of work.
// The shares keep 16 rows at least (an mma's k, or two of its n tiles), so the 32-row inner tiles
// of the forward and dK/dV pass at head dim 128 split in two at most: there a last tile with one
// live group still leaves two warps only loading (no ViT preset has head dim 128). The group's
// first warp (part 0) adds up the shares' results at the end (sum_shares, or the forward's
// rescaling merge) and stores them.
struct WarpShare {
  int split, part, row0;
};

// kInner: the rows of the inner tiles the warps share, as on_share<kInner> is then called with.
template <int kInner>
__device__ __forceinline__ WarpShare warp_share(int T, int outer0) {
  const int live = live_groups(T, outer0, kRows), warp = threadIdx.x / 32;
  int split = live == 1 ? 4 : (live == 2 ? 2 : 1);
  if (split > kInner / 16) split = kInner / 16;
  return {split, warp % split, outer0 + warp / split * kWarpRows};
}

// Calls tile(std::integral_constant<int, Rows>{}, first) for the warp's share of an inner tile of
// kInner rows: Rows = kInner / split rows from the tile's row `first` (warp_share<kInner> never
// splits a tile into shares of fewer than 16 rows).
template <int kInner, typename Tile>
__device__ __forceinline__ void on_share(const WarpShare& share, Tile&& tile) {
  if (share.split == 1) {
    tile(std::integral_constant<int, kInner>{}, 0);
  } else if (share.split == 2) {
    tile(std::integral_constant<int, kInner / 2>{}, share.part * (kInner / 2));
  } else if constexpr (kInner / 4 >= 16) {
    tile(std::integral_constant<int, kInner / 4>{}, share.part * (kInner / 4));
  }
}

// The warps of a split group hand what they accumulated to the group's first warp through shared
// memory, a slot per warp: element i of a lane's fragments at [i * 32 + lane], so a warp's lanes
// touch 32 consecutive floats (no bank conflicts), and each lane of part 0 finds its partners'
// values at its own fragment positions.
template <int N>
__device__ __forceinline__ void put_fragments(float* slot, const float (&acc)[N][4]) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) slot[(4 * n + e) * 32 + lane] = acc[n][e];
}

// acc's rows g times mul_g and rows g + 8 times mul_g8.
template <int N>
__device__ __forceinline__ void scale_rows(float (&acc)[N][4], float mul_g, float mul_g8) {
#pragma unroll
  for (int n = 0; n < N; ++n) {
    acc[n][0] *= mul_g;
    acc[n][1] *= mul_g;
    acc[n][2] *= mul_g8;
    acc[n][3] *= mul_g8;
  }
}

// acc += a slot's fragments, rows g times mul_g and rows g + 8 times mul_g8.
template <int N>
__device__ __forceinline__ void add_fragments(float (&acc)[N][4], const float* slot, float mul_g,
                                              float mul_g8) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int n = 0; n < N; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      acc[n][e] += slot[(4 * n + e) * 32 + lane] * (e < 2 ? mul_g : mul_g8);
}

// acc of each split group's first warp += its partners' (parts 1, 2, 3 in order: the same bits
// every run). Every thread of the block calls it (barriers); `scratch`: kWarps slots of N * 128
// floats of shared memory no warp still reads, free again on return.
template <int N>
__device__ __forceinline__ void sum_shares(float (&acc)[N][4], const WarpShare& share,
                                           float* scratch) {
  if (share.split == 1) return;  // block-uniform
  constexpr int kSlot = N * 4 * 32;
  const int warp = threadIdx.x / 32;
  if (share.part > 0) put_fragments(scratch + warp * kSlot, acc);
  __syncthreads();
  if (share.part == 0)
    for (int p = 1; p < share.split; ++p)
      add_fragments(acc, scratch + (warp + p) * kSlot, 1.f, 1.f);
  __syncthreads();
}

// acc (16 x N) += A (16 x K) * B^T, with A's 16 rows and B's N rows of K elements each row-major
// in shared memory (stride `stride` elements), for B's first 16 `live` rows only: the columns of
// acc past them are left as they are. This is the layout of every "rows times rows" product here:
// Q K^T, dO V^T, K Q^T, V dO^T.
template <int N, int K>
__device__ __forceinline__ void mma_rows_rows(float (&acc)[N / 8][4], const bf16* a, const bf16* b,
                                              int stride, int live) {
  static_assert(N % 16 == 0 && K % 16 == 0, "tile sizes are multiples of 16");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    // A: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
    // are a[0..3].
    uint32_t af[4];
    ldmatrix_x4(af, a + (lane % 16) * stride + ks * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      if (np >= live) break;
      // B^T rows are B's columns: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
      // (n 8-15, k 8-15) are b[0], b[1] of n-tile 2np and b[0], b[1] of n-tile 2np + 1.
      uint32_t bf[4];
      ldmatrix_x4(bf, b + (np * 16 + (lane / 16) * 8 + lane % 8) * stride + ks * 16 +
                          ((lane / 8) % 2) * 8);
      mma_bf16(acc[2 * np], af, bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// acc (16 x N) += P (16 x K) * B, with P held in registers as C fragments p[K / 8] (fp32, rounded
// to bf16 here: the FlashAttention way of feeding probabilities back to the tensor cores without
// a trip through shared memory) and B's K rows of N elements row-major in shared memory, over B's
// first 16 `live` rows only (P is 0 in the columns past them). This is every "probabilities times
// rows" product: P V, P^T dO, dS^T Q, dS K.
template <int N, int K>
__device__ __forceinline__ void mma_regs_rows(float (&acc)[N / 8][4], const float (&p)[K / 8][4],
                                              const bf16* b, int stride, int live) {
  static_assert(N % 16 == 0 && K % 16 == 0, "tile sizes are multiples of 16");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    if (ks >= live) break;
    // The C fragments of columns [16ks, 16ks + 8) and [16ks + 8, 16ks + 16) are exactly the A
    // fragment of k-step ks.
    const uint32_t af[4] = {bf16x2_bits(p[2 * ks][0], p[2 * ks][1]),
                            bf16x2_bits(p[2 * ks][2], p[2 * ks][3]),
                            bf16x2_bits(p[2 * ks + 1][0], p[2 * ks + 1][1]),
                            bf16x2_bits(p[2 * ks + 1][2], p[2 * ks + 1][3])};
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      // B stored [k][n]: transposed loads of matrices (k 0-7, n 0-7), (k 8-15, n 0-7),
      // (k 0-7, n 8-15), (k 8-15, n 8-15) give b[0], b[1] of n-tiles 2np and 2np + 1.
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b + (ks * 16 + ((lane / 8) % 2) * 8 + lane % 8) * stride + np * 16 +
                                (lane / 16) * 8);
      mma_bf16(acc[2 * np], af, bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

// acc (16 x N) += A (16 x K) * B, with A stored transposed in shared memory (its K columns as
// rows of stride a_stride, the warp's 16 rows at a_t[0..15] of each) and B's K rows of N elements
// row-major (stride b_stride), over the first 16 `live` rows of both only. This is the dQ pass's
// dS K, with dS^T as the dK/dV pass wrote it.
template <int N, int K>
__device__ __forceinline__ void mma_cols_rows(float (&acc)[N / 8][4], const bf16* a_t, int a_stride,
                                              const bf16* b, int b_stride, int live) {
  static_assert(N % 16 == 0 && K % 16 == 0, "tile sizes are multiples of 16");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int ks = 0; ks < K / 16; ++ks) {
    if (ks >= live) break;
    // A^T stored [k][m]: transposed loads of matrices (k 0-7, m 0-7), (k 0-7, m 8-15),
    // (k 8-15, m 0-7), (k 8-15, m 8-15) give a[0..3] (a thread gets A[g][2t..2t+1] of each).
    uint32_t af[4];
    ldmatrix_x4_trans(
        af, a_t + (ks * 16 + (lane / 16) * 8 + lane % 8) * a_stride + ((lane / 8) % 2) * 8);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t bf[4];  // as in mma_regs_rows
      ldmatrix_x4_trans(bf, b + (ks * 16 + ((lane / 8) % 2) * 8 + lane % 8) * b_stride + np * 16 +
                                (lane / 16) * 8);
      mma_bf16(acc[2 * np], af, bf[0], bf[1]);
      mma_bf16(acc[2 * np + 1], af, bf[2], bf[3]);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
}

// ---------------------------------------------------------------------------------------------
// Global <-> shared / registers.

// One (batch, head) of the packed qkv (or dqkv) buffer (B, T, 3, H, D): Q, K and V of a token are
// C = H D elements apart and tokens 3 C apart. `o` is the same head of a (B, T, H, D) buffer (out,
// dout), whose tokens are C apart, and `stat` of a (B, H, T) one (lse, delta).
struct HeadView {
  int64_t qkv, o, stat;  // offsets of this head's token 0
  int64_t C;
  __device__ int64_t ld_qkv() const { return 3 * C; }
};

__device__ __forceinline__ HeadView head_view(int64_t bh, int T, int H, int D) {
  const int64_t b = bh / H, h = bh % H, C = static_cast<int64_t>(H) * D;
  return {b * T * 3 * C + h * D, b * T * C + h * D, bh * T, C};
}

// Starts the copy of rows [row0, row0 + ROWS) and columns [0, COLS) of a matrix with row stride
// ld into a shared tile of row stride STRIDE, in 16-byte chunks; rows >= T, and chunks from column
// `cols` on, become zeros, so every product over them is finite (0, never NaN from stale shared
// memory or unwritten global memory). A thread takes the same column chunk of every
// kRowsPerPass-th row, so its source and destination advance by a constant each pass (unrolled):
// a row's chunk count that does not divide the block (head dim 80: 10 chunks, 12 rows a pass)
// leaves the last few threads idle. Row offsets are 32-bit: a row stride of the (B, T, 3, H, D)
// buffer (3 * 1280 for the widest ViT) or of scores_t.
template <int ROWS, int COLS, int STRIDE>
__device__ __forceinline__ void load_block_async(bf16* tile, const bf16* src, int64_t ld, int row0,
                                                 int T, int cols) {
  constexpr int kChunks = COLS / 8;  // 16-byte chunks per row
  constexpr int kRowsPerPass = kThreads / kChunks;
  static_assert(kRowsPerPass > 0, "a row of at most kThreads chunks");
  const int r = threadIdx.x / kChunks, col = threadIdx.x % kChunks * 8;
  if (r >= kRowsPerPass) return;
  const int ld32 = static_cast<int>(ld), rows_left = T - row0;
  const bf16* from = src + static_cast<int64_t>(row0 + r) * ld + col;
  bf16* to = tile + r * STRIDE + col;
#pragma unroll
  for (int pass = 0; pass * kRowsPerPass < ROWS; ++pass) {
    const int row = r + pass * kRowsPerPass;
    if (ROWS % kRowsPerPass != 0 && row >= ROWS) break;
    const bool valid = row < rows_left && col < cols;
    cp_async_16(to, valid ? from : src, valid);
    from += kRowsPerPass * ld32;
    to += kRowsPerPass * STRIDE;
  }
}

// The same for whole rows of a (T, D) matrix (Q, K, V, dO) into a tile of row stride kStride.
template <int ROWS, int D>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* src, int64_t ld, int row0,
                                                int T) {
  load_block_async<ROWS, D, Tiles<D>::kStride>(tile, src, ld, row0, T, D);
}

// Starts the copy of key tile [row0, row0 + kCols) of K and V into stage `stage` of the
// double-buffered shared tiles sk, sv ([2][kCols][kStride] each).
template <int D>
__device__ __forceinline__ void load_kv_tile_async(bf16* sk, bf16* sv, int stage, const bf16* k,
                                                   const bf16* v, int64_t ld, int row0, int T) {
  constexpr int kTile = Tiles<D>::kCols * Tiles<D>::kStride;
  load_tile_async<Tiles<D>::kCols, D>(sk + stage * kTile, k, ld, row0, T);
  load_tile_async<Tiles<D>::kCols, D>(sv + stage * kTile, v, ld, row0, T);
}

// Stores a warp's 16 x D accumulator rows, times `mul`, as bf16 rows [row0, row0 + 16) of a
// (T, D) matrix with row stride ld; rows >= T are skipped.
template <int D>
__device__ __forceinline__ void store_rows(bf16* dst, int64_t ld, int row0, int T,
                                           const float (&acc)[D / 8][4], float mul) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = row0 + g + 8 * half;
    if (row >= T) continue;
    bf16* out = dst + static_cast<int64_t>(row) * ld + 2 * t;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<__nv_bfloat162*>(out + 8 * n) =
          __floats2bfloat162_rn(acc[n][2 * half] * mul, acc[n][2 * half + 1] * mul);
  }
}

// The column sums of the block's accumulator rows (each warp's 16, those flagged valid), times
// `mul`, into dst[0, D): each warp sums its rows (a thread's two, then across the 8 row groups by
// shuffles), then one thread per column adds the warps in a fixed order. `scratch`: kWarps * D
// floats of shared memory no warp still reads. Every thread of the block must call it (it holds a
// barrier, and the shuffles want whole warps); a warp past T passes no valid row.
template <int D>
__device__ __forceinline__ void block_column_sums(const float (&acc)[D / 8][4],
                                                  const bool (&row_valid)[2], float mul,
                                                  float* scratch, float* dst) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = (row_valid[0] ? acc[n][e] : 0.f) + (row_valid[1] ? acc[n][2 + e] : 0.f);
      v += __shfl_xor_sync(0xffffffffu, v, 4);  // lanes of the other row groups, same column
      v += __shfl_xor_sync(0xffffffffu, v, 8);
      v += __shfl_xor_sync(0xffffffffu, v, 16);
      if (g == 0) scratch[warp * D + 8 * n + 2 * t + e] = v;
    }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += kThreads) {
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += scratch[w * D + c];
    dst[c] = sum * mul;
  }
}

// ---------------------------------------------------------------------------------------------
// Keys [key0, key0 + Cols) of the forward (a key tile, or a warp's share of one; sk and sv point
// at their rows), for a warp's 16 query rows: S = Q K^T, the online softmax's update of m, l and
// o, then o += P V. Partial: the keys run past T (the last tile, when T is not a multiple of
// kCols, and every share of a split group's tiles): their scores become -inf and the products stop
// at the live groups, and a share with no key < T is skipped. Every other tile takes the straight
// path, with no test per score.
// The softmax is in base 2 on x = s * scale_log2 (scale_log2 > 0): the row max of x is the max of s
// times scale_log2, and each exponent x - m is one fused multiply-add on the raw score.
template <int D, int Cols, bool Partial>
__device__ __forceinline__ void forward_tile(const bf16* sq_warp, const bf16* sk, const bf16* sv,
                                             int T, int key0, float scale_log2,
                                             float (&o)[D / 8][4], float (&m)[2], float (&l)[2]) {
  constexpr int kStride = Tiles<D>::kStride;
  const int t = threadIdx.x % 4;
  const int live = Partial ? live_groups(T, key0, Cols) : Cols / 16;
  if (Partial && live <= 0) return;

  float s[Cols / 8][4];
  zero(s);
  mma_rows_rows<Cols, D>(s, sq_warp, sk, kStride, live);
  if constexpr (Partial) {
#pragma unroll
    for (int n = 0; n < Cols / 8; ++n) {
      if (n >= 2 * live) break;  // past the live groups: no column < T, and no product reads it
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (key0 + 8 * n + 2 * t + e % 2 >= T) s[n][e] = -INFINITY;
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float mx = -INFINITY;
#pragma unroll
    for (int n = 0; n < Cols / 8; ++n) {
      if (n >= 2 * live) break;
      mx = fmaxf(mx, fmaxf(s[n][2 * half], s[n][2 * half + 1]));
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));  // the quad shares the row
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    // The first share a warp does not skip holds a key < T, so m is finite from it on (before
    // it m = -inf, and its correction exp2(-inf) = 0 clears nothing), and the -inf of keys past T
    // contribute exp2(-inf) = 0.
    const float m_new = fmaxf(m[half], mx * scale_log2);
    const float correction = exp2_ftz(m[half] - m_new);  // 0 on the first tile (m = -inf)
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < Cols / 8; ++n) {
      if (n >= 2 * live) break;
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float& x = s[n][2 * half + e];
        x = exp2_ftz(fmaf(x, scale_log2, -m_new));
        sum += x;
      }
    }
    l[half] = l[half] * correction + sum;
    m[half] = m_new;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      o[n][2 * half] *= correction;
      o[n][2 * half + 1] *= correction;
    }
  }
  mma_regs_rows<D, Cols>(o, s, sv, kStride, live);
}

// Forward. Block: query rows [q0, q0 + 64) of one (batch, head); warp w owns rows q0 + 16w ...
// (in a sequence's last query tile with one or two live groups, a group's warps split every key
// tile between them: warp_share). Scores are kept in base 2: x = s * scale * log2(e), so every
// exponential is one exp2. In a last query tile with three live groups the fourth warp only helps
// load the key tiles.

// The forward's merge of a split group's shares: each warp holds o, m and l (l summed over the
// quad) over its share of the keys; the group's first warp rescales them all to the largest m, as
// the online softmax does between key tiles, and adds them up (parts in order). Every thread of
// the block calls it; `scratch`: shared memory no warp still reads.
template <int D>
__device__ __forceinline__ void merge_forward_shares(const WarpShare& share, int T, float* scratch,
                                                     float (&o)[D / 8][4], float (&m)[2],
                                                     float (&l)[2]) {
  if (share.split == 1) return;  // block-uniform
  constexpr int kFragments = D / 8 * 4 * 32, kSlot = kFragments + 4 * 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (share.part > 0) {
    float* slot = scratch + warp * kSlot;
    put_fragments(slot, o);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      slot[kFragments + half * 32 + lane] = m[half];
      slot[kFragments + (2 + half) * 32 + lane] = l[half];
    }
  }
  __syncthreads();
  // A group past T (head dim 128's split in two leaves one) has nothing to merge: its m = -inf
  // would make exp2(-inf - -inf) a NaN.
  if (share.part > 0 || share.row0 >= T) return;
  for (int p = 1; p < share.split; ++p) {
    const float* slot = scratch + (warp + p) * kSlot;
    float mine[2], theirs[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      // m of part 0 is finite (its keys hold key 0); a share that saw no key < T has m = -inf,
      // l = 0 and o = 0, and weighs exp2(-inf) = 0.
      const float m_other = slot[kFragments + half * 32 + lane];
      const float m_new = fmaxf(m[half], m_other);
      mine[half] = exp2_ftz(m[half] - m_new);
      theirs[half] = exp2_ftz(m_other - m_new);
      l[half] = l[half] * mine[half] + slot[kFragments + (2 + half) * 32 + lane] * theirs[half];
      m[half] = m_new;
    }
    scale_rows(o, mine[0], mine[1]);
    add_fragments(o, slot, theirs[0], theirs[1]);
  }
}

template <int D>
__global__ void __launch_bounds__(kThreads, Tiles<D>::kForwardMinBlocks)
    attention_forward_kernel(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                             float* __restrict__ lse, int T, int H, float scale_log2) {
  using Cfg = Tiles<D>;
  constexpr int kCols = Cfg::kCols, kStride = Cfg::kStride;
  static_assert(kWarps * (D / 2 + 4) * 32 * 4 <= Cfg::kForwardSmem, "merge slots fit the tiles");
  unsigned char* smem = dynamic_smem();
  bf16* sq = reinterpret_cast<bf16*>(smem);
  bf16* sk = sq + kRows * kStride;     // [2][kCols][kStride]
  bf16* sv = sk + 2 * kCols * kStride;  // [2][kCols][kStride]

  const int q_tiles = (T + kRows - 1) / kRows;
  const int64_t bh = blockIdx.x / q_tiles;
  const int q0 = (blockIdx.x % q_tiles) * kRows;
  const HeadView hv = head_view(bh, T, H, D);
  const bf16* q = qkv + hv.qkv;
  const bf16* k = q + hv.C;
  const bf16* v = q + 2 * hv.C;

  const int lane = threadIdx.x % 32, t = lane % 4;
  const int kv_tiles = (T + kCols - 1) / kCols;
  const WarpShare share = warp_share<kCols>(T, q0);
  const int row0 = share.row0;

  load_tile_async<kRows, D>(sq, q, hv.ld_qkv(), q0, T);
  load_kv_tile_async<D>(sk, sv, 0, k, v, hv.ld_qkv(), 0, T);
  cp_async_commit();

  float o[D / 8][4];
  zero(o);
  // Per thread: rows g and g + 8 of the warp. m: running max of x (quad-uniform); l: this
  // thread's partial sum of exp2(x - m) over its columns, summed across the quad at the end.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  for (int j = 0; j < kv_tiles; ++j) {
    const int stage = j % 2;
    if (j + 1 < kv_tiles) {
      load_kv_tile_async<D>(sk, sv, 1 - stage, k, v, hv.ld_qkv(), (j + 1) * kCols, T);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (row0 < T) {  // warp-uniform: a warp whose rows all lie past T only loads
      const bf16* sq_warp = sq + (row0 - q0) * kStride;
      on_share<kCols>(share, [&](auto rows, int first) {
        constexpr int kShare = decltype(rows)::value;
        const int key0 = j * kCols + first;
        const bf16* sk_share = sk + (stage * kCols + first) * kStride;
        const bf16* sv_share = sv + (stage * kCols + first) * kStride;
        if (kShare == kCols && key0 + kCols <= T)
          forward_tile<D, kShare, false>(sq_warp, sk_share, sv_share, T, key0, scale_log2, o, m, l);
        else
          forward_tile<D, kShare, true>(sq_warp, sk_share, sv_share, T, key0, scale_log2, o, m, l);
      });
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    l[half] += __shfl_xor_sync(0xffffffffu, l[half], 1);
    l[half] += __shfl_xor_sync(0xffffffffu, l[half], 2);
  }
  merge_forward_shares<D>(share, T, reinterpret_cast<float*>(smem), o, m, l);
  if (row0 >= T || share.part > 0) return;  // nothing to store

  scale_rows(o, 1.f / l[0], 1.f / l[1]);  // l >= 1: the row max gives exp2(0)
  store_rows<D>(out + hv.o, hv.C, row0, T, o, 1.f);
  if (lse != nullptr && t == 0) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + lane / 4 + 8 * half;
      // Natural log: lse = ln 2 * (m + log2 l), m and l in base 2.
      if (row < T) lse[hv.stat + row] = kLn2 * (m[half] + log2f(l[half]));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward pass 1: delta_i = sum_d dO_id O_id, the row sum of P * dP (because O = P V), for every
// (batch, token, head) row: a group of delta_lanes(D) lanes per row, a lane per 8-element vector of
// it (D = 80: 10 of 16 lanes), the row sum by shuffles within the group, so a warp takes 32 /
// delta_lanes(D) rows (4 at D = 64). One warp per row, as this was until 2026-12-04, left 24 of its
// lanes idle at D = 64 and an SM 16 KB of loads in flight at most.

constexpr int delta_lanes(int D) { return D <= 32 ? 4 : (D <= 64 ? 8 : 16); }

// Blocks of the delta pass over `rows` rows.
inline int64_t delta_blocks(int64_t rows, int D) {
  const int64_t rows_per_block = int64_t{kWarps} * (32 / delta_lanes(D));
  return (rows + rows_per_block - 1) / rows_per_block;
}

template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_delta_kernel(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                           float* __restrict__ delta, int64_t rows, int T, int H) {
  constexpr int kLanes = delta_lanes(D);
  static_assert(D / gpu::kVec <= kLanes, "one vector per lane");
  const int lane = threadIdx.x % 32;
  const int v = lane % kLanes;  // the vector of the row this lane takes
  const int64_t row =
      (static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32) * (32 / kLanes) +
      lane / kLanes;
  float sum = 0.f;
  if (row < rows && v < D / gpu::kVec) {
    float a[gpu::kVec], b[gpu::kVec];
    gpu::load<gpu::kVec>(out + row * D + v * gpu::kVec, a);
    gpu::load<gpu::kVec>(dout + row * D + v * gpu::kVec, b);
#pragma unroll
    for (int e = 0; e < gpu::kVec; ++e) sum += a[e] * b[e];
  }
  // Every lane shuffles (rows past the last add nothing): the group's lanes differ only in the
  // low bits that these offsets flip.
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2)
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (v == 0 && row < rows) {
    // row = (b * T + token) * H + h  ->  delta: (B, H, T)
    const int64_t h = row % H, bt = row / H, token = bt % T, b = bt / T;
    delta[(b * H + h) * T + token] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Queries [query0, query0 + Cols) of the dK/dV pass (a query tile, or a warp's share of one; sq,
// sdo, slse and sdelta point at their rows), for a warp's 16 key rows (see the kernel below for
// the products): P^T, dV += P^T dO, dS^T, its store to the scores rows (scores_rows: the warp's
// rows key0 and key0 + 8 from column query0 + 2t, stride scores_ld), and dK += dS^T Q. Partial:
// the queries run past T (the last tile, when T is not a multiple of kCols, and every share of a
// split group's tiles), whose products stop at the live groups, and a share with no query < T is
// skipped; the others take the straight path. Queries past T need no test per score: their Q and
// dO rows are zeros (see the kernel's load_query_tile).
template <int D, int Cols, bool Partial>
__device__ __forceinline__ void dkdv_tile(const bf16* sk_warp, const bf16* sv_warp, const bf16* sq,
                                          const bf16* sdo, const float* slse, const float* sdelta,
                                          const bool (&key_valid)[2], float scale_log2, int T,
                                          int query0, bf16* scores_rows, int scores_ld,
                                          float (&dk)[D / 8][4], float (&dv)[D / 8][4]) {
  constexpr int kStride = Tiles<D>::kStride;
  const int t = threadIdx.x % 4;
  const int live = Partial ? live_groups(T, query0, Cols) : Cols / 16;
  if (Partial && live <= 0) return;

  float p[Cols / 8][4];  // S^T, then P^T
  zero(p);
  mma_rows_rows<Cols, D>(p, sk_warp, sq, kStride, live);
#pragma unroll
  for (int n = 0; n < Cols / 8; ++n) {
    if (n >= 2 * live) break;  // past the live groups: no column < T, and no product reads it
    // Columns 2t and 2t + 1 of n-tile n: one 8-byte shared load (the tiles start 8-byte aligned)
    // where the compiler, not knowing that, would make two.
    const float2 lse_pair = *reinterpret_cast<const float2*>(slse + 8 * n + 2 * t);
    const float lse_col[2] = {lse_pair.x, lse_pair.y};
#pragma unroll
    for (int e = 0; e < 4; ++e)
      p[n][e] = key_valid[e / 2] ? exp2_ftz(fmaf(p[n][e], scale_log2, -lse_col[e % 2])) : 0.f;
  }

  mma_regs_rows<D, Cols>(dv, p, sdo, kStride, live);

  float ds[Cols / 8][4];  // dP^T, then dS^T
  zero(ds);
  mma_rows_rows<Cols, D>(ds, sv_warp, sdo, kStride, live);
#pragma unroll
  for (int n = 0; n < Cols / 8; ++n) {
    if (n >= 2 * live) break;
    const float2 delta_pair = *reinterpret_cast<const float2*>(sdelta + 8 * n + 2 * t);
    const float delta_col[2] = {delta_pair.x, delta_pair.y};
#pragma unroll
    for (int e = 0; e < 4; ++e) ds[n][e] = p[n][e] * (ds[n][e] - delta_col[e % 2]);
  }

  // Rows key0 and key0 + 8, columns query0 + 8n + 2t and the next: a quad writes 16 contiguous
  // bytes of a row.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!key_valid[half]) continue;
    uint32_t* row = reinterpret_cast<uint32_t*>(scores_rows + 8 * half * scores_ld);
#pragma unroll
    for (int n = 0; n < Cols / 8; ++n) {
      if (n >= 2 * live) break;
      row[4 * n] = bf16x2_bits(ds[n][2 * half], ds[n][2 * half + 1]);
    }
  }

  mma_regs_rows<D, Cols>(dk, ds, sq, kStride, live);
}

// ---------------------------------------------------------------------------------------------
// Backward pass 2: dK and dV, and dS^T for pass 3. Block: keys [k0, k0 + 64) of one (batch,
// head), warp w owns keys k0 + 16w ... (a warp whose keys all lie past T only helps load; in a
// last key tile with one or two live groups, a group's warps split every query tile between
// them: warp_share); the block walks every query tile. The products are written transposed (keys as
// rows) so each warp's dK, dV rows accumulate in its own registers:
//   S^T = K Q^T,  P^T = exp2(S^T scale log2e - lse2[query]),  dV += P^T dO,
//   dP^T = V dO^T,  dS^T = P^T (dP^T - delta[query]),  dK += dS^T Q  (times scale at the end),
// and dS^T, rounded to bf16 as the product dS^T Q takes it, goes to the head's rows of scores_t
// ((T, scores_stride(T)), keys as rows), for the query groups that hold a query < T. With
// bias_partials, the block's column sums of dK and dV go to its chunk's row there (the dK, dV
// parts of (B, tiles, 3, H, D)).

template <int D>
__global__ void __launch_bounds__(kThreads, Tiles<D>::kDkvMinBlocks)
    attention_dkdv_kernel(const bf16* __restrict__ qkv, const float* __restrict__ lse,
                          const bf16* __restrict__ dout, const float* __restrict__ delta,
                          bf16* __restrict__ dqkv, bf16* __restrict__ scores_t,
                          float* __restrict__ bias_partials, int T, int H, float scale,
                          float scale_log2) {
  using Cfg = Tiles<D>;
  constexpr int kCols = Cfg::kCols, kStride = Cfg::kStride;
  static_assert(kWarps * D / 2 * 32 * 4 <= Cfg::kDkvSmem, "share slots fit the tiles");
  unsigned char* smem = dynamic_smem();
  bf16* sk = reinterpret_cast<bf16*>(smem);
  bf16* sv = sk + kRows * kStride;
  bf16* sq = sv + kRows * kStride;        // [2][kCols][kStride]
  bf16* sdo = sq + 2 * kCols * kStride;   // [2][kCols][kStride]
  // The statistics are read two columns at a time (float2): 8-byte aligned.
  static_assert((2 * kRows + 4 * kCols) * Cfg::kRowBytes % 8 == 0, "statistics 8-byte aligned");
  // [2][kCols] each; lse in base 2 from the wait for its tile on (see load_query_tile).
  float* slse = reinterpret_cast<float*>(sdo + 2 * kCols * kStride);
  float* sdelta = slse + 2 * kCols;

  const int k_tiles = (T + kRows - 1) / kRows;
  const int64_t bh = blockIdx.x / k_tiles;
  const int k0 = (blockIdx.x % k_tiles) * kRows;
  const HeadView hv = head_view(bh, T, H, D);
  const int64_t C = hv.C;
  const bf16* q = qkv + hv.qkv;
  const bf16* do_head = dout + hv.o;

  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int q_tiles = (T + kCols - 1) / kCols;
  const WarpShare share = warp_share<kCols>(T, k0);

  // Query tile [q0, q0 + kCols) into stage `stage`: its Q and dO rows, and its lse and delta (a
  // float a thread, in the same cp.async group, so they arrive with the rows rather than stalling
  // the warps that loaded them by hand before the barrier; lse is taken to base 2 after the wait).
  // Queries past T load zeros: zero Q and dO rows make S^T = 0, P^T = exp2(0 - 0) = 1, dP^T = 0
  // and dS^T = 1 (0 - 0) = 0 there, which add nothing to dV or dK.
  static_assert(2 * kCols <= kThreads, "a thread per statistic");
  const auto load_query_tile = [&](int q0, int stage) {
    load_tile_async<kCols, D>(sq + stage * kCols * kStride, q, hv.ld_qkv(), q0, T);
    load_tile_async<kCols, D>(sdo + stage * kCols * kStride, do_head, hv.C, q0, T);
    const int column = threadIdx.x % kCols, row = q0 + column;
    const float* from = threadIdx.x < kCols ? lse : delta;
    float* to = (threadIdx.x < kCols ? slse : sdelta) + stage * kCols + column;
    if (threadIdx.x < 2 * kCols) cp_async_4(to, row < T ? from + hv.stat + row : from, row < T);
    cp_async_commit();
  };

  load_tile_async<kRows, D>(sk, q + C, hv.ld_qkv(), k0, T);
  load_tile_async<kRows, D>(sv, q + 2 * C, hv.ld_qkv(), k0, T);
  load_query_tile(0, 0);  // commits K, V and query tile 0 as one group

  float dk[D / 8][4], dv[D / 8][4];
  zero(dk);
  zero(dv);
  // Key rows past T are zeros in shared memory, but exp2(0 - lse2) may overflow: give them
  // probability 0 outright (they are never stored; this keeps every register finite).
  const int row0 = share.row0, key0 = row0 + g;
  const bool key_valid[2] = {key0 < T, key0 + 8 < T};
  const int scores_ld = scores_stride(T);
  bf16* scores_head = scores_t + bh * T * scores_ld;

  for (int i = 0; i < q_tiles; ++i) {
    const int stage = i % 2;
    if (i + 1 < q_tiles) {
      load_query_tile((i + 1) * kCols, 1 - stage);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    // A thread's own copy has landed for it: each lse goes to base 2 where it was copied.
    if (threadIdx.x < kCols) slse[stage * kCols + threadIdx.x] *= kLog2e;
    __syncthreads();
    if (row0 < T) {  // warp-uniform
      const bf16* sk_warp = sk + (row0 - k0) * kStride;
      const bf16* sv_warp = sv + (row0 - k0) * kStride;
      on_share<kCols>(share, [&](auto cols, int first) {
        constexpr int kShare = decltype(cols)::value;
        const int query0 = i * kCols + first;
        const bf16* sq_share = sq + (stage * kCols + first) * kStride;
        const bf16* sdo_share = sdo + (stage * kCols + first) * kStride;
        const float* slse_share = slse + stage * kCols + first;
        const float* sdelta_share = sdelta + stage * kCols + first;
        // Rows key0 and key0 + 8 of the head's dS^T, from query query0 + 2t on.
        bf16* scores_rows = scores_head + static_cast<int64_t>(key0) * scores_ld + query0 + 2 * t;
        if (kShare == kCols && query0 + kCols <= T)
          dkdv_tile<D, kShare, false>(sk_warp, sv_warp, sq_share, sdo_share, slse_share,
                                      sdelta_share, key_valid, scale_log2, T, query0, scores_rows,
                                      scores_ld, dk, dv);
        else
          dkdv_tile<D, kShare, true>(sk_warp, sv_warp, sq_share, sdo_share, slse_share,
                                     sdelta_share, key_valid, scale_log2, T, query0, scores_rows,
                                     scores_ld, dk, dv);
      });
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  // The loop's last barrier freed the tiles.
  float* scratch = reinterpret_cast<float*>(smem);
  sum_shares(dk, share, scratch);
  sum_shares(dv, share, scratch);
  const bool stores = share.part == 0;  // a split group's sums are its first warp's
  if (bias_partials != nullptr) {       // block-uniform
    const bool rows_summed[2] = {stores && key_valid[0], stores && key_valid[1]};
    float* partial = bias_partials + (bh / H * k_tiles + blockIdx.x % k_tiles) * 3 * C + bh % H * D;
    block_column_sums<D>(dk, rows_summed, scale, scratch, partial + C);
    block_column_sums<D>(dv, rows_summed, 1.f, scratch + kWarps * D, partial + 2 * C);
  }
  if (row0 >= T || !stores) return;
  bf16* dk_head = dqkv + hv.qkv + C;
  store_rows<D>(dk_head, hv.ld_qkv(), row0, T, dk, scale);
  store_rows<D>(dk_head + C, hv.ld_qkv(), row0, T, dv, 1.f);
}

// ---------------------------------------------------------------------------------------------
// Backward pass 3: dQ = scale dS K, one product over what pass 2 left in scores_t. Block: query
// rows [q0, q0 + 64) of one (batch, head), warp w owns rows q0 + 16w ... (a warp whose rows all
// lie past T only helps load; in a last query tile with one or two live groups, a group's warps
// split every key tile between them: warp_share); the block walks every key tile of kDqKeys keys,
// bringing in the K tile and the dS^T tile (those keys' rows of scores_t, the block's 64 query
// columns) together. Key rows past T and query chunks past T load as zeros: pass 2 never wrote
// them. With bias_partials, the block's column sums of dQ go to its chunk's row there (the dQ
// part).

template <int D>
__global__ void __launch_bounds__(kThreads, 4)
    attention_dq_kernel(const bf16* __restrict__ qkv, const bf16* __restrict__ scores_t,
                        bf16* __restrict__ dqkv, float* __restrict__ bias_partials, int T, int H,
                        float scale) {
  using Cfg = Tiles<D>;
  constexpr int kStride = Cfg::kStride;
  static_assert(kWarps * D / 2 * 32 * 4 <= Cfg::kDqSmem, "share slots fit the tiles");
  unsigned char* smem = dynamic_smem();
  bf16* sk = reinterpret_cast<bf16*>(smem);  // [2][kDqKeys][kStride]
  bf16* sds = sk + 2 * kDqKeys * kStride;    // [2][kDqKeys][kScoresTileStride]

  const int q_tiles = (T + kRows - 1) / kRows;
  const int64_t bh = blockIdx.x / q_tiles;
  const int q0 = (blockIdx.x % q_tiles) * kRows;
  const HeadView hv = head_view(bh, T, H, D);
  const bf16* k = qkv + hv.qkv + hv.C;
  const int scores_ld = scores_stride(T);
  const bf16* scores_block = scores_t + bh * T * scores_ld + q0;  // column q0 of key row 0

  const auto load_key_tile = [&](int j, int stage) {
    load_tile_async<kDqKeys, D>(sk + stage * kDqKeys * kStride, k, hv.ld_qkv(), j * kDqKeys, T);
    load_block_async<kDqKeys, kRows, kScoresTileStride>(
        sds + stage * kDqKeys * kScoresTileStride, scores_block, scores_ld, j * kDqKeys, T, T - q0);
    cp_async_commit();
  };

  const WarpShare share = warp_share<kDqKeys>(T, q0);
  const int row0 = share.row0;
  const int key_tiles = (T + kDqKeys - 1) / kDqKeys;
  load_key_tile(0, 0);

  float dq[D / 8][4];
  zero(dq);
  for (int j = 0; j < key_tiles; ++j) {
    const int stage = j % 2;
    if (j + 1 < key_tiles) {
      load_key_tile(j + 1, 1 - stage);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (row0 < T) {  // warp-uniform
      on_share<kDqKeys>(share, [&](auto keys, int first) {
        constexpr int kShare = decltype(keys)::value;
        // The warp's queries are columns row0 - q0 ... of the dS^T tile.
        mma_cols_rows<D, kShare>(dq,
                                 sds + (stage * kDqKeys + first) * kScoresTileStride + (row0 - q0),
                                 kScoresTileStride, sk + (stage * kDqKeys + first) * kStride,
                                 kStride, live_groups(T, j * kDqKeys + first, kShare));
      });
    }
    __syncthreads();  // every warp is done with this stage before the next iteration refills it
  }

  // The loop's last barrier freed the tiles.
  float* scratch = reinterpret_cast<float*>(smem);
  sum_shares(dq, share, scratch);
  const bool stores = share.part == 0;  // a split group's sum is its first warp's
  if (bias_partials != nullptr) {       // block-uniform
    const int g = threadIdx.x % 32 / 4;
    const bool rows_summed[2] = {stores && row0 + g < T, stores && row0 + g + 8 < T};
    block_column_sums<D>(
        dq, rows_summed, scale, scratch,
        bias_partials + (bh / H * q_tiles + blockIdx.x % q_tiles) * 3 * hv.C + bh % H * D);
  }
  if (row0 < T && stores) store_rows<D>(dqkv + hv.qkv, hv.ld_qkv(), row0, T, dq, scale);
}

}  // namespace
}  // namespace deit::kernels
