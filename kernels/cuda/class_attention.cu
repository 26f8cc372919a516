// The class token's attention, forward and backward: token 0's query against every token's key
// and value, per (batch, head), over the packed qkv buffer; bf16 in and out, fp32 accumulation and
// softmax statistics. The CPU twins, class_attention_forward_cpu and class_attention_backward_cpu
// (kernels/cpu/attention.cpp), say what is computed: token 0's row of the whole attention
// (kernels/cuda/attention.cu), all a ViT's last block needs.
//
// What it fuses
//   forward:  the score row s_j = scale q . k_j, its online softmax (running max and sum in base 2)
//             and o = sum_j p_j v_j, the normalisation and the log-sum-exp (fp32, natural log), in
//             one kernel. No tensor cores: one query row is a matrix-vector product, and the
//             kernel is bound by reading K and V.
//   backward: one kernel: delta = dO . O, then per key p_j = exp2(s_j scale log2e - lse2) rebuilt
//             from the saved lse, dS_j = p_j (dO . v_j - delta), and its rows of dqkv written at
//             once, dV_j = p_j dO and dK_j = scale dS_j q (and dQ_j = 0 past token 0); dq = scale
//             sum_j dS_j k_j is summed over the keys and stored last. Asked for the qkv linear
//             layer's bias gradient, each block writes its column sums of the rows it stored
//             (fp32, before the bf16 rounding) to its row of the workspace, (B, 3, H, D), and
//             sum_partials adds the B rows in order: no atomics, the same bits on every run.
//             dK_j and dV_j are outer products (a scalar per key times q or dO), so their column
//             sums are sum_j scale dS_j times q and sum_j p_j times dO: two scalars a lane
//             group, not 16 accumulators a lane.
//
// Launch shape: one block of 128 threads (4 warps) per (batch, head), grid B H, 1-D. A lane group
// of kLanes = 4, 8, 16 lanes (head dim 32; 64; 80 and 128) takes one key row, lane v holding the
// row's 8-element vector v (16-byte loads; head dim 80: lanes 10 to 15 of each group hold zeros);
// a group's dot products are summed by xor shuffles within it. Each group takes two keys a round,
// loaded together before either is used, so a block has 4 * 32 / kLanes * 2 keys of K and V in
// flight (32 at head dim 64: a head of T = 197 in 7 rounds). Every lane runs every round's
// shuffles (the round loop is block-uniform): lanes of keys past T compute on zeros and skip the
// update and the stores. After the loop the groups of a warp merge by xor shuffles across groups
// (forward: the (max, sum, o) states, the lower group's first, so that every lane gets the same
// bits even where the compiler fuses a multiply and an add; backward: sums), then the four warps
// through static shared memory, in warp order, by the lanes of warp 0's first group.
// Registers (ptxas, head dim 32 / 64 / 80 / 128): forward 48 / 48 / 51 / 48 on sm_90, 48 / 48 /
// 56 / 53 on sm_80 (10 blocks an SM up to 51 registers, 9 at 53 and 56); backward 80 / 80 / 72 / 80
// on both (held to 6 blocks an SM, 80 registers: about 48 KB of K and V loads in flight; held to 64
// for 8 blocks, ptxas spills 16 to 24 bytes on sm_90, and left alone it took 72 at head dim 64 and
// spilled 16 once bf16 vectors moved as 16-byte words). No spills. Static shared memory: the 4
// warps' states, 16 D + 32 bytes.
//
// Speed: not measured (no GPU in the session that wrote it). It moves about B T 2C 2 bytes forward
// (K and V read once) and B T 5C 2 backward (K and V read, dQ, dK, dV written): for deit3_small's
// last block, B = 256, T = 197, C = 384, about 77 MB and 190 MB, i.e. about 0.02 and 0.05 ms at
// the 4.28 TB/s of an H200's 1 GiB device-to-device copy (`deit bench kernels`, bench/results), if
// the kernels reach that rate; the whole attention's kernels take 0.109 ms forward and 0.32 ms
// backward (dK/dV and dQ passes) for the same layer (attention.cu's Nsight figures).
//
// Files: this file holds the device code and the host side (argument checks, launches); the
// kernels run lane by lane on the host in the [gpu] tests of tests/test_attention_cuda.cpp on the
// emulated device (tests/emulated/runtime, CTest entry gpu_tests_emulated_kernels).
#include <cuda_bf16.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/mma.cuh"

namespace deit::kernels {
namespace {

using gpu::bf16;
using gpu::kVec;
using namespace ptx;  // exp2_ftz: mma.cuh's, or the emulator's twin

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kKeysInFlight = 2;  // keys a lane group loads before it uses the first
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.69314718055994531f;

// How a block spreads a head's key rows over its lanes, for head dim D.
template <int D>
struct KeyRows {
  static_assert(D % kVec == 0 && D <= 128, "head dim: a multiple of 8, at most 128");
  static constexpr int kLanes = D <= 32 ? 4 : (D <= 64 ? 8 : 16);  // a power of 2 >= D / 8
  static constexpr int kVectors = D / kVec;                        // lanes holding some of a row
  static constexpr int kGroupsPerWarp = 32 / kLanes;
  static constexpr int kGroups = kWarps * kGroupsPerWarp;
  static constexpr int kKeysPerRound = kGroups * kKeysInFlight;
};

// This lane's place: the vector of a row it holds, whether that vector exists (head dim 80), and
// its lane group's index in the block.
template <int D>
struct LaneSlot {
  int lane, warp, vector, group;
  bool holds;
  __device__ LaneSlot() {
    using R = KeyRows<D>;
    lane = threadIdx.x % 32;
    warp = threadIdx.x / 32;
    vector = lane % R::kLanes;
    group = warp * R::kGroupsPerWarp + lane / R::kLanes;
    holds = vector < R::kVectors;
  }
};

__device__ __forceinline__ void load_or_zero(const bf16* p, bool valid, float (&v)[kVec]) {
  if (valid) {
    gpu::load<kVec>(p, v);
  } else {
#pragma unroll
    for (int e = 0; e < kVec; ++e) v[e] = 0.f;
  }
}

__device__ __forceinline__ float dot(const float (&a)[kVec], const float (&b)[kVec]) {
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < kVec; ++e) s = fmaf(a[e], b[e], s);
  return s;
}

// The sum over a lane group (every lane of the warp calls it; each group's lanes get the same
// bits, as a + b = b + a).
template <int Lanes>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int offset = Lanes / 2; offset > 0; offset /= 2)
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The sum over the lane groups of a warp, lanes of the same vector together.
template <int Lanes>
__device__ __forceinline__ float across_groups(float x) {
#pragma unroll
  for (int offset = Lanes; offset < 32; offset *= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// One (batch, head) of the packed buffers: token 0's row in qkv (and dqkv), whose tokens are 3 C
// elements apart and whose K and V are C and 2 C past Q; and its (D) vector in out (B, H, D).
struct ClassHead {
  int64_t qkv, o, C;
  __device__ ClassHead(int64_t bh, int T, int H, int D) {
    const int64_t b = bh / H, h = bh % H;
    C = int64_t{H} * D;
    qkv = b * T * 3 * C + h * D;
    o = bh * D;
  }
};

// A lane group's keys of one round (key < T: valid) and this lane's vectors of their K and V rows,
// zeros where the key or the vector does not exist. token0: this lane's vector of token 0's q.
template <int D>
struct KeysInFlight {
  int key[kKeysInFlight];
  bool valid[kKeysInFlight];
  float k[kKeysInFlight][kVec], v[kKeysInFlight][kVec];
  __device__ KeysInFlight(const bf16* token0, int round0, const LaneSlot<D>& me, int64_t C, int T) {
#pragma unroll
    for (int i = 0; i < kKeysInFlight; ++i) {
      key[i] = round0 + i * KeyRows<D>::kGroups + me.group;
      valid[i] = key[i] < T;
      const bf16* row = token0 + (valid[i] ? int64_t{key[i]} : 0) * 3 * C;  // tokens 3 C apart
      load_or_zero(row + C, valid[i] && me.holds, k[i]);
      load_or_zero(row + 2 * C, valid[i] && me.holds, v[i]);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Forward.

// The online softmax's state over some keys, in base 2: m the max of the scores seen (-inf: none),
// l the sum of exp2(s - m), acc this lane's vector of sum_j exp2(s_j - m) v_j.
struct SoftmaxState {
  float m, l, acc[kVec];
};

// a then b, merged: its max, with each side's sums rescaled to it. The order is fixed (a's terms
// first), so the lanes that merge the same pair get the same bits whichever of them holds which.
__device__ __forceinline__ SoftmaxState merge(const SoftmaxState& a, const SoftmaxState& b) {
  SoftmaxState r;
  r.m = fmaxf(a.m, b.m);
  // exp2(-inf - -inf) would be NaN: a state of no keys weighs nothing.
  const float ca = a.m == -INFINITY ? 0.f : exp2_ftz(a.m - r.m);
  const float cb = b.m == -INFINITY ? 0.f : exp2_ftz(b.m - r.m);
  r.l = a.l * ca + b.l * cb;
#pragma unroll
  for (int e = 0; e < kVec; ++e) r.acc[e] = a.acc[e] * ca + b.acc[e] * cb;
  return r;
}

template <int D>
struct alignas(16) ForwardWarpStates {
  float acc[kWarps][D];
  float m[kWarps], l[kWarps];
};

// scale_log2 = scale log2(e): the scores come out in base 2. lse may be nullptr.
template <int D>
__global__ void __launch_bounds__(kThreads)
    class_attention_forward_kernel(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                                   float* __restrict__ lse, int T, int H, float scale_log2) {
  using R = KeyRows<D>;
  const LaneSlot<D> me;
  const int64_t bh = blockIdx.x;
  const ClassHead head(bh, T, H, D);
  const bf16* token0 = qkv + head.qkv + me.vector * kVec;  // this lane's vector of token 0's q

  float q[kVec];
  load_or_zero(token0, me.holds, q);
#pragma unroll
  for (int e = 0; e < kVec; ++e) q[e] *= scale_log2;

  SoftmaxState st;
  st.m = -INFINITY;
  st.l = 0.f;
#pragma unroll
  for (int e = 0; e < kVec; ++e) st.acc[e] = 0.f;

  for (int round0 = 0; round0 < T; round0 += R::kKeysPerRound) {  // block-uniform
    const KeysInFlight<D> keys(token0, round0, me, head.C, T);
    float s[kKeysInFlight];
#pragma unroll
    for (int i = 0; i < kKeysInFlight; ++i) s[i] = group_sum<R::kLanes>(dot(q, keys.k[i]));
    // A group's keys ascend, so the first key in flight is valid whenever any is; one rescale
    // covers both.
    if (keys.valid[0]) {
      float m_new = st.m;
#pragma unroll
      for (int i = 0; i < kKeysInFlight; ++i)
        if (keys.valid[i]) m_new = fmaxf(m_new, s[i]);
      const float corr = exp2_ftz(st.m - m_new);  // m = -inf (no key yet): 0
      float p[kKeysInFlight];
#pragma unroll
      for (int i = 0; i < kKeysInFlight; ++i) p[i] = keys.valid[i] ? exp2_ftz(s[i] - m_new) : 0.f;
      st.m = m_new;
      st.l *= corr;
#pragma unroll
      for (int i = 0; i < kKeysInFlight; ++i) st.l += p[i];
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        float a = st.acc[e] * corr;
#pragma unroll
        for (int i = 0; i < kKeysInFlight; ++i) a = fmaf(p[i], keys.v[i][e], a);
        st.acc[e] = a;
      }
    }
  }

  // The warp's groups, pairwise by xor: the lane whose group index is lower goes first.
#pragma unroll
  for (int offset = R::kLanes; offset < 32; offset *= 2) {
    SoftmaxState other;
    other.m = __shfl_xor_sync(0xffffffffu, st.m, offset);
    other.l = __shfl_xor_sync(0xffffffffu, st.l, offset);
#pragma unroll
    for (int e = 0; e < kVec; ++e) other.acc[e] = __shfl_xor_sync(0xffffffffu, st.acc[e], offset);
    st = (me.lane & offset) == 0 ? merge(st, other) : merge(other, st);
  }

  // Then the warps, in order, by the lanes of warp 0's first group.
  __shared__ ForwardWarpStates<D> warps;
  if (me.lane < R::kLanes) {
    if (me.holds) gpu::store<kVec>(warps.acc[me.warp] + me.vector * kVec, st.acc);
    if (me.lane == 0) {
      warps.m[me.warp] = st.m;
      warps.l[me.warp] = st.l;
    }
  }
  __syncthreads();
  if (me.warp != 0 || me.lane >= R::kLanes) return;
#pragma unroll
  for (int w = 1; w < kWarps; ++w) {
    SoftmaxState other;
    other.m = warps.m[w];
    other.l = warps.l[w];
    if (me.holds) {
      gpu::load<kVec>(warps.acc[w] + me.vector * kVec, other.acc);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) other.acc[e] = 0.f;
    }
    st = merge(st, other);
  }
  const float inv = 1.f / st.l;  // l >= 1: the row max contributes exp2(0)
  if (me.holds) {
    float o[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) o[e] = st.acc[e] * inv;
    gpu::store<kVec>(out + head.o + me.vector * kVec, o);
  }
  // Natural log: lse = ln 2 (m + log2 l), m and l in base 2.
  if (lse != nullptr && me.lane == 0) lse[bh] = kLn2 * (st.m + log2f(st.l));
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <int D>
struct alignas(16) BackwardWarpSums {
  float dq[kWarps][D];
  float ds[kWarps], p[kWarps];
};

// bias_partials: nullptr, or the (B, 3, H, D) rows of the blocks' column sums.
template <int D>
__global__ void __launch_bounds__(kThreads, 6)
    class_attention_backward_kernel(const bf16* __restrict__ qkv, const bf16* __restrict__ out,
                                    const float* __restrict__ lse, const bf16* __restrict__ dout,
                                    bf16* __restrict__ dqkv, float* __restrict__ bias_partials,
                                    int T, int H, float scale, float scale_log2) {
  using R = KeyRows<D>;
  const LaneSlot<D> me;
  const int64_t bh = blockIdx.x;
  const ClassHead head(bh, T, H, D);
  const int64_t ld = 3 * head.C, column = me.vector * kVec;
  const bf16* token0 = qkv + head.qkv + column;
  bf16* dtoken0 = dqkv + head.qkv + column;

  float q[kVec], dO[kVec];
  load_or_zero(token0, me.holds, q);
  load_or_zero(dout + head.o + column, me.holds, dO);
  float delta;
  {
    float o[kVec];
    load_or_zero(out + head.o + column, me.holds, o);
    delta = group_sum<R::kLanes>(dot(dO, o));
  }
  const float lse2 = lse[bh] * kLog2e;

  float dq[kVec];  // sum_j dS_j k_j, this lane's vector
#pragma unroll
  for (int e = 0; e < kVec; ++e) dq[e] = 0.f;
  float ds_sum = 0.f, p_sum = 0.f;  // the group's keys' sums, for the bias gradient

  for (int round0 = 0; round0 < T; round0 += R::kKeysPerRound) {  // block-uniform
    const KeysInFlight<D> keys(token0, round0, me, head.C, T);
    float s[kKeysInFlight], dp[kKeysInFlight];
#pragma unroll
    for (int i = 0; i < kKeysInFlight; ++i) {
      s[i] = group_sum<R::kLanes>(dot(q, keys.k[i]));
      dp[i] = group_sum<R::kLanes>(dot(dO, keys.v[i]));
    }
#pragma unroll
    for (int i = 0; i < kKeysInFlight; ++i) {
      if (!keys.valid[i]) continue;
      const float p = exp2_ftz(fmaf(s[i], scale_log2, -lse2));
      const float ds = p * (dp[i] - delta);
      ds_sum += ds;
      p_sum += p;
#pragma unroll
      for (int e = 0; e < kVec; ++e) dq[e] = fmaf(ds, keys.k[i][e], dq[e]);
      if (!me.holds) continue;
      float dk[kVec], dv[kVec];
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        dk[e] = scale * ds * q[e];
        dv[e] = p * dO[e];
      }
      bf16* drow = dtoken0 + keys.key[i] * ld;
      gpu::store<kVec>(drow + head.C, dk);
      gpu::store<kVec>(drow + 2 * head.C, dv);
      // Queries past the class token were never asked for: their gradient is 0, written here
      // since dqkv is overwritten whole. Token 0's dq is stored after the loop.
      if (keys.key[i] > 0) {
        const float zeros[kVec] = {};
        gpu::store<kVec>(drow, zeros);
      }
    }
  }

  // The warp's groups, then the warps in order, by the lanes of warp 0's first group.
#pragma unroll
  for (int e = 0; e < kVec; ++e) dq[e] = across_groups<R::kLanes>(dq[e]);
  ds_sum = across_groups<R::kLanes>(ds_sum);
  p_sum = across_groups<R::kLanes>(p_sum);
  __shared__ BackwardWarpSums<D> warps;
  if (me.lane < R::kLanes) {
    if (me.holds) gpu::store<kVec>(warps.dq[me.warp] + column, dq);
    if (me.lane == 0) {
      warps.ds[me.warp] = ds_sum;
      warps.p[me.warp] = p_sum;
    }
  }
  __syncthreads();
  if (me.warp != 0 || me.lane >= R::kLanes || !me.holds) return;
#pragma unroll
  for (int w = 1; w < kWarps; ++w) {
    float other[kVec];
    gpu::load<kVec>(warps.dq[w] + column, other);
#pragma unroll
    for (int e = 0; e < kVec; ++e) dq[e] += other[e];
    ds_sum += warps.ds[w];
    p_sum += warps.p[w];
  }
#pragma unroll
  for (int e = 0; e < kVec; ++e) dq[e] *= scale;
  gpu::store<kVec>(dtoken0, dq);
  if (bias_partials != nullptr) {
    // The block's row of (B, 3, H, D): the column sums over its T rows of dq (token 0's alone),
    // dK (sum_j scale dS_j q) and dV (sum_j p_j dO).
    float* partial = bias_partials + bh / H * 3 * head.C + bh % H * D + column;
    float dk[kVec], dv[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      dk[e] = scale * ds_sum * q[e];
      dv[e] = p_sum * dO[e];
    }
    gpu::store<kVec>(partial, dq);
    gpu::store<kVec>(partial + head.C, dk);
    gpu::store<kVec>(partial + 2 * head.C, dv);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

void check_args(const char* fn, std::initializer_list<const void*> bf16_buffers, int64_t B,
                int64_t Tn, int64_t H, int64_t D) {
  gpu::check_attention_args(fn, bf16_buffers, B, Tn, H, D);
  // A 1-D grid of B H blocks; key indices (plus a round's keys) are int.
  if (Tn > INT_MAX / 2 || B * H > INT_MAX)
    throw std::invalid_argument(std::string(fn) + ": too many rows for one launch");
}

template <int D>
void forward(const bf16* qkv, bf16* out, float* lse, int64_t heads, int T, int H, float scale,
             cudaStream_t stream) {
  class_attention_forward_kernel<D>
      <<<static_cast<unsigned>(heads), kThreads, 0, stream>>>(qkv, out, lse, T, H, scale * kLog2e);
  DEIT_CUDA_CHECK_LAUNCH();
}

template <int D>
void backward(const bf16* qkv, const bf16* out, const float* lse, const bf16* dout, bf16* dqkv,
              float* bias_partials, int64_t heads, int T, int H, float scale, cudaStream_t stream) {
  class_attention_backward_kernel<D><<<static_cast<unsigned>(heads), kThreads, 0, stream>>>(
      qkv, out, lse, dout, dqkv, bias_partials, T, H, scale, scale * kLog2e);
  DEIT_CUDA_CHECK_LAUNCH();
}

template <typename Run>
void with_head_dim(int64_t D, Run&& run) {
  switch (D) {
    case 32:
      return run(std::integral_constant<int, 32>{});
    case 64:
      return run(std::integral_constant<int, 64>{});
    case 80:
      return run(std::integral_constant<int, 80>{});
    default:
      return run(std::integral_constant<int, 128>{});
  }
}

}  // namespace

void class_attention_forward_cuda(const bf16_bits* qkv, bf16_bits* out, float* lse, int64_t B,
                                  int64_t Tn, int64_t H, int64_t D, double scale,
                                  cudaStream_t stream) {
  check_args("class_attention_forward_cuda", {qkv, out}, B, Tn, H, D);
  if (B == 0 || Tn == 0 || H == 0) return;
  with_head_dim(D, [&](auto head_dim) {
    forward<decltype(head_dim)::value>(gpu::as_bf16(qkv), gpu::as_bf16(out), lse, B * H,
                                       static_cast<int>(Tn), static_cast<int>(H),
                                       static_cast<float>(scale), stream);
  });
}

int64_t class_attention_backward_cuda_workspace_floats(int64_t B, int64_t H, int64_t D) {
  return (B * 3 * H * D + 3) / 4 * 4;
}

void class_attention_backward_cuda(const bf16_bits* qkv, const bf16_bits* out, const float* lse,
                                   const bf16_bits* dout, bf16_bits* dqkv, float* dbias, int64_t B,
                                   int64_t Tn, int64_t H, int64_t D, double scale, float* workspace,
                                   cudaStream_t stream) {
  const char* fn = "class_attention_backward_cuda";
  check_args(fn, {qkv, out, dout, dqkv}, B, Tn, H, D);
  if (B == 0 || Tn == 0 || H == 0) {  // dbias: a sum over no rows
    if (dbias) DEIT_CUDA_CHECK(cudaMemsetAsync(dbias, 0, 3 * H * D * sizeof(float), stream));
    return;
  }
  if (lse == nullptr) throw std::invalid_argument(std::string(fn) + ": lse is required");
  // Only the bias gradient's column sums live in the workspace.
  gpu::check_workspace(fn, workspace, dbias != nullptr);
  if (dbias) gpu::check_aligned_16(fn, "workspace", workspace);  // 16-byte stores
  float* bias_partials = dbias ? workspace : nullptr;
  with_head_dim(D, [&](auto head_dim) {
    backward<decltype(head_dim)::value>(gpu::as_bf16(qkv), gpu::as_bf16(out), lse,
                                        gpu::as_bf16(dout), gpu::as_bf16(dqkv), bias_partials,
                                        B * H, static_cast<int>(Tn), static_cast<int>(H),
                                        static_cast<float>(scale), stream);
  });
  if (dbias) gpu::sum_partials(bias_partials, B, 3 * H * D, dbias, stream);
}

}  // namespace deit::kernels
